"""`dcase retriever ...` commands: train (m-LTM), evaluate (mAP@10, R@k), rank Task 8 queries."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dcase.cli.common import CONFIG_OPTION, REPORT_TO_OPTION, SET_OPTION, user_errors, with_report_to

app = typer.Typer(no_args_is_help=True)

RETRIEVER_OPTION = typer.Option(..., "--retriever", "-r", help="Retriever checkpoint dir; repeat to ensemble.")


@app.command()
@user_errors
def train(
    config: str = CONFIG_OPTION,
    overrides: list[str] = SET_OPTION,
    init: str = typer.Option(None, "--init", help="Retriever checkpoint to finetune (e.g. the pretraining's best)."),
    report_to: str = REPORT_TO_OPTION,
) -> None:
    """Train a retriever with m-LTM (pretraining, or finetuning with --init).

    Example: dcase retriever train --config configs/dcase2024/retriever_roberta-large_pretrain.yaml
    --set train.output_dir=runs/ret_roberta-large_pt

    Finetune: dcase retriever train --config configs/dcase2024/retriever_roberta-large_finetune.yaml
    --init runs/ret_roberta-large_pt/checkpoints/step-020000

    Rerunning the same command resumes from train.output_dir/state.
    """
    from dcase.cli.common import is_main_process
    from dcase.config import load_config
    from dcase.stages.retriever import RetrieverStageConfig, train_retriever

    cfg = load_config(RetrieverStageConfig, config, with_report_to(overrides, report_to))
    if init:
        cfg.init = init
    best = train_retriever(cfg)
    if is_main_process():
        typer.echo(f"best checkpoint: {best}")


@app.command("eval")
@user_errors
def evaluate(
    retriever: list[str] = RETRIEVER_OPTION,
    manifest: str = typer.Option(..., "--manifest", help="Manifest with captions (e.g. Clotho evaluation)."),
    split: str = typer.Option("evaluation", "--split", help="Split to evaluate."),
    mode: str = typer.Option("cosine", "--mode", help="cosine (faiss inner product) or sinkhorn (transductive)."),
    out: Path = typer.Option(None, "--out", help="Write the metrics JSON here."),
    batch_size: int = typer.Option(16, "--batch-size"),
    max_seconds: float = typer.Option(30.0, "--max-seconds", help="Truncate audio longer than this."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Persist/reuse audio embeddings + faiss index here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Text-to-audio mAP@10 and R@1/5/10: every caption of a clip is a query, its clip the relevant item.

    Example: dcase retriever eval -r runs/ret_roberta-large_ft/last --manifest data/clotho/manifest.parquet
    --split evaluation --out ret_eval.json
    """
    from dcase.env import resolve_device
    from dcase.io import atomic_write_text, check_output
    from dcase.stages.retriever import evaluate_retrievers

    if out:
        check_output(out, overwrite)
    device = resolve_device(None)
    res = evaluate_retrievers(
        retriever,
        manifest,
        split,
        mode=mode,
        batch_size=batch_size,
        max_seconds=max_seconds,
        cache_dir=cache_dir,
        device=device,
    )
    rows = [*res["models"].items(), *([("ensemble", res["ensemble"])] if len(retriever) > 1 else [])]
    typer.echo(f"{res['queries']} queries, {res['items']} clips, mode {mode}")
    for name, m in rows:
        typer.echo(
            f"{name}: mAP@10 {m['map_at_10']:.4f}  R@1 {m['r_at_1']:.4f}  R@5 {m['r_at_5']:.4f}  "
            f"R@10 {m['r_at_10']:.4f}"
        )
    if out:
        atomic_write_text(out, json.dumps(res, indent=2), overwrite=overwrite)
        typer.echo(f"wrote {out}")


@app.command()
@user_errors
def rank(
    retriever: list[str] = RETRIEVER_OPTION,
    audio_dir: str = typer.Option(..., "--audio-dir", help="Audio collection folder (or a manifest)."),
    captions: str = typer.Option(..., "--captions", help="Query CSV with a 'caption' column."),
    out: Path = typer.Option(..., "--out", help="Task 8 CSV to write (caption,fname_1..fname_10)."),
    mode: str = typer.Option("cosine", "--mode", help="cosine or sinkhorn."),
    batch_size: int = typer.Option(16, "--batch-size"),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Persist/reuse audio embeddings + faiss index here."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Rank an audio collection for each query caption with one retriever or an ensemble (Task 8 CSV).

    Example: dcase retriever rank -r runs/ret_a/last -r runs/ret_b/last --audio-dir test_retrieval_audio
    --captions retrieval_captions.csv --out task8.csv
    """
    from dcase.env import resolve_device
    from dcase.io import check_output
    from dcase.stages.retriever import rank_task8
    from dcase.submission.formats import write_task8

    check_output(out, overwrite)
    device = resolve_device(None)
    rows = rank_task8(
        retriever, audio_dir, captions, mode=mode, batch_size=batch_size, cache_dir=cache_dir, device=device
    )
    write_task8(rows, out, overwrite=overwrite)
    typer.echo(f"wrote {out} ({len(rows)} queries)")
