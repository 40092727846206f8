"""The data package's import graph: no cycle (imports inside functions included), readers import only the shared
helpers, and every list of source names derives from the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dcase.cli import app
from dcase.data import manifest, registry, sources
from dcase.errors import InputError

DATA = Path(__file__).resolve().parents[1] / "dcase" / "data"
READERS = ("clotho", "audiocaps", "wavcaps", "mixup")


def _imports(path: Path) -> set[str]:
    """Modules of ``dcase.data`` imported anywhere in ``path`` (module level or inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "dcase.data":
                out.update(f"dcase.data.{a.name}" for a in node.names)
            elif node.module.startswith("dcase.data."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("dcase.data."))
    return out


def _graph() -> dict[str, set[str]]:
    return {f"dcase.data.{p.stem}": _imports(p) for p in DATA.glob("*.py") if p.stem != "__init__"}


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack, node, dep])}")
            if dep not in state:
                visit(dep, [*stack, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert "dcase.data.build" not in graph  # the old module that imported its readers in a cycle is gone


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from dcase.data.sources import build_manifest\n    from dcase.data import clotho\n")
    assert _imports(p) == {"dcase.data.sources", "dcase.data.clotho"}


@pytest.mark.parametrize("reader", READERS)
def test_readers_import_only_shared_helpers(reader: str) -> None:
    allowed = {"dcase.data.common", "dcase.data.manifest", "dcase.data.audio", "dcase.data.registry"}
    assert _imports(DATA / f"{reader}.py") <= allowed


def test_source_names_come_from_the_registry() -> None:
    assert tuple(sources.REGISTRY) == manifest.SOURCES == sources.SOURCES == registry.SOURCES
    assert sources.READABLE_SOURCES == ("clotho", "audiocaps", "wavcaps", "clotho_mixup")
    assert sources.SOURCE_CHOICES == ("clotho", "audiocaps", "wavcaps", "clotho_mixup", "clotho-mixup")
    assert sources.canonical_source("clotho-mixup") == sources.canonical_source("clotho_mixup") == "clotho_mixup"
    with pytest.raises(InputError, match=r"unknown data source 'synth'; expected one of \['clotho'"):
        sources.canonical_source("synth")
    # the CLI lists the registry's spellings
    r = CliRunner().invoke(app, ["data", "manifest", "--help"], env={"COLUMNS": "300"})
    assert r.exit_code == 0 and f"Dataset to read: {', '.join(sources.SOURCE_CHOICES)}." in r.output


def test_data_cli_module_stays_light() -> None:
    """`dcase --help` must not pay for pandas/pyarrow/soundfile: the CLI takes the names from the registry."""
    import subprocess
    import sys

    code = (
        "import sys; import dcase.cli.data, dcase.data.registry; "
        "heavy = [m for m in ('pandas', 'pyarrow', 'soundfile', 'dcase.data.sources') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
