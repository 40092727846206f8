"""``dcase score ...``: caption metrics (aac-metrics) and Task 8 retrieval metrics from submission files."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from dcase.cli.common import user_errors

app = typer.Typer(no_args_is_help=True)
log = logging.getLogger(__name__)


@app.command("captions")
@user_errors
def captions(
    predictions: Path = typer.Argument(..., help="Task 6 CSV: file_name,caption_predicted."),
    references: Path = typer.Option(..., "--references", help="Clotho captions CSV: file_name,caption_1..5."),
    out: Path = typer.Option(None, "--out", help="scores.json to write (atomically)."),
    metrics: str = typer.Option(
        "all",
        "--metrics",
        help="Comma-separated metric names (bleu_1..4, meteor, rouge_l, cider_d, spice, "
        "spider, spider_fl, fense, sbert_sim, fer, vocab) or 'all'.",
    ),
    fense_checker: Path = typer.Option(None, "--fense-checker", help="FENSE checker .ckpt (must load if given)."),
    sbert_model: str = typer.Option(None, "--sbert-model", help="Local sentence-BERT directory for FENSE."),
    corenlp_dir: Path = typer.Option(None, "--corenlp-dir", help="Folder with the CoreNLP 3.6.0 jars for SPICE."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Score Task 6 predictions with aac-metrics. Metrics whose resources are absent are null, with a reason.

    Example: dcase score captions preds.csv --references clotho_captions_evaluation.csv --out scores.json
    """
    import json

    from dcase.evaluation.captions import ALL_METRICS, MetricSettings, score_caption_files, write_scores_json
    from dcase.io import check_output

    if out:
        check_output(out, overwrite)

    names = ALL_METRICS if metrics == "all" else tuple(m.strip() for m in metrics.split(",") if m.strip())
    settings = MetricSettings(
        fense_checker=str(fense_checker) if fense_checker else None,
        sbert_model=sbert_model,
        corenlp_dir=str(corenlp_dir) if corenlp_dir else None,
    )
    scores = score_caption_files(predictions, references, names, settings)
    data = scores.to_json_dict()
    if out:
        write_scores_json(scores, out, overwrite=overwrite)
        log.info("wrote %s", out)
    typer.echo(json.dumps(data, indent=2))


@app.command("retrieval")
@user_errors
def retrieval(
    predictions: Path = typer.Argument(..., help="Task 8 CSV: caption,fname_1..fname_10."),
    references: Path = typer.Option(
        ..., "--references", help="Clotho captions CSV (every caption is a query for its clip) or caption,file_name."
    ),
    out: Path = typer.Option(None, "--out", help="scores.json to write (atomically)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Score Task 8 rankings: mAP@10, R@1, R@5, R@10.

    Example: dcase score retrieval task8.csv --references clotho_captions_evaluation.csv --out scores.json
    """
    import json

    from dcase.evaluation.captions import write_scores_json
    from dcase.evaluation.retrieval import score_task8_files
    from dcase.io import check_output

    if out:
        check_output(out, overwrite)
    scores = score_task8_files(predictions, references)
    if out:
        write_scores_json(scores, out, overwrite=overwrite)
    typer.echo(json.dumps(scores, indent=2))
