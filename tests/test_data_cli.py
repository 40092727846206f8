"""`dcase data` commands end to end: synth -> manifest -> stats; overwrite refusal; --skip-bad report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from _datasets_util import write_nan_wav
from typer.testing import CliRunner

from dcase.cli import app
from dcase.data.manifest import read_manifest

runner = CliRunner()


def test_synth_manifest_stats(tmp_path: Path) -> None:
    corpus = tmp_path / "synth"
    r = runner.invoke(
        app,
        [
            "data",
            "synth",
            "--out",
            str(corpus),
            "--clips",
            "6",
            "--seed",
            "1",
            "--test-clips",
            "1",
            "--retrieval-clips",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "synth", "--out", str(corpus), "--clips", "6"])
    assert r.exit_code == 2 and "--overwrite" in r.output

    out = tmp_path / "m" / "clotho.parquet"
    r = runner.invoke(
        app,
        [
            "data",
            "manifest",
            "--source",
            "clotho",
            "--root",
            str(corpus),
            "--out",
            str(out),
            "--splits",
            "development,evaluation",
            "--splits",
            "retrieval_audio",
        ],
    )
    assert r.exit_code == 0, r.output
    df = read_manifest(out)
    assert df.groupby("split").size().to_dict() == {"development": 4, "evaluation": 1, "retrieval_audio": 2}
    assert "wrote" in r.output and "7 clips" in r.output

    r = runner.invoke(app, ["data", "manifest", "--source", "clotho", "--root", str(corpus), "--out", str(out)])
    assert r.exit_code == 2 and "exists; pass --overwrite" in r.output

    mix = tmp_path / "m" / "mixup.parquet"
    r = runner.invoke(
        app,
        [
            "data",
            "manifest",
            "--source",
            "clotho-mixup",
            "--root",
            str(corpus / "clotho_chatgpt_mixup.json"),
            "--clotho-root",
            str(corpus),
            "--out",
            str(mix),
            "--seed",
            "5",
        ],
    )
    assert r.exit_code == 0, r.output
    assert len(read_manifest(mix)) == 1  # max(1, n_dev // 4) pairs

    r = runner.invoke(app, ["data", "stats", str(out), str(mix)])
    assert r.exit_code == 0, r.output
    assert "development" in r.output and "clotho_mixup" in r.output
    total = [line for line in r.output.splitlines() if "total" in line][0]
    n_caps = int(df["captions"].map(len).sum()) + int(read_manifest(mix)["captions"].map(len).sum())
    assert f" {len(df) + 1} " in total and f" {n_caps} " in total


def test_skip_bad_reported(tmp_path: Path) -> None:
    corpus = tmp_path / "synth"
    assert runner.invoke(app, ["data", "synth", "--out", str(corpus), "--clips", "6", "--no-mixup"]).exit_code == 0
    victim = sorted((corpus / "clotho_audio_files" / "development").glob("*.wav"))[1]
    write_nan_wav(victim)
    out = tmp_path / "clotho.parquet"
    r = runner.invoke(
        app,
        ["data", "manifest", "--source", "clotho", "--root", str(corpus), "--out", str(out), "--splits", "development"],
    )
    assert r.exit_code == 2 and victim.name in r.output and "NaN" in r.output and "--skip-bad" in r.output
    assert not out.exists()
    r = runner.invoke(
        app,
        [
            "data",
            "manifest",
            "--source",
            "clotho",
            "--root",
            str(corpus),
            "--out",
            str(out),
            "--splits",
            "development",
            "--skip-bad",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "left out 1 clip(s)" in r.output
    report = pd.read_csv(tmp_path / "clotho.skipped.csv", dtype=str)
    assert report["clip"].tolist() == [victim.name] and "NaN" in report.loc[0, "reason"]
    assert len(read_manifest(out)) == 3
    # header-only mode does not decode, so the NaN file passes
    r = runner.invoke(
        app,
        [
            "data",
            "manifest",
            "--source",
            "clotho",
            "--root",
            str(corpus),
            "--out",
            str(out),
            "--splits",
            "development",
            "--no-decode-check",
            "--overwrite",
        ],
    )
    assert r.exit_code == 0 and len(read_manifest(out)) == 4
    r = runner.invoke(
        app,
        [
            "data",
            "manifest",
            "--source",
            "wavcaps",
            "--root",
            str(corpus),
            "--out",
            str(tmp_path / "w.parquet"),
            "--splits",
            "train",
        ],
    )
    assert r.exit_code == 2 and "WavCaps has no splits" in r.output
