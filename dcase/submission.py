"""DCASE2024 submission files: Task 6 captions and Task 8 rankings (write, read, validate), system meta YAML and
the submission package layout.

Formats (the official column names live here and only here):

* Task 6 (automated audio captioning): ``file_name,caption_predicted``; one row per evaluation clip.
* Task 8 (language-based audio retrieval): ``caption,fname_1,...,fname_10``; one row per query caption, in the
  order of the query file, each with exactly 10 distinct audio file names ranked best first.

CSVs are UTF-8 with RFC 4180 quoting (captions with commas, quotes or newlines round-trip). Writers refuse to
overwrite an existing file unless ``overwrite=True`` and write atomically. Package layout (one folder per system,
as in the DCASE submission instructions)::

    <out>/task6/<Label>/<Label>.output.csv
    <out>/task6/<Label>/<Label>.meta.yaml
    <out>/task8/<Label>/...

with ``<Label> = <Lastname>_<Institute>_task<6|8>_<1..4>``.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from dcase.data.audio import is_audio_file
from dcase.errors import InputError, MissingInputError, OutputExistsError
from dcase.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

TASK6_COLUMNS: tuple[str, str] = ("file_name", "caption_predicted")
TASK8_TOP_K = 10
TASK8_COLUMNS: tuple[str, ...] = ("caption", *(f"fname_{i}" for i in range(1, TASK8_TOP_K + 1)))
MAX_ABBREVIATION = 10
MAX_SYSTEMS_PER_TASK = 4
LABEL_RE = re.compile(
    r"^(?P<lastname>[A-Za-z][A-Za-z\-]*)_(?P<institute>[A-Za-z0-9\-]+)_task(?P<task>6|8)_(?P<n>[1-4])$"
)
_MAX_LISTED = 10


class SubmissionError(InputError):
    """A submission file breaks the official format; the message names the file and the offending rows."""


def _problems(path: str | Path, problems: list[str]) -> SubmissionError:
    shown = problems[:_MAX_LISTED]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return SubmissionError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more)


def _write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[str]], overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
    return path


def _read_csv(path: str | Path, header: Sequence[str]) -> list[list[str]]:
    """Rows (without header) of a CSV whose header must equal ``header`` exactly; every row must have its width."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"submission file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SubmissionError(f"{path}: not UTF-8 ({e})") from e
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
        raise _problems(path, problems)
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
        raise _problems(path, problems)
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
        raise _problems(path, problems)
    return df


# ------------------------------------------------------------------------------------------------------------
# Task 8
# ------------------------------------------------------------------------------------------------------------


def read_queries(path: str | Path) -> tuple[list[str], list[str] | None]:
    """Query captions in order, plus the relevant file name of each query when the file says it.

    Accepts a queries CSV with a ``caption`` column (the Task 8 evaluation query file; a ``file_name`` column,
    when present, gives the relevant clips), or a Clotho captions CSV (``file_name,caption_1..caption_5``): every
    caption is a query, row by row, relevant to its clip.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"query/reference file {path} does not exist")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    cap_cols = [c for c in df.columns if re.fullmatch(r"caption_\d+", str(c))]
    if "caption" in df.columns:
        rel = df["file_name"].tolist() if "file_name" in df.columns else None
        queries = df["caption"].tolist()
    elif cap_cols and "file_name" in df.columns:
        queries, rel = [], []
        for rec in df[["file_name", *cap_cols]].to_dict("records"):
            for c in cap_cols:
                if rec[c].strip():
                    queries.append(rec[c])
                    rel.append(rec["file_name"])
    else:
        raise SubmissionError(
            f"{path}: expected a 'caption' column or Clotho columns file_name,caption_1..; found {list(df.columns)}"
        )
    empty = [i + 1 for i, q in enumerate(queries) if not q.strip()]
    if empty:
        raise SubmissionError(f"{path}: empty query caption at rows {empty[:_MAX_LISTED]}")
    return queries, rel


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


def task8_rows_from_scores(
    queries: Sequence[str], file_names: Sequence[str], sim: Any, k: int = TASK8_TOP_K
) -> list[tuple[str, list[str]]]:
    """(query, k best file names) per query from a similarity matrix sim [Q, N] (higher = better). Ties are broken
    by item order (stable), so the ranking is deterministic. ``file_names`` [N] must be distinct."""
    import numpy as np

    sim = np.asarray(sim)
    if sim.shape != (len(queries), len(file_names)):
        raise ValueError(f"sim has shape {sim.shape}, expected ({len(queries)}, {len(file_names)})")
    if len(set(file_names)) != len(file_names):
        dup = sorted(n for n, c in Counter(file_names).items() if c > 1)
        raise ValueError(f"duplicate audio file names: {dup[:_MAX_LISTED]}")
    if len(file_names) < k:
        raise ValueError(f"only {len(file_names)} audio files for a top-{k} ranking")
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return [(q, [file_names[j] for j in row]) for q, row in zip(queries, order, strict=True)]


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
        raise _problems(path, problems)
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
        raise _problems(path, problems)
    return df


# ------------------------------------------------------------------------------------------------------------
# Meta YAML and packaging
# ------------------------------------------------------------------------------------------------------------


def make_label(lastname: str, institute: str, task: int, index: int) -> str:
    """``<Lastname>_<Institute>_task<task>_<index>``, validated."""
    label = f"{lastname}_{institute}_task{task}_{index}"
    if not LABEL_RE.match(label):
        raise ValueError(
            f"invalid submission label {label!r}: expected <Lastname>_<Institute>_task<6|8>_<1-4> "
            "(letters/hyphens in the last name, letters/digits/hyphens in the institute abbreviation)"
        )
    return label


_DESCRIPTION_KEYS = (
    "input_sampling_rate",
    "acoustic_features",
    "data_augmentation",
    "embeddings",
    "machine_learning_method",
    "text_encoder",
    "audio_encoder",
    "pretraining",
    "decoding",
    "reranking",
    "ensemble_method",
    "ensemble_num_systems",
)


def build_meta(recipe: Mapping[str, Any], task: int) -> dict[str, Any]:
    """System meta information in the DCASE meta-YAML structure, filled from a recipe's ``meta`` mapping.

    Recipe keys: ``lastname``, ``institute``, ``index`` (1-4), ``name``, ``abbreviation`` (<= 10 chars),
    ``authors`` (list of {lastname, firstname, email, corresponding, affiliation: {abbreviation, institute,
    department, location}}), ``data`` (datasets used), ``description`` (mapping with e.g. input_sampling_rate,
    acoustic_features, data_augmentation, embeddings, machine_learning_method, ...), ``total_parameters``,
    ``ensemble_num_systems``, ``external_datasets`` (list of {name, url, total_audio_length}), ``source_code``,
    ``technical_report``, ``results`` (development-evaluation scores). Unknown keys are an error.
    """
    known = {
        "lastname", "institute", "index", "name", "abbreviation", "authors", "data", "description",
        "total_parameters", "ensemble_num_systems", "external_datasets", "source_code", "technical_report",
        "results", "parameters",
    }  # fmt: skip
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"unknown meta keys {unknown}; valid keys: {sorted(known)}")
    for key in ("lastname", "institute", "index", "name", "abbreviation"):
        if key not in recipe or recipe[key] in (None, ""):
            raise ValueError(f"meta: required key {key!r} is missing")
    label = make_label(str(recipe["lastname"]), str(recipe["institute"]), task, int(recipe["index"]))
    description = dict(recipe.get("description") or {})
    if "ensemble_num_systems" in recipe:
        description["ensemble_num_systems"] = int(recipe["ensemble_num_systems"])
    description.setdefault("ensemble_num_systems", 1)
    if recipe.get("data"):
        description["train_datasets"] = list(recipe["data"])
    meta: dict[str, Any] = {
        "submission": {
            "label": label,
            "name": str(recipe["name"]),
            "abbreviation": str(recipe["abbreviation"]),
            "authors": list(recipe.get("authors") or []),
        },
        "system": {
            "description": description,
            "complexity": {"total_parameters": recipe.get("total_parameters")},
            "external_datasets": list(recipe.get("external_datasets") or []),
            "source_code": recipe.get("source_code"),
        },
        "results": {"development_evaluation": dict(recipe.get("results") or {})},
    }
    if recipe.get("parameters"):
        meta["system"]["parameters"] = dict(recipe["parameters"])
    if recipe.get("technical_report"):
        meta["submission"]["technical_report"] = recipe["technical_report"]
    validate_meta(meta, task)
    return meta


def validate_meta(meta: Mapping[str, Any], task: int | None = None) -> str:
    """Check a meta mapping's required fields; return its label. Raises ValueError naming the field."""
    sub = meta.get("submission")
    if not isinstance(sub, Mapping):
        raise ValueError("meta: missing 'submission' section")
    label = str(sub.get("label", ""))
    m = LABEL_RE.match(label)
    if not m:
        raise ValueError(f"meta: submission.label {label!r} is not <Lastname>_<Institute>_task<6|8>_<1-4>")
    if task is not None and int(m.group("task")) != task:
        raise ValueError(f"meta: submission.label {label!r} is for task {m.group('task')}, expected task {task}")
    for key in ("name", "abbreviation"):
        if not str(sub.get(key) or "").strip():
            raise ValueError(f"meta: submission.{key} is empty")
    abbr = str(sub["abbreviation"])
    if len(abbr) > MAX_ABBREVIATION:
        raise ValueError(
            f"meta: submission.abbreviation {abbr!r} has {len(abbr)} characters (at most {MAX_ABBREVIATION})"
        )
    if not isinstance(meta.get("system"), Mapping):
        raise ValueError("meta: missing 'system' section")
    return label


def write_meta(meta: Mapping[str, Any], path: str | Path, overwrite: bool = False) -> Path:
    """Write a meta YAML (validated) atomically; refuses to overwrite unless ``overwrite``."""
    validate_meta(meta)
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    atomic_write_text(path, yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True))
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"meta file {path} does not exist")
    meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return meta


def package_submission(
    out_dir: str | Path,
    task6: Sequence[tuple[str | Path, Mapping[str, Any] | str | Path]] = (),
    task8: Sequence[tuple[str | Path, Mapping[str, Any] | str | Path]] = (),
    overwrite: bool = False,
    audio_dir6: str | Path | None = None,
    audio_dir8: str | Path | None = None,
    references8: str | Path | None = None,
    technical_report: str | Path | None = None,
) -> list[Path]:
    """Validate and lay out systems as ``<out>/task<k>/<Label>/<Label>.output.csv`` + ``<Label>.meta.yaml``.

    ``task6`` / ``task8``: (output CSV, meta mapping or meta YAML path) per system, at most 4 per task, distinct
    labels. Everything is validated before anything is written; an existing system folder is an error unless
    ``overwrite``. Returns the system folders.
    """
    out_dir = Path(out_dir)
    plan: list[tuple[int, Path, dict[str, Any], str]] = []
    for task, systems in ((6, task6), (8, task8)):
        if len(systems) > MAX_SYSTEMS_PER_TASK:
            raise ValueError(f"task {task}: {len(systems)} systems, at most {MAX_SYSTEMS_PER_TASK} are allowed")
        labels: list[str] = []
        for csv_path, meta in systems:
            meta_d = read_meta(meta) if isinstance(meta, str | Path) else dict(meta)
            label = validate_meta(meta_d, task)
            if label in labels:
                raise ValueError(f"task {task}: label {label} is used by two systems")
            labels.append(label)
            if task == 6:
                validate_task6(csv_path, audio_dir6)
            else:
                validate_task8(csv_path, references8, audio_dir8)
            plan.append((task, Path(csv_path), meta_d, label))
    if not plan:
        raise ValueError("nothing to package: give at least one Task 6 or Task 8 system")
    for task, _, _, label in plan:
        folder = out_dir / f"task{task}" / label
        if folder.exists() and not overwrite:
            raise OutputExistsError(f"{folder} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    written = []
    for task, csv_path, meta_d, label in plan:
        folder = out_dir / f"task{task}" / label
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / f"{label}.output.csv") as tmp:
            shutil.copyfile(csv_path, tmp)
        write_meta(meta_d, folder / f"{label}.meta.yaml", overwrite=True)
        written.append(folder)
        log.info("packaged %s", folder)
    if technical_report:
        for task in sorted({t for t, *_ in plan}):
            first = next(lbl for t, _, _, lbl in plan if t == task)
            name = "_".join(first.split("_")[:2]) + f"_task{task}.technical_report.pdf"
            with atomic_path(out_dir / f"task{task}" / name) as tmp:
                shutil.copyfile(technical_report, tmp)
    return written


# ------------------------------------------------------------------------------------------------------------
# Task 8 scoring from files
# ------------------------------------------------------------------------------------------------------------


def ranked_list_metrics(ranked: Sequence[Sequence[str]], relevant: Sequence[str]) -> dict[str, float]:
    """Task 8 metrics over ranked name lists: ranked [Q][<=10] file names (best first), relevant [Q] file name.

    mAP@10 = mean over queries of 1/rank of the relevant clip if it is within the 10 names, else 0 (one relevant
    clip per query); R@k = fraction of queries whose relevant clip is in the first k names.
    """
    if len(ranked) != len(relevant):
        raise ValueError(f"found {len(ranked)} ranked lists for {len(relevant)} relevant clips")
    if not ranked:
        raise ValueError("no queries to score")
    rr, hits = [], {1: [], 5: [], 10: []}
    for names, rel in zip(ranked, relevant, strict=True):
        names = list(names)[:TASK8_TOP_K]
        rank = names.index(rel) + 1 if rel in names else None
        rr.append(1.0 / rank if rank else 0.0)
        for k in hits:
            hits[k].append(rank is not None and rank <= k)
    n = len(ranked)
    return {
        "map_at_10": sum(rr) / n,
        "r_at_1": sum(hits[1]) / n,
        "r_at_5": sum(hits[5]) / n,
        "r_at_10": sum(hits[10]) / n,
        "n_queries": n,
    }


def score_task8_files(predictions: str | Path, references: str | Path) -> dict[str, float]:
    """Score a Task 8 CSV against the query captions with their relevant clips (a Clotho captions CSV: every
    caption is a query relevant to its own clip; or a ``caption,file_name`` CSV).

    Rows are matched to queries in order when the captions agree row by row; otherwise by caption text, repeated
    captions being matched in order of appearance. Missing, extra or unmatched queries are errors naming them.
    """
    df = read_task8(predictions)
    rows = task8_rows(df)
    queries, relevant = read_queries(references)
    if relevant is None:
        raise SubmissionError(f"{references}: has no file_name column, so the relevant clips are unknown")
    if len(rows) == len(queries) and all(c == q for (c, _), q in zip(rows, queries, strict=True)):
        ranked = [names for _, names in rows]
        return ranked_list_metrics(ranked, relevant)
    by_text: dict[str, list[list[str]]] = {}
    for caption, names in rows:
        by_text.setdefault(caption, []).append(names)
    problems = []
    want = Counter(queries)
    for text, lists in by_text.items():
        if len(lists) != want.get(text, 0):
            problems.append(f"caption {text!r}: {len(lists)} rows for {want.get(text, 0)} queries")
    for text in want:
        if text not in by_text:
            problems.append(f"query {text!r} has no row")
    if problems:
        raise _problems(predictions, problems)
    ranked = [by_text[q].pop(0) for q in queries]
    return ranked_list_metrics(ranked, relevant)
