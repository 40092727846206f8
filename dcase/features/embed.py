"""Clip embeddings: the ``AudioEmbedder`` protocol, ``load_embedder`` and batched embedding of waveforms.

The embedding fills EnCLAP's "CLAP slot" (EnCLAP §2.1; the DCASE2024 report replaces CLAP by the retriever's
audio tower). Any model with ``sample_rate``, ``embed_dim`` and ``embed_audio(waves, lengths)`` works.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from dcase.errors import MissingInputError

log = logging.getLogger(__name__)


@runtime_checkable
class AudioEmbedder(Protocol):
    """An audio tower: padded waves [B, T] float32 + lengths [B] int64 -> clip embeddings [B, D]."""

    sample_rate: int
    embed_dim: int

    def embed_audio(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor: ...


def load_embedder(path: str | Path) -> AudioEmbedder:
    """A retriever directory (``retriever_config.json``), a CNext directory (``cnext_config.json``) or a
    published CNext ``.pth`` -> an embedder in eval mode."""
    from dcase.models.cnext import CONFIG_NAME, CNext, load_cnext_checkpoint

    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"embedder checkpoint not found: {path}")
    if path.is_dir() and (path / "retriever_config.json").is_file():
        try:
            from dcase.models.retriever import Retriever
        except ImportError as e:
            raise ValueError(f"{path}: a retriever checkpoint, but dcase.models.retriever is unavailable ({e})") from e
        return Retriever.from_pretrained(path).eval()
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return CNext.from_pretrained(path).eval()
    if path.is_file() and path.suffix in (".pth", ".pt", ".ckpt"):
        model, report = load_cnext_checkpoint(path)
        return model
    raise ValueError(
        f"{path}: not an audio embedder (expected a retriever or CNext directory, or a CNext .pth checkpoint)"
    )


def embedder_provenance(model: AudioEmbedder, path: str | Path) -> dict[str, Any]:
    """Provenance fields of an embed store made with ``model`` loaded from ``path``."""
    from dataclasses import asdict, is_dataclass

    from dcase.io import sha256_dir, sha256_file

    path = Path(path)
    cfg = getattr(model, "config", None)
    cfg_d = asdict(cfg) if is_dataclass(cfg) else (cfg.to_dict() if hasattr(cfg, "to_dict") else None)
    return {
        "extractor": type(model).__name__.lower(),
        "extractor_config": cfg_d,
        "checkpoint": path.name,
        "checkpoint_sha256": sha256_dir(path, "*.safetensors") if path.is_dir() else sha256_file(path),
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
    out: list[np.ndarray | None] = [None] * len(waves)
    i = 0
    while i < len(order):
        longest = len(waves[order[i]])
        k = max(1, max_batch_samples // max(longest, 1))
        idx = order[i : i + k]
        i += k
        x = torch.zeros(len(idx), longest)
        for j, c in enumerate(idx):
            x[j, : len(waves[c])] = torch.from_numpy(np.asarray(waves[c], dtype=np.float32))
        lengths = torch.tensor([len(waves[c]) for c in idx], dtype=torch.long)
        params = getattr(model, "parameters", None)
        device = next(params()).device if params is not None else torch.device("cpu")
        emb = model.embed_audio(x.to(device), lengths.to(device)).float().cpu().numpy()
        for j, c in enumerate(idx):
            out[c] = np.ascontiguousarray(emb[j], dtype=np.float32)
    return out  # type: ignore[return-value]
