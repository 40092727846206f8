"""The submission package: validated systems laid out as in the DCASE submission instructions::

<out>/task6/<Label>/<Label>.output.csv
<out>/task6/<Label>/<Label>.meta.yaml
<out>/task8/<Label>/...
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dcase.errors import InputError, MissingInputError, OutputExistsError
from dcase.io import atomic_dir, check_output
from dcase.submission.formats import validate_task6, validate_task8
from dcase.submission.meta import read_meta, validate_meta, write_meta

log = logging.getLogger(__name__)

MAX_SYSTEMS_PER_TASK = 4


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
    labels; ``technical_report``: a PDF, copied as ``task<k>/<Lastname>_<Institute>_task<k>.technical_report.pdf``.
    Everything is validated before anything is written; an existing system folder or report is an error unless
    ``overwrite``. The package is built in a temporary folder and renamed into place, so a failure leaves
    ``out_dir`` as it was. Returns the system folders.
    """
    out_dir = Path(out_dir)
    plan: list[tuple[int, Path, dict[str, Any], str]] = []
    for task, systems in ((6, task6), (8, task8)):
        if len(systems) > MAX_SYSTEMS_PER_TASK:
            raise InputError(f"task {task}: {len(systems)} systems, at most {MAX_SYSTEMS_PER_TASK} are allowed")
        labels: list[str] = []
        for csv_path, meta in systems:
            meta_d = read_meta(meta) if isinstance(meta, str | Path) else dict(meta)
            label = validate_meta(meta_d, task)
            if label in labels:
                raise InputError(f"task {task}: label {label} is used by two systems")
            labels.append(label)
            if task == 6:
                validate_task6(csv_path, audio_dir6)
            else:
                validate_task8(csv_path, references8, audio_dir8)
            plan.append((task, Path(csv_path), meta_d, label))
    if not plan:
        raise InputError("nothing to package: give at least one Task 6 or Task 8 system")
    reports: list[Path] = []
    if technical_report:
        report = Path(technical_report)
        if not report.is_file():
            raise MissingInputError(f"technical report {report} does not exist")
        with open(report, "rb") as f:
            if not f.read(5).startswith(b"%PDF-"):
                raise InputError(f"{report}: not a PDF file (it does not start with %PDF-); give the report as PDF")
        for task in sorted({t for t, *_ in plan}):
            first = next(lbl for t, _, _, lbl in plan if t == task)
            reports.append(Path(f"task{task}") / ("_".join(first.split("_")[:2]) + f"_task{task}.technical_report.pdf"))
    check_output(out_dir, overwrite=True, kind="folder")  # a package folder grows system by system
    targets = [Path(f"task{task}") / label for task, _, _, label in plan] + reports
    for rel in targets:
        if (out_dir / rel).exists() and not overwrite:
            raise OutputExistsError(f"{out_dir / rel} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    # Built in a temporary folder beside out_dir (holding a copy of what out_dir had) and renamed into place:
    # a failure leaves out_dir as it was and no partial package.
    with atomic_dir(out_dir, overwrite=True) as tmp:
        if out_dir.is_dir():
            shutil.copytree(out_dir, tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
        for rel in targets:
            if (tmp / rel).is_dir():
                shutil.rmtree(tmp / rel)
            else:
                (tmp / rel).unlink(missing_ok=True)
        for task, csv_path, meta_d, label in plan:
            folder = tmp / f"task{task}" / label
            folder.mkdir(parents=True)
            shutil.copyfile(csv_path, folder / f"{label}.output.csv")
            write_meta(meta_d, folder / f"{label}.meta.yaml", overwrite=True)
        for rel in reports:
            shutil.copyfile(technical_report, tmp / rel)
    written = [out_dir / f"task{task}" / label for task, _, _, label in plan]
    for folder in written:
        log.info("packaged %s", folder)
    return written


def _link_or_copy(src: str, dst: str) -> str:
    """Hard-link unchanged files of the previous package into the new one (files are only ever replaced, never
    modified in place), or copy them where links are not possible."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
