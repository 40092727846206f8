"""WavCaps reader: official JSON layout, challenge filters and their counts, exclusion CSV variants, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _datasets_util import write_csv, write_tone
from typer.testing import CliRunner

from dcase.cli import app
from dcase.data.common import BadClips, DataError
from dcase.data.manifest import write_manifest
from dcase.data.wavcaps import read_exclude_ids, read_wavcaps

# (source dir, json name, [(id, duration, caption)])
SOURCES = {
    "FreeSound": ("fsd_final.json", [("180913", 5.0, "a bell rings"), ("77", 12.0, "water drips")]),
    "BBC_Sound_Effects": (
        "bbc_final.json",
        [("07070291", 20.0, "a car passes"), ("07070292", 45.0, "long wind"), ("07070293", 0.5, "short click")],
    ),
    "SoundBible": ("sb_final.json", [("0", 3.0, "a cat meows"), ("1", 30.0, "thunder"), ("2", 1.0, "a pop")]),
    "AudioSet_SL": ("as_final.json", [("Yb0RFKhbpFJA.wav", 10.0, "people talk"), ("Yzz.wav", 10.0, "a dog barks")]),
}


def _wavcaps(root: Path) -> tuple[Path, Path]:
    json_root, audio_root = root / "json_files", root / "audio"
    for src, (name, entries) in SOURCES.items():
        data = [
            {"id": i, "caption": c, "duration": d, "audio": "wav_path", "download_link": "x"} for i, d, c in entries
        ]
        (json_root / src).mkdir(parents=True, exist_ok=True)
        (json_root / src / name).write_text(json.dumps({"num_captions_per_audio": 1, "data": data}))
        for i, _, _ in entries:
            stem = i.removesuffix(".wav")
            write_tone(audio_root / src / f"{stem}.flac", seconds=0.05, fmt="FLAC")
    return json_root, audio_root


def _steps(report) -> list[tuple[str, int, int]]:
    return [(s.name, s.before, s.after) for s in report.steps]


def _exclusion(tmp_path: Path, ids: list[str], column: str = "sound_id") -> Path:
    return write_csv(tmp_path / "dcase2024_task6_excluded_freesound_ids.csv", [column], [[i] for i in ids])


def test_listed_ids_policy_and_counts(tmp_path: Path) -> None:
    """The DCASE list applies to the FreeSound source only: SoundBible clip '1' shares its id with the listed
    Freesound sound 1 but is a different sound, and is kept."""
    json_root, audio_root = _wavcaps(tmp_path / "wc")
    csv_path = _exclusion(tmp_path, ["77", "1", "999"])
    rows, report = read_wavcaps(json_root, audio_root, exclude_csv=csv_path)
    assert report.per_source == {"AudioSet_SL": 2, "BBC_Sound_Effects": 3, "SoundBible": 3, "FreeSound": 2}
    assert _steps(report) == [
        ("valid entries", 10, 10),
        (f"FreeSound policy 'listed_ids': drop FreeSound ids listed in {csv_path.name}", 10, 9),
        ("keep duration in [1, 30] s", 9, 7),
        ("audio found and readable", 7, 7),
    ]
    ids = [r.clip_id for r in rows]
    assert ids == [
        "wavcaps/AudioSet_SL/Yb0RFKhbpFJA",
        "wavcaps/AudioSet_SL/Yzz",
        "wavcaps/BBC_Sound_Effects/07070291",
        "wavcaps/SoundBible/0",
        "wavcaps/SoundBible/1",
        "wavcaps/SoundBible/2",
        "wavcaps/FreeSound/180913",
    ]
    assert rows[3].captions == ["a cat meows"] and all(r.split == "train" for r in rows)
    assert rows[0].audio_path.endswith("AudioSet_SL/Yb0RFKhbpFJA.flac")
    write_manifest(rows, tmp_path / "m.parquet")
    assert f"FreeSound policy 'listed_ids': drop FreeSound ids listed in {csv_path.name}: 10 -> 9 (removed 1)" in str(
        report
    )


@pytest.mark.parametrize(
    "policy, steps, n_rows, has_freesound",
    [
        (
            "all",
            [("FreeSound policy 'all': drop the FreeSound source", 10, 8), ("keep duration in [1, 30] s", 8, 6)],
            6,
            False,
        ),
        ("keep", [("keep duration in [1, 30] s", 10, 8)], 8, True),
    ],
)
def test_all_and_keep_policies(tmp_path: Path, policy: str, steps: list, n_rows: int, has_freesound: bool) -> None:
    json_root, audio_root = _wavcaps(tmp_path / "wc")
    rows, report = read_wavcaps(json_root, audio_root, freesound_policy=policy)
    assert _steps(report)[1:-1] == steps and len(rows) == n_rows
    assert any(r.clip_id.startswith("wavcaps/FreeSound/") for r in rows) == has_freesound
    # the whole FreeSound source is dropped whatever the list says; a list with 'keep' is a contradiction
    if policy == "all":
        rows2, _ = read_wavcaps(json_root, audio_root, freesound_policy="all", exclude_csv=_exclusion(tmp_path, ["0"]))
        assert [r.clip_id for r in rows2] == [r.clip_id for r in rows]
    else:
        with pytest.raises(DataError, match="policy 'keep' ignores the exclusion list"):
            read_wavcaps(json_root, audio_root, freesound_policy="keep", exclude_csv=_exclusion(tmp_path, ["0"]))


def test_listed_ids_needs_the_list(tmp_path: Path) -> None:
    json_root, audio_root = _wavcaps(tmp_path / "wc")
    with pytest.raises(DataError, match=r"2 FreeSound clips and no exclusion list: FreeSound policy 'listed_ids'"):
        read_wavcaps(json_root, audio_root)
    # without FreeSound entries there is nothing to filter, and no list is needed
    rows, report = read_wavcaps(json_root, audio_root, sources=["SoundBible"])
    assert len(rows) == 3 and [s.name for s in report.steps] == [
        "valid entries",
        "keep duration in [1, 30] s",
        "audio found and readable",
    ]
    with pytest.raises(DataError, match="unknown FreeSound policy 'some'"):
        read_wavcaps(json_root, audio_root, freesound_policy="some")  # type: ignore[arg-type]


@pytest.mark.parametrize("column", ["fsd_id", "id", "sound_id", "freesound"])
def test_exclude_csv_columns(tmp_path: Path, column: str) -> None:
    json_root, audio_root = _wavcaps(tmp_path / "wc")
    csv_path = write_csv(tmp_path / "excluded.csv", [column, "note"], [["1", "x"], ["180913", "y"], ["999", "z"]])
    assert read_exclude_ids(csv_path) == {"1", "180913", "999"}
    rows, report = read_wavcaps(json_root, audio_root, exclude_csv=csv_path)
    assert ("FreeSound policy 'listed_ids': drop FreeSound ids listed in excluded.csv", 10, 9) in _steps(report)
    ids = [r.clip_id for r in rows]
    assert "wavcaps/FreeSound/180913" not in ids and "wavcaps/SoundBible/1" in ids and "wavcaps/FreeSound/77" in ids


def test_headerless_exclude_csv_and_no_duration_filter(tmp_path: Path) -> None:
    json_root, audio_root = _wavcaps(tmp_path / "wc")
    p = tmp_path / "ids.csv"
    p.write_text("180913\n77\n")
    assert read_exclude_ids(p) == {"180913", "77"}
    rows, report = read_wavcaps(json_root, audio_root, freesound_policy="keep", duration_range=None)
    assert len(rows) == 10 and [s.name for s in report.steps] == ["valid entries", "audio found and readable"]
    rows, report = read_wavcaps(json_root, audio_root, exclude_csv=p, duration_range=None)
    assert len(rows) == 8 and not any(r.clip_id.startswith("wavcaps/FreeSound/") for r in rows)


def test_bad_entries_and_audio(tmp_path: Path) -> None:
    json_root, audio_root = _wavcaps(tmp_path / "wc")
    sb = json_root / "SoundBible" / "sb_final.json"
    doc = json.loads(sb.read_text())
    doc["data"][1]["caption"] = ""
    sb.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"sb_final.json: entry 1: field 'caption' is empty .*wavcaps/SoundBible/1"):
        read_wavcaps(json_root, audio_root, freesound_policy="all")
    doc["data"][1]["caption"] = "thunder"
    doc["data"][2]["id"] = "0"
    sb.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"entry 2: duplicate id '0' \(first at entry 0\)"):
        read_wavcaps(json_root, audio_root, freesound_policy="all")
    doc["data"][2]["id"] = "2"
    del doc["data"][0]["duration"]
    sb.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"entry 0: missing field\(s\) \['duration'\]"):
        read_wavcaps(json_root, audio_root, freesound_policy="all")
    bad = BadClips(skip_bad=True)
    (audio_root / "AudioSet_SL" / "Yzz.flac").unlink()
    rows, report = read_wavcaps(json_root, audio_root, bad=bad, freesound_policy="all")
    assert len(rows) == 4 and len(bad) == 2
    assert _steps(report)[0] == ("valid entries", 10, 9)
    assert _steps(report)[-1] == ("audio found and readable", 5, 4)
    assert any("Yzz.flac" in b.file and "audio file not found" in b.reason for b in bad.items)
    (json_root / "AudioSet_SL" / "as_final.json").write_text("{not json")
    with pytest.raises(DataError, match="as_final.json: not a readable WavCaps JSON"):
        read_wavcaps(json_root, audio_root, freesound_policy="all")


def test_cli_prints_filter_counts(tmp_path: Path) -> None:
    json_root, audio_root = _wavcaps(tmp_path / "wc")
    csv_path = write_csv(tmp_path / "excluded.csv", ["fsd_id"], [["77"], ["0"]])
    out = tmp_path / "wavcaps.parquet"
    args = ["data", "manifest", "--source", "wavcaps", "--root", str(json_root), "--audio-root", str(audio_root)]
    r = CliRunner().invoke(app, [*args, "--exclude-csv", str(csv_path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    for line in (
        "FreeSound policy 'listed_ids': drop FreeSound ids listed in excluded.csv: 10 -> 9 (removed 1)",
        "keep duration in [1, 30] s: 9 -> 7 (removed 2)",
        "audio found and readable: 7 -> 7 (removed 0)",
        "7 clips",
    ):
        assert line in r.output
    r = CliRunner().invoke(app, [*args, "--freesound-policy", "all", "--out", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert "FreeSound policy 'all': drop the FreeSound source: 10 -> 8 (removed 2)" in r.output
    assert "keep duration in [1, 30] s: 8 -> 6 (removed 2)" in r.output
    r = CliRunner().invoke(app, [*args, "--out", str(out), "--overwrite"])
    assert r.exit_code == 2 and "needs the DCASE CSV of excluded Freesound ids" in r.output
    r = CliRunner().invoke(app, [*args, "--freesound-policy", "none", "--out", str(out), "--overwrite"])
    assert r.exit_code == 2 and "unknown FreeSound policy 'none'" in r.output
    r = CliRunner().invoke(
        app,
        [
            "data",
            "manifest",
            "--source",
            "clotho",
            "--root",
            str(json_root),
            "--freesound-policy",
            "all",
            "--out",
            str(out),
            "--overwrite",
        ],
    )
    assert r.exit_code == 2 and "--freesound-policy do not apply" in r.output
