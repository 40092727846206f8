"""The submission package: validated systems laid out as in the DCASE submission instructions::

<out>/task6/<Label>/<Label>.output.csv
<out>/task6/<Label>/<Label>.meta.yaml
<out>/task8/<Label>/...
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dcase.errors import OutputExistsError
from dcase.io import atomic_path
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
