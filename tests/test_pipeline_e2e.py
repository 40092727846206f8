"""The real path, as a team runs it: the 12 real Clotho clips arranged in the official layouts of every dataset
(``_official_layouts``), then ``dcase pipeline run --profile tiny --data-root D --out R`` with no edit in between.
The Task 6 and Task 8 CSVs, the meta YAMLs and the package zip must validate; a rerun must skip every step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest
import yaml
from _official_layouts import build_data_root


def _dcase(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "dcase.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.slow
def test_tiny_pipeline_on_real_clips_in_official_layouts(clotho_mini, tmp_path):
    from dcase.submission.formats import validate_task6, validate_task8
    from dcase.submission.meta import validate_meta

    data, run = tmp_path / "data", tmp_path / "run"
    names = build_data_root(clotho_mini, data)
    res = _dcase("pipeline", "run", "--profile", "tiny", "--data-root", str(data), "--out", str(run))
    assert res.returncode == 0, res.stderr[-4000:]

    clotho = data / "CLOTHO_v2.1"
    test_audio = clotho / "clotho_audio_files" / "test"
    retrieval_audio = clotho / "clotho_audio_files" / "test_retrieval_audio"
    queries = clotho / "clotho_csv_files" / "retrieval_captions.csv"
    outputs = {p.parent.name: json.loads(p.read_text()) for p in (run / "systems").glob("task*/outputs.json")}
    assert sorted(outputs) == ["task6_1", "task6_2", "task6_3", "task6_4", "task8_1", "task8_2"]
    for name, rec in outputs.items():
        folder = run / "systems" / name
        assert rec["label"] == f"Demo_dcase_{name}"
        if rec["task"] == 6:
            df = validate_task6(folder / rec["csv"], test_audio)
            assert sorted(df["file_name"]) == sorted(names["test"])
        else:
            df = validate_task8(folder / rec["csv"], queries, retrieval_audio)
            assert len(df) == len(names["retrieval"])
        meta = yaml.safe_load((folder / rec["meta"]).read_text())
        assert validate_meta(meta, rec["task"]) == rec["label"]
        desc = meta["system"]["description"]
        external = {d["name"] for d in meta["system"]["external_datasets"]}
        assert external == {"AudioCaps", "WavCaps"} | ({"Clotho-ChatGPT-Mixup"} if rec["task"] == 6 else set())
        assert meta["system"]["complexity"]["total_parameters"] > 0
        assert meta["results"]["development_testing"], "development-testing scores are filled from devtest/"
        if rec["task"] == 6:
            assert "4 codebooks x 64" in desc["acoustic_features"]  # the tiny codec that ran, not the recipe's text
            assert "(d_model 96, 2+2 layers)" in desc["machine_learning_method"]  # the captioner that ran
            assert desc["fluency_filter"] == "off" and "no fluency filter" in desc["reranking"]
            assert isinstance(meta["results"]["development_testing"]["cider_d"], float)
            assert (folder / "system" / "system.json").is_file()
        else:
            assert "map_at_10" in meta["results"]["development_testing"]

    package = json.loads((run / "submission" / "package.json").read_text())
    with zipfile.ZipFile(package["zip"]) as z:
        members = set(z.namelist())
    for rec in outputs.values():
        task = f"task{rec['task']}"
        assert f"{task}/{rec['label']}/{rec['label']}.output.csv" in members
        assert f"{task}/{rec['label']}/{rec['label']}.meta.yaml" in members

    # a rerun skips every step
    again = _dcase("pipeline", "run", "--profile", "tiny", "--data-root", str(data), "--out", str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[pipeline]" in again.stderr and ": done, skipping" in again.stderr
    assert not any(": done in" in line for line in again.stderr.splitlines())
    plan = _dcase("pipeline", "plan", "--profile", "tiny", "--data-root", str(data), "--out", str(run))
    states = [
        line.split("]")[0].split("[")[1].strip() for line in plan.stdout.splitlines() if line[:3] in ("  [", "- [")
    ]
    assert states and set(states) == {"done"}, plan.stdout
