"""The generation stage on a tiny synthetic corpus: reranking on real generated candidates, fluency off / on /
fallback, audio-embedding source, greedy / beam modes, resume after a kill, and the CLI commands."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _decode_util import CAPS, one_thread, tiny_captioner, write_tone
from typer.testing import CliRunner

from dcase.data.manifest import ManifestRow, write_manifest
from dcase.decoding.rerank import read_candidates, rerank, selected_captions
from dcase.decoding.sample import SamplingConfig
from dcase.features.store import ShardWriter, finalize_store
from dcase.stages.generation import (
    GenerateConfig,
    GenerationSettings,
    generate_candidates,
    parts_dir,
    sidecar_path,
    task6_rows,
)

N_CLIPS = 5
JOINT = 8


@pytest.fixture(autouse=True)
def _single_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """5 tone clips; manifest; codec store (random codes); clip-embedding store made by the tiny retriever;
    a tiny captioner checkpoint; the retriever checkpoint."""
    from _retriever_util import build_tiny_bert

    from dcase.features.extract import extract_embeddings
    from dcase.models.cnext import CNextConfig
    from dcase.models.retriever import Retriever, RetrieverConfig, TextTowerConfig

    tmp = tmp_path_factory.mktemp("gen")
    (tmp / "audio").mkdir()
    rows, codes = [], {}
    rng = np.random.default_rng(0)
    for i in range(N_CLIPS):
        cid = f"clip{i}.wav"
        write_tone(tmp / "audio" / cid, 200.0 * (i + 1))
        rows.append(
            ManifestRow(
                clip_id=cid,
                audio_path=str(tmp / "audio" / cid),
                split="validation",
                source="synth",
                duration_s=0.5,
                sample_rate=24000,
                captions=[CAPS[i], CAPS[i + 1]],
            )
        )
        codes[cid] = rng.integers(0, 16, (4, int(rng.integers(15, 38)))).astype(np.int16)
    write_manifest(rows, tmp / "manifest.parquet")
    with ShardWriter(tmp / "dac", shard_size=2) as w:
        for cid, arr in codes.items():
            w.add(cid, arr)
    finalize_store(tmp / "dac", {"kind": "codec", "extractor": "test", "n_codebooks": 4})
    torch.manual_seed(0)
    text_dir = build_tiny_bert(tmp / "bert", hidden=16, layers=1)
    ret = Retriever.build(
        RetrieverConfig(
            audio=CNextConfig.tiny(), text=TextTowerConfig(name_or_path=str(text_dir)), joint_dim=JOINT, loss="infonce"
        )
    )
    ret.save_pretrained(tmp / "retriever")
    extract_embeddings(tmp / "manifest.parquet", tmp / "emb", tmp / "retriever", progress=False)
    tiny_captioner(seed=0, eos_bias=0.0, clip_dim=JOINT).save_pretrained(tmp / "cap")
    return tmp


def _cfg(c: Path, out: Path, **kw) -> GenerateConfig:
    """A GenerateConfig for the corpus; keyword arguments naming GenerationSettings fields go to ``generation``."""
    gen_fields = {f.name for f in dataclasses.fields(GenerationSettings)}
    gen = dict(chunk_clips=2, sampling=SamplingConfig(num_candidates=6, max_new_tokens=10, batch_clips=2, seed=7))
    gen.update({k: v for k, v in kw.items() if k in gen_fields})
    base = dict(
        captioners=[str(c / "cap")],
        retriever=str(c / "retriever"),
        manifest=str(c / "manifest.parquet"),
        codec_stores=[str(c / "dac")],
        embed_stores=[str(c / "emb")],
        out=str(out),
        generation=GenerationSettings(**gen),
    )
    base.update({k: v for k, v in kw.items() if k not in gen_fields})
    return GenerateConfig(**base)


def _independent_cos(c: Path, table: pd.DataFrame) -> np.ndarray:
    """cos(retriever audio embedding of the clip's audio, retriever text embedding), computed directly."""
    import soundfile as sf
    import soxr

    from dcase.models.retriever import Retriever

    ret = Retriever.from_pretrained(c / "retriever")
    out = np.zeros(len(table))
    for cid, grp in table.groupby("clip_id", sort=False):
        x, sr = sf.read(str(c / "audio" / cid), dtype="float32")
        x = soxr.resample(x, sr, ret.sample_rate).astype(np.float32)
        a = ret.embed_audio(torch.from_numpy(x)[None], torch.tensor([len(x)]))[0].numpy()
        t = ret.embed_text(grp["text"].tolist()).numpy()
        out[grp.index.to_numpy()] = (t @ a) / np.linalg.norm(t, axis=1) / np.linalg.norm(a)
    return out


def test_generate_reranks_real_candidates(corpus, tmp_path):
    out = tmp_path / "cands.parquet"
    table = generate_candidates(_cfg(corpus, out), progress=False)
    disk = read_candidates(out)
    pd.testing.assert_frame_equal(table, disk)
    assert list(pd.unique(disk["clip_id"])) == [f"clip{i}.wav" for i in range(N_CLIPS)]
    assert (disk.groupby("clip_id")["count"].sum() <= 6).all()
    assert not disk.duplicated(["clip_id", "text"]).any()
    from dcase.models.enclap import EnCLAP

    cap = EnCLAP.from_pretrained(corpus / "cap")
    assert [cap.decode_text(torch.tensor([list(ids)]))[0] for ids in disk["token_ids"]] == disk["text"].tolist()
    # encoder score = cosine of the retriever embeddings (store vectors made by the same retriever)
    np.testing.assert_allclose(disk["encoder_score"], _independent_cos(corpus, disk), atol=2e-4)
    # selection = argmax of 0.7 * cos + 0.3 * decoder score, per clip
    final = 0.7 * disk["encoder_score"] + 0.3 * disk["decoder_score"]
    np.testing.assert_allclose(disk["final_score"], final, atol=1e-12)
    for _, grp in disk.groupby("clip_id"):
        assert grp["selected"].sum() == 1
        assert grp.loc[grp["selected"], "final_score"].item() == pytest.approx(final[grp.index].max())
    assert disk["fluency_error_prob"].isna().all() and not disk["fallback"].any()
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["fluency_filter"] == "off" and "no checker" in meta["reason"]
    assert meta["audio_embedding"] == ["store"] and meta["n_clips"] == N_CLIPS
    assert not parts_dir(out).exists()
    rows = task6_rows(out)
    assert [r[0] for r in rows] == [f"clip{i}.wav" for i in range(N_CLIPS)]
    assert rows == [
        (c, t) for c, t in zip(disk.loc[disk["selected"], "clip_id"], disk.loc[disk["selected"], "text"], strict=True)
    ]
    # the clip embedding computed from the audio equals the store's (same retriever)
    from dcase.features.store import StoreChain
    from dcase.models.retriever import Retriever
    from dcase.stages.generation import clip_audio_embeddings

    ret = Retriever.from_pretrained(corpus / "retriever")
    rows = pd.read_parquet(corpus / "manifest.parquet")
    stores = StoreChain.open([corpus / "emb"])
    from_store, src1 = clip_audio_embeddings(ret, corpus / "retriever", rows, stores, "auto")
    computed, src2 = clip_audio_embeddings(ret, corpus / "retriever", rows, stores, "compute")
    assert (src1, src2) == ("store", "computed")
    np.testing.assert_allclose(computed, from_store, atol=1e-5)
    with pytest.raises(FileExistsError):
        generate_candidates(_cfg(corpus, out), progress=False)


def test_fluency_filter_on_and_fallback(corpus, tmp_path):
    from dcase.decoding.fluency import FluencyCheckerError, build_debug_checker

    words = sorted({w for c in CAPS for w in c.split()} | {"bar", "shu", "met", "pas", "whi", "bir"})
    ckpt = build_debug_checker(tmp_path / "checker", words)
    out = tmp_path / "f.parquet"
    # threshold 0: every candidate "has an error" -> each clip falls back to its best final score
    t0 = generate_candidates(
        _cfg(corpus, out, fluency_checker=str(ckpt), fluency_threshold=0.0, w_enc=0.0, w_dec=1.0), progress=False
    )
    assert t0["fluency_error_prob"].between(0, 1).all() and t0["fallback"].all()
    for _, grp in t0.groupby("clip_id"):
        assert grp.loc[grp["selected"], "decoder_score"].item() == grp["decoder_score"].max()
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["fluency_filter"] == "on" and meta["n_fallback_clips"] == N_CLIPS
    # a threshold between the stored probabilities: the best candidate passing the filter is chosen
    thr = float(np.median(t0["fluency_error_prob"]))
    t1 = rerank(t0, 0.0, 1.0, thr)
    for _, grp in t1.groupby("clip_id"):
        ok = grp[grp["fluency_error_prob"] <= thr]
        sel = grp[grp["selected"]]
        if len(ok):
            assert not sel["fallback"].item() and sel["decoder_score"].item() == ok["decoder_score"].max()
        else:
            assert sel["fallback"].item()
    # the default lazy scope checks candidates in score order until a fluent one: the same selection as checking
    # every candidate, with no more checker work
    picks = {}
    for scope in ("lazy", "all"):
        t = generate_candidates(
            _cfg(
                corpus,
                tmp_path / f"{scope}.parquet",
                fluency_checker=str(ckpt),
                fluency_threshold=thr,
                fluency_scope=scope,
                w_enc=0.0,
                w_dec=1.0,
            ),
            progress=False,
        )
        picks[scope] = (selected_captions(t), int(t["fluency_error_prob"].notna().sum()), t["fallback"].tolist())
    assert picks["lazy"][0] == picks["all"][0] == selected_captions(t1)
    assert picks["lazy"][2] == picks["all"][2]
    assert picks["lazy"][1] <= picks["all"][1] == len(t0)
    with pytest.raises(FluencyCheckerError, match="does not exist"):
        generate_candidates(
            _cfg(corpus, tmp_path / "h.parquet", fluency_checker=str(tmp_path / "nope.ckpt")), progress=False
        )


def test_greedy_and_beam_give_one_candidate(corpus, tmp_path):
    from dcase.models.enclap import EnCLAP

    sc = SamplingConfig(max_new_tokens=10, min_new_tokens=3, batch_clips=2)
    g = generate_candidates(_cfg(corpus, tmp_path / "g.parquet", mode="greedy", sampling=sc), progress=False)
    b = generate_candidates(_cfg(corpus, tmp_path / "b.parquet", mode="beam", num_beams=3, sampling=sc), progress=False)
    for t in (g, b):
        assert t["clip_id"].value_counts().max() == 1 and t["selected"].all()
    # the sampling settings reach the beam path: counting the forced <s> changes the decoder score, not the text
    sc_bos = SamplingConfig(max_new_tokens=10, min_new_tokens=3, batch_clips=2, score_bos=True)
    b2 = generate_candidates(
        _cfg(corpus, tmp_path / "b2.parquet", mode="beam", num_beams=3, sampling=sc_bos), progress=False
    )
    assert b2["text"].tolist() == b["text"].tolist()
    assert not np.allclose(b2["decoder_score"].to_numpy(), b["decoder_score"].to_numpy())
    m = EnCLAP.from_pretrained(corpus / "cap").eval()
    from dcase.features.store import StoreChain

    codes, emb = StoreChain.open([corpus / "dac"]), StoreChain.open([corpus / "emb"])
    cid = g["clip_id"].iloc[0]
    c = torch.from_numpy(codes[cid].astype(np.int64))[None]
    ids = m.generate(
        c,
        torch.ones(1, c.shape[2], dtype=torch.bool),
        torch.from_numpy(emb[cid])[None],
        max_new_tokens=10,
        min_new_tokens=max(3, sc.min_length - 1),  # HF: min_length and min_new_tokens do not combine
        no_repeat_ngram_size=sc.no_repeat_ngram_size,
    )
    assert g["text"].iloc[0] == m.decode_text(ids)[0]


def test_resume_after_kill_equals_full_run(corpus, tmp_path, monkeypatch):
    import dcase.stages.generation as generation

    full = generate_candidates(_cfg(corpus, tmp_path / "full.parquet"), progress=False)
    out = tmp_path / "resumed.parquet"
    chunk_table, done = generation._chunk_table, []

    def killed_after_first_chunk(idx, *args, **kwargs):
        if done:
            raise KeyboardInterrupt("killed")
        done.append(list(idx))
        return chunk_table(idx, *args, **kwargs)

    monkeypatch.setattr(generation, "_chunk_table", killed_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        generate_candidates(_cfg(corpus, out), progress=False)
    monkeypatch.setattr(generation, "_chunk_table", chunk_table)
    assert not out.exists() and sorted(p.name for p in parts_dir(out).glob("part-*")) == ["part-00000.parquet"]
    part = pd.read_parquet(parts_dir(out) / "part-00000.parquet")
    assert done == [[0, 1]] and set(part["clip_id"]) == {"clip0.wav", "clip1.wav"}
    with pytest.raises(ValueError, match="other settings.*sampling"):
        generate_candidates(
            _cfg(corpus, out, sampling=SamplingConfig(num_candidates=5, max_new_tokens=10)), progress=False
        )
    before = (parts_dir(out) / "part-00000.parquet").stat().st_mtime_ns
    resumed = generate_candidates(_cfg(corpus, out), progress=False)
    pd.testing.assert_frame_equal(resumed, full)
    assert not parts_dir(out).exists()
    assert before  # the finished chunk was reused, not recomputed (it would have been rewritten otherwise)


def test_bad_settings_are_clear_errors(corpus, tmp_path):
    with pytest.raises(ValueError, match="needs a retriever"):
        generate_candidates(_cfg(corpus, tmp_path / "x.parquet", retriever=None), progress=False)
    with pytest.raises(ValueError, match="token-level ensemble"):
        generate_candidates(
            _cfg(corpus, tmp_path / "x.parquet", mode="beam", captioners=[str(corpus / "cap")] * 2), progress=False
        )
    with pytest.raises(ValueError, match="audio_embedding=store"):
        generate_candidates(
            _cfg(
                corpus,
                tmp_path / "x.parquet",
                audio_embedding="store",
                embed_stores=[str(corpus / "emb")],
                retriever=str(_other_retriever(tmp_path)),
            ),
            progress=False,
        )


def _other_retriever(tmp: Path) -> Path:
    from _retriever_util import build_tiny_bert

    from dcase.models.cnext import CNextConfig
    from dcase.models.retriever import Retriever, RetrieverConfig, TextTowerConfig

    torch.manual_seed(9)
    ret = Retriever.build(
        RetrieverConfig(
            audio=CNextConfig.tiny(),
            joint_dim=JOINT,
            loss="infonce",
            text=TextTowerConfig(name_or_path=str(build_tiny_bert(tmp / "b2", 16, 1))),
        )
    )
    return ret.save_pretrained(tmp / "other_retriever")


def test_cli_generate_and_tune_rerank(corpus, tmp_path):
    from dcase.cli import app

    out = tmp_path / "cli.parquet"
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "generate",
            "--captioner",
            str(corpus / "cap"),
            "--retriever",
            str(corpus / "retriever"),
            "--manifest",
            str(corpus / "manifest.parquet"),
            "--split",
            "validation",
            "--codec-store",
            str(corpus / "dac"),
            "--embed-store",
            str(corpus / "emb"),
            "--out",
            str(out),
            "--w-enc",
            "0.6",
            "--w-dec",
            "0.4",
            "--set",
            "generation.sampling.num_candidates=4",
            "--set",
            "generation.sampling.max_new_tokens=8",
        ],
    )
    assert res.exit_code == 0, res.output
    t = read_candidates(out)
    assert t["clip_id"].nunique() == N_CLIPS and t.groupby("clip_id")["count"].sum().max() <= 4
    np.testing.assert_allclose(t["final_score"], 0.6 * t["encoder_score"] + 0.4 * t["decoder_score"])
    res = runner.invoke(
        app,
        [
            "generate",
            "--captioner",
            str(corpus / "cap"),
            "--manifest",
            str(corpus / "manifest.parquet"),
            "--codec-store",
            str(corpus / "dac"),
            "--embed-store",
            str(corpus / "emb"),
            "--out",
            str(tmp_path / "y.parquet"),
        ],
    )
    assert res.exit_code == 2 and "needs a retriever" in res.output
    res = runner.invoke(
        app,
        [
            "tune-rerank",
            "--candidates",
            str(out),
            "--references",
            str(corpus / "manifest.parquet"),
            "--out",
            str(tmp_path / "tune"),
            "--weights",
            "0,0.5,1",
            "--metric",
            "cider_d",
        ],
    )
    assert res.exit_code == 0, res.output
    grid = pd.read_csv(tmp_path / "tune" / "tuning.csv")
    assert grid["w_enc"].tolist() == [0.0, 0.5, 1.0]
    np.testing.assert_allclose(grid["w_dec"], 1 - grid["w_enc"])
    assert grid["cider_d"].notna().all() and (tmp_path / "tune" / "tuning.png").stat().st_size > 0
    # the w_enc = 1 row scores exactly the captions with the highest encoder score
    from dcase.evaluation.captions import evaluate_captions

    best = t.loc[t.groupby("clip_id", sort=False)["encoder_score"].idxmax()]
    refs = {f"clip{i}.wav": [CAPS[i], CAPS[i + 1]] for i in range(N_CLIPS)}
    want = evaluate_captions(best["text"].tolist(), [refs[c] for c in best["clip_id"]], ["cider_d"])["cider_d"]
    assert grid["cider_d"].iloc[2] == pytest.approx(want)


def test_greedy_soup_with_the_builtin_captioner_evaluator(corpus, tmp_path):
    """dcase soup --method greedy --evaluator captioner: ingredients ranked and kept by validation CIDEr-D of their
    greedy captions; the soup never scores below its best ingredient, and run.json records the trace."""
    from dcase.cli import app
    from dcase.models.enclap import EnCLAP
    from dcase.stages.captioner import validation_score

    noisy = EnCLAP.from_pretrained(corpus / "cap")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    noisy.save_pretrained(tmp_path / "noisy")
    kw = dict(
        manifest=corpus / "manifest.parquet",
        split="validation",
        codec_stores=[corpus / "dac"],
        embed_stores=[corpus / "emb"],
    )
    s_cap, s_noisy = validation_score(corpus / "cap", **kw), validation_score(tmp_path / "noisy", **kw)
    assert validation_score(corpus / "cap", **kw) == s_cap  # deterministic: greedy decoding
    args = [
        "soup",
        str(tmp_path / "noisy"),
        str(corpus / "cap"),
        "--out",
        str(tmp_path / "soup"),
        "--method",
        "greedy",
        "--evaluator",
        "captioner",
        "--manifest",
        str(corpus / "manifest.parquet"),
        "--codec-store",
        str(corpus / "dac"),
        "--embed-store",
        str(corpus / "emb"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "soup" / "run.json").read_text())
    assert info["method"] == "greedy" and info["trace"]
    assert validation_score(tmp_path / "soup", **kw) >= max(s_cap, s_noisy) - 1e-9
    bad = CliRunner().invoke(
        app,
        [
            "soup",
            str(tmp_path / "noisy"),
            str(corpus / "cap"),
            "--out",
            str(tmp_path / "soup2"),
            "--method",
            "greedy",
            "--evaluator",
            "captioner",
        ],
    )
    assert bad.exit_code != 0 and "--manifest" in bad.output
