"""The one checkpoint format of EnCLAP, the retriever and CNext (Hugging-Face-Hub compatible).

A checkpoint is a folder::

    config.json          {"dcase_kind": "enclap" | "retriever" | "cnext", "format_version": 1,
                          "dcase_version": "...", "config": {<the model's dataclass config>}}
    model.safetensors    the weights (tensors shared by tied parameters are stored once)
    <sub-folders>        the model's own files: ``tokenizer/`` (EnCLAP), ``text/`` (the retriever's text tower
                         config and tokenizer)

``save_checkpoint`` writes the whole folder atomically (``dcase.io.atomic_dir``); ``load_checkpoint`` reads a local
folder, a training run folder (its ``best.json`` names the best checkpoint) or a Hugging Face Hub repository id
found in the local cache (``huggingface_hub.snapshot_download``, offline when ``HF_HUB_OFFLINE`` is set).
Checkpoints written before this format (``enclap_config.json`` / ``retriever_config.json`` / ``cnext_config.json``
holding the config itself) still load. ``kind_of`` tells which model a folder holds.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcase.errors import CheckpointError, MissingInputError
from dcase.io import atomic_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
KINDS = ("enclap", "retriever", "cnext")
LEGACY_CONFIG_NAMES = {
    "enclap": "enclap_config.json",
    "retriever": "retriever_config.json",
    "cnext": "cnext_config.json",
}
KIND_TITLES = {"enclap": "an EnCLAP", "retriever": "a retriever", "cnext": "a CNext"}
RUN_BEST = "best.json"
RUN_LAST = "last"

Writer = Callable[[Path], object]  # writes one file or folder; its return value is ignored


def _dcase_version() -> str:
    from dcase import __version__

    return __version__


def save_checkpoint(
    model_or_state: torch.nn.Module | Mapping[str, torch.Tensor],
    path: str | Path,
    kind: str,
    config: Any,
    extra_writers: Mapping[str, Writer] | None = None,
) -> Path:
    """Write a checkpoint folder atomically: ``config.json`` (``config`` is a dataclass or a JSON mapping),
    ``model.safetensors`` and, for each ``name -> writer`` of ``extra_writers``, ``writer(folder / name)``.

    An existing folder at ``path`` is replaced only once the new one is complete."""
    import torch
    from safetensors.torch import save_file, save_model

    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; one of {KINDS}")
    cfg = asdict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config)
    meta = {"dcase_kind": kind, "format_version": FORMAT_VERSION, "dcase_version": _dcase_version(), "config": cfg}
    with atomic_dir(path) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if isinstance(model_or_state, torch.nn.Module):
            save_model(model_or_state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        else:
            state = {k: v.detach().contiguous().cpu() for k, v in model_or_state.items()}
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        for name, write in (extra_writers or {}).items():
            write(tmp / name)
    return Path(path)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_training_run(path: Path) -> bool:
    """Whether ``path`` is a training run folder (``best.json`` or ``last/``) rather than a checkpoint folder."""
    return not _config_file(path) and ((path / RUN_BEST).is_file() or (path / RUN_LAST).is_dir())


def best_of_run(run: Path) -> Path:
    """The best checkpoint of a training run folder -- the one reading of ``best.json`` (``dcase.training``).

    Tried in order: each ``best.json`` entry, best first, at its recorded path (absolute, or relative as written by
    the training; a relative path is also tried under ``run``), then by name under ``run/checkpoints`` (a run folder
    moved or copied elsewhere); the first entry found wins. When no entry is found (no ``best.json``, no entries, or
    all of them deleted), ``run/last``. An unreadable ``best.json`` is a CheckpointError; a run without any of these
    a MissingInputError."""
    entries: list[Any] = []
    if (run / RUN_BEST).is_file():
        try:
            data = json.loads((run / RUN_BEST).read_text(encoding="utf-8"))
            entries = list(data.get("checkpoints") or [])
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise CheckpointError(f"{run / RUN_BEST}: cannot read the best checkpoint ({e!r})") from e
    for entry in entries:
        recorded = entry.get("path") if isinstance(entry, dict) else None
        if not recorded:
            continue
        path = Path(recorded)
        cands = [path] if path.is_absolute() else [path, run / path]
        for cand in (*cands, run / "checkpoints" / path.name):
            if cand.is_dir():
                return cand
    if (run / RUN_LAST).is_dir():
        return run / RUN_LAST
    named = f" (best.json names {entries[0].get('path')})" if entries and isinstance(entries[0], dict) else ""
    raise MissingInputError(
        f"{run}: a training run without a finished checkpoint{named}: no best.json entry found (nor under "
        f"{run / 'checkpoints'}), no {RUN_LAST}/"
    )


def resolve_checkpoint(path_or_repo_id: str | Path) -> Path:
    """The local folder of a checkpoint: a folder as is; a training run folder -> its best checkpoint
    (``best_of_run``); otherwise a Hugging Face Hub repository id looked up in the cache (``HF_HUB_CACHE``;
    downloads only when not offline)."""
    p = Path(path_or_repo_id).expanduser()
    if p.is_dir():
        return best_of_run(p) if is_training_run(p) else p
    if p.exists():
        raise CheckpointError(f"{p} is a file; a checkpoint is a folder holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    name = str(path_or_repo_id)
    if p.is_absolute() or name.startswith(".") or name.count("/") > 1 or not name.strip():
        raise MissingInputError(f"checkpoint folder {p} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    offline = _hub_offline()
    try:
        folder = snapshot_download(name, local_files_only=offline, cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except (LocalEntryNotFoundError, HFValidationError, HfHubHTTPError, OSError) as e:
        where = "in the local Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "locally or on the Hub"
        raise MissingInputError(f"checkpoint {name!r} is neither a folder nor a repository found {where}") from e
    return Path(folder)


def _config_file(folder: Path) -> Path | None:
    if (folder / CONFIG_NAME).is_file():
        return folder / CONFIG_NAME
    for name in LEGACY_CONFIG_NAMES.values():
        if (folder / name).is_file():
            return folder / name
    return None


def _read_config(folder: Path) -> tuple[str | None, dict[str, Any]]:
    """(kind, model config) of a folder; kind None when the folder holds no dcase checkpoint config."""
    if (folder / CONFIG_NAME).is_file():
        try:
            data = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        except ValueError as e:
            raise CheckpointError(f"{folder / CONFIG_NAME}: not valid JSON ({e})") from e
        kind = data.get("dcase_kind") if isinstance(data, dict) else None
        if kind is None:
            return None, {}
        if kind not in KINDS:
            raise CheckpointError(f"{folder / CONFIG_NAME}: unknown dcase_kind {kind!r} (one of {KINDS})")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{folder / CONFIG_NAME}: format_version {version!r}; this dcase reads format {FORMAT_VERSION}"
            )
        return kind, dict(data.get("config") or {})
    for kind, name in LEGACY_CONFIG_NAMES.items():
        if (folder / name).is_file():
            try:
                return kind, json.loads((folder / name).read_text(encoding="utf-8"))
            except ValueError as e:
                raise CheckpointError(f"{folder / name}: not valid JSON ({e})") from e
    return None, {}


def kind_of(path: str | Path) -> str | None:
    """``"enclap"``, ``"retriever"`` or ``"cnext"`` for a local checkpoint folder (or training run folder), else
    None. Never looks anything up on the Hub."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    if is_training_run(p):
        try:
            p = best_of_run(p)
        except (CheckpointError, MissingInputError):
            return None
    try:
        return _read_config(p)[0]
    except (CheckpointError, ValueError):
        return None


def load_checkpoint(
    path_or_repo_id: str | Path, expected_kind: str, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(model config, state dict, folder) of a checkpoint of ``expected_kind`` (see ``resolve_checkpoint``).

    A folder of another kind, or one without a checkpoint config, is a CheckpointError saying what it holds."""
    config, folder = read_checkpoint_config(path_or_repo_id, expected_kind)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{folder}: {KIND_TITLES[expected_kind]} checkpoint without {WEIGHTS_NAME}")
    return config, read_safetensors(weights, device), folder


def read_checkpoint_config(path_or_repo_id: str | Path, expected_kind: str) -> tuple[dict[str, Any], Path]:
    """(model config, folder) of a checkpoint of ``expected_kind``, without reading its weights; the same errors
    as ``load_checkpoint`` for a folder of another kind or without a checkpoint config."""
    folder = resolve_checkpoint(path_or_repo_id)
    kind, config = _read_config(folder)
    if kind is None:
        raise CheckpointError(
            f"{folder}: not a dcase checkpoint; a checkpoint folder holds {CONFIG_NAME} (with dcase_kind, "
            f"format_version and config) and {WEIGHTS_NAME}, as written by save_pretrained"
        )
    if kind != expected_kind:
        raise CheckpointError(
            f"{folder} is {KIND_TITLES[kind]} checkpoint, not {KIND_TITLES[expected_kind]} checkpoint"
        )
    return config, folder


def read_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a truncated or corrupt file is a CheckpointError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e}); restore or re-create it") from e


def load_safetensors_into(model: torch.nn.Module, path: str | Path, device: str | torch.device = "cpu") -> None:
    """``safetensors.torch.load_model`` with a damaged file or weights of another shape as a CheckpointError."""
    load_state(model, read_safetensors(path, device), path)


PICKLE_REFUSED = "pickle checkpoints are not loaded (only tensors, read with torch.load(weights_only=True))"


def _unpickling_detail(error: BaseException) -> tuple[bool, str]:
    """(whether ``torch.load(weights_only=True)`` refused Python objects, the informative line of its message).
    torch's message starts with advice to retry with ``weights_only=False``, which is never followed here."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    refused = [ln for ln in lines if "GLOBAL" in ln]
    if refused:
        return True, refused[0]
    return False, next((ln for ln in reversed(lines) if "Unsupported" in ln or "error" in ln.lower()), str(error))


def torch_load_weights(path: str | Path, what: str, convert: str) -> Any:
    """``torch.load(path, weights_only=True)`` of a foreign checkpoint (the only use of ``torch.load``).

    A pickle that needs Python objects beyond tensors and plain containers is refused, and a damaged file is
    reported, as a CheckpointError naming ``path``; ``convert`` says how to turn it into something loadable."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{what} not found: {path}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused, detail = _unpickling_detail(e)
        if refused:
            raise CheckpointError(f"{path}: {PICKLE_REFUSED}; convert with {convert} ({detail})") from e
        raise CheckpointError(f"{path}: cannot read {what}: not a PyTorch checkpoint, or damaged ({detail})") from e
    except Exception as e:  # noqa: BLE001 - a damaged file can fail the unpickler in any way
        raise CheckpointError(f"{path}: cannot read {what}: not a PyTorch checkpoint, or damaged ({e})") from e


def hf_load(load: Callable[[str], Any], source: str | Path, what: str) -> Any:
    """``load(source)`` (a transformers ``from_pretrained``) with unreadable, pickled or truncated weights and
    missing files reported as a CheckpointError naming ``source``."""
    import pickle

    from safetensors import SafetensorError

    try:
        return load(str(source))
    except pickle.UnpicklingError as e:
        refused, detail = _unpickling_detail(e)
        if not refused:
            raise CheckpointError(f"{source}: cannot load {what}: damaged weights ({detail})") from e
        raise CheckpointError(
            f"{source}: {what}: {PICKLE_REFUSED}; convert with: load it on a trusted machine and save_pretrained it "
            f"with safe_serialization=True (model.safetensors) ({detail})"
        ) from e
    except (OSError, ValueError, RuntimeError, EOFError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{source}: cannot load {what} ({type(e).__name__}: {first})") from e


def load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str | Path) -> None:
    """Load ``state`` into ``model``. Keys absent from ``state`` are allowed only for tied parameters (stored once,
    sharing memory with a loaded one); anything else missing or unexpected is a CheckpointError naming it."""
    try:
        missing, unexpected = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as e:  # a tensor of another shape: a checkpoint of another model size
        sizes = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        raise CheckpointError(
            f"{where}: weights do not fit the model ({'; '.join(sizes[:3]) or e}); was it written with another config?"
        ) from e
    if missing:
        own = model.state_dict()
        loaded = {own[k].data_ptr() for k in state if k in own}
        missing = [k for k in missing if own[k].data_ptr() not in loaded]
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
