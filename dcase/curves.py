"""Training curves from a run's ``train_log.jsonl`` (written by ``dcase.training``): loss, learning rate, samples/s
and every validation metric, drawn to one PNG (``curves.png``; ``dcase plot RUN_DIR``).

The log has two kinds of records: training records (``step``, ``epoch``, ``lr``, ``samples_per_s``, ``loss`` and the
task's other numeric parts) and evaluation records (``step`` and ``eval/<metric>``). A resumed run may log a step
twice (the updates between the last saved state and the interruption are redone): the last record of a step wins.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from dcase.errors import InputError, MissingInputError

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
CURVES_FILE = "curves.png"
EVAL_PREFIX = "eval/"


def read_train_log(path: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{"train": {key: [(step, value), ...]}, "eval": {metric: [(step, value), ...]}}`` from a ``train_log.jsonl``
    (or the run folder holding it); numeric values only, sorted by step, the last record of a step kept."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    if not path.is_file():
        raise MissingInputError(f"{path}: no training log (a training run folder holds {LOG_FILE})")
    series: dict[str, dict[str, dict[int, float]]] = {"train": {}, "eval": {}}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            step = int(rec["step"])
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}:{n}: not a training log record ({e!r})") from e
        for key, value in rec.items():
            if key in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(float(value)):
                continue
            kind, name = ("eval", key[len(EVAL_PREFIX) :]) if key.startswith(EVAL_PREFIX) else ("train", key)
            series[kind].setdefault(name, {})[step] = float(value)
    return {kind: {k: sorted(v.items()) for k, v in d.items()} for kind, d in series.items()}


def _panels(series: dict[str, dict[str, list[tuple[int, float]]]]) -> list[tuple[str, list[tuple[str, Any]]]]:
    """(title, [(label, points)]) of every panel: loss (training losses + validation loss), learning rate,
    samples/s, then one panel per other validation metric."""
    train, evals = series["train"], series["eval"]
    losses = [(k, v) for k, v in train.items() if "loss" in k] + [
        (f"validation {k}", v) for k, v in evals.items() if k == "loss"
    ]
    panels: list[tuple[str, list[tuple[str, Any]]]] = []
    if losses:
        panels.append(("loss", losses))
    if "lr" in train:
        panels.append(("learning rate", [("lr", train["lr"])]))
    if "samples_per_s" in train:
        panels.append(("samples / s", [("samples/s", train["samples_per_s"])]))
    for k, v in evals.items():
        if k != "loss":
            panels.append((f"validation {k}", [(k, v)]))
    return panels


def plot_curves(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Draw the curves of a training run (its folder or its ``train_log.jsonl``) to ``out`` (default
    ``<run>/curves.png``), atomically. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dcase.io import atomic_path

    run = Path(run_dir)
    folder = run if run.is_dir() else run.parent
    series = read_train_log(run)
    panels = _panels(series)
    if not panels:
        raise InputError(f"{folder / LOG_FILE}: no numeric records to plot yet")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, lines) in zip(axes.flat, panels, strict=False):
        for label, points in lines:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel("update")
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if len(lines) > 1:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title or folder.name)
    fig.tight_layout()
    target = Path(out) if out is not None else folder / CURVES_FILE
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return target
