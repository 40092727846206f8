"""The DCASE system meta YAML: label, build from a recipe's ``meta`` mapping, validate, write, read, and the one
check for template placeholders (Task 6 and Task 8 recipes alike).

Label: ``<Lastname>_<Institute>_task<6|8>_<1..4>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dcase.errors import InputError, MissingInputError
from dcase.io import atomic_write_text

MAX_ABBREVIATION = 10
LABEL_RE = re.compile(
    r"^(?P<lastname>[A-Za-z][A-Za-z\-]*)_(?P<institute>[A-Za-z0-9\-]+)_task(?P<task>6|8)_(?P<n>[1-4])$"
)
# template values that must be replaced before packaging (compared case-insensitively, stripped)
PLACEHOLDER_VALUES = frozenset(
    {
        "",
        "lastname",
        "last name",
        "firstname",
        "first name",
        "institute",
        "institute name",
        "institution",
        "department",
        "department name",
        "city",
        "country",
        "city, country",
        "location",
        "name",
        "changeme",
        "change me",
        "todo",
        "tbd",
        "xxx",
        "your name",
        "abbreviation",
        "inst",
    }
)
PLACEHOLDER_EMAIL_DOMAINS = ("example.org", "example.com", "example.net")
RESULTS_KEY = "development_testing"  # DCASE's development-testing split (Clotho evaluation)


def make_label(lastname: str, institute: str, task: int, index: int) -> str:
    """``<Lastname>_<Institute>_task<task>_<index>``, validated."""
    label = f"{lastname}_{institute}_task{task}_{index}"
    if not LABEL_RE.match(label):
        raise InputError(
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
    ``technical_report``, ``results`` (development-testing scores, i.e. on Clotho evaluation). Unknown keys are
    an error.
    """
    known = {
        "lastname", "institute", "index", "name", "abbreviation", "authors", "data", "description",
        "total_parameters", "ensemble_num_systems", "external_datasets", "source_code", "technical_report",
        "results", "parameters",
    }  # fmt: skip
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise InputError(f"unknown meta keys {unknown}; valid keys: {sorted(known)}")
    for key in ("lastname", "institute", "index", "name", "abbreviation"):
        if key not in recipe or recipe[key] in (None, ""):
            raise InputError(f"meta: required key {key!r} is missing")
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
        "results": {RESULTS_KEY: dict(recipe.get("results") or {})},
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
        raise InputError("meta: missing 'submission' section")
    label = str(sub.get("label", ""))
    m = LABEL_RE.match(label)
    if not m:
        raise InputError(f"meta: submission.label {label!r} is not <Lastname>_<Institute>_task<6|8>_<1-4>")
    if task is not None and int(m.group("task")) != task:
        raise InputError(f"meta: submission.label {label!r} is for task {m.group('task')}, expected task {task}")
    for key in ("name", "abbreviation"):
        if not str(sub.get(key) or "").strip():
            raise InputError(f"meta: submission.{key} is empty")
    abbr = str(sub["abbreviation"])
    if len(abbr) > MAX_ABBREVIATION:
        raise InputError(
            f"meta: submission.abbreviation {abbr!r} has {len(abbr)} characters (at most {MAX_ABBREVIATION})"
        )
    if not isinstance(meta.get("system"), Mapping):
        raise InputError("meta: missing 'system' section")
    return label


def write_meta(meta: Mapping[str, Any], path: str | Path, overwrite: bool = False) -> Path:
    """Write a meta YAML (validated) atomically; refuses to overwrite unless ``overwrite``."""
    validate_meta(meta)
    path = Path(path)
    atomic_write_text(path, yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True), overwrite=overwrite)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"meta file {path} does not exist")
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 (byte offset {e.start}); re-save it as UTF-8") from e
    except yaml.YAMLError as e:
        raise InputError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(meta, dict):
        raise InputError(f"{path}: not a YAML mapping")
    return meta


def placeholder_fields(meta: Mapping[str, Any]) -> list[str]:
    """Identity fields still holding template placeholders (``Lastname``, ``Institute``, ``Department``,
    ``City, Country``, an ``example.org`` e-mail, ...), as dotted names. Takes a recipe's ``meta`` mapping (lastname,
    institute, authors) or a built meta YAML (``submission.label``, ``submission.authors``); the one check used by
    ``dcase submit``, the pipeline's preflight and the package."""
    if isinstance(meta.get("submission"), Mapping):
        sub = meta["submission"]
        m = LABEL_RE.match(str(sub.get("label", "")))
        ident = {"lastname": m.group("lastname") if m else "", "institute": m.group("institute") if m else ""}
        return [f"submission.{k}" for k in _placeholders({**ident, "authors": sub.get("authors")})]
    return _placeholders(meta)


def _is_placeholder(value: Any) -> bool:
    return str(value if value is not None else "").strip().lower() in PLACEHOLDER_VALUES


def _placeholders(meta: Mapping[str, Any]) -> list[str]:
    bad = [k for k in ("lastname", "institute") if _is_placeholder(meta.get(k))]
    authors = meta.get("authors") or []
    if not authors:
        bad.append("authors (none given)")
    for i, a in enumerate(authors):
        a = a or {}
        for k in ("lastname", "firstname"):
            if _is_placeholder(a.get(k)):
                bad.append(f"authors[{i}].{k}")
        email = str(a.get("email") or "").strip().lower()
        if "@" not in email or email.endswith(PLACEHOLDER_EMAIL_DOMAINS) or _is_placeholder(email.split("@")[0]):
            bad.append(f"authors[{i}].email")
        aff = a.get("affiliation") or {}
        for k in ("abbreviation", "institute", "department", "location"):
            if _is_placeholder(aff.get(k)):
                bad.append(f"authors[{i}].affiliation.{k}")
    return bad
