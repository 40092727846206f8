"""End to end: the real ``dcase demo`` command (a synthetic corpus, then the tiny pipeline) on a small corpus, then a
rerun that must resume (skip every step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SMALL = ["--set", "clips=40", "--set", "profile_overrides=[generation.sampling.num_candidates=4]"]


def _run(out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dcase.cli", "demo", "--out", str(out), *SMALL],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )


def test_demo_is_the_tiny_pipeline_on_a_synthetic_corpus_and_resumes(tmp_path: Path) -> None:
    from dcase.submission.formats import validate_task6

    out = tmp_path / "demo"
    first = _run(out)
    assert first.returncode == 0, first.stderr[-3000:]
    # the corpus sits in the layouts the pipeline reads; the run is a pipeline run of the tiny profile
    assert (out / "data" / "CLOTHO_v2.1" / "clotho_captions_development.csv").is_file()
    assert (out / "data" / "Clotho-ChatGPT-Mixup" / "clotho_development_chatgpt_mixups.json").is_file()
    profile = (out / "run" / "pipeline" / "profile.yaml").read_text()
    assert "name: tiny" in profile
    done = {p.stem for p in (out / "run" / "pipeline" / "done").glob("*.json")}
    assert {"captioner__pretrain", "soups__soup", "rerank__tune", "package"} <= done
    # scores.json: every Task 6 / Task 8 system's development-testing scores (null + reason where unavailable)
    scores = json.loads((out / "scores.json").read_text())
    assert sorted(scores["task6"]) == ["task6_1", "task6_2", "task6_3", "task6_4"]
    for s in scores["task6"].values():
        assert isinstance(s["cider_d"], float) and isinstance(s["meteor"], float)
        assert s["spice"] is not None or s["missing"]["spice"]
        assert s["fluency_filter"] == "off"
    assert 0.0 <= scores["task8"]["task8_1"]["scores"]["map_at_10"] <= 1.0
    assert set(scores["task8_eval_audio"]) == {"task8_1", "task8_2"}  # scored with the synthetic ground truth
    assert (out / "decoding_comparison.png").stat().st_size > 1000
    # the best system is left ready to use, and its Task 6 CSV is valid
    system = json.loads((out / "system" / "system.json").read_text())
    assert system["format"] == "dcase-system" and system["task"] == 6
    best = scores["system"]["task6_system"]
    rec = json.loads((out / "run" / "systems" / f"task6_{best}" / "outputs.json").read_text())
    validate_task6(out / "run" / "systems" / f"task6_{best}" / rec["csv"], rec["audio_dir"])
    assert "Task 6 systems" in first.stdout and "Task 8" in first.stdout

    # a rerun resumes: every step is found done, nothing is retrained
    mtime = (out / "run" / "soups" / "soup" / "config.json").stat().st_mtime
    second = _run(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert ": done, skipping" in second.stderr and ": done in" not in second.stderr
    assert (out / "run" / "soups" / "soup" / "config.json").stat().st_mtime == mtime
