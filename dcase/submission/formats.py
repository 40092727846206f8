"""DCASE2024 submission CSVs: Task 6 captions and Task 8 rankings (write, read, validate). The official column
names live here and only here.

* Task 6 (automated audio captioning): ``file_name,caption_predicted``; one row per evaluation clip.
* Task 8 (language-based audio retrieval): ``caption,fname_1,...,fname_10``; one row per query caption, in the
  order of the query file, each with exactly 10 distinct audio file names ranked best first.

CSVs are UTF-8 with RFC 4180 quoting (captions with commas, quotes or newlines round-trip). Readers accept a UTF-8
BOM and refuse any other encoding with the line and byte offset (``dcase.data.common.read_text``), and refuse a row
of another width than the header, naming it (an unquoted comma never shifts or truncates a field). Writers refuse
to overwrite an existing file unless ``overwrite=True`` and write atomically.

Query files are read by ``dcase.data.clotho`` (``read_retrieval_captions`` for ``retrieval_captions.csv``,
``read_clotho_captions`` for a Clotho captions CSV); ``read_queries`` adds the relevant clips of each query.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from dcase.data.audio import is_audio_file
from dcase.errors import InputError, MissingInputError
from dcase.io import atomic_path

log = logging.getLogger(__name__)

TASK6_COLUMNS: tuple[str, str] = ("file_name", "caption_predicted")
TASK8_TOP_K = 10
TASK8_COLUMNS: tuple[str, ...] = ("caption", *(f"fname_{i}" for i in range(1, TASK8_TOP_K + 1)))
_MAX_LISTED = 10


class SubmissionError(InputError):
    """A submission file breaks the official format; the message names the file and the offending rows."""


def problems_error(path: str | Path, problems: list[str]) -> SubmissionError:
    """The error listing a file's problems: their count, the first ten, and how many more."""
    shown = problems[:_MAX_LISTED]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return SubmissionError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more)


def _write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[str]], overwrite: bool) -> Path:
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
    return path


def _read_csv(path: str | Path, header: Sequence[str]) -> list[list[str]]:
    """Rows (without header) of a CSV whose header must equal ``header`` exactly; every row must have its width."""
    from dcase.data.common import read_text

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"submission file {path} does not exist")
    text = read_text(path)  # UTF-8, optional BOM; else an error naming the line and byte offset
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        records = list(reader)
    except csv.Error as e:
        raise SubmissionError(f"{path}: malformed CSV near line {reader.line_num}: {e}") from e
    if not records:
        raise SubmissionError(f"{path}: empty file (expected header {','.join(header)})")
    if tuple(records[0]) != tuple(header):
        raise SubmissionError(f"{path}: header is {','.join(records[0])!r}, expected {','.join(header)!r}")
    problems = [
        f"row {i}: {len(r)} fields, expected {len(header)}"
        for i, r in enumerate(records[1:], start=1)
        if len(r) != len(header)
    ]
    if problems:
        raise problems_error(path, problems)
    return records[1:]


def audio_names(audio_dir: str | Path) -> set[str]:
    """File names of the audio files directly in ``audio_dir`` (the names a submission must use)."""
    d = Path(audio_dir)
    if not d.is_dir():
        raise MissingInputError(f"audio folder {d} does not exist")
    return {p.name for p in d.iterdir() if p.is_file() and is_audio_file(p.name)}


# ------------------------------------------------------------------------------------------------------------
# Task 6
# ------------------------------------------------------------------------------------------------------------


def _task6_problems(rows: Sequence[tuple[str, str]], audio: set[str] | None) -> list[str]:
    problems: list[str] = []
    counts = Counter(name for name, _ in rows)
    for i, (name, caption) in enumerate(rows, start=1):
        if not name.strip():
            problems.append(f"row {i}: empty file_name")
        if not caption.strip():
            problems.append(f"row {i} ({name}): empty caption")
        if counts[name] > 1:
            problems.append(f"row {i}: duplicate file_name {name!r} ({counts[name]} rows)")
    if audio is not None:
        names = set(counts)
        missing = sorted(audio - names)
        extra = sorted(names - audio)
        if missing:
            problems.append(f"{len(missing)} audio clips have no row: {missing[:_MAX_LISTED]}")
        if extra:
            problems.append(f"{len(extra)} rows name clips absent from the audio folder: {extra[:_MAX_LISTED]}")
        if len(rows) != len(audio):
            problems.append(f"{len(rows)} rows for {len(audio)} audio files")
    return problems


def write_task6(
    rows: Sequence[tuple[str, str]], path: str | Path, overwrite: bool = False, audio_dir: str | Path | None = None
) -> Path:
    """Write a Task 6 CSV from (file_name, caption) pairs, after validating them (and the clip set, given the
    audio folder). Refuses to overwrite unless ``overwrite``."""
    rows = [(str(n), str(c)) for n, c in rows]
    problems = _task6_problems(rows, audio_names(audio_dir) if audio_dir else None)
    if problems:
        raise problems_error(path, problems)
    return _write_csv(path, TASK6_COLUMNS, rows, overwrite)


def read_task6(path: str | Path) -> pd.DataFrame:
    """Read a Task 6 CSV -> DataFrame[file_name, caption_predicted] (strings, file order). Checks header/width."""
    recs = _read_csv(path, TASK6_COLUMNS)
    return pd.DataFrame(recs, columns=list(TASK6_COLUMNS), dtype=object)


def validate_task6(path: str | Path, audio_dir: str | Path | None = None) -> pd.DataFrame:
    """Full Task 6 check: header, quoting, no empty caption, no duplicate clip and (given ``audio_dir``) exactly
    one row per audio file. Returns the table; raises :class:`SubmissionError` listing every problem."""
    df = read_task6(path)
    rows = list(zip(df["file_name"], df["caption_predicted"], strict=True))
    problems = _task6_problems(rows, audio_names(audio_dir) if audio_dir else None)
    if problems:
        raise problems_error(path, problems)
    return df


# ------------------------------------------------------------------------------------------------------------
# Task 8
# ------------------------------------------------------------------------------------------------------------


RELEVANT_SEPARATOR = "|"  # several relevant files of one query in a caption,file_name file ('|' is no file-name char)


def _header(path: Path) -> list[str]:
    from dcase.data.common import read_text, sniff_delimiter

    text = read_text(path)
    return [c.strip() for c in next(csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(text)), [])]


def read_queries(path: str | Path) -> tuple[list[str], list[list[str]] | None]:
    """Task 8 queries in order, plus the relevant file names of each query when the file gives them.

    Accepts:

    * ``retrieval_captions.csv`` (one ``caption`` column): queries only (``dcase.data.clotho.read_retrieval_captions``);
    * a Clotho captions CSV (``file_name,caption_1..caption_5``, ``dcase.data.clotho.read_clotho_captions``): every
      caption is a query, row by row, whose one relevant item is its clip (the DCASE development convention);
    * a ground-truth CSV ``caption,file_name``: one row per query; ``file_name`` lists the query's relevant files,
      several separated by ``|`` (``RELEVANT_SEPARATOR``).
    """
    from dcase.data.clotho import CAPTION_COLUMNS, read_clotho_captions, read_retrieval_captions
    from dcase.data.common import read_table

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"query/reference file {path} does not exist")
    header = _header(path)
    if "caption" in header and "file_name" in header:
        # every row must have the header's width: an unquoted comma in a caption is an error naming the row
        df = read_table(path, required=("caption", "file_name"))
        queries = df["caption"].tolist()
        relevant = [[n for n in cell.split(RELEVANT_SEPARATOR) if n.strip()] for cell in df["file_name"]]
        problems = [f"row {i}: empty caption" for i, q in enumerate(queries, start=1) if not q.strip()]
        problems += [f"row {i}: no relevant file_name" for i, r in enumerate(relevant, start=1) if not r]
        if problems:
            raise problems_error(path, problems)
        return queries, relevant
    if "caption" in header:
        return read_retrieval_captions(path), None
    if set(CAPTION_COLUMNS) <= set(header):
        queries, relevant = [], []
        for _, name, captions in read_clotho_captions(path):
            queries.extend(captions)
            relevant.extend([[name]] * len(captions))
        return queries, relevant
    raise SubmissionError(
        f"{path}: expected a 'caption' column (retrieval_captions.csv), 'caption,file_name' (ground truth) or the "
        f"Clotho columns {','.join(CAPTION_COLUMNS)}; found {header}"
    )


def _task8_problems(
    rows: Sequence[tuple[str, Sequence[str]]], audio: set[str] | None, queries: Sequence[str] | None
) -> list[str]:
    problems: list[str] = []
    for i, (caption, names) in enumerate(rows, start=1):
        if not caption.strip():
            problems.append(f"row {i}: empty caption")
        names = list(names)
        if len(names) != TASK8_TOP_K:
            problems.append(f"row {i}: {len(names)} file names, expected {TASK8_TOP_K}")
        if any(not n.strip() for n in names):
            problems.append(f"row {i}: empty file name")
        dup = sorted(n for n, c in Counter(names).items() if c > 1 and n.strip())
        if dup:
            problems.append(f"row {i}: duplicate file names {dup}")
        if audio is not None:
            absent = [n for n in names if n.strip() and n not in audio]
            if absent:
                problems.append(f"row {i}: file names not in the audio folder: {absent}")
    if queries is not None:
        if len(rows) != len(queries):
            problems.append(f"{len(rows)} rows for {len(queries)} queries")
        for i, ((caption, _), q) in enumerate(zip(rows, queries, strict=False), start=1):
            if caption != q:
                problems.append(f"row {i}: caption {caption!r} differs from query {i} {q!r} (order must match)")
    return problems


def write_task8(
    rows: Sequence[tuple[str, Sequence[str]]],
    path: str | Path,
    overwrite: bool = False,
    audio_dir: str | Path | None = None,
    references: str | Path | None = None,
) -> Path:
    """Write a Task 8 CSV from (query caption, 10 ranked file names) pairs, validated first."""
    rows = [(str(c), [str(n) for n in names]) for c, names in rows]
    queries = read_queries(references)[0] if references else None
    problems = _task8_problems(rows, audio_names(audio_dir) if audio_dir else None, queries)
    if problems:
        raise problems_error(path, problems)
    return _write_csv(path, TASK8_COLUMNS, ([c, *names] for c, names in rows), overwrite)


def read_task8(path: str | Path) -> pd.DataFrame:
    """Read a Task 8 CSV -> DataFrame[caption, fname_1..fname_10] (strings, file order). Checks header/width."""
    recs = _read_csv(path, TASK8_COLUMNS)
    return pd.DataFrame(recs, columns=list(TASK8_COLUMNS), dtype=object)


def task8_rows(df: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """A Task 8 table -> [(caption, [fname_1..fname_10])]."""
    cols = list(TASK8_COLUMNS[1:])
    return [(rec["caption"], [rec[c] for c in cols]) for rec in df.to_dict("records")]


def validate_task8(
    path: str | Path, references: str | Path | None = None, audio_dir: str | Path | None = None
) -> pd.DataFrame:
    """Full Task 8 check: header, 10 distinct non-empty names per row, names in ``audio_dir`` (given), and one row
    per query in the query file's order (given ``references``). Raises :class:`SubmissionError`."""
    df = read_task8(path)
    queries = read_queries(references)[0] if references else None
    problems = _task8_problems(task8_rows(df), audio_names(audio_dir) if audio_dir else None, queries)
    if problems:
        raise problems_error(path, problems)
    return df
