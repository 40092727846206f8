"""Shared machinery of the dataset readers: bad-clip bookkeeping, audio probing, CSV sniffing, manifest building.

Every reader (``clotho``, ``audiocaps``, ``wavcaps``, ``mixup``) reports a bad clip through a ``BadClips``
collector: by default the first one raises a ``DataError`` naming the file, row/clip and field; with
``skip_bad=True`` the clip is skipped, logged and recorded, and ``build_manifest`` writes the records to a
report CSV (clip, file, reason) next to the manifest. Nothing is dropped silently.

``build_manifest`` is what ``dcase data manifest`` calls: read one source, validate, write the parquet atomically.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dcase.data.audio import AudioError, audio_info, load_audio
from dcase.data.manifest import ManifestError, ManifestRow, write_manifest
from dcase.errors import OutputExistsError
from dcase.io import atomic_path

log = logging.getLogger(__name__)

SOURCE_NAMES = ("clotho", "audiocaps", "wavcaps", "clotho-mixup")
REPORT_COLUMNS = ("clip", "file", "reason")


class DataError(ManifestError):
    """A dataset folder or file breaks its official layout. The message names the file, row/clip and field."""


@dataclass(frozen=True)
class BadClip:
    """One clip that cannot be used: its id (or row), the offending file and why."""

    clip: str
    file: str
    reason: str


class BadClips:
    """Collects bad clips. Strict (default): the first one raises ``DataError``. ``skip_bad``: record and go on."""

    def __init__(self, skip_bad: bool = False) -> None:
        self.skip_bad = skip_bad
        self.items: list[BadClip] = []

    def __call__(self, clip: str, file: str | Path, reason: str) -> None:
        msg = f"{file}: {reason} (clip {clip!r})"
        if not self.skip_bad:
            raise DataError(msg + "; fix the file or pass --skip-bad to skip such clips with a report")
        log.warning("skipping: %s", msg)
        self.items.append(BadClip(str(clip), str(file), reason))

    def __len__(self) -> int:
        return len(self.items)

    def write_csv(self, path: str | Path) -> Path:
        """Write the records as CSV (columns clip, file, reason), atomically."""
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(REPORT_COLUMNS)
            for b in self.items:
                w.writerow([b.clip, b.file, b.reason])
        return path


def probe_audio(path: str | Path, decode_check: bool = True) -> tuple[float, int]:
    """(duration_s, sample_rate) from the header; with ``decode_check`` also decode every sample.

    The decode rejects files whose header looks fine but whose data is truncated, empty, NaN or inf.
    Raises AudioError naming the file.
    """
    duration, sr = audio_info(path)
    if decode_check:
        x, _ = load_audio(path, check_finite=True)
        if x.size == 0:  # pragma: no cover - load_audio already raises
            raise AudioError(f"{path}: empty audio")
        duration = x.size / sr
    return duration, sr


def probe_many(
    items: Sequence[tuple[str, Path]],
    bad: BadClips,
    decode_check: bool = True,
    progress: bool = False,
    desc: str = "probing audio",
    workers: int = 1,
) -> dict[Path, tuple[float, int]]:
    """Probe every distinct path of ``items`` [(clip, path)] once; returns {path: (duration, sr)} for the good
    files and reports every clip of a bad one to ``bad`` (in ``items`` order). ``workers`` > 1 probes in threads
    (libsndfile releases the GIL), which pays off for big corpora on many cores."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def attempt(path: Path) -> tuple[float, int] | AudioError:
        try:
            return probe_audio(path, decode_check)
        except AudioError as e:
            return e

    paths = list(dict.fromkeys(p for _, p in items))
    results: dict[Path, tuple[float, int] | AudioError] = {}
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        it = pool.map(attempt, paths) if pool is not None else map(attempt, paths)
        for path, res in tqdm(
            zip(paths, it, strict=False), total=len(paths), desc=desc, unit="file", disable=not progress, leave=False
        ):
            results[path] = res
            if isinstance(res, AudioError) and not bad.skip_bad:
                break  # strict: stop probing; the error is raised below
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    out: dict[Path, tuple[float, int]] = {}
    reported: set[Path] = set()
    for clip, path in items:
        res = results.get(path)
        if res is None:
            continue  # not probed: only after a strict failure, which raises first
        if not isinstance(res, AudioError):
            out[path] = res
        elif path in reported:
            bad(clip, path, "unusable audio (see the earlier report for this file)")
        else:
            reported.add(path)
            reason, prefix = str(res), f"{path}: "
            bad(clip, path, reason[len(prefix) :] if reason.startswith(prefix) else reason)
    return out


def rows_from_plan(
    planned: Sequence[tuple[str, str, Path, list[str]]],
    source: str,
    bad: BadClips,
    decode_check: bool,
    progress: bool,
    workers: int,
    desc: str,
) -> list[ManifestRow]:
    """Probe the audio of planned (split, clip_id, path, captions) clips and build their manifest rows, in plan
    order; clips whose audio fails the probe are reported to ``bad`` and left out."""
    info = probe_many([(c, p) for _, c, p, _ in planned], bad, decode_check, progress, desc=desc, workers=workers)
    return [
        ManifestRow(
            clip_id=clip,
            audio_path=str(path.absolute()),
            split=split,
            source=source,
            duration_s=info[path][0],
            sample_rate=info[path][1],
            captions=caps,
        )
        for split, clip, path, caps in planned
        if path in info
    ]


def dir_index(directory: Path) -> set[str]:
    """Names of the entries of ``directory`` (one listing instead of one stat per clip)."""
    try:
        return {e.name for e in os.scandir(directory)}
    except FileNotFoundError:
        return set()


def decode_text(path: Path) -> tuple[str, str]:
    """The text of ``path`` and the encoding used: UTF-8 (with or without BOM), else cp1252, else latin-1."""
    data = path.read_bytes()
    for enc in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError:
            continue
    raise DataError(f"{path}: cannot decode the file as text")  # pragma: no cover - latin-1 decodes anything


def sniff_delimiter(text: str, path: Path) -> str:
    """',' or ';' judged from the header line (the official Clotho metadata files use both)."""
    header = text.split("\n", 1)[0]
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    delim = max(counts, key=lambda d: counts[d])
    if counts[delim] == 0:
        return ","  # a single column (e.g. retrieval_captions.csv)
    return delim


def read_table(
    path: str | Path,
    required: Sequence[str],
    optional: Sequence[str] = (),
    allow_extra: bool = False,
) -> pd.DataFrame:
    """Read a CSV as a DataFrame of str (encoding and delimiter sniffed; "NA"/"null" stay text; no stripping).

    Parsed with the ``csv`` module (full quoting: commas, quotes and newlines inside fields) so that every row
    can be checked: a row with too many or too few fields is an error naming the file and row, never a silent
    shift into an index or a padded empty cell. Also raises DataError for a missing file, missing or
    unexpected columns, duplicate columns. "row N" in messages counts data rows (the header is row 0).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text, enc = decode_text(path)
    delim = sniff_delimiter(text, path)
    text = text.rstrip("\r\n") + "\n"  # trailing blank lines are not rows; blank lines inside are (and fail)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        header = next(reader)
        records = []
        for i, rec in enumerate(reader, start=1):
            if len(rec) != len(header):
                raise DataError(
                    f"{path}: not a readable CSV: row {i} (line {reader.line_num}) has {len(rec)} fields, the header "
                    f"has {len(header)} ({header}); quote fields that contain {delim!r}, quotes or newlines"
                )
            records.append(rec)
    except StopIteration:
        raise DataError(f"{path}: not a readable CSV: the file is empty") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV (line {reader.line_num}: {e})") from e
    cols = [c.strip() for c in header]
    missing = [c for c in required if c not in cols]
    extra = [c for c in cols if c not in required and c not in optional]
    if missing or (extra and not allow_extra):
        raise DataError(
            f"{path}: missing columns {missing}, unexpected columns {extra if not allow_extra else []}; "
            f"expected {list(required) + list(optional)} (read as {enc}, delimiter {delim!r})"
        )
    dup = sorted(c for c in set(cols) if cols.count(c) > 1)
    if dup:
        raise DataError(f"{path}: duplicate columns {dup}")
    df = pd.DataFrame(records, columns=cols, dtype=object)
    log.debug("%s: %d rows (%s, delimiter %r)", path, len(df), enc, delim)
    return df


def find_file(candidates: Iterable[Path]) -> Path | None:
    for c in candidates:
        if c.is_file():
            return c
    return None


@dataclass
class BuildResult:
    """What ``build_manifest`` produced."""

    frame: pd.DataFrame
    out: Path
    skipped: list[BadClip] = field(default_factory=list)
    report_path: Path | None = None
    filter_report: Any = None  # wavcaps.FilterReport for WavCaps


def report_path_for(out: str | Path) -> Path:
    """``manifest.parquet`` -> ``manifest.skipped.csv`` (beside the manifest)."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".parquet") + ".skipped.csv")


def build_manifest(
    source: str,
    root: str | Path,
    out: str | Path,
    *,
    splits: Sequence[str] | None = None,
    audio_pattern: str | None = None,
    audio_root: str | Path | None = None,
    exclude_csv: str | Path | None = None,
    challenge_filters: bool = True,
    rejected_json: str | Path | None = None,
    clotho_root: str | Path | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    decode_check: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    workers: int = 1,
) -> BuildResult:
    """Read one dataset (``source`` in ``SOURCE_NAMES``) under ``root`` and write its manifest to ``out``.

    - clotho: ``root`` = the Clotho v2.1 folder; ``splits`` from development/validation/evaluation/test/retrieval_audio.
    - audiocaps: ``root`` holds train.csv/val.csv/test.csv; ``audio_pattern`` e.g. ``{youtube_id}.wav``;
      ``audio_root`` overrides the audio folder (default ``root/audio/<split>/`` or ``root/<split>/``).
    - wavcaps: ``root`` = the json_files folder; ``audio_root`` = the folder holding ``<Source>/<id>.flac``.
    - clotho-mixup: ``root`` = the mixup JSON (or a folder with one JSON); ``clotho_root`` = the Clotho folder.

    Refuses to overwrite ``out`` unless ``overwrite``. With ``skip_bad``, bad clips are skipped and listed in
    ``<out>.skipped.csv``. ``workers`` threads probe/decode the audio. Returns a BuildResult.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    if source not in SOURCE_NAMES:
        raise ValueError(f"unknown source {source!r}; expected one of {list(SOURCE_NAMES)}")
    bad = BadClips(skip_bad)
    filter_report = None
    rows: list[ManifestRow]
    if source == "clotho":
        from dcase.data.clotho import read_clotho

        rows = read_clotho(root, splits, decode_check=decode_check, bad=bad, progress=progress, workers=workers)
    elif source == "audiocaps":
        from dcase.data.audiocaps import DEFAULT_PATTERN, read_audiocaps

        rows = read_audiocaps(
            root,
            splits,
            audio_pattern=audio_pattern or DEFAULT_PATTERN,
            audio_root=audio_root,
            decode_check=decode_check,
            bad=bad,
            progress=progress,
            workers=workers,
        )
    elif source == "wavcaps":
        from dcase.data.wavcaps import read_wavcaps

        if splits:
            raise ValueError("WavCaps has no splits (every clip is 'train'); drop --splits")
        rows, filter_report = read_wavcaps(
            root,
            audio_root,
            exclude_csv=exclude_csv,
            challenge_filters=challenge_filters,
            audio_pattern=audio_pattern,
            decode_check=decode_check,
            bad=bad,
            progress=progress,
            workers=workers,
        )
    else:
        from dcase.data.mixup import read_clotho_mixup

        if clotho_root is None:
            raise ValueError("clotho-mixup needs --clotho-root (the Clotho v2.1 folder with the development audio)")
        if splits:
            raise ValueError("Clotho-ChatGPT-Mixup rows are all 'train'; drop --splits")
        rows = read_clotho_mixup(
            root,
            clotho_root,
            rejected_json=rejected_json,
            seed=seed,
            decode_check=decode_check,
            bad=bad,
            progress=progress,
            workers=workers,
        )
    if not rows:
        raise DataError(f"{root}: no usable clips for source {source!r} ({len(bad)} skipped as bad)")
    report = None
    if bad.items:
        report = bad.write_csv(report_path_for(out))
        log.warning("%d clip(s) skipped; see %s", len(bad), report)
    else:
        report_path_for(out).unlink(missing_ok=True)  # a stale report from an overwritten run would mislead
    df = write_manifest(rows, out)
    log.info("wrote %s: %d clips", out, len(df))
    return BuildResult(frame=df, out=out, skipped=list(bad.items), report_path=report, filter_report=filter_report)
