"""``dcase demo`` and ``dcase info``."""

from __future__ import annotations

from pathlib import Path

import typer

from dcase.cli.common import SET_OPTION, user_errors


def info(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Versions, device and threads, hub offline flags, Java and which metric resources are present.

    Example: dcase info --json
    """
    import json

    from dcase.env import environment_info, format_info

    report = environment_info()
    typer.echo(json.dumps(report, indent=2) if as_json else format_info(report))


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Output folder (an interrupted demo resumes)."),
    config: Path = typer.Option(None, "--config", "-c", help="Demo config (default: configs/demo.yaml)."),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Run the whole DCASE2024 chain offline on a synthetic corpus with tiny models (about 10 min on 2 CPU cores).

    Synthetic corpus -> manifests -> retriever (tiny CNext + real all-MiniLM-L6-v2, m-LTM) -> clip embeddings ->
    DAC codes -> captioner pretraining (MCM) -> finetuning (2 seeds) -> soup -> sampling + reranking -> Task 6 and
    Task 8 CSVs + meta YAMLs -> scores.json and decoding_comparison.png.

    Examples:
      dcase demo --out demo_out
      dcase demo --out /tmp/quick --set clips=120 --set num_candidates=10
    """
    from dcase.config import load_config
    from dcase.stages.demo import REPO_CONFIGS, DemoConfig, run_demo, summary_lines

    path = config if config is not None else (REPO_CONFIGS / "demo.yaml")
    cfg = load_config(DemoConfig, path if path.is_file() else None, overrides or [])
    scores = run_demo(out, cfg)
    for line in summary_lines(scores):
        typer.echo(line)
    typer.echo(f"Outputs: {out}/scores.json, {out}/decoding_comparison.png, {out}/submission/")


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``info`` to the root app."""
    app.command("demo")(user_errors(demo))
    app.command("info")(user_errors(info))
