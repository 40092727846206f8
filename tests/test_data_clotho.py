"""Clotho v2.1 reader: official layout, exact caption round-trip, sniffed metadata, Task 8 files, bad input."""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
from _datasets_util import (
    CAPTION_HEADER,
    METADATA_HEADER,
    write_corrupt,
    write_csv,
    write_empty_wav,
    write_nan_wav,
    write_tone,
)

from dcase.data.clotho import read_clotho, read_clotho_metadata, read_retrieval_captions
from dcase.data.common import BadClips, DataError, TextEncodingError, report_path_for
from dcase.data.manifest import read_manifest, write_manifest
from dcase.data.sources import build_manifest

TRICKY = [
    "a dog barks, then a car passes by.",
    'someone says "hello" and a door creaks',
    "rain falls on a roof\nwhile thunder rumbles far away",
    "café ambience with naïve chatter — 日本語 too",
    "NA",
    "null",
    "  leading and trailing spaces are kept  ",
    'a comma, a quote " and a semicolon; all together',
]
DEV_FILES = ["Santa Motor.wav", "café noise ñ.wav", "01 birds, morning.wav"]


def _clotho(root: Path, layout: str = "official") -> Path:
    """A tiny Clotho v2.1 folder: 3 development clips, 2 evaluation clips, test + Task 8 audio."""
    base = root / "clotho_audio_files" if layout == "official" else root
    caps = [TRICKY[0:5], TRICKY[3:8], ["x"] + TRICKY[5:8] + ["y"]]
    for i, name in enumerate(DEV_FILES):
        write_tone(base / "development" / name, seconds=0.2 + 0.05 * i, sr=44100)
    write_csv(
        root / "clotho_captions_development.csv",
        CAPTION_HEADER,
        [[n, *c] for n, c in zip(DEV_FILES, caps, strict=True)],
    )
    for name in ("eval a.wav", "eval b.wav"):
        write_tone(base / "evaluation" / name, seconds=0.3, sr=44100)
    write_csv(
        root / "clotho_captions_evaluation.csv",
        CAPTION_HEADER,
        [["eval a.wav", "a", "b", "c", "d", "e"], ["eval b.wav", "f", "g", "h", "i", "j"]],
    )
    # official metadata files are sometimes ';'-delimited and cp1252-encoded
    write_csv(
        root / "clotho_metadata_development.csv",
        METADATA_HEADER,
        [[n, "k1 k2", str(i), "https://freesound.org/s/1", "[0, 10]", "Zoë", "CC0"] for i, n in enumerate(DEV_FILES)],
        delimiter=";",
        encoding="cp1252",
    )
    for name in ("test 1.wav", "test 2.wav"):
        write_tone(base / "test" / name, seconds=0.15, sr=44100)
    for name in ("r1.wav", "r2.wav", "r3.wav"):
        write_tone(root / "test_retrieval_audio" / name, seconds=0.1, sr=44100)
    write_csv(
        root / "retrieval_captions.csv",
        ["caption"],
        [["zebra query, first"], ['apple "query" second'], ["mango query third"]],
    )
    return root


def test_round_trip_exact_captions(tmp_path: Path) -> None:
    root = _clotho(tmp_path / "clotho")
    rows = read_clotho(root, ["development"])
    assert [r.clip_id for r in rows] == DEV_FILES
    assert rows[0].captions == TRICKY[0:5]
    assert rows[1].captions == TRICKY[3:8]
    df = write_manifest(rows, tmp_path / "m.parquet")
    back = read_manifest(tmp_path / "m.parquet")
    assert back["captions"].tolist() == df["captions"].tolist()
    assert back.loc[1, "captions"][0] == "café ambience with naïve chatter — 日本語 too"
    assert back.loc[0, "captions"][2] == "rain falls on a roof\nwhile thunder rumbles far away"
    assert back.loc[0, "captions"][4] == "NA" and back.loc[1, "captions"][2] == "null"
    for r in rows:
        info = sf.info(r.audio_path)
        assert r.duration_s == pytest.approx(info.frames / info.samplerate, abs=0)
        assert r.sample_rate == 44100 and r.source == "clotho" and r.split == "development"
        assert Path(r.audio_path).is_absolute()


def test_all_splits_and_flat_layout(tmp_path: Path) -> None:
    official = read_clotho(_clotho(tmp_path / "a"))
    flat = read_clotho(_clotho(tmp_path / "b", layout="flat"))
    for rows in (official, flat):
        by_split = {s: [r.clip_id for r in rows if r.split == s] for s in {r.split for r in rows}}
        assert by_split == {
            "development": DEV_FILES,
            "evaluation": ["eval a.wav", "eval b.wav"],
            "test": ["test 1.wav", "test 2.wav"],
            "retrieval_audio": ["r1.wav", "r2.wav", "r3.wav"],
        }
        assert all(r.captions == [] for r in rows if r.split in ("test", "retrieval_audio"))
        df = write_manifest(rows, tmp_path / "all.parquet")  # caption-less splits validate
        assert len(df) == 10
    assert [r.captions for r in official] == [r.captions for r in flat]


def test_retrieval_queries_keep_order(tmp_path: Path) -> None:
    root = _clotho(tmp_path / "c")
    expected = ["zebra query, first", 'apple "query" second', "mango query third"]
    assert read_retrieval_captions(root) == expected
    assert read_retrieval_captions(root / "retrieval_captions.csv") == expected
    write_csv(root / "retrieval_captions.csv", ["caption"], [["ok"], ["  "]])
    with pytest.raises(DataError, match=r"retrieval_captions.csv: row 2: column 'caption' is empty"):
        read_retrieval_captions(root)


def test_metadata_semicolon_utf8_and_non_utf8_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _clotho(tmp_path / "c")
    raw = (root / "clotho_metadata_development.csv").read_bytes()
    assert b";" in raw.split(b"\n")[0] and "Zoë".encode("cp1252") in raw
    # the official v2.1 metadata files are not UTF-8: no guessed encoding, an error naming line and byte offset
    offset = raw.index("Zoë".encode("cp1252")) + 2
    line = raw.count(b"\n", 0, offset) + 1
    with pytest.raises(
        TextEncodingError,
        match=rf"clotho_metadata_development.csv: not valid UTF-8: line {line}, "
        rf".*byte offset {offset} \(byte 0xeb\); re-save the file as UTF-8",
    ):
        read_clotho_metadata(root, "development")
    # metadata is informative only: building the manifest skips it with a warning
    with caplog.at_level("WARNING"):
        assert len(read_clotho(root, ["development"], decode_check=False)) == 3
    assert "ignoring unreadable metadata" in caplog.text and "not valid UTF-8" in caplog.text
    write_csv(
        root / "clotho_metadata_development.csv",
        METADATA_HEADER,
        [[n, "k1 k2", str(i), "https://freesound.org/s/1", "[0, 10]", "Zoë", "CC0"] for i, n in enumerate(DEV_FILES)],
        delimiter=";",
    )
    meta = read_clotho_metadata(root, "development")
    assert list(meta.columns) == METADATA_HEADER
    assert meta["manufacturer"].tolist() == ["Zoë"] * 3
    assert meta["file_name"].tolist() == DEV_FILES
    assert read_clotho_metadata(root, "validation") is None
    # a broken metadata file raises when read directly, but only warns when building the manifest
    (root / "clotho_metadata_development.csv").write_text("file_name,keywords\nx.wav,a,b,c\n")
    with pytest.raises(DataError, match="clotho_metadata_development.csv: not a readable CSV"):
        read_clotho_metadata(root, "development")
    assert len(read_clotho(root, ["development"], decode_check=False)) == 3


def test_unknown_and_missing_splits(tmp_path: Path) -> None:
    root = _clotho(tmp_path / "c")
    with pytest.raises(DataError, match="unknown Clotho split"):
        read_clotho(root, ["train"])
    with pytest.raises(DataError, match="split 'validation' not found"):
        read_clotho(root, ["validation"])
    (root / "clotho_captions_evaluation.csv").unlink()
    with pytest.raises(DataError, match="clotho_captions_evaluation.csv not found"):
        read_clotho(root, ["evaluation"])


def _dev_csv(root: Path) -> Path:
    return root / "clotho_captions_development.csv"


@pytest.mark.parametrize(
    "breakage, pattern",
    [
        (
            "missing_audio",
            r"café noise ñ.wav: audio file not found \(listed in clotho_captions_development.csv row 2\)",
        ),
        ("corrupt_audio", r"Santa Motor.wav: unreadable audio"),
        ("nan_audio", r"Santa Motor.wav: audio contains NaN or inf"),
        ("empty_audio", r"Santa Motor.wav: empty audio"),
        ("duplicate", r"clotho_captions_development.csv: row 4: duplicate file_name \(first listed at row 1\)"),
        ("empty_caption", r"clotho_captions_development.csv: row 3: empty caption in column\(s\) \['caption_4'\]"),
        ("missing_column", r"clotho_captions_development.csv: missing columns \['caption_5'\]"),
        ("extra_column", r"clotho_captions_development.csv: missing columns \[\], unexpected columns \['notes'\]"),
        (
            "ragged_row",
            r"clotho_captions_development.csv: not a readable CSV: row 4 \(line 6\) has 8 fields, the "
            r"header has 6",
        ),
        ("short_row", r"clotho_captions_development.csv: not a readable CSV: row 4 \(line 6\) has 5 fields"),
    ],
)
def test_bad_input_names_file_row_field(tmp_path: Path, breakage: str, pattern: str) -> None:
    root = _clotho(tmp_path / "c")
    dev = root / "clotho_audio_files" / "development"
    rows = pd.read_csv(_dev_csv(root), dtype=str, keep_default_na=False).values.tolist()
    if breakage == "missing_audio":
        (dev / DEV_FILES[1]).unlink()
    elif breakage == "corrupt_audio":
        write_corrupt(dev / DEV_FILES[0])
    elif breakage == "nan_audio":
        write_nan_wav(dev / DEV_FILES[0])
    elif breakage == "empty_audio":
        write_empty_wav(dev / DEV_FILES[0])
    elif breakage == "duplicate":
        write_csv(_dev_csv(root), CAPTION_HEADER, rows + [rows[0]])
    elif breakage == "empty_caption":
        rows[2][4] = "   "
        write_csv(_dev_csv(root), CAPTION_HEADER, rows)
    elif breakage == "missing_column":
        write_csv(_dev_csv(root), CAPTION_HEADER[:-1], [r[:-1] for r in rows])
    elif breakage == "extra_column":
        write_csv(_dev_csv(root), CAPTION_HEADER + ["notes"], [r + ["n"] for r in rows])
    elif breakage == "ragged_row":
        text = _dev_csv(root).read_text(encoding="utf-8")
        _dev_csv(root).write_text(text + "extra.wav,a,b,c,d,e,f,g\n", encoding="utf-8")
    elif breakage == "short_row":
        text = _dev_csv(root).read_text(encoding="utf-8")
        _dev_csv(root).write_text(text + "extra.wav,a,b,c,d\n", encoding="utf-8")
    with pytest.raises(DataError, match=pattern):
        read_clotho(root, ["development"])


def test_skip_bad_writes_report(tmp_path: Path) -> None:
    root = _clotho(tmp_path / "c")
    dev = root / "clotho_audio_files" / "development"
    write_nan_wav(dev / DEV_FILES[0])
    (dev / DEV_FILES[1]).unlink()
    out = tmp_path / "out" / "clotho.parquet"
    res = build_manifest("clotho", root, out, splits=["development", "evaluation"], skip_bad=True)
    assert res.frame["clip_id"].tolist() == [DEV_FILES[2], "eval a.wav", "eval b.wav"]
    assert res.report_path == report_path_for(out) == out.parent / "clotho.skipped.csv"
    report = pd.read_csv(res.report_path, dtype=str, keep_default_na=False)
    assert list(report.columns) == ["clip", "file", "reason"]
    assert sorted(report["clip"]) == sorted(DEV_FILES[:2])
    reasons = dict(zip(report["clip"], report["reason"], strict=True))
    assert "NaN" in reasons[DEV_FILES[0]] and "not found" in reasons[DEV_FILES[1]]
    # refuses to overwrite; with overwrite and no bad clips, the stale report goes away
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_manifest("clotho", root, out, splits=["evaluation"])
    res2 = build_manifest("clotho", root, out, splits=["evaluation"], overwrite=True)
    assert res2.report_path is None and not report_path_for(out).exists()


def test_duplicate_file_name_across_splits(tmp_path: Path) -> None:
    root = _clotho(tmp_path / "c")
    write_tone(root / "clotho_audio_files" / "test" / "eval a.wav", seconds=0.1, sr=44100)
    with pytest.raises(DataError, match=r"test/eval a.wav: duplicate file name: also in split 'evaluation'"):
        read_clotho(root, ["evaluation", "test"])


def test_no_decode_check_trusts_header(tmp_path: Path) -> None:
    root = _clotho(tmp_path / "c")
    write_nan_wav(root / "clotho_audio_files" / "development" / DEV_FILES[0], sr=8000)
    rows = read_clotho(root, ["development"], decode_check=False)
    assert rows[0].duration_s == pytest.approx(800 / 8000) and rows[0].sample_rate == 8000
    bad = BadClips(skip_bad=True)
    assert len(read_clotho(root, ["development"], bad=bad)) == 2 and len(bad) == 1


def test_clotho_mini_real_clips(tmp_path: Path, clotho_mini: Path) -> None:
    root = tmp_path / "clotho"
    ev = root / "clotho_audio_files" / "evaluation"
    ev.mkdir(parents=True)
    for f in sorted((clotho_mini / "audio").glob("*.wav")):
        os.symlink(f, ev / f.name)
    shutil.copy(clotho_mini / "clotho_captions_mini.csv", root / "clotho_captions_evaluation.csv")
    res = build_manifest("clotho", root, tmp_path / "mini.parquet")
    df = read_manifest(tmp_path / "mini.parquet")
    assert len(df) == len(res.frame) == 12
    assert set(df["split"]) == {"evaluation"}
    assert (df["sample_rate"] == 44100).all()
    for row in df.itertuples():
        info = sf.info(row.audio_path)
        assert row.duration_s == info.frames / info.samplerate
        assert 15.0 <= row.duration_s <= 30.0
        assert len(row.captions) == 5
    ref = pd.read_csv(clotho_mini / "clotho_captions_mini.csv", dtype=str, keep_default_na=False)
    assert (
        df.set_index("clip_id").loc["Santa Motor.wav", "captions"]
        == ref.set_index("file_name").loc["Santa Motor.wav"].tolist()
    )


def test_threaded_probing_matches_serial(tmp_path: Path) -> None:
    root = _clotho(tmp_path / "c")
    serial = read_clotho(root)
    assert read_clotho(root, workers=3) == serial
    write_corrupt(root / "clotho_audio_files" / "evaluation" / "eval a.wav")
    with pytest.raises(DataError, match="eval a.wav: unreadable audio"):
        read_clotho(root, workers=3)
    bad = BadClips(skip_bad=True)
    rows = read_clotho(root, workers=3, bad=bad)
    assert [b.clip for b in bad.items] == ["eval a.wav"]
    assert rows == [r for r in serial if r.clip_id != "eval a.wav"]


def test_crlf_bom_captions_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "c"
    write_tone(root / "clotho_audio_files" / "validation" / "v.wav", seconds=0.1, sr=44100)
    caps = ["line one\nline two", "a, b", 'say "x"', "über", "end "]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows([CAPTION_HEADER, ["v.wav", *caps]])
    (root / "clotho_captions_validation.csv").write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))
    assert read_clotho(root, ["validation"])[0].captions == caps
