"""Helpers shared by the CLI modules: logging set-up, error reporting, repeated ``--set`` options."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import typer

from dcase.errors import DcaseError

P = ParamSpec("P")
R = TypeVar("R")

CONFIG_OPTION = typer.Option(None, "--config", "-c", help="YAML config file (see configs/).")
SET_OPTION = typer.Option(
    None, "--set", "-s", help="Dotted override, repeatable: --set train.max_steps=10 --set model.d_model=64"
)
REPORT_TO_OPTION = typer.Option(
    None,
    "--report-to",
    help="Experiment trackers (Accelerate): auto (TensorBoard when installed; the default), none, all, or names "
    "such as wandb,mlflow (same as --set train.report_to=...).",
)


def with_report_to(overrides: list[str] | None, report_to: str | None) -> list[str]:
    """``--set`` overrides plus ``train.report_to`` from ``--report-to`` (the training commands)."""
    return [*(overrides or []), *([f"train.report_to={report_to}"] if report_to else [])]


def process_rank() -> tuple[int, int]:
    """(global rank, number of processes) of this process as set by the launcher (``torchrun`` /
    ``python -m torch.distributed.run``, ``accelerate launch``: ``RANK``, ``WORLD_SIZE``); (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single-process run): the process that logs and writes outputs."""
    return process_rank()[0] == 0


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr. Under several processes every line carries ``[rank r/N]``, and only rank 0 logs below
    WARNING: the other ranks report warnings and errors only (their info would repeat rank 0's)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rank, world = process_rank()
    where = f"[rank {rank}/{world}] " if world > 1 else ""
    if rank != 0:
        level = max(level, logging.WARNING)
    logging.basicConfig(
        level=level, format=f"%(asctime)s {where}%(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True
    )
    for noisy in ("urllib3", "matplotlib", "filelock", "httpx", "fsspec", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def one_line(error: BaseException) -> str:
    """An error message on one line: the lines of a multi-line message (lists of problems) joined by ``; ``."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    head, rest = lines[0], lines[1:]
    return head + (" " + "; ".join(rest) if rest else "")


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """The error boundary of a command: a ``DcaseError`` (bad input, files or configuration) is printed as one
    line and exits with status 2; anything else is a bug and keeps its traceback. ``DCASE_TRACEBACK=1`` shows the
    traceback of domain errors too.

    The OS errors that can only concern a path the user chose (a folder where a file is written, a path under a
    regular file, a permission refused) are reported the same way, naming the path; the writers check their
    outputs first (``dcase.io.check_output``), this is the net under them."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except DcaseError as e:
            if os.environ.get("DCASE_TRACEBACK"):
                raise
            typer.secho(f"error: {one_line(e)}", fg=typer.colors.RED, err=True)
            sys.exit(2)
        except (IsADirectoryError, NotADirectoryError, PermissionError) as e:
            # always about a path the user chose (an --out naming a folder, a path under a file, no permission)
            if os.environ.get("DCASE_TRACEBACK") or not e.filename:
                raise
            typer.secho(f"error: {e.filename}: {e.strerror}; choose another path", fg=typer.colors.RED, err=True)
            sys.exit(2)

    return wrapper
