"""End to end: the real ``dcase demo`` command on tiny settings, then a rerun that must resume (skip every step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dcase.submission.formats import validate_task6, validate_task8

pytestmark = pytest.mark.slow

TINY = [
    "--set",
    "clips=40",
    "--set",
    "num_candidates=4",
    "--set",
    "max_new_tokens=20",
    "--set",
    "retriever_config=demo/retriever_tiny.yaml",
    "--set",
    "retriever_overrides=[train.max_steps=8,train.eval_every=8,train.save_every=8]",
    "--set",
    "pretrain_overrides=[train.max_steps=60,train.eval_every=60,train.save_every=60]",
    "--set",
    "finetune_overrides=[train.max_steps=30,train.eval_every=30,train.save_every=30]",
]


def _run(out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dcase.cli", "demo", "--out", str(out), *TINY],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )


def test_demo_chain_end_to_end_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = _run(out)
    assert first.returncode == 0, first.stderr[-3000:]

    # every stage left its artefact
    for rel in (
        "manifest.parquet",
        "features/dac/index.json",
        "features/emb/index.json",
        "soup/config.json",
        "decode/single_sampled_reranked.parquet",
        "decode/soup_sampled_reranked.parquet",
        "decoding_comparison.png",
        "run/config.yaml",
        "run/run.json",
    ):
        assert (out / rel).exists(), rel

    # the submissions are valid in the official formats, one row per held-out clip / per query
    corpus = out / "corpus"
    eval_dir = corpus / "clotho_audio_files" / "evaluation"
    n_eval = len(list(eval_dir.glob("*.wav")))
    for k in (1, 2):
        csv = out / "submission" / f"Demo_Synth_task6_{k}.output.csv"
        validate_task6(csv, audio_dir=eval_dir)
        assert len(pd.read_csv(csv)) == n_eval
        assert (out / "submission" / f"Demo_Synth_task6_{k}.meta.yaml").is_file()
    t8 = out / "submission" / "Demo_Synth_task8_1.output.csv"
    validate_task8(t8, references=corpus / "retrieval_captions.csv", audio_dir=corpus / "test_retrieval_audio")
    assert len(list((out / "submission" / "package").rglob("*.output.csv"))) == 3

    # scores.json: real numbers for the computable metrics, null + a reason for the unavailable ones
    scores = json.loads((out / "scores.json").read_text())
    systems = scores["task6"]["systems"]
    assert set(systems) == {"untrained_greedy", "single_greedy", "single_sampled_reranked", "soup_sampled_reranked"}
    for s in systems.values():
        assert isinstance(s["scores"]["cider_d"], float)
        assert isinstance(s["scores"]["meteor"], float)
    spice = systems["single_greedy"]["scores"]
    if spice.get("spice") is None:
        assert "spice" in spice["missing"] and spice["missing"]["spice"]
    assert scores["fluency_filter"].startswith("off")
    t8s = scores["task8"]
    assert 0.0 <= t8s["metrics"]["map_at_10"] <= 1.0
    assert t8s["queries"] == 5 * n_eval
    assert "Task 6" in first.stdout and "Task 8" in first.stdout

    # the candidates table marks exactly one selected caption per clip, and it is what the Task 6 CSV holds
    cands = pd.read_parquet(out / "decode" / "single_sampled_reranked.parquet")
    sel = cands[cands["selected"]]
    assert sel["clip_id"].is_unique and len(sel) == n_eval
    sub = pd.read_csv(out / "submission" / "Demo_Synth_task6_1.output.csv", keep_default_na=False)
    assert dict(zip(sub["file_name"], sub["caption_predicted"], strict=True)) == dict(
        zip(sel["clip_id"], sel["text"], strict=True)
    )

    # a rerun resumes: every step is found done, nothing is retrained
    mtime = (out / "soup" / "config.json").stat().st_mtime
    second = _run(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already done, skipping" in second.stderr
    assert "retriever training (m-LTM) ..." not in second.stderr
    assert (out / "soup" / "config.json").stat().st_mtime == mtime
