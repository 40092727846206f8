"""``dcase demo`` and ``dcase info``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``info`` to the root app."""
