"""The README's Python example of "After `make demo`" runs as written, on a demo_out/ laid out like the demo's
(a tiny system in demo_out/system, audio in the synthetic corpus's evaluation folder)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from _decode_util import one_thread
from _system_util import build_parts, build_system, write_audio

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _single_thread():
    yield from one_thread()


def _example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## After `make demo`") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    system = build_system(tmp_path / "build", build_parts(tmp_path / "build" / "parts"))
    demo = tmp_path / "demo_out"
    shutil.copytree(system, demo / "system")
    evaluation = demo / "data" / "CLOTHO_v2.1" / "clotho_audio_files" / "evaluation"
    for i, n in enumerate((340, 341, 342, 343)):
        write_audio(evaluation / f"recording {n:04d}.wav", 0.8, 44100, freq=300.0 * (i + 1), seed=i)
    monkeypatch.chdir(tmp_path)
    exec(compile(_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("['") and len(out) == 5  # one caption; best + candidates; three hits
    assert all(line.split(" ", 1)[1].startswith(str(evaluation)) for line in out[2:])
