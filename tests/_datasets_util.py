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
