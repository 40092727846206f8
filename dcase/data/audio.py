"""Audio I/O: load with soundfile, mix to mono, resample with soxr, energy-matched mixing.

Every error is an ``AudioError`` naming the file.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf
import soxr

from dcase.errors import InputError

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg")  # what the readers and folder scans accept


def is_audio_file(name: str | Path) -> bool:
    """True for a file name with one of ``AUDIO_EXTENSIONS`` (case-insensitive), hidden files excluded."""
    name = Path(name).name
    return not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS)


class AudioError(InputError):
    """Audio that cannot be used: missing, unreadable, empty, or non-finite. The message names the file."""


def audio_info(path: str | Path) -> tuple[float, int]:
    """(duration in seconds, native sample rate) from the header, without decoding the samples."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        info = sf.info(str(path))
    except Exception as e:  # noqa: BLE001 - soundfile raises several types for corrupt files
        raise AudioError(f"{path}: unreadable audio ({e})") from e
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"{path}: empty audio ({info.frames} frames)")
    return info.frames / info.samplerate, int(info.samplerate)


def to_mono(x: np.ndarray) -> np.ndarray:
    """[T] or [T, C] -> [T] by averaging channels."""
    return x if x.ndim == 1 else x.mean(axis=1)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a mono float32 signal [T] with soxr (high quality)."""
    if sr_in == sr_out:
        return x
    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


class _NamedBytes(io.BytesIO):
    """A file's bytes in memory that soundfile's error messages name by the file's path."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __repr__(self) -> str:
        return repr(self.label)


def load_audio(
    path: str | Path,
    sample_rate: int | None = None,
    max_seconds: float | None = None,
    check_finite: bool = True,
    data: bytes | None = None,
) -> tuple[np.ndarray, int]:
    """Load ``path`` as mono float32 [T], resampled to ``sample_rate`` (native rate if None). ``data``: the file's
    bytes, already read by the caller (decoded from memory; ``path`` then only names the file in errors).

    Raises AudioError (naming the file) for missing, unreadable, empty or NaN/inf audio.
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise AudioError(f"{path}: audio file not found")

    def source() -> str | io.BytesIO:
        return str(path) if data is None else _NamedBytes(data, str(path))

    try:
        frames = -1
        if max_seconds is not None:
            frames = int(max_seconds * sf.info(source()).samplerate)
        x, sr = sf.read(source(), dtype="float32", always_2d=False, frames=frames)
    except Exception as e:  # noqa: BLE001
        raise AudioError(f"{path}: unreadable audio ({e})") from e
    x = to_mono(np.asarray(x, dtype=np.float32))
    if x.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    if check_finite and not np.isfinite(x).all():
        raise AudioError(f"{path}: audio contains NaN or inf samples")
    if sample_rate is not None and sample_rate != sr:
        x = resample(x, sr, sample_rate)
        sr = sample_rate
    return np.ascontiguousarray(x, dtype=np.float32), int(sr)


def mix_energy_matched(a: np.ndarray, b: np.ndarray, ratio_db: float) -> np.ndarray:
    """Mix two mono signals as in Clotho-ChatGPT-Mixup (Wu et al., ICASSP 2024).

    ``b`` is scaled so that its energy is ``ratio_db`` dB below ``a``'s (energy matched at 0 dB), the
    shorter signal is zero-padded, and the sum is rescaled to avoid clipping. Output length = max(len).
    """
    n = max(len(a), len(b))
    a = np.pad(a, (0, n - len(a)))
    b = np.pad(b, (0, n - len(b)))
    ea = float(np.sqrt(np.mean(a.astype(np.float64) ** 2)) + 1e-12)
    eb = float(np.sqrt(np.mean(b.astype(np.float64) ** 2)) + 1e-12)
    gain = (ea / eb) * 10.0 ** (-ratio_db / 20.0)
    y = a + gain * b
    peak = float(np.max(np.abs(y)))
    if peak > 1.0:
        y = y / peak
    return y.astype(np.float32)


class AudioRow(Protocol):
    """What the audio readers need of a manifest row (an ``itertuples`` row, a ``ManifestRow`` or any object with
    these fields). Mixup rows (``source == "clotho_mixup"``) also carry ``mix_audio_paths`` and ``mix_ratio_db``."""

    @property
    def clip_id(self) -> str: ...

    @property
    def audio_path(self) -> str: ...


def row_audio_files(row: Any) -> list[str]:
    """The audio files a manifest row is made of: its ``audio_path``, or the two sources of a mixup row."""
    paths = getattr(row, "mix_audio_paths", None)  # the mixup fields are optional: plain rows need not have them
    if getattr(row, "source", None) == "clotho_mixup" and paths is not None:
        return [str(p) for p in paths]
    return [str(row.audio_path)]


def load_clip(
    row: AudioRow, sample_rate: int, max_seconds: float | None = None, data: Sequence[bytes] | None = None
) -> np.ndarray:
    """Load a manifest row's audio at ``sample_rate``; mixup rows are mixed at their recorded ratio. ``data``: the
    bytes of each of ``row_audio_files(row)``, already read by the caller (decoded from memory)."""
    paths = row_audio_files(row)
    blobs: Sequence[bytes | None] = data if data is not None else [None] * len(paths)
    if len(blobs) != len(paths):
        raise ValueError(f"clip {row.clip_id!r}: {len(blobs)} byte strings given for {len(paths)} audio file(s)")
    if len(paths) > 1:  # a mixup row (the manifest checks that it has two)
        a, _ = load_audio(paths[0], sample_rate, max_seconds, data=blobs[0])
        b, _ = load_audio(paths[1], sample_rate, max_seconds, data=blobs[1])
        ratio = getattr(row, "mix_ratio_db", None)
        if ratio is None:
            raise InputError(f"clip {row.clip_id!r}: a clotho_mixup row without mix_ratio_db")
        return mix_energy_matched(a, b, float(ratio))
    x, _ = load_audio(row.audio_path, sample_rate, max_seconds, data=blobs[0])
    return x
