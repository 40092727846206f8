"""Captioner stage: dataset over manifest + feature stores, crops, errors, and the CLI end to end (tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dcase.data.datasets import CaptionDataset, collate_codes
from dcase.data.manifest import ManifestRow, write_manifest
from dcase.data.manifest import load_captioned_rows as load_rows
from dcase.features.store import FeatureStore, ShardWriter, StoreChain, check_coverage, finalize_store
from dcase.models.enclap import EnCLAP, EnCLAPConfig, build_enclap
from dcase.stages.captioner import CaptionerStageConfig, load_stage_config

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["a dog barks twice", "rain falls on a roof", "a bell rings loudly"]
N_CB, K, DIM = 4, 16, 8


def _corpus(tmp: Path, n: int = 12, frames=(30, 90)) -> tuple[Path, Path, Path]:
    """Clips of 3 classes: codes and embedding identify the class; captions name it."""
    rng = np.random.default_rng(0)
    rows, codes, embs = [], {}, {}
    for i in range(n):
        k = i % 3
        cid = f"clip{i:02d}.wav"
        split = "development" if i < n - 3 else "validation"
        rows.append(
            ManifestRow(
                clip_id=cid,
                audio_path=str(tmp / cid),
                split=split,
                source="synth",
                duration_s=1.0,
                sample_rate=24000,
                captions=[CLASSES[k], CLASSES[k]],
            )
        )
        T = int(rng.integers(*frames))
        base = (np.arange(T) * (k + 1)) % K
        codes[cid] = np.stack([(base + n_) % K for n_ in range(N_CB)]).astype(np.int16)
        e = rng.normal(0, 0.1, DIM).astype(np.float32)
        e[k] += 1.0
        embs[cid] = e
    manifest = write_manifest(rows, tmp / "manifest.parquet") is not None and tmp / "manifest.parquet"
    for name, data, kind in (("dac", codes, "codec"), ("emb", embs, "embed")):
        with ShardWriter(tmp / name, shard_size=5) as w:
            for cid, arr in data.items():
                w.add(cid, arr)
        finalize_store(tmp / name, {"kind": kind, "extractor": "test"})
    return manifest, tmp / "dac", tmp / "emb"


def test_dataset_items_crops_and_collate(tmp_path):
    manifest, dac, emb = _corpus(tmp_path)
    df = load_rows([manifest], ["development"])
    codes, embeds = StoreChain.open([dac]), StoreChain.open([emb])
    ds = CaptionDataset(df, codes, embeds, N_CB, DIM, max_frames=40, random_crop=True, seed=1)
    assert len(ds) == 2 * len(df)  # one item per caption
    full = FeatureStore.open(dac)
    assert ds.lengths() == [min(full.shape(c)[1], 40) for c in df["clip_id"] for _ in range(2)]
    long_idx = next(i for i, n in enumerate(ds.lengths()) if full.shape(df["clip_id"][i // 2])[1] > 60)
    c0, e0, cap = ds[long_idx]
    src = full[df["clip_id"][long_idx // 2]]
    assert c0.shape == (N_CB, 40) and cap in CLASSES and e0.dtype == np.float32
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        c, _, _ = ds[long_idx]
        start = next(s for s in range(src.shape[1] - 39) if np.array_equal(src[:, s : s + 40], c))
        starts.add(start)
        assert np.array_equal(ds[long_idx][0], c)  # deterministic within an epoch
    assert len(starts) > 1  # a different random crop per epoch
    head = CaptionDataset(df, codes, embeds, N_CB, DIM, max_frames=40, random_crop=False)
    assert np.array_equal(head[long_idx][0], src[:, :40])  # evaluation keeps the head
    batch = collate_codes([ds[0], ds[long_idx]], pad_code=K)
    n0 = ds.lengths()[0]
    assert batch["codes"].shape == (2, N_CB, 40) and batch["codes_mask"].sum(1).tolist() == [n0, 40]
    assert (batch["codes"][0, :, n0:] == K).all()


def test_missing_features_and_wrong_shapes_are_named(tmp_path):
    manifest, dac, emb = _corpus(tmp_path)
    df = load_rows([manifest])
    codes = StoreChain([{k: v for k, v in FeatureStore.open(dac).items() if k != "clip03.wav"}])
    with pytest.raises(ValueError, match="clip03.wav"):
        check_coverage(df, codes, StoreChain.open([emb]), "training data")
    ds = CaptionDataset(df, StoreChain.open([dac]), StoreChain.open([emb]), N_CB + 1, DIM, 40, False)
    with pytest.raises(ValueError, match="clip00.wav.*n_codebooks"):
        ds[0]
    with pytest.raises(ValueError, match="no manifests"):
        load_rows([])


def test_configs_load_with_paper_settings():
    pt = load_stage_config(REPO / "configs/dcase2024/captioner_pretrain.yaml")
    ft = load_stage_config(REPO / "configs/dcase2024/captioner_finetune.yaml", init="x")
    assert pt.mcm and not ft.mcm and ft.init == "x"
    assert (pt.train.lr, pt.train.warmup_steps, ft.train.lr, ft.train.warmup_steps) == (3e-5, 2000, 1.25e-5, 0)
    assert pt.model.bart_name_or_path == "facebook/bart-large" and pt.model.n_codebooks == 32
    assert (pt.model.label_smoothing, pt.model.mcm_lambda, pt.model.mcm_rate, pt.model.mcm_span) == (0.2, 0.7, 0.15, 10)
    assert pt.train.max_epochs == 15 and tuple(pt.train.betas) == (0.9, 0.999) and pt.train.weight_decay == 0.01
    assert ft.data.train_splits == ["development"]
    for name in ("pretrain", "finetune"):
        demo = load_stage_config(REPO / f"configs/demo/captioner_{name}.yaml")
        assert demo.model.bart_name_or_path is None and demo.model.d_model <= 128
    default = CaptionerStageConfig()  # the best checkpoint is chosen by CIDEr-D, higher is better (its own default)
    assert (default.train.metric_for_best, default.train.greater_is_better, default.mcm) == ("cider_d", True, True)


@pytest.mark.slow  # over 5 s on 2 CPU cores
def test_cli_pretrain_then_finetune_tiny(tmp_path):
    from dcase.cli import app

    manifest, dac, emb = _corpus(tmp_path)
    common = [
        "--set",
        f"data.train_manifests=[{manifest}]",
        "--set",
        "data.train_splits=[development]",
        "--set",
        f"data.codec_stores=[{dac}]",
        "--set",
        f"data.embed_stores=[{emb}]",
        "--set",
        f"data.val_manifest={manifest}",
        "--set",
        "data.val_max_clips=3",
        "--set",
        "eval_metrics=[cider_d]",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.log_every=2",
        "--set",
        "train.eval_every=4",
        "--set",
        "train.save_every=4",
    ]
    model = [
        "--set",
        f"model.n_codebooks={N_CB}",
        "--set",
        f"model.codebook_size={K}",
        "--set",
        f"model.clip_dim={DIM}",
        "--set",
        "model.d_model=32",
        "--set",
        "model.encoder_layers=1",
        "--set",
        "model.decoder_layers=1",
        "--set",
        "model.max_codec_positions=64",
        "--set",
        "model.vocab_size=280",
    ]
    runner = CliRunner()
    pt = tmp_path / "pt"
    res = runner.invoke(
        app,
        [
            "captioner",
            "pretrain",
            "--config",
            str(REPO / "configs/demo/captioner_pretrain.yaml"),
            *common,
            *model,
            "--set",
            f"train.output_dir={pt}",
            "--set",
            "train.max_steps=8",
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    recs = [json.loads(x) for x in (pt / "train_log.jsonl").read_text().splitlines()]
    assert any("mcm_loss" in r for r in recs)
    evals = [r for r in recs if "eval/loss" in r]
    assert [r["step"] for r in evals] == [4, 8] and all("eval/cider_d" in r for r in evals)
    m = EnCLAP.from_pretrained(pt / "last")
    assert m.config.n_codebooks == N_CB and m.config.vocab_size <= 280
    ft = tmp_path / "ft"
    res = runner.invoke(
        app,
        [
            "captioner",
            "finetune",
            "--config",
            str(REPO / "configs/demo/captioner_finetune.yaml"),
            "--init",
            str(pt / "last"),
            *common,
            "--set",
            f"train.output_dir={ft}",
            "--set",
            "train.max_steps=4",
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    recs = [json.loads(x) for x in (ft / "train_log.jsonl").read_text().splitlines()]
    assert not any("mcm_loss" in r for r in recs) and any("caption_loss" in r for r in recs)
    lrs = [(r["step"], r["lr"]) for r in recs if "lr" in r]  # lr of the last update of each logged window
    assert lrs == [(s, pytest.approx(5e-4 * (200 / (200 + s - 1)) ** 0.5)) for s in (2, 4)]  # no warm-up
    ft_model = EnCLAP.from_pretrained(ft / "last")
    # MCM heads were frozen during finetuning
    for a, b in zip(m.mcm_heads.parameters(), ft_model.mcm_heads.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(m.clip_proj.weight, ft_model.clip_proj.weight)
    # rerunning resumes from the finished state and trains no further
    res = runner.invoke(
        app,
        [
            "captioner",
            "finetune",
            "--config",
            str(REPO / "configs/demo/captioner_finetune.yaml"),
            "--init",
            str(pt / "last"),
            *common,
            "--set",
            f"train.output_dir={ft}",
            "--set",
            "train.max_steps=4",
        ],
    )
    assert res.exit_code == 0
    again = EnCLAP.from_pretrained(ft / "last")
    assert all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), ft_model.state_dict().values(), strict=True)
    )
    # quick captions of the validation clips
    csv = tmp_path / "caps.csv"
    res = runner.invoke(
        app,
        [
            "captioner",
            "caption",
            str(ft / "last"),
            "--manifest",
            str(manifest),
            "--split",
            "validation",
            "--codec-store",
            str(dac),
            "--embed-store",
            str(emb),
            "--out",
            str(csv),
            "--num-beams",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    from dcase.submission.formats import validate_task6

    caps = validate_task6(csv)  # the Task 6 format, which `dcase score captions` reads
    assert caps["file_name"].tolist() == ["clip09.wav", "clip10.wav", "clip11.wav"]
    assert (caps["caption_predicted"].str.len() > 0).all()
    # a bad path is a one-line user error
    res = runner.invoke(
        app,
        [
            "captioner",
            "finetune",
            "--config",
            str(REPO / "configs/demo/captioner_finetune.yaml"),
            "--init",
            str(tmp_path / "nope"),
            *common,
            "--set",
            f"train.output_dir={tmp_path / 'x'}",
        ],
    )
    assert res.exit_code == 2 and "nope" in res.output


def test_captioner_resume_after_kill_is_bit_exact(tmp_path):
    """MCM masks (torch RNG), random crops (seed, epoch, item) and the run's tokenizer all survive a kill."""
    from dcase.stages.captioner import CaptionerTask
    from dcase.training import fit

    manifest, dac, emb = _corpus(tmp_path, frames=(30, 120))

    class Killed(CaptionerTask):
        calls = 0

        def loss(self, model, batch):
            Killed.calls += 1
            if Killed.calls > 7:
                raise KeyboardInterrupt("simulated kill")
            return super().loss(model, batch)

    def cfg(out: Path) -> CaptionerStageConfig:
        return load_stage_config(
            REPO / "configs/demo/captioner_pretrain.yaml",
            [
                f"data.train_manifests=[{manifest}]",
                f"data.codec_stores=[{dac}]",
                f"data.embed_stores=[{emb}]",
                "data.val_manifest=null",
                "train.batch_size=4",
                "train.max_steps=10",
                "train.save_every=3",
                "train.eval_every=0",
                f"train.output_dir={out}",
                f"model.n_codebooks={N_CB}",
                f"model.codebook_size={K}",
                f"model.clip_dim={DIM}",
                "model.d_model=32",
                "model.encoder_layers=1",
                "model.decoder_layers=1",
                "model.max_codec_positions=50",
                "model.vocab_size=280",
                "model.dropout=0.1",
            ],
        )

    fit(CaptionerTask(cfg(tmp_path / "ref")), cfg(tmp_path / "ref").train)
    with pytest.raises(KeyboardInterrupt):
        fit(Killed(cfg(tmp_path / "res")), cfg(tmp_path / "res").train)
    fit(CaptionerTask(cfg(tmp_path / "res")), cfg(tmp_path / "res").train)
    a = EnCLAP.from_pretrained(tmp_path / "ref" / "last").state_dict()
    b = EnCLAP.from_pretrained(tmp_path / "res" / "last").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_model_sizes_come_from_the_stores(tmp_path):
    """The codec store's provenance gives n_codebooks and codebook_size, the embedding store's the clip-embedding
    size: a config saying otherwise is overridden; an init checkpoint of other sizes is refused before training."""
    import dataclasses

    from dcase.features.store import StoreError, finalize_store, store_sizes
    from dcase.stages.captioner import CaptionerStageConfig, CaptionerTask
    from dcase.training import TrainConfig

    manifest, dac, emb = _corpus(tmp_path)
    finalize_store(dac, {"kind": "codec", "n_codebooks": N_CB, "extractor_config": {"codebook_size": K}})
    finalize_store(emb, {"kind": "embed", "embed_dim": DIM})
    assert store_sizes(StoreChain.open([dac])) == {"n_codebooks": N_CB, "codebook_size": K}
    assert store_sizes(StoreChain.open([emb])) == {"clip_dim": DIM}
    wrong = EnCLAPConfig.tiny(n_codebooks=N_CB + 3, codebook_size=1024, clip_dim=768, vocab_size=300)
    cfg = CaptionerStageConfig(model=wrong, train=TrainConfig(output_dir=str(tmp_path / "run")))
    cfg.data.train_manifests, cfg.data.train_splits = [str(manifest)], ["development"]
    cfg.data.codec_stores, cfg.data.embed_stores = [str(dac)], [str(emb)]
    model = CaptionerTask(cfg).build_model()
    assert (model.config.n_codebooks, model.config.codebook_size, model.config.clip_dim) == (N_CB, K, DIM)
    model.save_pretrained(tmp_path / "ok")
    other = build_enclap(EnCLAPConfig.tiny(n_codebooks=N_CB, codebook_size=K, clip_dim=DIM + 1), captions=["a b"])
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(StoreError, match=r"built for \{'clip_dim': 9\}, the feature stores hold \{'clip_dim': 8\}"):
        CaptionerTask(dataclasses.replace(cfg, init=str(tmp_path / "other"))).build_model()
    CaptionerTask(dataclasses.replace(cfg, init=str(tmp_path / "ok"))).build_model()  # same sizes: fine


def test_training_rows_refuse_dcase_evaluation_data(tmp_path):
    from dcase.data.manifest import ManifestError, ManifestRow, load_captioned_rows, write_manifest

    rows = [
        ManifestRow(f"{s}.wav", str(tmp_path / f"{s}.wav"), s, "clotho", 1.0, 44100, ["a caption"])
        for s in ("development", "evaluation")
    ]
    rows.append(ManifestRow("ac.wav", str(tmp_path / "ac.wav"), "test", "audiocaps", 1.0, 32000, ["a caption"]))
    m = write_manifest(rows, tmp_path / "m.parquet") is not None and tmp_path / "m.parquet"
    with pytest.raises(ManifestError, match=r"clotho:evaluation \(1 clips\).*data.allow_leak=true"):
        load_captioned_rows([m])
    assert len(load_captioned_rows([m], ["development", "test"])) == 2  # AudioCaps test is not DCASE evaluation data
    assert len(load_captioned_rows([m], allow_leak=True)) == 3
