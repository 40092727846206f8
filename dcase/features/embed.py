"""Clip embeddings: the ``AudioEmbedder`` protocol, ``load_embedder``, batched embedding of waveforms and of
manifest rows, and the cached faiss index of a collection's embeddings (``audio_index``).

The embedding fills EnCLAP's "CLAP slot" (EnCLAP §2.1; the DCASE2024 report replaces CLAP by the retriever's
audio tower). Any model with ``sample_rate``, ``embed_dim`` and ``embed_audio(waves, lengths)`` works.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from dcase.checkpoint import kind_of, resolve_checkpoint
from dcase.data.datasets import AudioCache, fit_min_length, pad_waves
from dcase.errors import CheckpointError, MissingInputError
from dcase.evaluation.retrieval import AudioIndex, IndexConfig
from dcase.io import fingerprint

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from dcase.models.retriever import Retriever

log = logging.getLogger(__name__)


@runtime_checkable
class AudioEmbedder(Protocol):
    """An audio tower: padded waves [B, T] float32 + lengths [B] int64 -> clip embeddings [B, D]."""

    sample_rate: int
    embed_dim: int

    def embed_audio(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ConfiguredModel(Protocol):
    """A dcase model that keeps its constructor arguments as a dataclass ``config`` (saved next to its weights)."""

    config: DataclassInstance


def load_embedder(path: str | Path) -> AudioEmbedder:
    """A retriever or CNext checkpoint folder (``dcase.checkpoint``) or a published CNext ``.pth`` -> an embedder in
    eval mode."""
    from dcase.models.cnext import CNext, load_cnext_checkpoint

    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"embedder checkpoint not found: {path}")
    kind = kind_of(path)
    if kind == "retriever":
        from dcase.models.retriever import Retriever

        return Retriever.from_pretrained(path).eval()
    if kind == "cnext":
        return CNext.from_pretrained(path).eval()
    if path.is_file() and path.suffix in (".pth", ".pt", ".ckpt"):
        model, report = load_cnext_checkpoint(path)
        return model
    raise CheckpointError(
        f"{path}: not an audio embedder ({'an ' + kind + ' checkpoint' if kind else 'no dcase checkpoint'}; "
        "expected a retriever or CNext checkpoint folder, or a CNext .pth checkpoint)"
    )


def embedder_provenance(model: AudioEmbedder, path: str | Path) -> dict[str, Any]:
    """Provenance fields of an embed store made with ``model`` loaded from ``path``."""
    from dataclasses import asdict, is_dataclass

    path = Path(path)
    cfg = model.config if isinstance(model, ConfiguredModel) else None
    cfg_d = asdict(cfg) if cfg is not None and is_dataclass(cfg) else None
    return {
        "extractor": type(model).__name__.lower(),
        "extractor_config": cfg_d,
        "checkpoint": path.name,
        "checkpoint_sha256": fingerprint(resolve_checkpoint(path) if path.is_dir() else path),
        "sample_rate": int(model.sample_rate),
        "hop": None,
        "n_codebooks": None,
        "embed_dim": int(model.embed_dim),
    }


@torch.inference_mode()
def embed_waves(
    model: AudioEmbedder, waves: Sequence[np.ndarray], max_batch_samples: int = 32000 * 300
) -> list[np.ndarray]:
    """Mono clips at ``model.sample_rate`` -> float32 [D] each. Batches sorted by length within a sample budget."""
    order = sorted(range(len(waves)), key=lambda i: -len(waves[i]))
    out = [np.zeros(0, np.float32)] * len(waves)  # every slot is filled below (``order`` covers all clips)
    i = 0
    while i < len(order):
        longest = len(waves[order[i]])
        k = max(1, max_batch_samples // max(longest, 1))
        idx = order[i : i + k]
        i += k
        x, lengths = pad_waves([waves[c] for c in idx])  # [k, longest]: idx is sorted longest first
        device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else torch.device("cpu")
        emb = model.embed_audio(x.to(device), lengths.to(device)).float().cpu().numpy()
        for j, c in enumerate(idx):
            out[c] = np.ascontiguousarray(emb[j], dtype=np.float32)
    return out


# ------------------------------------------------------------------------------------ manifest rows, index
def embed_rows(
    model: Retriever,
    rows: Sequence[Any],
    batch_size: int = 16,
    max_seconds: float | None = 30.0,
    cache: AudioCache | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Joint audio embeddings of manifest rows (or objects with clip_id/audio_path): -> float32 [N, D].

    Clips are batched by length (less padding); each clip is embedded whole (up to ``max_seconds``).
    """
    cache = cache or AudioCache(model.sample_rate, max_seconds, keep=False)
    n_min = model.audio_encoder.min_samples()
    durations = [float(getattr(r, "duration_s", 0.0) or 0.0) for r in rows]
    order = np.argsort(durations, kind="stable")
    out = np.zeros((len(rows), model.embed_dim), dtype=np.float32)
    was_training = model.training
    model.eval()
    it: Iterable[int] = range(0, len(rows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="embed audio", unit="batch")
    for s in it:
        idx = order[s : s + batch_size]
        waves, lengths = pad_waves([fit_min_length(cache.get(rows[i]), n_min) for i in idx])
        out[idx] = model.embed_audio(waves, lengths).cpu().numpy()
    model.train(was_training)
    return out


def audio_index(
    model: Retriever,
    source: Retriever | str | Path,
    rows: Sequence[Any],
    batch_size: int = 16,
    max_seconds: float | None = 30.0,
    cache_dir: str | Path | None = None,
    index_cfg: IndexConfig | None = None,
    progress: bool = True,
    cache: AudioCache | None = None,
) -> AudioIndex:
    """The faiss index of ``rows``' audio embeddings under ``model``; persisted in ``cache_dir`` (reused when
    the checkpoint, the clip list, each audio file's size and mtime, and the truncation match; a damaged cache is
    rebuilt)."""
    from dcase.data.audio import row_audio_files
    from dcase.errors import DcaseError

    def stat_key(path: str) -> str:
        try:
            st = os.stat(path)
        except OSError:
            return "missing"
        return f"{st.st_size}:{st.st_mtime_ns}"

    ids = [str(r.clip_id) for r in rows]
    folder = Path(source) if isinstance(source, str | Path) and Path(source).is_dir() else None
    listing = "\n".join(
        f"{r.clip_id}\t{r.audio_path}\t" + ",".join(stat_key(p) for p in row_audio_files(r)) for r in rows
    )
    key = {
        "retriever": fingerprint(resolve_checkpoint(folder)) if folder is not None else fingerprint(model),
        "clips": hashlib.sha256(listing.encode()).hexdigest(),
        "max_seconds": max_seconds,
    }
    where = None
    if cache_dir is not None:
        where = Path(cache_dir) / hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:16]
        if (where / "index.json").is_file():
            try:
                idx = AudioIndex.load(where)
            except DcaseError as e:
                log.warning("%s: damaged audio-embedding cache, rebuilding it (%s)", where, e)
            else:
                if idx.meta == key and idx.clip_ids == ids:
                    log.info("reusing audio embeddings in %s", where)
                    return idx
    emb = embed_rows(model, rows, batch_size, max_seconds, cache=cache, progress=progress)
    idx = AudioIndex(emb, ids, index_cfg, meta=key)
    if where is not None:
        idx.save(where)
    return idx
