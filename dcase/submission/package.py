"""The submission package: validated systems laid out as in the DCASE submission instructions, and its zip::

    <out>/task6/<Label>/<Label>.output.csv
    <out>/task6/<Label>/<Label>.meta.yaml
    <out>/task6/<Lastname>_<Institute>_task6.technical_report.pdf
    <out>/task8/<Label>/...
    <out>.zip                                   the same tree, the file to upload

Everything is checked before anything is written: the CSVs and meta YAMLs (as ``dcase submit validate``), at most
four systems per task, one team (``<Lastname>_<Institute>``) for all systems, no template placeholder left in any
identity field, and the technical report's file name and format. The folder is built under a temporary name and
renamed into place, so a failure leaves nothing behind.
"""

from __future__ import annotations

import logging
import re
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcase.errors import InputError, MissingInputError
from dcase.io import atomic_dir, atomic_path, check_output
from dcase.submission.formats import validate_task6, validate_task8
from dcase.submission.meta import LABEL_RE, placeholder_fields, read_meta, validate_meta, write_meta

log = logging.getLogger(__name__)

MAX_SYSTEMS_PER_TASK = 4
REPORT_SUFFIX = ".technical_report.pdf"
REPORT_RE = re.compile(r"^(?P<team>[A-Za-z][A-Za-z\-]*_[A-Za-z0-9\-]+)_task(?P<task>6|8)\.technical_report\.pdf$")


class PackageError(InputError):
    """The package cannot be built; the message lists every problem."""


@dataclass
class PackageResult:
    """What ``package_submission`` wrote."""

    folder: Path
    zip: Path
    team: str
    systems: list[str] = field(default_factory=list)  # labels
    technical_report: list[str] = field(default_factory=list)  # report files in the package (empty: none given)


def report_name(team: str, task: int) -> str:
    """The DCASE name of a technical report ``<Lastname>_<Institute>_task<N>.technical_report.pdf``."""
    return f"{team}_task{task}{REPORT_SUFFIX}"


def check_report_name(path: Path, team: str | Mapping[str, Any]) -> None:
    """A technical report must be a PDF named ``<Lastname>_<Institute>_task<6|8>.technical_report.pdf`` of this team
    (``team``: ``Lastname_Institute`` or a mapping with lastname / institute). Raises ``PackageError`` saying what
    name is expected."""
    if isinstance(team, Mapping):
        team = f"{team.get('lastname')}_{team.get('institute')}"
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"technical report {path} does not exist")
    with open(path, "rb") as f:
        if f.read(5) != b"%PDF-":
            raise PackageError(f"technical report {path} is not a PDF file")
    m = REPORT_RE.match(path.name)
    if m is None or m.group("team") != team:
        raise PackageError(
            f"technical report {path.name!r}: DCASE expects {report_name(team, 6)!r} (or _task8); rename the file"
        )


PlannedSystem = tuple[int, Path, dict[str, Any], str]  # (task, output CSV, meta, label)


def _check_systems(
    task: int,
    systems: Sequence[tuple[str | Path, Mapping[str, Any] | str | Path]],
    problems: list[str],
    teams: set[str],
    audio_dir: str | Path | None,
    references8: str | Path | None,
) -> list[PlannedSystem]:
    """Validate one task's systems (meta, unique labels, no placeholders, the output CSV): problems are appended to
    ``problems`` and the team of each label to ``teams``. Returns the systems to package."""
    if len(systems) > MAX_SYSTEMS_PER_TASK:
        problems.append(f"task {task}: {len(systems)} systems, at most {MAX_SYSTEMS_PER_TASK} are allowed")
    plan: list[PlannedSystem] = []
    labels: list[str] = []
    for csv_path, meta in systems:
        meta_d = read_meta(meta) if isinstance(meta, str | Path) else dict(meta)
        label = validate_meta(meta_d, task)
        if label in labels:
            problems.append(f"task {task}: label {label} is used by two systems")
        labels.append(label)
        bad = placeholder_fields(meta_d)
        if bad:
            problems.append(f"{label}: identity fields {bad} still hold template placeholders")
        m = LABEL_RE.match(label)
        if m is not None:
            teams.add(f"{m.group('lastname')}_{m.group('institute')}")
        try:
            if task == 6:
                validate_task6(csv_path, audio_dir)
            else:
                validate_task8(csv_path, references8, audio_dir)
        except InputError as e:
            problems.append(str(e))
        plan.append((task, Path(csv_path), meta_d, label))
    return plan


def _write_package(
    out_dir: Path,
    zip_path: Path,
    plan: list[PlannedSystem],
    team: str,
    tasks: list[int],
    technical_report: str | Path | None,
) -> None:
    """The package folder (``task<k>/<label>/`` with the CSV and meta YAML, the report in each task folder) and its
    zip, each written atomically."""
    with atomic_dir(out_dir) as tmp:
        for task, csv_path, meta_d, label in plan:
            folder = tmp / f"task{task}" / label
            folder.mkdir(parents=True)
            shutil.copyfile(csv_path, folder / f"{label}.output.csv")
            write_meta(meta_d, folder / f"{label}.meta.yaml")
        if technical_report is not None:
            for task in tasks:
                shutil.copyfile(technical_report, tmp / f"task{task}" / report_name(team, task))
    with atomic_path(zip_path) as tmp_zip:
        with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for f in sorted(p for p in out_dir.rglob("*") if p.is_file()):
                z.write(f, f.relative_to(out_dir).as_posix())


def package_submission(
    out_dir: str | Path,
    task6: Sequence[tuple[str | Path, Mapping[str, Any] | str | Path]] = (),
    task8: Sequence[tuple[str | Path, Mapping[str, Any] | str | Path]] = (),
    overwrite: bool = False,
    audio_dir6: str | Path | None = None,
    audio_dir8: str | Path | None = None,
    references8: str | Path | None = None,
    technical_report: str | Path | None = None,
) -> PackageResult:
    """Validate every system and write the package folder ``out_dir`` and ``<out_dir>.zip`` (module docstring).

    ``task6`` / ``task8``: (output CSV, meta mapping or meta YAML path) per system. Refuses an existing ``out_dir``
    (or zip) unless ``overwrite``. Without a technical report the package is written with a warning: DCASE needs one.
    """
    out_dir = Path(out_dir)
    zip_path = out_dir.with_name(out_dir.name + ".zip")
    check_output(out_dir, overwrite, kind="folder")
    check_output(zip_path, overwrite)
    problems: list[str] = []
    plan: list[PlannedSystem] = []
    teams: set[str] = set()
    for task, systems in ((6, task6), (8, task8)):
        plan += _check_systems(task, systems, problems, teams, audio_dir6 if task == 6 else audio_dir8, references8)
    if not plan:
        problems.append("nothing to package: give at least one Task 6 or Task 8 system")
    if len(teams) > 1:
        problems.append(f"the systems belong to several teams {sorted(teams)}; one package holds one team's systems")
    team = next(iter(teams)) if len(teams) == 1 else ""
    if technical_report is not None and team:
        try:
            check_report_name(Path(technical_report), team)
        except InputError as e:
            problems.append(str(e))
    if problems:
        raise PackageError(
            f"cannot build the package {out_dir}: {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )
    tasks = sorted({t for t, *_ in plan})
    _write_package(out_dir, zip_path, plan, team, tasks, technical_report)
    reports = [report_name(team, t) for t in tasks] if technical_report is not None else []
    if not reports:
        log.warning(
            "%s: no technical report in the package; DCASE needs %s in each task folder",
            out_dir,
            report_name(team, tasks[0]),
        )
    log.info("package %s (%d systems) and %s", out_dir, len(plan), zip_path)
    return PackageResult(out_dir, zip_path, team, [lbl for *_, lbl in plan], reports)
