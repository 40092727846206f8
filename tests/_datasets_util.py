"""Helpers for the dataset tests: tiny WAV/FLAC files and CSVs written by the tests themselves."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import soundfile as sf


def write_tone(
    path: Path, seconds: float = 0.25, sr: int = 16000, freq: float = 440.0, fmt: str = "WAV", subtype: str = "PCM_16"
) -> Path:
    """A sine of ``seconds`` at ``sr``; returns the path (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * sr))
    x = 0.3 * np.sin(2 * np.pi * freq * np.arange(n) / sr).astype(np.float32)
    sf.write(str(path), x, sr, format=fmt, subtype=subtype)
    return path


def write_nan_wav(path: Path, sr: int = 16000) -> Path:
    """A float WAV whose header is fine but whose samples contain NaN."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.zeros(800, dtype=np.float32)
    x[100] = np.nan
    sf.write(str(path), x, sr, subtype="FLOAT")
    return path


def write_empty_wav(path: Path, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(0, dtype=np.float32), sr, subtype="PCM_16")
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x00\x00not really a wave file" + bytes(range(64)))
    return path


def write_csv(
    path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",", encoding: str = "utf-8"
) -> Path:
    """A CSV with proper quoting (fields with commas, quotes or newlines are quoted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


CAPTION_HEADER = ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
METADATA_HEADER = ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license"]


# --- miniatures of the on-disk layouts under a data root (aac-datasets' folder names) -----------------------------

AUDIOCAPS_HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]
CLOTHO_SR, AAC_AUDIOCAPS_SR, AAC_WAVCAPS_SR = 44100, 32000, 32000
MINI_DEV = ["dev one.wav", "dev, two.wav", "dev three.wav"]
MINI_VAL = ["val one.wav"]
MINI_EVAL = ["eval one.wav", "eval two.wav"]
MINI_TEST = ["test one.wav"]
MINI_RETRIEVAL = ["r one.wav", "r two.wav"]


def _captions(names: list[str], tag: str) -> list[list[str]]:
    return [[n, *[f"{tag} {i} caption {k}" for k in range(1, 6)]] for i, n in enumerate(names)]


def make_clotho(root: Path, layout: str = "aac-datasets") -> Path:
    """A Clotho v2.1 miniature. aac-datasets (0.5-0.7): ``clotho_csv_files/`` (latin-1 metadata, ';' for test) and
    every audio folder under ``clotho_audio_files/`` (test_retrieval_audio too), plus ``archives/``. hand: CSVs
    beside flat ``<split>/`` folders and ``test_retrieval_audio/`` at the root."""
    if layout == "aac-datasets":
        csv_dir, audio = root / "clotho_csv_files", root / "clotho_audio_files"
        retrieval = audio / "test_retrieval_audio"
        (root / "archives").mkdir(parents=True, exist_ok=True)
    else:
        csv_dir, audio, retrieval = root, root, root / "test_retrieval_audio"
    for split, names in (
        ("development", MINI_DEV),
        ("validation", MINI_VAL),
        ("evaluation", MINI_EVAL),
        ("test", MINI_TEST),
    ):
        for i, n in enumerate(names):
            write_tone(audio / split / n, seconds=0.05, sr=CLOTHO_SR, freq=300 + 50 * i)
        if split != "test":
            write_csv(csv_dir / f"clotho_captions_{split}.csv", CAPTION_HEADER, _captions(names, split))
        rows = [[n, "kw", str(i), "link", "[0]", "Zoë", "CC"] for i, n in enumerate(names)]
        write_csv(
            csv_dir / f"clotho_metadata_{split}.csv",
            METADATA_HEADER,
            rows,
            delimiter=";" if split == "test" else ",",
            encoding="latin-1",
        )
    for n in MINI_RETRIEVAL:
        write_tone(retrieval / n, seconds=0.05, sr=CLOTHO_SR, freq=700)
    write_csv(csv_dir / "retrieval_captions.csv", ["caption"], [["a query"], ["another query"]])
    return root


AUDIOCAPS_ROWS = {
    "train": [["1", "trainA", "30", "a man speaks"], ["2", "trainB", "0", "birds chirp"]],
    "val": [[str(10 + k), "valA", "10", f"val caption {k}"] for k in range(5)],
    "test": [[str(20 + k), "testA", "40", f"test caption {k}"] for k in range(5)],
}


def make_audiocaps(root: Path, layout: str = "aac-0.7") -> Path:
    """An AudioCaps miniature. aac-0.7: ``csv_files_v1/<split>.csv`` (+ ``train_fixed.csv``); aac-0.5: the CSVs
    at the root (+ ``train_v2.csv``); both with ``audio_32000Hz/<split>/{youtube_id}_{start_time}.flac``. hand:
    ``dataset/<split>.csv`` and ``audio/<split>/{youtube_id}.wav``."""
    for split, rows in AUDIOCAPS_ROWS.items():
        if layout == "hand":
            write_csv(root / "dataset" / f"{split}.csv", AUDIOCAPS_HEADER, rows)
        else:
            csv_dir = root / "csv_files_v1" if layout == "aac-0.7" else root
            write_csv(csv_dir / f"{split}.csv", AUDIOCAPS_HEADER, rows)
        for _cap, yid, start, _c in rows:
            if layout == "hand":
                write_tone(root / "audio" / split / f"{yid}.wav", seconds=0.05, sr=16000)
            else:
                p = root / f"audio_{AAC_AUDIOCAPS_SR}Hz" / split / f"{yid}_{start}.flac"
                write_tone(p, seconds=0.05, sr=AAC_AUDIOCAPS_SR, fmt="FLAC")
    if layout == "aac-0.7":
        write_csv(root / "csv_files_v1" / "train_fixed.csv", AUDIOCAPS_HEADER, AUDIOCAPS_ROWS["train"])
    elif layout == "aac-0.5":
        write_csv(root / "train_v2.csv", AUDIOCAPS_HEADER, AUDIOCAPS_ROWS["train"])
    return root


# source -> (json name, [(id, duration, caption)]); SoundBible "77" shares its id with FreeSound "77"
WAVCAPS_ENTRIES = {
    "FreeSound": ("fsd_final.json", [("180913", 5.0, "a bell rings"), ("77", 12.0, "water drips")]),
    "BBC_Sound_Effects": ("bbc_final.json", [("07070291", 20.0, "a car passes"), ("07070292", 45.0, "long wind")]),
    "SoundBible": ("sb_final.json", [("77", 3.0, "a cat meows"), ("5", 0.5, "a click")]),
    "AudioSet_SL": ("as_final.json", [("Yb0RFKhbpFJA.wav", 10.0, "people talk")]),
}


def make_wavcaps(root: Path, layout: str = "aac-datasets") -> Path:
    """A WavCaps miniature. aac-datasets: ``json_files/<Source>/*.json``, ``Audio/<Source>/<id>.flac`` (32 kHz),
    ``Zip_files/`` and its ``blacklist_clotho.full.v2.csv``. hand: ``json_files/`` and ``audio/<Source>/``."""
    import json

    audio = root / ("Audio" if layout == "aac-datasets" else "audio")
    for src, (name, entries) in WAVCAPS_ENTRIES.items():
        data = [{"id": i, "caption": c, "duration": d, "audio": "x", "download_link": "y"} for i, d, c in entries]
        (root / "json_files" / src).mkdir(parents=True, exist_ok=True)
        (root / "json_files" / src / name).write_text(json.dumps({"num_captions_per_audio": 1, "data": data}))
        for i, _, _ in entries:
            write_tone(audio / src / f"{i.removesuffix('.wav')}.flac", seconds=0.05, sr=AAC_WAVCAPS_SR, fmt="FLAC")
    if layout == "aac-datasets":
        (root / "Zip_files" / "SoundBible").mkdir(parents=True, exist_ok=True)
        write_csv(root / "blacklist_clotho.full.v2.csv", ["index", "id"], [["0", "77"]])
    return root


MIXUP_PAIRS = [
    ([0, 1], [MINI_DEV[0], MINI_DEV[1]], ["mix zero a", "mix zero b"]),
    ([1, 2], [MINI_DEV[1], MINI_DEV[2]], ["mix one a", "mix one b", "mix one c"]),
]


def make_mixup(root: Path, layout: str = "release") -> Path:
    """The Clotho-ChatGPT-Mixup release under its published names (rejecting caption 1 of pair 1), or a hand
    folder with one ``mixup.json`` and a ``rejected.json``."""
    import json

    doc = {"dataset": [{"selected_pair": p, "audio_files": f, "chatgpt_mixups": c} for p, f, c in MIXUP_PAIRS]}
    names = (
        ("clotho_development_chatgpt_mixups.json", "clotho_development_chatgpt_mixups_err.json")
        if layout == "release"
        else ("mixup.json", "rejected.json")
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / names[0]).write_text(json.dumps(doc))
    (root / names[1]).write_text(json.dumps([{"idx": [1, 1]}]))
    return root


def make_data_root(root: Path, layout: str = "aac-datasets", exclusion_ids: tuple[str, ...] = ("77",)) -> Path:
    """Every dataset under ``root`` with the data root's folder names, plus the DCASE exclusion CSV."""
    hand = layout == "hand"
    make_clotho(root / "CLOTHO_v2.1", "hand" if hand else "aac-datasets")
    make_audiocaps(root / "AUDIOCAPS", "hand" if hand else "aac-0.7")
    make_wavcaps(root / "WavCaps", "hand" if hand else "aac-datasets")
    make_mixup(root / "Clotho-ChatGPT-Mixup", "hand" if hand else "release")
    write_csv(root / "dcase2024_task6_excluded_freesound_ids.csv", ["sound_id"], [[i] for i in exclusion_ids])
    return root
