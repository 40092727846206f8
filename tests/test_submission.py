"""Task 6 / Task 8 submission files: round trips, validators, overwrite refusal, meta YAML, packaging."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import yaml
from typer.testing import CliRunner

from dcase.submission.formats import (
    TASK6_COLUMNS,
    TASK8_COLUMNS,
    SubmissionError,
    read_task6,
    read_task8,
    validate_task6,
    validate_task8,
    write_task6,
    write_task8,
)
from dcase.submission.meta import build_meta, write_meta
from dcase.submission.package import package_submission

TRICKY = [
    ("a.wav", 'a dog barks, then "woof" again'),
    ("b b.wav", "rain\non a roof"),
    ("c,d.wav", "café — naïve façade ünïcode ✓"),
    ("e.wav", "  leading and trailing spaces  "),
]


def _audio(d, names):
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        sf.write(d / n, np.zeros(160, dtype=np.float32), 16000)
    return d


AUTHOR = {
    "lastname": "Kim",
    "firstname": "Jaeyeon",
    "email": "jaeyeon@snu.ac.kr",
    "corresponding": True,
    "affiliation": {
        "abbreviation": "SNU",
        "institute": "Seoul National University",
        "department": "Electrical Engineering",
        "location": "Seoul, Korea",
    },
}


def _meta(task=6, index=1, abbreviation="EnCLAP-DC", **kw):
    recipe = {
        "lastname": "Kim", "institute": "SNU", "index": index, "name": "EnCLAP with DAC and CNext",
        "abbreviation": abbreviation, "data": ["Clotho", "AudioCaps"],
        "description": {"input_sampling_rate": 24000, "machine_learning_method": "encoder-decoder"},
        "total_parameters": 400_000_000, "authors": [AUTHOR], **kw,
    }  # fmt: skip
    return build_meta(recipe, task)


def test_task6_round_trip_tricky_captions(tmp_path):
    path = write_task6(TRICKY, tmp_path / "t6.csv")
    df = read_task6(path)
    assert tuple(df.columns) == TASK6_COLUMNS
    assert list(zip(df["file_name"], df["caption_predicted"], strict=True)) == TRICKY
    assert path.read_text(encoding="utf-8").splitlines()[0] == "file_name,caption_predicted"
    validate_task6(path, _audio(tmp_path / "audio", [n for n, _ in TRICKY]))
    import pandas as pd  # an independent CSV reader agrees

    other = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert other["caption_predicted"].tolist() == [c for _, c in TRICKY]


def test_task6_overwrite_refusal(tmp_path):
    path = write_task6(TRICKY, tmp_path / "t6.csv")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_task6(TRICKY[:1], path)
    assert path.read_bytes() == before
    write_task6(TRICKY[:1], path, overwrite=True)
    assert len(read_task6(path)) == 1


def test_task6_writer_rejects_bad_rows(tmp_path):
    with pytest.raises(SubmissionError, match=r"row 2 \(b.wav\): empty caption"):
        write_task6([("a.wav", "x"), ("b.wav", "  ")], tmp_path / "x.csv")
    with pytest.raises(SubmissionError, match="duplicate file_name 'a.wav'"):
        write_task6([("a.wav", "x"), ("a.wav", "y")], tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_task6_validator_rejections(tmp_path):
    audio = _audio(tmp_path / "audio", ["a.wav", "b.wav", "c.wav"])
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("file,caption\na.wav,x\n")
    with pytest.raises(SubmissionError, match="header"):
        validate_task6(bad_header)
    missing = tmp_path / "m.csv"
    missing.write_text("file_name,caption_predicted\na.wav,x\nb.wav,y\n")
    with pytest.raises(SubmissionError, match=r"1 audio clips have no row: \['c.wav'\]"):
        validate_task6(missing, audio)
    extra = tmp_path / "e.csv"
    extra.write_text("file_name,caption_predicted\na.wav,x\nb.wav,y\nc.wav,z\nd.wav,w\n")
    with pytest.raises(SubmissionError, match=r"absent from the audio folder: \['d.wav'\]"):
        validate_task6(extra, audio)
    dup = tmp_path / "d.csv"
    dup.write_text("file_name,caption_predicted\na.wav,x\na.wav,y\nc.wav,z\n")
    with pytest.raises(SubmissionError, match="duplicate file_name"):
        validate_task6(dup)
    empty = tmp_path / "empty.csv"
    empty.write_text('file_name,caption_predicted\na.wav,""\n')
    with pytest.raises(SubmissionError, match="empty caption"):
        validate_task6(empty)
    width = tmp_path / "w.csv"
    width.write_text("file_name,caption_predicted\na.wav,a dog, barking\n")
    with pytest.raises(SubmissionError, match="row 1: 3 fields"):
        validate_task6(width)


CLOTHO_HEADER = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"


def _t8_rows(queries, pool):
    return [(q, [pool[(i + j) % len(pool)] for j in range(10)]) for i, q in enumerate(queries)]


def test_task8_round_trip_and_validation(tmp_path):
    pool = [f"clip {i}, v2.wav" for i in range(12)]
    audio = _audio(tmp_path / "audio", pool)
    queries = ['a dog barks, "loud"', "rain\nfalls", 'a dog barks, "loud"']
    refs = tmp_path / "queries.csv"
    import pandas as pd

    pd.DataFrame({"caption": queries}).to_csv(refs, index=False)
    rows = _t8_rows(queries, pool)
    path = write_task8(rows, tmp_path / "t8.csv", audio_dir=audio, references=refs)
    df = validate_task8(path, references=refs, audio_dir=audio)
    assert tuple(df.columns) == TASK8_COLUMNS and len(TASK8_COLUMNS) == 11
    back = read_task8(path)
    assert [(r["caption"], [r[f"fname_{i}"] for i in range(1, 11)]) for r in back.to_dict("records")] == rows
    with pytest.raises(FileExistsError):
        write_task8(rows, path)


def test_task8_validator_rejections(tmp_path):
    pool = [f"c{i}.wav" for i in range(12)]
    audio = _audio(tmp_path / "audio", pool)
    with pytest.raises(SubmissionError, match="row 1: 9 file names"):
        write_task8([("q", pool[:9])], tmp_path / "x.csv")
    with pytest.raises(SubmissionError, match=r"row 1: duplicate file names \['c0.wav'\]"):
        write_task8([("q", ["c0.wav", *pool[:9]])], tmp_path / "x.csv")
    with pytest.raises(SubmissionError, match=r"not in the audio folder: \['zzz.wav'\]"):
        write_task8([("q", [*pool[:9], "zzz.wav"])], tmp_path / "x.csv", audio_dir=audio)
    refs = tmp_path / "refs.csv"
    refs.write_text(CLOTHO_HEADER + "c0.wav,q1,q2,q3,q4,q5\n")
    path = write_task8([("q1", pool[:10])], tmp_path / "one.csv")
    with pytest.raises(SubmissionError, match="1 rows for 5 queries"):
        validate_task8(path, references=refs)
    swapped = write_task8([("q2", pool[:10]), ("q1", pool[:10])], tmp_path / "two.csv")
    with pytest.raises(SubmissionError, match="order must match"):
        validate_task8(swapped, references=refs)
    header = tmp_path / "h.csv"
    header.write_text("caption," + ",".join(f"f{i}" for i in range(1, 11)) + "\n")
    with pytest.raises(SubmissionError, match="header"):
        validate_task8(header)
    nine = tmp_path / "nine.csv"
    nine.write_text(",".join(TASK8_COLUMNS) + "\nq1," + ",".join(pool[:9]) + "\n")
    with pytest.raises(SubmissionError, match="row 1: 10 fields, expected 11"):
        validate_task8(nine)


def test_meta_yaml(tmp_path):
    meta = _meta(6, 2, ensemble_num_systems=5)
    assert meta["submission"]["label"] == "Kim_SNU_task6_2"
    assert meta["system"]["description"]["ensemble_num_systems"] == 5
    assert meta["system"]["description"]["train_datasets"] == ["Clotho", "AudioCaps"]
    assert meta["system"]["complexity"]["total_parameters"] == 400_000_000
    path = write_meta(meta, tmp_path / "m.yaml")
    assert yaml.safe_load(path.read_text()) == meta
    with pytest.raises(FileExistsError):
        write_meta(meta, path)
    with pytest.raises(ValueError, match="abbreviation 'EnCLAP-DAC-CNext' has 16 characters"):
        _meta(abbreviation="EnCLAP-DAC-CNext")
    with pytest.raises(ValueError, match="invalid submission label"):
        _meta(index=5)
    with pytest.raises(ValueError, match="unknown meta keys"):
        _meta(colour="red")


def test_package(tmp_path):
    import zipfile

    from dcase.submission.package import PackageError

    audio = _audio(tmp_path / "audio", [n for n, _ in TRICKY])
    t6 = write_task6(TRICKY, tmp_path / "t6.csv")
    pool = [f"c{i}.wav" for i in range(10)]
    t8 = write_task8([("a query", pool)], tmp_path / "t8.csv")
    meta6 = write_meta(_meta(6, 1), tmp_path / "m6.yaml")
    report = tmp_path / "Kim_SNU_task6.technical_report.pdf"
    report.write_bytes(b"%PDF-1.4 a report")
    out = tmp_path / "pkg"
    res = package_submission(
        out, task6=[(t6, meta6)], task8=[(t8, _meta(8, 1))], audio_dir6=audio, technical_report=report
    )
    assert res.systems == ["Kim_SNU_task6_1", "Kim_SNU_task8_1"] and res.team == "Kim_SNU"
    assert (out / "task6/Kim_SNU_task6_1/Kim_SNU_task6_1.output.csv").read_bytes() == t6.read_bytes()
    assert (
        yaml.safe_load((out / "task8/Kim_SNU_task8_1/Kim_SNU_task8_1.meta.yaml").read_text())["submission"]["label"]
        == "Kim_SNU_task8_1"
    )
    assert (out / "task8/Kim_SNU_task8.technical_report.pdf").read_bytes() == report.read_bytes()
    with zipfile.ZipFile(res.zip) as z:
        assert sorted(z.namelist()) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        assert z.read("task6/Kim_SNU_task6_1/Kim_SNU_task6_1.output.csv") == t6.read_bytes()
    with pytest.raises(FileExistsError):
        package_submission(out, task6=[(t6, meta6)])
    package_submission(out, task6=[(t6, meta6)], overwrite=True)
    assert not (out / "task8").exists()  # replaced as a whole
    with pytest.raises(ValueError, match="task 6, expected task 8"):
        package_submission(tmp_path / "p2", task8=[(t8, meta6)])
    with pytest.raises(PackageError, match="used by two systems"):
        package_submission(tmp_path / "p3", task6=[(t6, meta6), (t6, meta6)])
    assert not (tmp_path / "p3").exists() and not (tmp_path / "p3.zip").exists()  # nothing written on failure
    # placeholders of the recipe templates are refused, every field named
    template = _meta(
        6,
        1,
        lastname="Lastname",
        institute="Institute",
        authors=[
            {
                "lastname": "Lastname",
                "firstname": "Firstname",
                "email": "first.last@example.org",
                "affiliation": {
                    "abbreviation": "Institute",
                    "institute": "Institute name",
                    "department": "Department",
                    "location": "City, Country",
                },
            }
        ],
    )
    with pytest.raises(PackageError) as e:
        package_submission(tmp_path / "p4", task6=[(t6, template)], audio_dir6=audio)
    for name in (
        "submission.lastname",
        "submission.institute",
        "authors[0].firstname",
        "authors[0].email",
        "authors[0].affiliation.department",
        "authors[0].affiliation.location",
    ):
        assert name in str(e.value)
    assert not (tmp_path / "p4").exists()
    # the technical report must be a PDF with the team's DCASE name
    wrong = tmp_path / "report.pdf"
    wrong.write_bytes(b"%PDF-1.4")
    with pytest.raises(PackageError, match="DCASE expects 'Kim_SNU_task6.technical_report.pdf'"):
        package_submission(tmp_path / "p5", task6=[(t6, meta6)], technical_report=wrong)
    fake = tmp_path / "Kim_SNU_task6.technical_report.pdf"
    fake.write_text("not a pdf")
    with pytest.raises(PackageError, match="not a PDF"):
        package_submission(tmp_path / "p6", task6=[(t6, meta6)], technical_report=fake)


def test_cli_validate_and_package(tmp_path):
    from dcase.cli import app

    runner = CliRunner()
    audio = _audio(tmp_path / "audio", [n for n, _ in TRICKY])
    t6 = write_task6(TRICKY, tmp_path / "t6.csv")
    res = runner.invoke(app, ["submit", "validate", "task6", str(t6), "--audio-dir", str(audio)])
    assert res.exit_code == 0 and "4 clips" in res.output
    res = runner.invoke(app, ["submit", "validate", "task6", str(t6), "--audio-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "absent from the audio folder" in res.output + (res.stderr if res.stderr_bytes is not None else "")
    t8 = write_task8([("q", [f"c{i}.wav" for i in range(10)])], tmp_path / "t8.csv")
    assert runner.invoke(app, ["submit", "validate", "task8", str(t8)]).exit_code == 0
    meta6 = write_meta(_meta(6, 1), tmp_path / "m6.yaml")
    res = runner.invoke(app, ["submit", "package", "--task6", f"{t6}:{meta6}", "--out", str(tmp_path / "pkg")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pkg/task6/Kim_SNU_task6_1/Kim_SNU_task6_1.meta.yaml").is_file()
    res = runner.invoke(app, ["submit", "package", "--task6", f"{t6}:{meta6}", "--out", str(tmp_path / "pkg")])
    assert res.exit_code == 2


def test_folder_rows_is_the_one_folder_scan(tmp_path):
    from dcase.data.manifest import folder_rows, validate
    from dcase.errors import MissingInputError

    d = tmp_path / "eval audio"
    d.mkdir()
    for name, seconds in (("b, 2.wav", 0.5), ("a.flac", 0.25)):
        sf.write(d / name, np.zeros(int(16000 * seconds), np.float32), 16000)
    (d / "notes.txt").write_text("x")
    (d / ".hidden.wav").write_bytes(b"")
    (d / "sub").mkdir()
    df = folder_rows(d, "evaluation")
    assert df["clip_id"].tolist() == ["a.flac", "b, 2.wav"]
    assert df["audio_path"].tolist() == [str((d / "a.flac").resolve()), str((d / "b, 2.wav").resolve())]
    assert df["duration_s"].tolist() == [0.25, 0.5] and df["sample_rate"].tolist() == [16000, 16000]
    assert (df["split"] == "evaluation").all() and (df["captions"].map(len) == 0).all()
    validate(df, allow_empty_captions=["evaluation"])
    with pytest.raises(MissingInputError, match="no audio files"):
        folder_rows(d / "sub", "evaluation")
    with pytest.raises(MissingInputError, match="does not exist"):
        folder_rows(tmp_path / "nope", "evaluation")
