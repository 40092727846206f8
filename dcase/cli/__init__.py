"""The ``dcase`` command line. Commands only parse arguments and call stage functions.

Each command group lives in its own module below; heavy libraries (torch, transformers) are imported inside
the commands, so ``dcase --help`` stays instant.
"""

from __future__ import annotations

import logging

import typer

from dcase.cli import captioner, data, decode, demo, extract, pipeline, retriever, score, submit, use
from dcase.cli.common import setup_logging

app = typer.Typer(
    name="dcase",
    help=(
        "Build complete DCASE2024 Task 6 (audio captioning) and Task 8 (language-based audio retrieval) "
        "submissions.\n\nTry it: dcase demo --out demo_out"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)


app.add_typer(data.app, name="data", help="Datasets: manifests from official layouts, statistics, synthetic corpus.")
app.add_typer(extract.app, name="extract", help="Features: DAC codec codes, clip embeddings, store checks.")
app.add_typer(captioner.app, name="captioner", help="EnCLAP captioner: pretraining (MCM) and finetuning.")
app.add_typer(retriever.app, name="retriever", help="Audio-text retrievers (m-LTM): training and evaluation.")
app.add_typer(
    pipeline.app,
    name="pipeline",
    help="The whole DCASE2024 recipe as one pipeline: plan (steps, inputs, outputs, status), run (preflight, resume).",
)
app.add_typer(submit.app, name="submit", help="Task 6 / Task 8 submission files: export, validate, package.")
app.add_typer(score.app, name="score", help="Score captions (aac-metrics) or retrieval results.")
decode.register(app)
demo.register(app)
use.register(app)


def main() -> None:
    app()
