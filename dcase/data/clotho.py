"""Clotho v2.1 (and the DCASE Task 8 evaluation files) to manifest rows.

Official layout under ``root`` (Drossos et al., ICASSP 2020; v2.1 on Zenodo)::

    clotho_audio_files/{development,validation,evaluation,test}/*.wav    (``<root>/<split>/`` is accepted too)
    clotho_captions_{development,validation,evaluation}.csv              file_name,caption_1,...,caption_5
    clotho_metadata_{split}.csv                                          file_name,keywords,sound_id,...
    test_retrieval_audio/*.wav + retrieval_captions.csv                  Task 8 evaluation (audio; queries)

Naming clash: Clotho's ``evaluation`` split (1045 clips) is what DCASE calls *development-testing*: the
split you score yourself on. DCASE's *evaluation* data are the caption-less Clotho ``test`` split (1043 clips,
Task 6) and the Task 8 ``test_retrieval_audio`` clips (split name ``retrieval_audio`` here, 1000 clips). This
module keeps Clotho's names: ``development``, ``validation``, ``evaluation``, ``test``, ``retrieval_audio``.

Two layouts are recognised under ``root`` (the ``CLOTHO_v2.1`` folder): aac-datasets' (Labbeti/aac-datasets
0.5-0.7: CSVs in ``clotho_csv_files/``, every audio folder, ``test_retrieval_audio`` included, under
``clotho_audio_files/``; 44.1 kHz WAV) and the hand layout above (CSVs beside the audio folders).

Caption CSVs are read with real CSV quoting (commas, quotes, newlines and non-ASCII in captions survive exactly);
"NA"/"null" stay text, while an empty cell is an error naming the file, row and column. Every CSV must be UTF-8
(optional BOM). The official metadata files (',' or ';' delimited) of v2.1 are not UTF-8; they are only
informative (not part of the manifest), so an unreadable metadata file is skipped with a warning.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dcase.data.audio import AUDIO_EXTENSIONS, is_audio_file
from dcase.data.common import (
    CLOTHO_AUDIO_DIR as AUDIO_DIR,
)
from dcase.data.common import (
    CLOTHO_RETRIEVAL_AUDIO_DIR as RETRIEVAL_AUDIO_DIR,
)
from dcase.data.common import (
    BadClips,
    DataError,
    Planned,
    clotho_audio_dir,
    dir_index,
    read_table,
    resolve_inside,
    rows_from_plan,
)
from dcase.data.manifest import ManifestRow

log = logging.getLogger(__name__)

CAPTIONED_SPLITS = ("development", "validation", "evaluation")
CAPTIONLESS_SPLITS = ("test", "retrieval_audio")
SPLITS = CAPTIONED_SPLITS + CAPTIONLESS_SPLITS
CAPTION_COLUMNS = ("file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5")
METADATA_COLUMNS = (
    "file_name",
    "keywords",
    "sound_id",
    "sound_link",
    "start_end_samples",
    "manufacturer",
    "license",
)
RETRIEVAL_CAPTIONS_CSV = "retrieval_captions.csv"


AAC_CSV_DIR = "clotho_csv_files"  # aac-datasets keeps every CSV here


def _csv_candidates(root: Path, name: str) -> list[Path]:
    return [root / name, root / AAC_CSV_DIR / name]


def clotho_layout(root: str | Path) -> str:
    """``"aac-datasets"`` when ``root`` has aac-datasets' ``clotho_csv_files/`` folder, else ``"hand"``."""
    return "aac-datasets" if (Path(root) / AAC_CSV_DIR).is_dir() else "hand"


def clotho_captions_csv(root: str | Path, split: str) -> Path | None:
    """``clotho_captions_<split>.csv`` (or ``retrieval_captions.csv``) under ``root``, or None."""
    name = RETRIEVAL_CAPTIONS_CSV if split == "retrieval_audio" else f"clotho_captions_{split}.csv"
    return next((c for c in _csv_candidates(Path(root), name) if c.is_file()), None)


def available_splits(root: str | Path) -> list[str]:
    """Splits with an audio folder under ``root``, in the order of ``SPLITS``."""
    return [s for s in SPLITS if clotho_audio_dir(root, s) is not None]


def read_clotho_metadata(root: str | Path, split: str) -> pd.DataFrame | None:
    """``clotho_metadata_<split>.csv`` as a str DataFrame (',' or ';'), or None if absent.

    Raises DataError for a malformed file and TextEncodingError for one that is not UTF-8 (the official v2.1
    metadata files are latin-1; ``read_clotho`` skips an unreadable metadata file with a warning)."""
    name = "retrieval_audio_metadata.csv" if split == "retrieval_audio" else f"clotho_metadata_{split}.csv"
    path = next((c for c in _csv_candidates(Path(root), name) if c.is_file()), None)
    if path is None:
        return None
    df = read_table(path, required=("file_name",), optional=METADATA_COLUMNS[1:], allow_extra=True)
    unexpected = [c for c in df.columns if c not in METADATA_COLUMNS]
    if unexpected:
        log.info("%s: extra metadata columns %s (kept, not used)", path, unexpected)
    dup = df["file_name"][df["file_name"].duplicated()].tolist()
    if dup:
        raise DataError(f"{path}: duplicate file_name {dup[:5]} in column 'file_name'")
    df.attrs["path"] = str(path)
    return df


def _read_captions(path: Path, bad: BadClips) -> tuple[list[tuple[int, str, list[str]]], set[str]]:
    """(good rows, every non-empty file name of the CSV, bad rows included)."""
    df = read_table(path, required=CAPTION_COLUMNS)
    out: list[tuple[int, str, list[str]]] = []
    names: set[str] = set()
    seen: dict[str, int] = {}
    for i, rec in enumerate(df[list(CAPTION_COLUMNS)].itertuples(index=False, name=None)):
        row_no = i + 1
        fname, caps = rec[0], list(rec[1:])
        if not fname.strip():
            bad(f"<row {row_no}>", path, f"row {row_no}: column 'file_name' is empty")
            continue
        names.add(fname)
        empty = [CAPTION_COLUMNS[k + 1] for k, c in enumerate(caps) if not c.strip()]
        if empty:
            bad(fname, path, f"row {row_no}: empty caption in column(s) {empty}")
            continue
        if fname in seen:
            bad(fname, path, f"row {row_no}: duplicate file_name (first listed at row {seen[fname]})")
            continue
        seen[fname] = row_no
        out.append((row_no, fname, caps))
    return out, names


def read_clotho_captions(path: str | Path, bad: BadClips | None = None) -> list[tuple[int, str, list[str]]]:
    """Rows of a ``clotho_captions_<split>.csv``: [(row number (1 = first data row), file_name, 5 captions)].

    Exact text (no stripping). Empty cells and duplicate file names go to ``bad`` (strict: raise).
    """
    return _read_captions(Path(path), bad if bad is not None else BadClips())[0]


def read_retrieval_captions(path: str | Path) -> list[str]:
    """The Task 8 queries of ``retrieval_captions.csv`` (one ``caption`` column), in file order.

    ``path`` may be the CSV or a Clotho root containing it. Empty captions raise DataError naming the row.
    """
    path = Path(path)
    if path.is_dir():
        found = clotho_captions_csv(path, "retrieval_audio")
        if found is None:
            raise DataError(f"{path}: no {RETRIEVAL_CAPTIONS_CSV} found (looked in {path} and clotho_csv_files/)")
        path = found
    df = read_table(path, required=("caption",))
    queries = df["caption"].tolist()
    for i, q in enumerate(queries):
        if not q.strip():
            raise DataError(f"{path}: row {i + 1}: column 'caption' is empty")
    n_dup = len(queries) - len(set(queries))
    if n_dup:
        log.warning("%s: %d duplicated queries (kept; each gets its own ranking)", path, n_dup)
    return queries


def _name_lookup(names: set[str]) -> dict[str, str]:
    """NFC-normalised name -> name on disk (CSV and file system may differ in Unicode normalisation)."""
    return {unicodedata.normalize("NFC", n): n for n in names}


def _plain_name(audio_dir: Path, fname: str) -> bool:
    """True if the CSV's ``fname`` names a file directly inside ``audio_dir`` (no folders, no ``..``, not absolute)."""
    return Path(fname).name == fname and resolve_inside(audio_dir, fname) is not None


def plan_clotho(root: str | Path, splits: Sequence[str] | None, bad: BadClips) -> tuple[list[str], list[Planned]]:
    """The splits read and the planned (split, clip_id, audio path, captions) clips of the Clotho folder ``root``,
    without touching the audio (see ``read_clotho``). Bad rows go to ``bad``; audio files that the captions CSV
    does not list are left out and recorded with ``bad.drop``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Clotho root not found: {root}")
    if splits is None:
        splits = available_splits(root)
        if not splits:
            raise DataError(
                f"{root}: no Clotho audio folders found; expected {AUDIO_DIR}/<split>/ or <split>/ for "
                f"a split in {list(SPLITS)} (or {RETRIEVAL_AUDIO_DIR}/)"
            )
    splits = list(dict.fromkeys(splits))  # a split named twice is read once
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DataError(f"unknown Clotho split(s) {unknown}; expected some of {list(SPLITS)}")

    planned: list[Planned] = []
    for split in splits:
        audio_dir = clotho_audio_dir(root, split)
        if audio_dir is None:
            where = RETRIEVAL_AUDIO_DIR if split == "retrieval_audio" else f"{AUDIO_DIR}/{split}"
            raise DataError(f"{root}: audio folder for split {split!r} not found (expected {root / where}/)")
        on_disk = dir_index(audio_dir)
        lookup = _name_lookup(on_disk)
        try:
            meta = read_clotho_metadata(root, split)
        except DataError as e:  # metadata is not part of the manifest: a broken file must not block the captions
            log.warning("ignoring unreadable metadata for split %r: %s", split, e)
            meta = None
        if split in CAPTIONED_SPLITS:
            planned += _plan_captioned_split(root, split, audio_dir, on_disk, lookup, meta, bad)
        else:
            planned += _plan_listed_split(split, audio_dir, on_disk, lookup, meta, bad)
    return splits, _unique_clips(planned, bad)


def _plan_captioned_split(
    root: Path,
    split: str,
    audio_dir: Path,
    on_disk: set[str],
    lookup: dict[str, str],
    meta: pd.DataFrame | None,
    bad: BadClips,
) -> list[Planned]:
    """The clips of a captioned split, in captions-CSV order; audio files the CSV does not list are dropped."""
    csv_path = clotho_captions_csv(root, split)
    if csv_path is None:
        raise DataError(f"{root}: clotho_captions_{split}.csv not found (needed for split {split!r})")
    planned: list[Planned] = []
    good, named = _read_captions(csv_path, bad)
    listed = {lookup.get(unicodedata.normalize("NFC", n)) for n in named} - {None}
    for row_no, fname, caps in good:
        if not _plain_name(audio_dir, fname):
            bad(
                fname,
                csv_path,
                f"row {row_no}: column 'file_name' must name a file directly inside {audio_dir} "
                "(found a path with folders, '..' or an absolute path)",
            )
            continue
        disk = lookup.get(unicodedata.normalize("NFC", fname))
        if disk is None:
            bad(fname, audio_dir / fname, f"audio file not found (listed in {csv_path.name} row {row_no})")
            continue
        planned.append((split, fname, audio_dir / disk, caps))
    for name in sorted(n for n in on_disk if is_audio_file(n) and n not in listed):
        bad.drop(name, audio_dir / name, f"audio file not listed in {csv_path.name}; left out")
    if meta is not None:
        missing_meta = sorted({c for s, c, _p, _c in planned if s == split} - set(meta["file_name"]))
        if missing_meta:
            log.warning(
                "%s: %d clip(s) have no metadata row, e.g. %s",
                meta.attrs["path"],
                len(missing_meta),
                missing_meta[:3],
            )
    return planned


def _plan_listed_split(
    split: str,
    audio_dir: Path,
    on_disk: set[str],
    lookup: dict[str, str],
    meta: pd.DataFrame | None,
    bad: BadClips,
) -> list[Planned]:
    """The clips of a caption-less split (test, retrieval audio): every audio file of its folder."""
    names = sorted(n for n in on_disk if is_audio_file(n))
    if meta is not None:
        for i, fname in enumerate(meta["file_name"]):
            if unicodedata.normalize("NFC", fname) not in lookup:
                bad(
                    fname,
                    audio_dir / fname,
                    f"audio file not found (listed in {Path(meta.attrs['path']).name} row {i + 1})",
                )
        extra = sorted(set(names) - {lookup.get(unicodedata.normalize("NFC", f)) for f in meta["file_name"]})
        if extra:
            log.warning("%s: %d audio file(s) have no metadata row (kept), e.g. %s", audio_dir, len(extra), extra[:3])
    if not names:
        raise DataError(f"{audio_dir}: no audio files ({'/'.join(AUDIO_EXTENSIONS)}) for split {split!r}")
    return [(split, n, audio_dir / n, []) for n in names]


def _unique_clips(planned: list[Planned], bad: BadClips) -> list[Planned]:
    """``planned`` without the clips whose file name an earlier split already holds (reported to ``bad``)."""
    first_split: dict[str, str] = {}
    unique: list[Planned] = []
    for item in planned:
        split, clip, path, _caps = item
        if clip in first_split:
            bad(clip, path, f"duplicate file name: also in split {first_split[clip]!r} (clip ids must be unique)")
            continue
        first_split[clip] = split
        unique.append(item)
    return unique


def read_clotho(
    root: str | Path,
    splits: Sequence[str] | None = None,
    *,
    decode_check: bool = True,
    skip_bad: bool = False,
    bad: BadClips | None = None,
    progress: bool = False,
    workers: int = 1,
) -> list[ManifestRow]:
    """Manifest rows (source ``clotho``) for ``splits`` of the Clotho v2.1 folder ``root`` (either layout).

    ``splits``: any of ``SPLITS``; default: every split whose audio folder exists. Captioned splits list
    their clips in the captions CSV (audio files not listed there are left out, with a report line); ``test``
    and ``retrieval_audio`` list the audio folder (captions = []). ``clip_id`` is the file name.
    Bad clips raise DataError, or with ``skip_bad`` (or a ``bad`` collector) are skipped and recorded.
    Durations come from the file header; ``decode_check`` also decodes every file (rejects NaN/inf/empty).
    """
    bad = bad if bad is not None else BadClips(skip_bad)
    n_before = len(bad)
    splits, planned = plan_clotho(root, splits, bad)
    rows = rows_from_plan(planned, "clotho", bad, decode_check, progress, workers, desc="Clotho audio")
    log.info("Clotho %s: %d clips (%d skipped)", list(splits), len(rows), len(bad) - n_before)
    return rows
