"""Top-level decoding commands: ``dcase generate``, ``dcase soup``, ``dcase tune-rerank``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from dcase.cli.common import user_errors
from dcase.errors import InputError


def _load_evaluator(spec: str) -> Callable[[Path], float]:
    """``package.module:function`` -> the callable (model_dir -> validation score)."""
    import importlib

    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise InputError(f"--evaluator expects module:function, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise InputError(f"cannot import evaluator {spec!r}: {e}") from e
    if not callable(fn):
        raise InputError(f"evaluator {spec!r} is not callable")
    return fn


def soup(
    checkpoints: list[Path] = typer.Argument(..., help="Checkpoint folders (save_pretrained: *.safetensors + config)."),
    out: Path = typer.Option(..., "--out", help="Folder for the averaged checkpoint."),
    method: str = typer.Option("uniform", "--method", help="uniform | greedy (greedy needs --evaluator)."),
    evaluator: str = typer.Option(
        None,
        "--evaluator",
        help="greedy: 'captioner' (built in: greedy captions of --split scored with --metric) or module:function "
        "taking a checkpoint folder and returning its validation score.",
    ),
    manifest: Path = typer.Option(None, "--manifest", "-m", help="--evaluator captioner: manifest with references."),
    split: str = typer.Option("validation", "--split", help="--evaluator captioner: split to score."),
    codec_store: list[Path] = typer.Option(None, "--codec-store", help="--evaluator captioner: DAC code store(s)."),
    embed_store: list[Path] = typer.Option(
        None, "--embed-store", help="--evaluator captioner: clip-embedding store(s)."
    ),
    metric: str = typer.Option("cider_d", "--metric", help="--evaluator captioner: metric (cider_d, meteor, ...)."),
    max_clips: int = typer.Option(0, "--max-clips", help="--evaluator captioner: score only the first N clips."),
    lower_is_better: bool = typer.Option(False, "--lower-is-better", help="greedy: the score is a loss."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Average fine-tuned checkpoints of one architecture into a model soup (Wortsman et al. 2022).

    Examples:
      dcase soup runs/ft_seed0/best runs/ft_seed1/best runs/ft_seed2/best --out runs/soup
      dcase soup runs/ft_seed*/best --out runs/greedy_soup --method greedy --evaluator captioner
        --manifest manifests/clotho.parquet --split validation --codec-store features/dac_clotho
        --embed-store features/emb_clotho
    """
    from dcase.merging import soup_checkpoints

    if method not in ("uniform", "greedy"):
        raise InputError(f"--method must be uniform or greedy, got {method!r}")
    if method == "greedy" and not evaluator:
        raise InputError("--method greedy needs --evaluator captioner (or module:function: checkpoint folder -> score)")
    fn: Callable[[Path], float] | None
    if evaluator == "captioner":
        import functools

        from dcase.stages.captioner import validation_score

        if manifest is None or not codec_store or not embed_store:
            raise InputError("--evaluator captioner needs --manifest, --codec-store and --embed-store")
        fn = functools.partial(
            validation_score,
            manifest=manifest,
            split=split,
            codec_stores=codec_store,
            embed_stores=embed_store,
            metric=metric,
            max_clips=max_clips,
        )
    else:
        fn = _load_evaluator(evaluator) if evaluator else None
    path = soup_checkpoints(
        checkpoints, out, method=method, evaluate_fn=fn, greater_is_better=not lower_is_better, overwrite=overwrite
    )
    typer.echo(str(path))


def generate(
    captioner: list[Path] = typer.Option(
        None, "--captioner", help="EnCLAP checkpoint folder (repeat for an ensemble)."
    ),
    ensemble: str = typer.Option(None, "--ensemble", help="token | pool: how several captioners are combined."),
    retriever: Path = typer.Option(None, "--retriever", help="Retriever folder for the encoder score."),
    manifest: Path = typer.Option(None, "--manifest", "-m", help="Manifest parquet of the clips."),
    split: str = typer.Option(None, "--split", help="Only this split of the manifest."),
    codec_store: list[Path] = typer.Option(None, "--codec-store", help="DAC code store (repeatable)."),
    embed_store: list[Path] = typer.Option(None, "--embed-store", help="Clip-embedding store (repeatable)."),
    out: Path = typer.Option(None, "--out", "-o", help="Candidates table (.parquet); sidecar <stem>.json."),
    fluency_checker: Path = typer.Option(None, "--fluency-checker", help="FENSE checker checkpoint (else filter off)."),
    fluency_backbone: Path = typer.Option(None, "--fluency-backbone", help="Local BERT folder for the checker."),
    fluency_scope: str = typer.Option(
        None,
        "--fluency-scope",
        help="lazy (default): check candidates in score order until one is fluent, same selection, ~1 checker "
        "batch per clip; all: check every candidate (use it for tables you will pass to dcase tune-rerank).",
    ),
    w_enc: float = typer.Option(None, "--w-enc", help="Encoder (retriever) score weight [0.7]."),
    w_dec: float = typer.Option(None, "--w-dec", help="Decoder (log-likelihood) score weight [0.3]."),
    greedy: bool = typer.Option(False, "--greedy", help="One greedy caption per clip instead of sampling."),
    beam: int = typer.Option(None, "--beam", help="Beam search with N beams instead of sampling."),
    device: str = typer.Option(None, "--device", help="cpu | cuda | cuda:1 ..."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML (configs/dcase2024/generate.yaml)."),
    overrides: list[str] = typer.Option(
        None, "--set", "-s", help="Dotted override: --set generation.sampling.num_candidates=10"
    ),
) -> None:
    """Sample candidate captions, score (retriever cosine, log-likelihood, FENSE fluency) and rerank them.

    Example: dcase generate --captioner runs/enclap_ft/best --retriever runs/retriever/best
    --manifest data/clotho/manifest.parquet --split validation --codec-store features/dac_clotho
    --embed-store features/emb_clotho --out runs/gen/candidates.parquet

    Resumable: rerun the same command after an interruption. Several --captioner: --ensemble token|pool.
    """
    from dcase.config import load_config
    from dcase.stages.generation import GenerateConfig, generate_candidates

    cfg = load_config(GenerateConfig, config, list(overrides or []))
    given: dict[str, Any] = {
        "captioners": [str(p) for p in captioner] if captioner else None,
        "retriever": str(retriever) if retriever else None,
        "manifest": str(manifest) if manifest else None,
        "split": split,
        "codec_stores": [str(p) for p in codec_store] if codec_store else None,
        "embed_stores": [str(p) for p in embed_store] if embed_store else None,
        "out": str(out) if out else None,
        "device": device,
    }
    gen_given: dict[str, Any] = {
        "ensemble": ensemble,
        "fluency_checker": str(fluency_checker) if fluency_checker else None,
        "fluency_backbone": str(fluency_backbone) if fluency_backbone else None,
        "w_enc": w_enc,
        "fluency_scope": fluency_scope,
        "w_dec": w_dec,
    }
    if greedy and beam:
        raise InputError("give at most one of --greedy and --beam N")
    if greedy:
        gen_given["mode"] = "greedy"
    if beam:
        gen_given.update(mode="beam", num_beams=beam)
    generation = dataclasses.replace(cfg.generation, **{k: v for k, v in gen_given.items() if v is not None})
    cfg = dataclasses.replace(cfg, generation=generation, **{k: v for k, v in given.items() if v is not None})
    table = generate_candidates(cfg, progress=True, overwrite=overwrite)
    n_clips = table["clip_id"].nunique()
    typer.echo(f"{cfg.out}: {len(table)} candidates for {n_clips} clips")


def tune_rerank(
    candidates: Path = typer.Option(..., "--candidates", help="Candidates table from dcase generate (validation)."),
    references: Path = typer.Option(..., "--references", help="clotho_captions_validation.csv (or a manifest)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for tuning.csv and tuning.png."),
    weights: str = typer.Option("0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", "--weights", help="Encoder weights."),
    metric: str = typer.Option("cider_d", "--metric", help="Caption metric to maximise (e.g. cider_d, spider)."),
    threshold: float = typer.Option(
        None, "--fluency-threshold", help="Fluency filter threshold (when the table has probabilities) [0.9]."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace tuning.csv / tuning.png in --out."),
) -> None:
    """Grid-search the encoder weight w_enc (w_dec = 1 - w_enc) of the reranker on a validation split.

    Example: dcase tune-rerank --candidates runs/gen_val/candidates.parquet
    --references clotho/clotho_captions_validation.csv --out runs/tune --metric cider_d
    """
    from dcase.stages.generation import tune_rerank_weights

    try:
        grid = [float(w) for w in weights.split(",") if w.strip()]
    except ValueError as e:
        raise InputError(f"--weights expects comma-separated numbers, got {weights!r}") from e
    best = tune_rerank_weights(candidates, references, out, grid, metric, threshold, overwrite)
    typer.echo(f"{out}/tuning.csv, {out}/tuning.png: best w_enc={best['w_enc']:.2f} ({metric}={best[metric]:.4f})")


def register(app: typer.Typer) -> None:
    """Add the decoding commands to the root app."""
    app.command("soup")(user_errors(soup))
    app.command("generate")(user_errors(generate))
    app.command("tune-rerank")(user_errors(tune_rerank))
