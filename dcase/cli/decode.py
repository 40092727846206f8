"""Top-level decoding commands: ``dcase generate``, ``dcase soup``, ``dcase tune-rerank``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the decoding commands to the root app."""
