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
    config: Path = typer.Option(None, "--config", "-c", help="Demo config (default: the package's demo.yaml)."),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Run the whole DCASE2024 recipe offline on a synthetic corpus with tiny models (about 5 min on 2 CPU cores).

    It is `dcase data synth` (a corpus in the Clotho v2.1 layout, with mixup pairs) followed by `dcase pipeline run
    --profile tiny --data-root <out>/data --out <out>/run`: retrievers (tiny CNext + the real all-MiniLM-L6-v2,
    m-LTM), DAC codes and clip embeddings, EnCLAP pretraining (MCM) and finetuning (2 seeds), a soup, rerank tuning,
    development-testing scores of 4 Task 6 and 2 Task 8 systems, their CSVs, meta YAMLs and package.
    Writes <out>/scores.json, <out>/decoding_comparison.png and <out>/system/ (try: dcase caption --system).

    Examples:

      dcase demo --out demo_out

      dcase demo --out /tmp/quick --set clips=120 --set "profile_overrides=[generation.sampling.num_candidates=8]"
    """
    from dcase.config import load_config, resolve_config_path
    from dcase.stages.demo import DemoConfig, run_demo, summary_lines

    path = config if config is not None else resolve_config_path("demo.yaml")
    cfg = load_config(DemoConfig, path, overrides or [])
    scores = run_demo(out, cfg)
    for line in summary_lines(scores):
        typer.echo(line)
    typer.echo(f"Outputs: {out}/scores.json, {out}/decoding_comparison.png, {out}/system/, {out}/run/submission/")


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``info`` to the root app."""
    app.command("demo")(user_errors(demo))
    app.command("info")(user_errors(info))
