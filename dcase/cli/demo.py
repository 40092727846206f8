"""``dcase demo`` and ``dcase info``."""

from __future__ import annotations

import typer

from dcase.cli.common import user_errors


def info(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Versions, device and threads, hub offline flags, Java and which metric resources are present.

    Example: dcase info --json
    """
    import json

    from dcase.env import environment_info, format_info

    report = environment_info()
    typer.echo(json.dumps(report, indent=2) if as_json else format_info(report))


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``info`` to the root app."""
    app.command("info")(user_errors(info))
