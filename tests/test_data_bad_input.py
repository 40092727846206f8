"""Bad input in the dataset readers (issue 13's data parts), one parametrised test per class:
confinement (paths read from dataset files stay inside their declared root), encoding (UTF-8 with an optional
BOM, nothing guessed), and --skip-bad (every clip left out gets a report line)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _datasets_util import (
    AUDIOCAPS_HEADER,
    AUDIOCAPS_ROWS,
    CAPTION_HEADER,
    MINI_DEV,
    MINI_EVAL,
    make_audiocaps,
    make_clotho,
    make_mixup,
    make_wavcaps,
    write_csv,
    write_tone,
)

from dcase.data.audiocaps import read_audiocaps
from dcase.data.clotho import read_clotho, read_clotho_captions, read_retrieval_captions
from dcase.data.common import BadClips, DataError, TextEncodingError, read_table, resolve_inside
from dcase.data.manifest import read_manifest
from dcase.data.mixup import read_clotho_mixup
from dcase.data.sources import build_manifest
from dcase.data.wavcaps import read_exclude_ids, read_wavcaps

# --- confinement ----------------------------------------------------------------------------------------------


def _outside(tmp: Path) -> Path:
    """A real audio file outside every dataset root: a reader must never pick it up."""
    return write_tone(tmp / "outside" / "evil.flac", seconds=0.05, sr=32000, fmt="FLAC")


def _wavcaps_evil_id(tmp: Path) -> tuple[Callable[[BadClips], list], str, str]:
    root = make_wavcaps(tmp / "WavCaps")
    _outside(tmp)
    sb = root / "json_files" / "SoundBible" / "sb_final.json"
    doc = json.loads(sb.read_text())
    doc["data"].append({"id": "../../outside/evil", "caption": "evil", "duration": 5.0})
    sb.write_text(json.dumps(doc))
    read = lambda bad: read_wavcaps(root, freesound_policy="all", bad=bad)[0]  # noqa: E731
    return read, r"sb_final.json: entry 2: field 'id' '../../outside/evil' is not a plain file name", "<entry 2>"


def _wavcaps_evil_pattern(tmp: Path) -> tuple[Callable[[BadClips], list], str, str]:
    root = make_wavcaps(tmp / "WavCaps")
    _outside(tmp)
    read = lambda bad: read_wavcaps(  # noqa: E731
        root, freesound_policy="all", audio_pattern="../../outside/{id}.flac", bad=bad
    )[0]
    return read, r"audio pattern '../../outside/\{id\}.flac' with id .* points outside", "wavcaps/"


def _mixup_pair(name: str) -> Callable[[Path], tuple[Callable[[BadClips], list], str, str]]:
    def setup(tmp: Path) -> tuple[Callable[[BadClips], list], str, str]:
        clotho = make_clotho(tmp / "CLOTHO_v2.1")
        mix = make_mixup(tmp / "mix")
        path = mix / "clotho_development_chatgpt_mixups.json"
        doc = json.loads(path.read_text())
        evil = name.format(eval=clotho / "clotho_audio_files" / "evaluation" / MINI_EVAL[0])
        doc["dataset"][0]["audio_files"][1] = evil
        path.write_text(json.dumps(doc))
        read = lambda bad: read_clotho_mixup(mix, clotho, bad=bad)  # noqa: E731
        return (
            read,
            rf"pair 0: field 'audio_files' names '{evil}', which is not in the Clotho development",
            "clotho_mixup/000000",
        )

    return setup


def _clotho_csv_escape(tmp: Path) -> tuple[Callable[[BadClips], list], str, str]:
    root = make_clotho(tmp / "CLOTHO_v2.1", layout="hand")
    csv_path = root / "clotho_captions_development.csv"
    rows = pd.read_csv(csv_path, dtype=str, keep_default_na=False).values.tolist()
    rows[1][0] = f"../evaluation/{MINI_EVAL[0]}"
    write_csv(csv_path, CAPTION_HEADER, rows)
    read = lambda bad: read_clotho(root, ["development"], bad=bad)  # noqa: E731
    return read, r"clotho_captions_development.csv: row 2: column 'file_name' must name a file directly inside", "../"


def _audiocaps_escape(tmp: Path) -> tuple[Callable[[BadClips], list], str, str]:
    root = make_audiocaps(tmp / "AUDIOCAPS", layout="hand")
    _outside(tmp)
    rows = AUDIOCAPS_ROWS["train"] + [["3", "../../../outside/evil", "0", "evil"]]
    write_csv(root / "dataset" / "train.csv", AUDIOCAPS_HEADER, rows)
    write_tone(tmp / "outside" / "evil.wav", seconds=0.05)
    read = lambda bad: read_audiocaps(root, ["train"], bad=bad)  # noqa: E731
    return read, r"train.csv: row 3: the audio file name '../../../outside/evil.wav' .* points outside", "audiocaps/"


@pytest.mark.parametrize(
    "setup",
    [
        _wavcaps_evil_id,
        _wavcaps_evil_pattern,
        _mixup_pair("../evaluation/{eval.name}"),
        _mixup_pair("{eval}"),  # an absolute path to an evaluation clip
        _mixup_pair("clotho_audio_files/evaluation/{eval.name}"),
        _clotho_csv_escape,
        _audiocaps_escape,
    ],
    ids=["wavcaps-id", "wavcaps-pattern", "mixup-dotdot", "mixup-absolute", "mixup-other-split", "clotho", "audiocaps"],
)
def test_paths_stay_inside_their_root(tmp_path: Path, setup) -> None:
    read, pattern, clip = setup(tmp_path)
    with pytest.raises(DataError, match=pattern):
        read(BadClips())
    bad = BadClips(skip_bad=True)
    rows = read(bad)
    assert rows or "pattern" in pattern, "the good clips are still read"
    assert any(b.clip.startswith(clip) for b in bad.items)
    used = {r.audio_path for r in rows} | {p for r in rows for p in (r.mix_audio_paths or [])}
    assert not any("outside" in p or "/evaluation/" in p for p in used), used


def test_resolve_inside() -> None:
    root = Path("/data/WavCaps/Audio/SoundBible")
    assert resolve_inside(root, "1.flac") == root / "1.flac"
    assert resolve_inside(root, "sub/../1.flac") == root / "1.flac"
    for bad in ("../1.flac", "/etc/passwd", "", ".", "a/../../x", "x\x00.flac"):
        assert resolve_inside(root, bad) is None, bad


def test_mixup_accepts_development_subfolder_names(tmp_path: Path) -> None:
    clotho = make_clotho(tmp_path / "CLOTHO_v2.1")
    mix = make_mixup(tmp_path / "mix")
    path = mix / "clotho_development_chatgpt_mixups.json"
    doc = json.loads(path.read_text())
    doc["dataset"][0]["audio_files"] = [f"development/{MINI_DEV[0]}", f"clotho_audio_files/development/{MINI_DEV[1]}"]
    path.write_text(json.dumps(doc))
    rows = read_clotho_mixup(mix, clotho)
    assert rows[0].mix_clip_ids == MINI_DEV[:2]


# --- encoding -------------------------------------------------------------------------------------------------


def _cp1252_byte(path: Path, text: str, bom: bool = False) -> tuple[int, int]:
    """Write ``text`` as UTF-8 except that 'é' is one cp1252 byte; returns (line, byte offset) of that byte."""
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8").replace("é".encode(), b"\xe9")
    path.write_bytes(data)
    pos = data.index(b"\xe9")
    return data.count(b"\n", 0, pos) + 1, pos


def _column(path: Path, pos: int) -> int:
    data = path.read_bytes()
    return pos - (data.rfind(b"\n", 0, pos) + 1) + 1


@pytest.mark.parametrize(
    "case",
    [
        "clotho-captions-cp1252",
        "clotho-captions-cp1252-after-bom",
        "audiocaps-cp1252",
        "wavcaps-json-cp1252",
        "mixup-json-cp1252",
        "retrieval-captions-bom",
        "clotho-captions-bom",
        "exclusion-csv-bom",
        "mixup-json-bom",
    ],
)
def test_utf8_with_optional_bom_and_nothing_guessed(tmp_path: Path, case: str) -> None:
    if case.startswith("clotho-captions-cp1252"):
        root = make_clotho(tmp_path / "c", layout="hand")
        csv_path = root / "clotho_captions_development.csv"
        text = csv_path.read_text().replace("development 1 caption 3", "café noise")
        line, pos = _cp1252_byte(csv_path, text, bom=case.endswith("bom"))
        for bad in (BadClips(), BadClips(skip_bad=True)):  # a whole-file problem: --skip-bad cannot skip it
            with pytest.raises(TextEncodingError) as info:
                read_clotho(root, ["development"], bad=bad)
            assert str(info.value) == (
                f"{csv_path}: not valid UTF-8: line {line}, column {_column(csv_path, pos)}, byte offset {pos} "
                "(byte 0xe9); re-save the file as UTF-8 (it looks like another encoding, e.g. cp1252 or latin-1, "
                "which is never guessed)"
            )
    elif case == "audiocaps-cp1252":
        root = make_audiocaps(tmp_path / "a", layout="hand")
        csv_path = root / "dataset" / "val.csv"
        line, pos = _cp1252_byte(csv_path, csv_path.read_text().replace("val caption 2", "un café"))
        with pytest.raises(TextEncodingError, match=rf"val.csv: not valid UTF-8: line {line}, .*byte offset {pos}"):
            read_audiocaps(root, ["val"])
    elif case == "wavcaps-json-cp1252":
        root = make_wavcaps(tmp_path / "w")
        js = root / "json_files" / "BBC_Sound_Effects" / "bbc_final.json"
        line, pos = _cp1252_byte(js, js.read_text().replace("a car passes", "a café"))
        with pytest.raises(TextEncodingError, match=rf"bbc_final.json: not valid UTF-8: line 1, .*byte offset {pos}"):
            read_wavcaps(root, freesound_policy="all")
    elif case == "mixup-json-cp1252":
        clotho = make_clotho(tmp_path / "c")
        mix = make_mixup(tmp_path / "m")
        js = mix / "clotho_development_chatgpt_mixups.json"
        _line, pos = _cp1252_byte(js, js.read_text().replace("mix one b", "mix café"))
        with pytest.raises(TextEncodingError, match=rf"chatgpt_mixups.json: not valid UTF-8: .*byte offset {pos}"):
            read_clotho_mixup(mix, clotho)
    elif case == "retrieval-captions-bom":
        p = tmp_path / "retrieval_captions.csv"
        p.write_bytes(b'\xef\xbb\xbfcaption\r\nun caf\xc3\xa9\r\n"a, b"\r\n')
        assert read_retrieval_captions(p) == ["un café", "a, b"]
    elif case == "clotho-captions-bom":
        root = make_clotho(tmp_path / "c", layout="hand")
        csv_path = root / "clotho_captions_evaluation.csv"
        csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
        rows = read_clotho(root, ["evaluation"], decode_check=False)
        assert [r.clip_id for r in rows] == MINI_EVAL and "\ufeff" not in rows[0].captions[0]
    elif case == "exclusion-csv-bom":
        p = tmp_path / "ids.csv"
        p.write_bytes(b"\xef\xbb\xbfsound_id\n77\n")
        assert read_exclude_ids(p) == {"77"}
        assert list(read_table(p, required=("sound_id",)).columns) == ["sound_id"]
    else:
        clotho = make_clotho(tmp_path / "c")
        mix = make_mixup(tmp_path / "m")
        js = mix / "clotho_development_chatgpt_mixups.json"
        js.write_bytes(b"\xef\xbb\xbf" + js.read_bytes())
        assert len(read_clotho_mixup(mix, clotho, decode_check=False)) == 2


# --- --skip-bad ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    ["clotho-caption-csv", "clotho-unlisted-audio", "audiocaps-unlisted-audio", "wavcaps-missing-audio"],
)
def test_every_clip_left_out_has_a_report_line(tmp_path: Path, case: str) -> None:
    out = tmp_path / "out" / "m.parquet"
    report = out.with_name("m.skipped.csv")
    if case == "clotho-caption-csv":
        root = make_clotho(tmp_path / "c", layout="hand")
        csv_path = root / "clotho_captions_development.csv"
        rows = pd.read_csv(csv_path, dtype=str, keep_default_na=False).values.tolist()
        rows[1][3] = " "
        write_csv(csv_path, CAPTION_HEADER, rows)
        # an empty lenient collector used to be replaced by a strict one inside the caption reader
        assert [f for _r, f, _c in read_clotho_captions(csv_path, BadClips(skip_bad=True))] == [
            MINI_DEV[0],
            MINI_DEV[2],
        ]
        with pytest.raises(DataError, match=r"row 2: empty caption in column\(s\) \['caption_3'\]"):
            build_manifest("clotho", root, out, splits=["development"])
        res = build_manifest("clotho", root, out, splits=["development"], skip_bad=True)
        expected = {(MINI_DEV[1], str(csv_path), "row 2: empty caption in column(s) ['caption_3']")}
        n_rows = 2
    elif case == "clotho-unlisted-audio":
        root = make_clotho(tmp_path / "c")
        extra = write_tone(root / "clotho_audio_files" / "development" / "stray.wav", seconds=0.05, sr=44100)
        res = build_manifest("clotho", root, out, splits=["development"])  # strict: left out, but reported
        expected = {("stray.wav", str(extra), "audio file not listed in clotho_captions_development.csv; left out")}
        n_rows = 3
    elif case == "audiocaps-unlisted-audio":
        root = make_audiocaps(tmp_path / "a")
        extra = write_tone(root / "audio_32000Hz" / "train" / "stray_0.flac", seconds=0.05, sr=32000, fmt="FLAC")
        res = build_manifest("audiocaps", root, out, splits=["train"], skip_bad=True)
        expected = {("stray_0.flac", str(extra), "audio file not named by any row of train.csv; left out")}
        n_rows = 2
    else:
        root = make_wavcaps(tmp_path / "w")
        gone = root / "Audio" / "BBC_Sound_Effects" / "07070291.flac"
        gone.unlink()
        with pytest.raises(DataError, match="07070291.flac: audio file not found"):
            build_manifest("wavcaps", root, out, freesound_policy="all")
        res = build_manifest("wavcaps", root, out, freesound_policy="all", skip_bad=True)
        expected = {
            (
                "wavcaps/BBC_Sound_Effects/07070291",
                str(gone),
                "audio file not found (entry 0 of BBC_Sound_Effects/bbc_final.json)",
            )
        }
        n_rows = 2
    assert res.report_path == report and len(read_manifest(out)) == n_rows
    lines = pd.read_csv(report, dtype=str, keep_default_na=False)
    assert {tuple(r) for r in lines[["clip", "file", "reason"]].values.tolist()} == expected
    assert len(res.skipped) == len(expected)


def test_probe_audio_with_decode_check_reads_the_file_once(tmp_path, monkeypatch):
    """The decode gives the duration and the rate: no separate header read (sf.info) of the same file."""
    import soundfile as sf

    import dcase.data.audio as audio_mod
    from dcase.data.common import probe_audio

    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(8000, np.float32) + 0.1, 16000)
    assert probe_audio(wav, decode_check=False) == (0.5, 16000)

    def no_header_read(*a, **k):
        raise AssertionError("probe_audio read the header as well as decoding the file")

    monkeypatch.setattr(audio_mod.sf, "info", no_header_read)
    assert probe_audio(wav, decode_check=True) == (0.5, 16000)
