"""AudioCaps reader: grouping rows into clips, audio file patterns, unique clip ids, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from _datasets_util import write_csv, write_tone

from dcase.data.audiocaps import audiocaps_clip_id, read_audiocaps
from dcase.data.common import BadClips, DataError
from dcase.data.manifest import write_manifest

HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]


def _audiocaps(root: Path, prefix: str = "") -> Path:
    write_csv(
        root / "train.csv",
        HEADER,
        [
            ["1", "abc", "30", "a man speaks, then laughs"],
            ["2", "def", "0", "birds chirp"],
        ],
    )
    val = [[str(10 + k), "ghi", "10.0", f"val caption {k}"] for k in range(5)]
    val += [[str(20 + k), "jkl", "12.5", f"other caption {k}"] for k in range(5)]
    val = [val[i] for i in (0, 5, 1, 6, 2, 7, 3, 8, 4, 9)]  # interleaved on purpose
    write_csv(root / "val.csv", HEADER, val)
    for split, ids in (("train", ["abc", "def"]), ("val", ["ghi", "jkl"])):
        for i, yid in enumerate(ids):
            write_tone(root / "audio" / split / f"{prefix}{yid}.wav", seconds=0.1 + 0.1 * i, sr=16000)
    return root


@pytest.mark.parametrize("prefix", ["", "Y"])
def test_grouping_and_both_default_patterns(tmp_path: Path, prefix: str) -> None:
    root = _audiocaps(tmp_path / "ac", prefix)
    rows = read_audiocaps(root)
    assert [r.clip_id for r in rows] == [
        "audiocaps/abc_30",
        "audiocaps/def_0",
        "audiocaps/ghi_10",
        "audiocaps/jkl_12.5",
    ]
    assert [r.split for r in rows] == ["train", "train", "val", "val"]
    assert rows[0].captions == ["a man speaks, then laughs"]
    assert rows[2].captions == [f"val caption {k}" for k in range(5)]
    assert rows[3].captions == [f"other caption {k}" for k in range(5)]
    assert Path(rows[2].audio_path).name == f"{prefix}ghi.wav"
    assert rows[3].duration_s == pytest.approx(0.2) and rows[3].sample_rate == 16000
    assert all(r.source == "audiocaps" for r in rows)
    write_manifest(rows, tmp_path / "m.parquet")


def test_custom_pattern_and_flat_audio_dir(tmp_path: Path) -> None:
    root = tmp_path / "ac"
    write_csv(root / "test.csv", HEADER, [[str(k), "xyz", "40", f"c{k}"] for k in range(5)])
    write_tone(root / "test" / "xyz_40.flac", seconds=0.1, fmt="FLAC")
    rows = read_audiocaps(root, ["test"], audio_pattern="{youtube_id}_{start_time}.flac")
    assert len(rows) == 1 and rows[0].clip_id == "audiocaps/xyz_40" and len(rows[0].captions) == 5
    with pytest.raises(DataError, match=r"xyz.wav: audio file not found .*'Yxyz.wav'.*test.csv row 1"):
        read_audiocaps(root, ["test"])
    with pytest.raises(DataError, match="audio pattern"):
        read_audiocaps(root, ["test"], audio_pattern="{video}.wav")


def test_clip_id_normalises_start() -> None:
    assert audiocaps_clip_id("a", "30.0") == audiocaps_clip_id("a", "30") == "audiocaps/a_30"
    with pytest.raises(ValueError):
        audiocaps_clip_id("a", "soon")


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda r: r.__setitem__(1, [r[1][0], "def", "0", " "]), r"train.csv: row 2: column 'caption' is empty"),
        (lambda r: r.append(["1", "zzz", "0", "dup"]), r"train.csv: row 3: duplicate audiocap_id '1'"),
        (lambda r: r.__setitem__(0, ["1", "abc", "later", "x"]), r"train.csv: row 1: column 'start_time'"),
        (lambda r: r.append(["9", "nofile", "0", "x"]), r"nofile.wav: audio file not found"),
    ],
)
def test_bad_rows(tmp_path: Path, edit, pattern: str) -> None:
    root = _audiocaps(tmp_path / "ac")
    rows = [["1", "abc", "30", "a man speaks"], ["2", "def", "0", "birds chirp"]]
    edit(rows)
    write_csv(root / "train.csv", HEADER, rows)
    with pytest.raises(DataError, match=pattern):
        read_audiocaps(root, ["train"])
    bad = BadClips(skip_bad=True)
    kept = read_audiocaps(root, ["train"], bad=bad)
    assert len(bad) == 1 and len(kept) >= 1


def test_columns_and_shared_audio(tmp_path: Path) -> None:
    root = _audiocaps(tmp_path / "ac")
    write_csv(root / "train.csv", ["audiocap_id", "youtube_id", "caption"], [["1", "abc", "x"]])
    with pytest.raises(DataError, match=r"train.csv: missing columns \['start_time'\]"):
        read_audiocaps(root, ["train"])
    write_csv(root / "train.csv", HEADER, [["1", "abc", "30", "x"], ["2", "abc", "40", "y"]])
    with pytest.raises(DataError, match=r"abc.wav: audio file already used by clip 'audiocaps/abc_30'"):
        read_audiocaps(root, ["train"])
