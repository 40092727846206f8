"""End to end: a tiny retriever (tiny CNext + tiny char-level BERT) trained with m-LTM through the shared
training loop beats chance by a wide margin on held-out synthetic clips, then ranks Task 8 style queries."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dcase.checkpoint import kind_of
from dcase.data.manifest import ManifestRow, write_manifest
from dcase.models.cnext import CNextConfig
from dcase.models.retriever import RetrieverConfig, TextTowerConfig
from dcase.stages.retriever import (
    RetrieverDataConfig,
    RetrieverStageConfig,
    evaluate_retrievers,
    rank_task8,
    train_retriever,
)
from dcase.training import TrainConfig

SR = 32000
CLASSES = {
    "low": ["a low hum", "a deep low hum", "low humming"],
    "high": ["a high whistle", "a shrill high whistle", "whistling high"],
    "noise": ["white noise hiss", "a loud hiss of noise", "hissing noise"],
    "clicks": ["rapid clicks", "a series of clicks", "clicking quickly"],
    "rise": ["a rising sweep", "a tone sweeping up", "rising pitch"],
    "beeps": ["short beeps", "beeping beeps", "a few beeps"],
}


def _render(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    if kind == "low":
        x = np.sin(2 * np.pi * rng.uniform(150, 250) * t)
    elif kind == "high":
        x = np.sin(2 * np.pi * rng.uniform(3000, 4000) * t)
    elif kind == "noise":
        x = rng.normal(size=n) * 0.5
    elif kind == "clicks":
        x = np.zeros(n)
        x[:: int(SR / rng.uniform(15, 25))] = 1.0
    elif kind == "rise":
        f = np.linspace(300, 3000, n)
        x = np.sin(2 * np.pi * np.cumsum(f) / SR)
    else:
        x = np.sin(2 * np.pi * 1000 * t) * ((t * 4) % 1 < 0.3)
    return (rng.uniform(0.3, 0.8) * x).astype(np.float32)


def make_corpus(root: Path, per_class_train: int = 8, per_class_test: int = 2) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for kind, caps in CLASSES.items():
        for i in range(per_class_train + per_class_test):
            split = "development" if i < per_class_train else "validation"
            n = int(SR * rng.uniform(0.8, 1.5))
            path = root / "audio" / f"{kind}_{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, _render(kind, rng, n), SR)
            rows.append(ManifestRow(path.name, str(path), split, "synth", n / SR, SR, list(caps)))
    return write_manifest(rows, root / "manifest.parquet") is not None and root / "manifest.parquet"


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and a busy host makes OpenMP spin-waits costly."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow  # over 5 s on 2 CPU cores
def test_tiny_retriever_learns_and_ranks_task8(tmp_path: Path, one_thread: None) -> None:
    manifest = make_corpus(tmp_path)
    cfg = RetrieverStageConfig(
        model=RetrieverConfig(
            audio=CNextConfig.tiny(),
            text=TextTowerConfig(name_or_path="tiny-bert"),
            joint_dim=32,
            mltm_epsilon=0.05,
            mltm_iters=50,
        ),
        data=RetrieverDataConfig(
            train_manifests=[str(manifest)],
            train_splits=["development"],
            val_manifest=str(manifest),
            val_split="validation",
            max_seconds=1.0,
            cache_audio=True,
        ),
        train=TrainConfig(
            output_dir=str(tmp_path / "run"),
            max_steps=40,
            batch_size=16,
            lr=3e-3,
            warmup_steps=5,
            eval_every=40,
            save_every=40,
            log_every=20,
            metric_for_best="map_at_10",
            greater_is_better=True,
        ),
    )
    best = train_retriever(cfg)
    assert kind_of(best) == "retriever" and kind_of(best.parents[1]) == "retriever"  # a run folder: its best
    import json

    recs = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "lr" in r]
    assert steps and all({"sinkhorn_iters", "sinkhorn_error", "sinkhorn_unconverged"} <= set(r) for r in steps)
    assert all(1 <= r["sinkhorn_iters"] <= 50 and 0 <= r["sinkhorn_unconverged"] <= 1 for r in steps)

    res = evaluate_retrievers([best], manifest, "validation")
    n_items = res["items"]
    chance = sum(1 / r for r in range(1, 11)) / n_items  # mAP@10 of a random ranking
    m = res["ensemble"]
    assert n_items == 12 and res["queries"] == 36
    assert m["map_at_10"] > 2.5 * chance, (m, chance)
    assert m["r_at_10"] > 0.95

    # Task 8 style ranking: a directory of audio and a captions CSV
    audio_dir = tmp_path / "audio"
    queries = ["a low hum", "rapid clicks", 'a "quoted", comma caption']
    cap_csv = tmp_path / "retrieval_captions.csv"
    with open(cap_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["caption"])
        w.writerows([[q] for q in queries])
    rows = rank_task8([best], audio_dir, cap_csv, cache_dir=tmp_path / "cache")
    assert [r[0] for r in rows] == queries
    names = {p.name for p in audio_dir.iterdir()}
    for _, files in rows:
        assert len(files) == 10 and len(set(files)) == 10 and set(files) <= names
    assert rows[0][1][0].startswith("low_") and rows[1][1][0].startswith("clicks_")
    assert any((tmp_path / "cache").iterdir())  # the index was persisted
    # ensemble of the same model twice ranks like the model alone; sinkhorn mode also gives valid rows
    assert rank_task8([best, best], audio_dir, cap_csv, cache_dir=tmp_path / "cache") == rows
    srows = rank_task8([best], audio_dir, cap_csv, mode="sinkhorn")
    assert all(len(set(f)) == 10 for _, f in srows)

    # the CLI: `dcase retriever eval` and `dcase submit task8` with a recipe (CSV validated by the official checker)
    from typer.testing import CliRunner

    from dcase.cli import app
    from dcase.submission.formats import validate_task8

    runner = CliRunner()
    res_json = tmp_path / "eval.json"
    r = runner.invoke(
        app,
        [
            "retriever",
            "eval",
            "-r",
            str(best),
            "--manifest",
            str(manifest),
            "--split",
            "validation",
            "--out",
            str(res_json),
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(res_json.read_text())["ensemble"]["map_at_10"] == m["map_at_10"]
    recipe = tmp_path / "task8.yaml"
    recipe.write_text(f"name: t\nroot: {best.parent}\nretrievers: [{best.name}, {best.name}]\nmode: cosine\n")
    out_csv = tmp_path / "t8.csv"
    args = [
        "submit",
        "task8",
        "--recipe",
        str(recipe),
        "--audio-dir",
        str(audio_dir),
        "--captions",
        str(cap_csv),
        "--out",
        str(out_csv),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    df = validate_task8(out_csv, references=cap_csv, audio_dir=audio_dir)
    assert df["caption"].tolist() == queries
    assert [list(row[1:]) for row in df.itertuples(index=False)] == [f for _, f in rows]
    r = runner.invoke(app, args)  # refuses to overwrite
    assert r.exit_code == 2 and "exists" in r.output
    recipe.write_text(f"name: t\nroot: {tmp_path}\nretrievers: [nope]\n")
    r = runner.invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 2 and "not found" in r.output
