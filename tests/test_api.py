"""The Python API of a trained system (issue 11): ``Captioner`` selects exactly what ``dcase generate`` selects on
the same audio, its candidates carry the reranker's scores, loading works from a folder and from the Hugging Face
cache by repository id; ``Retriever`` indexes a folder (incrementally) and ranks it by cosine."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _decode_util import one_thread
from _system_util import build_parts, build_system, build_task8_system, hub_cache, write_audio

from dcase.api import Captioner, Retriever, SystemFolderError, audio_files
from dcase.errors import InputError, MissingInputError


@pytest.fixture(autouse=True)
def _single_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Task 6 system and a folder of audio at three rates / channel counts / lengths (one longer than the
    captioner's max_codec_positions and than the codec's chunk, so the head crop and the windows are exercised)."""
    root = tmp_path_factory.mktemp("api")
    parts = build_parts(root / "parts")
    system = build_system(root, parts)
    audio = root / "audio"
    write_audio(audio / "a dog.wav", 0.8, 44100, channels=2, freq=300.0, seed=1)
    write_audio(audio / "b.flac", 2.0, 16000, freq=900.0, seed=2)
    write_audio(audio / "c.wav", 14.0, 24000, freq=1500.0, seed=3)
    (audio / "notes.txt").write_text("not audio")
    return {"root": root, "system": system, "audio": audio, "parts": parts}


@pytest.fixture(scope="module")
def generated(tiny):
    """``dcase generate`` on a manifest of the audio folder, with stores made from the system's own codec and
    clip embedder (what a user of the pipeline runs)."""
    import json

    from dcase.config import from_dict
    from dcase.data.manifest import folder_rows, write_manifest
    from dcase.features.extract import extract_codec, extract_embeddings
    from dcase.stages.generation import GenerateConfig, GenerationSettings, generate_candidates
    from dcase.stages.systems import SYSTEM_FILE

    root, system = tiny["root"], tiny["system"]
    write_manifest(folder_rows(tiny["audio"], "evaluation"), root / "manifest.parquet")
    extract_codec(root / "manifest.parquet", root / "dac", codec=str(system / "codec"), progress=False)
    doc = json.loads((system / SYSTEM_FILE).read_text())
    assert doc["clip_embedder"] == doc["retriever"] == "retriever"  # one checkpoint, stored once
    extract_embeddings(root / "manifest.parquet", root / "emb", system / doc["clip_embedder"], progress=False)
    cfg = GenerateConfig(
        captioners=[str(system / c) for c in doc["captioners"]],
        retriever=str(system / doc["retriever"]),
        manifest=str(root / "manifest.parquet"),
        codec_stores=[str(root / "dac")],
        embed_stores=[str(root / "emb")],
        out=str(root / "gen" / "candidates.parquet"),
        generation=from_dict(GenerationSettings, doc["generation"]),
    )
    return generate_candidates(cfg, progress=False)


def test_caption_equals_generate(tiny, generated):
    cap = Captioner.from_pretrained(tiny["system"])
    results = cap.caption(tiny["audio"], return_candidates=True)
    names = [Path(r.file).name for r in results]
    assert names == ["a dog.wav", "b.flac", "c.wav"]  # the folder's audio files, sorted; notes.txt skipped
    sel = generated[generated["selected"]]
    selected = dict(zip(sel["clip_id"], sel["text"], strict=True))
    assert [r.caption for r in results] == [selected[n] for n in names]
    for name, res in zip(names, results, strict=True):
        ref = generated[generated["clip_id"] == name]
        ours = pd.DataFrame([c.__dict__ for c in res.candidates])
        assert sorted(ours["text"]) == sorted(ref["text"])  # the same samples (seeded by the file name)
        merged = ours.merge(ref, on="text", suffixes=("", "_gen"))
        np.testing.assert_array_equal(merged["count"], merged["count_gen"])
        np.testing.assert_allclose(merged["decoder_score"], merged["decoder_score_gen"], atol=1e-6)
        np.testing.assert_allclose(merged["encoder_score"], merged["encoder_score_gen"], atol=1e-6)
    # the plain call returns the captions only
    assert cap.caption([tiny["audio"] / "b.flac"]) == [results[1].caption]
    assert set(cap.timings) == {"audio", "codec", "embedding", "sampling", "reranking"}
    assert all(v >= 0 for v in cap.timings.values()) and cap.timings["sampling"] > 0


def test_candidates_are_ranked_and_scored(tiny):
    cap = Captioner.from_pretrained(tiny["system"])
    (res,) = cap.caption(tiny["audio"] / "a dog.wav", return_candidates=True)
    g = cap.settings
    assert 1 <= len(res.candidates) <= g.sampling.num_candidates
    assert sum(c.count for c in res.candidates) == g.sampling.num_candidates
    finals = [c.final_score for c in res.candidates]
    assert finals == sorted(finals, reverse=True)
    for c in res.candidates:
        assert c.final_score == pytest.approx(g.w_enc * c.encoder_score + g.w_dec * c.decoder_score, abs=1e-12)
        assert -1.0 - 1e-6 <= c.encoder_score <= 1.0 + 1e-6 and c.decoder_score < 0
        assert c.fluency_error_prob is None  # no checker in this system: the filter is off
    assert [c.selected for c in res.candidates] == [True] + [False] * (len(res.candidates) - 1)
    assert res.caption == res.candidates[0].text and not res.fallback
    # the encoder score is the cosine of the retriever's embeddings, computed here independently
    import soundfile as sf
    import soxr

    from dcase.models.retriever import Retriever as RetrieverModel

    ret = RetrieverModel.from_pretrained(tiny["system"] / "retriever")
    x, sr = sf.read(str(tiny["audio"] / "a dog.wav"), dtype="float32")
    x = soxr.resample(x.mean(axis=1), sr, ret.sample_rate, quality="HQ").astype(np.float32)
    a = ret.embed_audio(torch.from_numpy(x)[None], torch.tensor([len(x)]))[0].numpy()
    t = ret.embed_text([c.text for c in res.candidates]).numpy()
    np.testing.assert_allclose([c.encoder_score for c in res.candidates], t @ a / np.linalg.norm(a), atol=1e-5)


def test_caption_changes_with_settings(tiny):
    cap = Captioner.from_pretrained(tiny["system"])
    import dataclasses

    cap.settings = dataclasses.replace(cap.settings, mode="greedy")
    (res,) = cap.caption(tiny["audio"] / "b.flac", return_candidates=True)
    assert len(res.candidates) == 1 and res.candidates[0].count == 1


def test_load_by_repo_id_from_the_hub_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_cache(tmp_path / "hub", "someone/tiny-enclap-system", tiny["system"])
    by_id = Captioner.from_pretrained("someone/tiny-enclap-system")
    assert by_id.folder.is_relative_to(tmp_path / "hub")
    local = Captioner.from_pretrained(tiny["system"])
    clip = tiny["audio"] / "a dog.wav"
    assert by_id.caption(clip) == local.caption(clip)
    with pytest.raises(MissingInputError, match="HF_HUB_OFFLINE"):
        Captioner.from_pretrained("someone/not-in-the-cache")


def test_bad_inputs(tiny, tmp_path):
    with pytest.raises(SystemFolderError, match="not a system folder"):
        Captioner.from_pretrained(tiny["parts"]["captioner"])
    with pytest.raises(MissingInputError, match="no such audio file"):
        audio_files([tmp_path / "missing.wav"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="no audio files"):
        audio_files(tmp_path / "empty")
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    cap = Captioner.from_pretrained(tiny["system"])
    with pytest.raises(InputError, match="broken.wav"):
        cap.caption(tmp_path / "broken.wav")
    t8 = build_task8_system(tmp_path, [tiny["parts"]["retriever"]])
    with pytest.raises(SystemFolderError, match="Task 8 system"):
        Captioner.from_pretrained(t8)


# -------------------------------------------------------------------------------------------------- retriever
def _cosines(model, files, query: str) -> dict[str, float]:
    """cos(query, each file) with the retriever model, each clip embedded whole on its own."""
    from dcase.data.audio import load_audio

    t = model.embed_text([query])[0].numpy()
    out = {}
    for f in files:
        x, _ = load_audio(f, model.sample_rate)
        a = model.embed_audio(torch.from_numpy(x)[None], torch.tensor([len(x)]))[0].numpy()
        out[str(f)] = float(t @ a)
    return out


def test_retriever_index_and_search(tiny, tmp_path):
    coll = tmp_path / "sounds"
    for i in range(5):
        write_audio(coll / ("sub" if i % 2 else "") / f"s{i}.wav", 0.5 + 0.2 * i, 32000, freq=200.0 * (i + 1), seed=i)
    r = Retriever.from_pretrained(tiny["system"])  # a Task 6 system: its reranking retriever
    assert r.sources == [tiny["system"] / "retriever"]
    with pytest.raises(InputError, match="nothing is indexed"):
        r.search("a tone")
    (coll / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")  # skipped with a warning, not fatal
    r.index(coll)  # recursive: sub/ included
    assert len(r.collection) == 5 and not any("broken" in f for f in r.collection.files)
    (coll / "broken.wav").unlink()
    hits = r.search("a high tone", k=3)
    ref = _cosines(r.models[0], audio_files(coll, recursive=True), "a high tone")
    best = sorted(ref, key=ref.get, reverse=True)[:3]
    assert [h.file for h in hits] == best
    np.testing.assert_allclose([h.score for h in hits], [ref[f] for f in best], atol=1e-5)
    both = r.search(["a high tone", "a low hum"], k=10)  # k is capped at the collection size
    assert [len(b) for b in both] == [5, 5] and [h.file for h in both[0][:3]] == best


def test_task8_ensemble_search(tiny, tmp_path):
    from dcase.evaluation.retrieval import standardize
    from dcase.models.cnext import CNextConfig
    from dcase.models.retriever import Retriever as RetrieverModel
    from dcase.models.retriever import RetrieverConfig, TextTowerConfig

    torch.manual_seed(1)
    other = RetrieverModel.build(
        RetrieverConfig(
            audio=CNextConfig.tiny(),
            text=TextTowerConfig(name_or_path=str(tiny["root"] / "parts" / "bert")),
            joint_dim=8,
            loss="infonce",
        )
    )
    other.save_pretrained(tmp_path / "ret2")
    system8 = build_task8_system(tmp_path, [tiny["parts"]["retriever"], tmp_path / "ret2"])
    r = Retriever.from_pretrained(system8)
    assert len(r.models) == 2
    files = audio_files(tiny["audio"])
    r.index(files)
    hits = r.search("a dog", k=3)
    sims = []
    for m in r.models:
        c = _cosines(m, files, "a dog")
        sims.append(np.array([[c[str(f)] for f in files]]))
    mean = (standardize(sims[0]) + standardize(sims[1])) / 2
    order = np.argsort(-mean[0], kind="stable")[:3]
    assert [h.file for h in hits] == [str(files[j]) for j in order]
    np.testing.assert_allclose([h.score for h in hits], mean[0][order], atol=1e-4)


def test_index_is_incremental(tiny, tmp_path, monkeypatch):
    import dcase.features.embed as embed_mod

    coll, out = tmp_path / "sounds", tmp_path / "index"
    for i in range(3):
        write_audio(coll / f"s{i}.wav", 0.5, 32000, freq=300.0 * (i + 1), seed=i)
    embedded: list[list[str]] = []
    real = embed_mod.embed_rows

    def spy(model, rows, *a, **kw):
        embedded.append(sorted(Path(r.audio_path).name for r in rows))
        return real(model, rows, *a, **kw)

    monkeypatch.setattr(embed_mod, "embed_rows", spy)
    r = Retriever.from_pretrained(tiny["parts"]["retriever"])  # a bare retriever checkpoint works too
    r.index(coll, out=out)
    assert embedded == [["s0.wav", "s1.wav", "s2.wav"]]
    first = np.load(out / "members" / "0" / "embeddings.npy")

    # unchanged: nothing embedded; a new file: only it
    write_audio(coll / "s3.wav", 0.6, 32000, freq=2000.0, seed=9)
    embedded.clear()
    r.index(coll, out=out)
    assert embedded == [["s3.wav"]]
    # touched (new mtime, same bytes): re-hashed, not re-embedded; rewritten with other content: re-embedded
    os.utime(coll / "s0.wav", ns=(time.time_ns(), time.time_ns() + 10**9))
    write_audio(coll / "s1.wav", 0.5, 32000, freq=5000.0, seed=5)
    (coll / "s2.wav").unlink()
    embedded.clear()
    r.index(coll, out=out)
    assert embedded == [["s1.wav"]]
    again = Retriever.load_index(out)
    names = [Path(f).name for f in again.collection.files]
    assert names == ["s0.wav", "s1.wav", "s3.wav"]
    emb = again.collection.embeddings[0]
    np.testing.assert_array_equal(emb[0], first[0])
    assert not np.allclose(emb[1], first[1])
    # every stored embedding equals a fresh embedding of the file as it is now
    fresh = Retriever.from_pretrained(tiny["parts"]["retriever"])
    monkeypatch.setattr(embed_mod, "embed_rows", real)
    fresh.index(coll)
    np.testing.assert_allclose(emb, fresh.collection.embeddings[0], atol=1e-6)
    # the index remembers its retriever; another retriever's weights are refused
    assert again.origin == str(tiny["parts"]["retriever"])
    shutil.copytree(tiny["parts"]["retriever"], tmp_path / "moved")
    with pytest.raises(InputError, match="other retriever weights"):
        Retriever.load_index(out, retriever=_other_weights(tmp_path / "moved"))


def _other_weights(folder: Path) -> Path:
    from dcase.models.retriever import Retriever as RetrieverModel

    m = RetrieverModel.from_pretrained(folder)
    with torch.no_grad():
        m.audio_proj.weight.add_(1.0)
    m.save_pretrained(folder)
    return folder


def test_clip_shorter_than_one_codec_frame_is_captioned(tiny, tmp_path):
    short = write_audio(tmp_path / "blip.wav", 0.004, 24000)  # 96 samples < one 320-sample frame
    (res,) = Captioner.from_pretrained(tiny["system"]).caption(short, return_candidates=True)
    assert res.caption and res.candidates[0].selected
