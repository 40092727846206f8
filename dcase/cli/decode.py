"""Top-level decoding commands: ``dcase generate``, ``dcase soup``, ``dcase tune-rerank``."""

from __future__ import annotations

from pathlib import Path

import typer

from dcase.cli.common import user_errors


def _load_evaluator(spec: str):  # noqa: ANN202 - returns a user callable
    """``package.module:function`` -> the callable (model_dir -> validation score)."""
    import importlib

    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise ValueError(f"--evaluator expects module:function, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import evaluator {spec!r}: {e}") from e
    if not callable(fn):
        raise ValueError(f"evaluator {spec!r} is not callable")
    return fn


def soup(
    checkpoints: list[Path] = typer.Argument(..., help="Checkpoint folders (save_pretrained: *.safetensors + config)."),
    out: Path = typer.Option(..., "--out", help="Folder for the averaged checkpoint."),
    method: str = typer.Option("uniform", "--method", help="uniform | greedy (greedy needs --evaluator)."),
    evaluator: str = typer.Option(
        None, "--evaluator",
        help="greedy: module:function taking a checkpoint folder and returning its validation score.",
    ),
    lower_is_better: bool = typer.Option(False, "--lower-is-better", help="greedy: the score is a loss."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Average fine-tuned checkpoints of one architecture into a model soup (Wortsman et al. 2022).

    Example: dcase soup runs/ft_seed0/best runs/ft_seed1/best runs/ft_seed2/best --out runs/soup
    """
    from dcase.merging import soup_checkpoints

    if method not in ("uniform", "greedy"):
        raise ValueError(f"--method must be uniform or greedy, got {method!r}")
    if method == "greedy" and not evaluator:
        raise ValueError("--method greedy needs --evaluator module:function (checkpoint folder -> score)")
    fn = _load_evaluator(evaluator) if evaluator else None
    path = soup_checkpoints(checkpoints, out, method=method, evaluate_fn=fn, greater_is_better=not lower_is_better,
                            overwrite=overwrite)
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add the decoding commands to the root app."""
    app.command("soup")(user_errors(soup))
