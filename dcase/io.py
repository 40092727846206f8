"""Small file utilities shared by every stage: atomic writes (files and folders) and content hashes.

``fingerprint`` is the one identity of a checkpoint (a folder's ``*.safetensors`` files, a weights file, or an
in-memory model's state dict): feature-store provenance, generation resume plans and the audio-index cache all
compare it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dcase.errors import InputError, MissingInputError, OutputExistsError


def _umask() -> int:
    """The process umask (read from /proc when possible: setting it to read it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path, is_dir: bool) -> int:
    """Permissions of a new file or folder at ``path``: those of the one it replaces, else the default under
    the umask (``mkstemp`` / ``mkdtemp`` create 0600 / 0700, which must not leak into outputs)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return (0o777 if is_dir else 0o666) & ~_umask()


def check_output(path: str | Path, overwrite: bool = False, kind: str = "file") -> Path:
    """Refuse an unusable output path before any work is done: an existing output unless ``overwrite``
    (OutputExistsError), a folder where a file is expected or the reverse, a parent that is a file (InputError)."""
    path = Path(path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{path}: cannot write it: {parent} is a file, not a folder; choose another path")
            break
    if path.exists():
        if kind == "file" and path.is_dir():
            raise InputError(f"{path} is a folder; give the path of the file to write")
        if kind == "folder" and not path.is_dir():
            raise InputError(f"{path} is a file; give the path of the folder to write")
        if not overwrite:
            raise OutputExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    return path


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise InputError(f"{path}: cannot create its folder {path.parent}: a file is in the way ({e})") from e


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error delete it.

    Readers never see a half-written file, and a killed job leaves at most a ``.tmp`` file behind. The file gets
    the permissions of the file it replaces, or the umask default. ``overwrite=False``: an existing ``path`` is an
    OutputExistsError (checked again at the rename, which then never replaces a file). A folder at ``path`` or a
    file in the way of its parent is an InputError.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the path of the file to write")
    if not overwrite and path.exists():
        raise OutputExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    _make_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _mode_for(path, is_dir=False))
        if overwrite:
            os.replace(tmp_path, path)
        else:
            try:
                os.link(tmp_path, path)  # fails if path appeared meanwhile: never replaces it
            except FileExistsError:
                raise OutputExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it") from None
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise OutputExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it") from None
                os.replace(tmp_path, path)
            tmp_path.unlink(missing_ok=True)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``, on error it is removed.

    Readers never see a half-written folder (a checkpoint, a soup, a submission package). An existing ``path`` is
    replaced only after the new folder is complete; with ``overwrite=False`` it is left alone and
    OutputExistsError raised (before any work when it already exists on entry). The folder gets the permissions of
    the one it replaces, or the umask default.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file; give the path of the folder to write")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    _make_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, _mode_for(path, is_dir=True))
        if path.exists():
            if not overwrite:
                raise OutputExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The content of a JSON file that the pipeline wrote or the user gave; a missing, non-UTF-8 or invalid file
    is a DcaseError naming it (MissingInputError / InputError), never a bare JSONDecodeError."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise MissingInputError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: {what} is not valid UTF-8 (byte offset {e.start})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); it may be truncated"
        ) from e


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safetensors_header(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensor entries ``name -> {dtype, shape, data_offsets}``, metadata) of a ``.safetensors`` file, read from its
    header without loading any tensor."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {}) or {}
    return header, meta


def link_or_copy_tree(src: str | Path, dst: str | Path) -> None:
    """Copy the folder ``src`` into ``dst`` (created if needed), hard-linking files where the file system allows
    (no extra disk space) and copying them otherwise."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


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
