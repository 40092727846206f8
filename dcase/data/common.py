"""What every dataset reader shares: bad-clip bookkeeping, strict text decoding, CSV reading, path confinement,
audio probing and the planned-clip -> manifest-row step.

Every reader (``clotho``, ``audiocaps``, ``wavcaps``, ``mixup``) reports a bad clip through a ``BadClips``
collector: by default the first one raises a ``DataError`` naming the file, row/clip and field; with
``skip_bad=True`` the clip is skipped, logged and recorded, and ``dcase.data.sources.build_manifest`` writes the
records to a report CSV (clip, file, reason) next to the manifest. Clips left out for a reason that is not an
error (an audio file that no CSV lists) are recorded too (``BadClips.drop``), so nothing is dropped silently.

Text files are UTF-8, with an optional BOM, and nothing else: a file that is not valid UTF-8 is a
``TextEncodingError`` naming the file, line and byte offset. No encoding is ever guessed.

Paths read from a dataset file (CSV file names, JSON ids, mixup pairs) go through ``resolve_inside``: the
result must stay inside the folder the reader declares for it (checked on the path text, so symlinks that the
user placed inside a dataset folder keep working, while ``..`` and absolute paths are refused).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dcase.data.audio import AudioError, audio_info, load_audio
from dcase.data.manifest import ManifestError, ManifestRow
from dcase.io import atomic_path

log = logging.getLogger(__name__)

REPORT_COLUMNS = ("clip", "file", "reason")
UTF8_BOM = b"\xef\xbb\xbf"

# (split, clip_id, audio path, captions): what a reader plans before any audio is probed
Planned = tuple[str, str, Path, list[str]]


class DataError(ManifestError):
    """A dataset folder or file breaks its official layout. The message names the file, row/clip and field."""


class TextEncodingError(DataError):
    """A text file (CSV, JSON) is not valid UTF-8. The message names the file, the line and the byte offset."""


@dataclass(frozen=True)
class BadClip:
    """One clip that cannot be used (or was left out): its id (or row), the offending file and why."""

    clip: str
    file: str
    reason: str


class BadClips:
    """Collects bad clips. Strict (default): the first one raises ``DataError``. ``skip_bad``: record and go on.

    A collector is always truthy (even when empty), so ``bad or BadClips()`` cannot swap a lenient collector
    for a strict one; readers still write ``bad if bad is not None else BadClips(skip_bad)``.
    """

    def __init__(self, skip_bad: bool = False) -> None:
        self.skip_bad = skip_bad
        self.items: list[BadClip] = []

    def __call__(self, clip: str, file: str | Path, reason: str) -> None:
        msg = f"{file}: {reason} (clip {clip!r})"
        if not self.skip_bad:
            raise DataError(msg + "; fix the file or pass --skip-bad to skip such clips with a report")
        log.warning("skipping: %s", msg)
        self.items.append(BadClip(str(clip), str(file), reason))

    def drop(self, clip: str, file: str | Path, reason: str) -> None:
        """Record a clip that is left out although nothing is wrong with it (never raises)."""
        log.warning("left out: %s: %s", file, reason)
        self.items.append(BadClip(str(clip), str(file), reason))

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return True

    def write_csv(self, path: str | Path) -> Path:
        """Write the records as CSV (columns clip, file, reason), atomically."""
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(REPORT_COLUMNS)
            for b in self.items:
                w.writerow([b.clip, b.file, b.reason])
        return path


def report_path_for(out: str | Path) -> Path:
    """``manifest.parquet`` -> ``manifest.skipped.csv`` (beside the manifest)."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".parquet") + ".skipped.csv")


# --- text ---------------------------------------------------------------------------------------------------------


def decode_utf8(data: bytes, path: str | Path) -> str:
    """``data`` decoded as UTF-8 (a leading BOM is dropped). Raises TextEncodingError naming the file, the line,
    the column and the byte offset (counted in the file, BOM included) of the first invalid byte."""
    skip = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        pos = skip + e.start
        line = data.count(b"\n", 0, pos) + 1
        col = pos - (data.rfind(b"\n", 0, pos) + 1) + 1
        raise TextEncodingError(
            f"{path}: not valid UTF-8: line {line}, column {col}, byte offset {pos} "
            f"(byte 0x{data[pos]:02x}); re-save the file as UTF-8 (it looks like another encoding, e.g. cp1252 "
            "or latin-1, which is never guessed)"
        ) from None


def read_text(path: str | Path) -> str:
    """The content of a UTF-8 text file (optional BOM). DataError for a missing/unreadable file,
    TextEncodingError for invalid UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e})") from e
    return decode_utf8(data, path)


def read_json_text(path: str | Path, what: str) -> object:
    """The parsed content of a dataset's JSON file (read with ``read_text``); DataError naming the file and ``what``
    it should be when it is not valid JSON."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not a readable {what} ({e})") from e


def sniff_delimiter(text: str) -> str:
    """',' ';' or tab judged from the header line (the official Clotho metadata files use ',' and ';')."""
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
    """Read a UTF-8 CSV as a DataFrame of str (delimiter sniffed; "NA"/"null" stay text; no stripping).

    Parsed with the ``csv`` module (full quoting: commas, quotes and newlines inside fields) so that every row
    can be checked: a row with too many or too few fields is an error naming the file and row, never a silent
    shift into an index or a padded empty cell. Also raises DataError for a missing file, missing or
    unexpected columns, duplicate columns, and TextEncodingError for a file that is not UTF-8. "row N" in
    messages counts data rows (the header is row 0).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text = read_text(path)
    delim = sniff_delimiter(text)
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
            f"expected {list(required) + list(optional)} (delimiter {delim!r})"
        )
    dup = sorted(c for c in set(cols) if cols.count(c) > 1)
    if dup:
        raise DataError(f"{path}: duplicate columns {dup}")
    df = pd.DataFrame(records, columns=cols, dtype=object)
    log.debug("%s: %d rows (delimiter %r)", path, len(df), delim)
    return df


# --- paths --------------------------------------------------------------------------------------------------------


def resolve_inside(root: str | Path, name: str) -> Path | None:
    """``root / name`` if it stays strictly inside ``root``, else None (absolute paths, ``..`` escapes, empty).

    The check is made on the normalised path text, not on the resolved file: a symlink that the user placed
    inside a dataset folder is followed as usual, but a name read from a dataset file cannot climb out.
    """
    if not name or "\x00" in name or Path(name).is_absolute():
        return None
    base = os.path.normpath(str(root))
    joined = os.path.normpath(os.path.join(base, name))
    if joined == base or not joined.startswith(base.rstrip(os.sep) + os.sep):
        return None
    return Path(joined)


CLOTHO_AUDIO_DIR = "clotho_audio_files"
CLOTHO_RETRIEVAL_AUDIO_DIR = "test_retrieval_audio"


def clotho_audio_dir(root: str | Path, split: str) -> Path | None:
    """The audio folder of Clotho ``split`` under ``root`` (both layouts): ``clotho_audio_files/<split>/`` or
    ``<split>/``; for ``retrieval_audio``: ``test_retrieval_audio/`` or ``clotho_audio_files/test_retrieval_audio/``.
    None if absent. (Here because two readers need it: Clotho and Clotho-ChatGPT-Mixup.)"""
    root = Path(root)
    if split == "retrieval_audio":
        cands = [root / CLOTHO_RETRIEVAL_AUDIO_DIR, root / CLOTHO_AUDIO_DIR / CLOTHO_RETRIEVAL_AUDIO_DIR]
    else:
        cands = [root / CLOTHO_AUDIO_DIR / split, root / split]
    return next((c for c in cands if c.is_dir()), None)


def dir_index(directory: Path) -> set[str]:
    """Names of the entries of ``directory`` (one listing instead of one stat per clip)."""
    try:
        return {e.name for e in os.scandir(directory)}
    except (FileNotFoundError, NotADirectoryError):
        return set()


# --- audio --------------------------------------------------------------------------------------------------------


def probe_audio(path: str | Path, decode_check: bool = True) -> tuple[float, int]:
    """(duration_s, sample_rate) from the header; with ``decode_check`` also decode every sample.

    The decode rejects files whose header looks fine but whose data is truncated, empty, NaN or inf.
    Raises AudioError naming the file.
    """
    if decode_check:  # one read: the decode gives the duration and rate too
        x, sr = load_audio(path, check_finite=True)
        return x.size / sr, sr
    return audio_info(path)


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
        found = results.get(path)
        if found is None:
            continue  # not probed: only after a strict failure, which raises first
        if not isinstance(found, AudioError):
            out[path] = found
        elif path in reported:
            bad(clip, path, "unusable audio (see the earlier report for this file)")
        else:
            reported.add(path)
            reason, prefix = str(found), f"{path}: "
            bad(clip, path, reason[len(prefix) :] if reason.startswith(prefix) else reason)
    return out


def rows_from_plan(
    planned: Sequence[Planned],
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
