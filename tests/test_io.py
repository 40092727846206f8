"""dcase.io helpers shared by the stages, the hub and the feature store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from dcase.io import link_or_copy_tree, safetensors_header


def test_safetensors_header_reads_entries_and_metadata_without_loading(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    save_file({"w": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.int64)}, str(path), metadata={"k": "v"})
    header, meta = safetensors_header(path)
    assert meta == {"k": "v"} and "__metadata__" not in header
    assert header["w"]["shape"] == [2, 3] and header["w"]["dtype"] == "F32" and header["b"]["shape"] == [4]
    save_file({"x": np.ones(1, np.float32)}, str(path))
    assert safetensors_header(path) == ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, {})


def test_link_or_copy_tree_hard_links_a_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "empty").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    link_or_copy_tree(src, tmp_path / "dst")
    dst = tmp_path / "dst"
    assert (dst / "a.txt").read_text() == "a" and (dst / "sub" / "b.txt").read_text() == "b"
    assert (dst / "sub" / "empty").is_dir()
    assert os.path.samefile(src / "a.txt", dst / "a.txt")  # same file system: linked, no extra space
