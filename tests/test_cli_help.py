"""`--help` of every command of the whole CLI, found by walking the click command tree (new commands are
covered automatically)."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from dcase.cli import app


def _walk(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, command) for every command; duck-typed (Typer may vendor its own click)."""
    out = [(path, cmd)]
    if hasattr(cmd, "list_commands"):
        ctx = cmd.context_class(cmd)
        for name in cmd.list_commands(ctx):
            out += _walk(cmd.get_command(ctx, name), (*path, name))
    return out


COMMANDS = _walk(typer.main.get_command(app))


def test_tree_has_the_data_commands() -> None:
    paths = {p for p, _ in COMMANDS}
    assert {("data",), ("data", "manifest"), ("data", "stats"), ("data", "synth")} <= paths


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "dcase")
def test_help(path: tuple[str, ...]) -> None:
    r = CliRunner().invoke(app, [*path, "--help"], terminal_width=100)
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output
    cmd = dict(COMMANDS)[path]
    text = (cmd.help or cmd.short_help or "").strip()
    assert text, f"command {' '.join(path) or 'dcase'} has no help text"
    assert all(w in r.output for w in text.split()[:4]), (text[:80], r.output[:400])
