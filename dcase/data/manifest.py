"""The manifest: one parquet row per clip, the only thing later stages read about a dataset.

Columns (``COLUMNS``):
- ``clip_id`` (str, unique): for Clotho the file name, e.g. ``"Santa Motor.wav"``;
- ``audio_path`` (str): absolute path of the audio file (for mixup rows: the first source clip);
- ``split`` (str): e.g. ``development``, ``validation``, ``evaluation``, ``test``, ``train``, ``val``;
- ``source`` (str): one of ``SOURCES``;
- ``duration_s`` (float > 0), ``sample_rate`` (int > 0);
- ``captions`` (list[str]): may be empty only for caption-less splits (Clotho test, Task 8 audio);
- ``mix_clip_ids`` (list[str] | None), ``mix_audio_paths`` (list[str] | None), ``mix_ratio_db`` (float | None):
  set only on ``clotho_mixup`` rows, which name their two source clips and the energy-matched mixing ratio.

Validation runs on read and on write; errors name the file, the row (clip) and the field.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dcase.data.registry import SOURCES, is_evaluation_split
from dcase.errors import InputError
from dcase.io import atomic_path

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("audio_path", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("duration_s", pa.float64()),
        ("sample_rate", pa.int64()),
        ("captions", pa.list_(pa.string())),
        ("mix_clip_ids", pa.list_(pa.string())),
        ("mix_audio_paths", pa.list_(pa.string())),
        ("mix_ratio_db", pa.float64()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
MIX_COLUMNS = ("mix_clip_ids", "mix_audio_paths", "mix_ratio_db")


class ManifestError(InputError):
    """A manifest (or a dataset being turned into one) breaks the schema."""


@dataclass
class ManifestRow:
    """One clip. ``to_dict`` gives the parquet row."""

    clip_id: str
    audio_path: str
    split: str
    source: str
    duration_s: float
    sample_rate: int
    captions: list[str] = field(default_factory=list)
    mix_clip_ids: list[str] | None = None
    mix_audio_paths: list[str] | None = None
    mix_ratio_db: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in COLUMNS}


def frame_rows(df: pd.DataFrame) -> Iterator[Any]:
    """``df.itertuples(index=False)``: one named tuple per row, fields by column name. Typed ``Any`` because pandas
    types every field of these tuples as "any scalar"; a manifest's fields have the types of ``SCHEMA``."""
    return df.itertuples(index=False)


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def validate(df: pd.DataFrame, where: str = "manifest", allow_empty_captions: Iterable[str] = ()) -> None:
    """Check ``df`` against the schema. Raises ManifestError naming ``where``, the clip and the field.

    ``allow_empty_captions``: splits that may have no captions (by default none; ``read_manifest`` allows any
    split whose rows *all* lack captions, i.e. caption-less test splits).
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in COLUMNS]
    if missing or extra:
        raise ManifestError(f"{where}: missing columns {missing}, unexpected columns {extra}; expected {list(COLUMNS)}")
    if len(df) == 0:
        raise ManifestError(f"{where}: manifest has no rows")
    dup = df["clip_id"][df["clip_id"].duplicated()].tolist()
    if dup:
        raise ManifestError(f"{where}: duplicate clip_id {dup[:5]}{' ...' if len(dup) > 5 else ''}")
    allow = set(allow_empty_captions)
    for i, row in enumerate(frame_rows(df)):
        _validate_row(row, i, where, allow)


def _validate_row(row: Any, i: int, where: str, allow_empty_captions: set[str]) -> None:
    """One manifest row (``validate``): identity strings, duration and sample rate, captions, mixup fields."""
    clip = row.clip_id
    at = f"{where}: row {i} (clip_id {clip!r})"
    if not isinstance(clip, str) or not clip.strip():
        raise ManifestError(f"{where}: row {i}: clip_id must be a non-empty string, got {clip!r}")
    for name in ("audio_path", "split", "source"):
        v = getattr(row, name)
        if not isinstance(v, str) or not v.strip():
            raise ManifestError(f"{at}: field '{name}' must be a non-empty string, got {v!r}")
    if row.source not in SOURCES:
        raise ManifestError(f"{at}: field 'source' is {row.source!r}, expected one of {list(SOURCES)}")
    d = row.duration_s
    if _is_missing(d) or not math.isfinite(float(d)) or float(d) <= 0:
        raise ManifestError(f"{at}: field 'duration_s' must be a positive number, got {d!r}")
    sr = row.sample_rate
    if _is_missing(sr) or int(sr) <= 0:
        raise ManifestError(f"{at}: field 'sample_rate' must be a positive integer, got {sr!r}")
    caps = row.captions
    if caps is None:
        caps = []
    for j, c in enumerate(caps):
        if not isinstance(c, str) or not c.strip():
            raise ManifestError(f"{at}: field 'captions'[{j}] is empty or not a string: {c!r}")
    if len(caps) == 0 and row.split not in allow_empty_captions:
        raise ManifestError(f"{at}: field 'captions' is empty (split {row.split!r} must have captions)")
    _validate_mix_fields(row, at)


def _validate_mix_fields(row: Any, at: str) -> None:
    """``clotho_mixup`` rows name their 2 source clips and a finite ratio; other rows leave the mix_* fields empty."""
    mix_vals = [getattr(row, c) for c in MIX_COLUMNS]
    if row.source == "clotho_mixup":
        ids, paths, ratio = mix_vals
        if ids is None or len(ids) != 2 or paths is None or len(paths) != 2:
            raise ManifestError(f"{at}: mixup rows need 2 'mix_clip_ids' and 2 'mix_audio_paths'")
        if _is_missing(ratio) or not math.isfinite(float(ratio)):
            raise ManifestError(f"{at}: field 'mix_ratio_db' must be a finite number, got {ratio!r}")
    elif any(v is not None and not _is_missing(v) for v in mix_vals):
        raise ManifestError(f"{at}: mix_* fields are only allowed on source 'clotho_mixup' rows")


def to_frame(rows: Iterable[ManifestRow | Mapping[str, Any]]) -> pd.DataFrame:
    recs = [r.to_dict() if isinstance(r, ManifestRow) else {c: r.get(c) for c in COLUMNS} for r in rows]
    df = pd.DataFrame.from_records(recs, columns=list(COLUMNS))
    df["captions"] = [list(c) if c is not None else [] for c in df["captions"]]
    return df


def _caption_less_splits(df: pd.DataFrame) -> set[str]:
    n_caps = df["captions"].map(lambda c: 0 if c is None else len(c))
    per_split = n_caps.groupby(df["split"]).max()
    return {str(s) for s, n in per_split.items() if n == 0}


def write_manifest(rows: Iterable[ManifestRow | Mapping[str, Any]] | pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Validate and write atomically. Returns the frame written."""
    df = rows if isinstance(rows, pd.DataFrame) else to_frame(rows)
    df = df.reset_index(drop=True)
    validate(df, where=str(path), allow_empty_captions=_caption_less_splits(df))
    table = pa.Table.from_pandas(df[list(COLUMNS)], schema=SCHEMA, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return df


def read_manifest(path: str | Path, splits: Iterable[str] | None = None) -> pd.DataFrame:
    """Read and validate a manifest; optionally keep only ``splits`` (an unknown split is an error)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as e:  # noqa: BLE001 - any parquet failure is reported with the file name
        raise ManifestError(f"{path}: not a readable parquet manifest ({e})") from e
    if "captions" in df.columns:
        df["captions"] = [list(c) if c is not None else [] for c in df["captions"]]
    for c in ("mix_clip_ids", "mix_audio_paths"):
        if c in df.columns:
            df[c] = [list(v) if v is not None else None for v in df[c]]
    validate(df, where=str(path), allow_empty_captions=_caption_less_splits(df) if "split" in df else ())
    if splits is not None:
        splits = list(splits)
        unknown = sorted(set(splits) - set(df["split"]))
        if unknown:
            raise ManifestError(f"{path}: split(s) {unknown} not present; available: {sorted(set(df['split']))}")
        df = df[df["split"].isin(splits)].reset_index(drop=True)
    return df


def concat_manifests(frames: Iterable[pd.DataFrame], where: str = "combined manifest") -> pd.DataFrame:
    """Concatenate manifests (e.g. AudioCaps + WavCaps + mixup for pretraining); clip ids must stay unique."""
    df = pd.concat(list(frames), ignore_index=True)
    validate(df, where=where, allow_empty_captions=_caption_less_splits(df))
    return df


def load_captioned_rows(
    manifests: Iterable[str | Path], splits: Iterable[str] = (), allow_leak: bool = False
) -> pd.DataFrame:
    """Training rows: concatenate ``manifests``, keep ``splits`` (all if empty) and rows that have captions.

    Clip ids must be unique across the manifests; no captioned row at all is an error naming the manifests. Rows of
    DCASE2024 evaluation data (``registry.EVALUATION_SPLITS``: Clotho evaluation, test, ...) are refused unless
    ``allow_leak`` (then they are kept with a warning).
    """
    manifests, splits = [str(m) for m in manifests], list(splits)
    if not manifests:
        raise ManifestError("no manifests given (data.train_manifests)")
    frames = []
    for m in manifests:
        df = read_manifest(m)
        frames.append(df[df["split"].isin(splits)] if splits else df)
    df = pd.concat(frames, ignore_index=True)
    df = df[df["captions"].map(len) > 0].reset_index(drop=True)
    if len(df) == 0:
        raise ManifestError(f"no captioned rows of splits {splits or 'any'} in {manifests}")
    leak = [is_evaluation_split(src, sp) for src, sp in zip(df["source"], df["split"], strict=True)]
    if any(leak):
        counts = df[leak].groupby(["source", "split"]).size()
        where = ", ".join(f"{src}:{sp} ({n} clips)" for (src, sp), n in zip(counts.index, counts, strict=True))
        if not allow_leak:
            raise ManifestError(
                f"the training rows include DCASE2024 evaluation data: {where} (from {manifests}); DCASE2024 forbids "
                "training on it. Choose training splits without it (data.train_splits), or set data.allow_leak=true "
                "(recorded in the run)"
            )
        log.warning("training on DCASE2024 evaluation data (allowed by allow_leak): %s", where)
    dup = df["clip_id"][df["clip_id"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(f"clip ids appear more than once across {manifests}: {dup[:5]}")
    return df


def manifest_hash(df: pd.DataFrame) -> str:
    """A content hash of the clip ids, paths and mixing parameters (what features depend on)."""
    h = hashlib.sha256()
    for row in df.sort_values("clip_id").itertuples(index=False):
        h.update(f"{row.clip_id}\x00{row.audio_path}\x00{row.mix_audio_paths}\x00{row.mix_ratio_db}\n".encode())
    return h.hexdigest()


def stats(df: pd.DataFrame) -> pd.DataFrame:
    """Clips, captions and hours per (source, split)."""
    g = df.assign(n_captions=df["captions"].map(len)).groupby(["source", "split"], sort=True)
    out = g.agg(clips=("clip_id", "size"), captions=("n_captions", "sum"), hours=("duration_s", "sum"))
    out["hours"] = out["hours"] / 3600.0
    return out.reset_index()


def folder_rows(audio_dir: str | Path, split: str, source: str = "clotho") -> pd.DataFrame:
    """The one "folder of audio files -> caption-less manifest rows": every audio file directly in ``audio_dir``
    (``data.audio.AUDIO_EXTENSIONS``), sorted by name, clip_id = file name, absolute ``audio_path``, duration and
    sample rate from the header. Used for evaluation folders (Task 6) and retrieval collections (Task 8)."""
    from dcase.data.audio import AUDIO_EXTENSIONS, audio_info, is_audio_file
    from dcase.errors import MissingInputError

    d = Path(audio_dir)
    if not d.is_dir():
        raise MissingInputError(f"audio folder {d} does not exist")
    files = sorted(p for p in d.iterdir() if p.is_file() and is_audio_file(p.name))
    if not files:
        raise MissingInputError(f"{d}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    rows = []
    for p in files:
        duration, sample_rate = audio_info(p)
        rows.append(ManifestRow(p.name, str(p.resolve()), split, source, duration, sample_rate))
    df = to_frame(rows)
    validate(df, where=str(d), allow_empty_captions=[split])
    return df
