"""Small file utilities shared by every stage: atomic writes (files and folders) and content hashes.

``fingerprint`` is the one identity of a checkpoint (a folder's ``*.safetensors`` files, a weights file, or an
in-memory model's state dict): feature-store provenance, generation resume plans and the audio-index cache all
compare it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error delete it.

    Readers never see a half-written file, and a killed job leaves at most a ``.tmp`` file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``, on error it is removed.

    Readers never see a half-written folder (a checkpoint, a soup). An existing ``path`` is replaced only after
    the new folder is complete; with ``overwrite=False`` it is left alone and FileExistsError raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: str | Path, pattern: str = "*") -> str:
    """A hash over the names and contents of the files in a directory (sorted, non-recursive)."""
    h = hashlib.sha256()
    for p in sorted(Path(path).glob(pattern)):
        if p.is_file():
            h.update(p.name.encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def fingerprint(source: str | Path | Any) -> str:
    """sha256 identity of a checkpoint: a folder -> ``sha256_dir(folder, "*.safetensors")``; a weights file ->
    ``sha256_file``; an in-memory model (anything with ``state_dict()``) -> a hash over its tensor names and bytes.
    """
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_dir():
            return sha256_dir(path, "*.safetensors")
        return sha256_file(path)
    import torch

    h = hashlib.sha256()
    for k, v in source.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
