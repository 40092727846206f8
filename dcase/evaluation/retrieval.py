"""Text-to-audio retrieval: metrics, score standardisation, ensembles, transductive Sinkhorn scores, faiss index.

Metrics (DCASE2024 Task 8): for each query the rank of its relevant item is ``1 + #(items scored higher)``,
ties broken by item index (as a stable sort would); mAP@10 is the mean of ``1 / rank`` when the relevant
item is in the top 10, else 0 (one relevant item per query, so AP@10 is that reciprocal rank); R@k is the
fraction of queries whose relevant item is in the top k.

Ensembles (EnCLAP DCASE2024 report, §3.3): each model's similarity matrix [Q, N] is z-scored per query row
(over the N candidate items), then the standardised matrices are averaged. Per-row z-scoring is a positive
affine map of each row, so an ensemble of one ranks exactly like the model alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dcase.errors import MissingInputError
from dcase.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- metrics
def relevant_ranks(sim: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of each query's relevant item: sim [Q, N], relevant [Q] item indices -> [Q] int64."""
    sim = np.asarray(sim)
    relevant = np.asarray(relevant, dtype=np.int64)
    if sim.ndim != 2 or relevant.shape != (sim.shape[0],):
        raise ValueError(f"sim must be [Q, N] and relevant [Q]; got {sim.shape} and {relevant.shape}")
    if len(relevant) and (relevant.min() < 0 or relevant.max() >= sim.shape[1]):
        raise ValueError(
            f"relevant item indices must be in [0, {sim.shape[1]}), got range [{relevant.min()}, {relevant.max()}]"
        )
    q = np.arange(sim.shape[0])
    s_rel = sim[q, relevant][:, None]
    higher = (sim > s_rel).sum(1)
    tied_before = ((sim == s_rel) & (np.arange(sim.shape[1])[None, :] < relevant[:, None])).sum(1)
    return (1 + higher + tied_before).astype(np.int64)


def retrieval_metrics(sim: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """sim [Q, N] (higher = better), relevant [Q] item index -> map_at_10, r_at_{k}, mean_rank, median_rank."""
    ranks = relevant_ranks(sim, relevant)
    out = {"map_at_10": float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0)))}
    for k in ks:
        out[f"r_at_{k}"] = float(np.mean(ranks <= k))
    out["mean_rank"] = float(ranks.mean())
    out["median_rank"] = float(np.median(ranks))
    return out


# --------------------------------------------------------------------------------- ranking & ensembles
def standardize(sim: np.ndarray, axis: int = 1) -> np.ndarray:
    """Z-score along ``axis`` (default 1: each query row over its candidate items). Constant rows -> 0."""
    sim = np.asarray(sim, dtype=np.float64)
    mu = sim.mean(axis=axis, keepdims=True)
    sd = sim.std(axis=axis, keepdims=True)
    return (sim - mu) / np.where(sd > 0, sd, 1.0)


def ensemble_similarity(sims: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of per-query z-scored similarity matrices, each [Q, N] -> [Q, N]."""
    if len(sims) == 0:
        raise ValueError("an ensemble needs at least one similarity matrix")
    shapes = {np.shape(s) for s in sims}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members disagree on the [queries, items] shape: {sorted(shapes)}")
    return np.mean([standardize(s) for s in sims], axis=0)


def top_k(sim: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best items per row, best first, ties by item index: [Q, N] -> [Q, k]."""
    sim = np.asarray(sim)
    if k > sim.shape[1]:
        raise ValueError(f"asked for the top {k} of only {sim.shape[1]} items")
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def sinkhorn_scores(
    cost: np.ndarray, epsilon: float = 0.03, num_iter: int = 1000, normalize: bool = True
) -> np.ndarray:
    """Transductive ranking scores: log of the entropic OT plan between *all* queries and *all* items.

    cost [Q, N] (e.g. the retriever's Mahalanobis cost), uniform marginals, log-domain Sinkhorn (POT,
    float64) -> log pi [Q, N]; ranking a row by ``log pi`` = ranking by the plan (m-LTM paper's evaluation).
    """
    import ot

    cost = np.asarray(cost, dtype=np.float64)
    if normalize:
        cost = cost / cost.max()
    q, n = cost.shape
    a, b = np.full(q, 1.0 / q), np.full(n, 1.0 / n)
    _, lg = ot.sinkhorn(
        a, b, cost, epsilon, method="sinkhorn_log", numItermax=num_iter, stopThr=1e-9, log=True, warn=False
    )
    return lg["log_u"][:, None] - cost / epsilon + lg["log_v"][None, :]


# ------------------------------------------------------------------------------------------ faiss index
INDEX_KINDS = ("flat", "ivf", "hnsw")


@dataclass
class IndexConfig:
    """faiss inner-product index. ``flat`` = exact (default); ``ivf``/``hnsw`` = approximate, for big collections."""

    kind: str = "flat"
    nlist: int = 0  # IVF cells; 0 = 4 * sqrt(N)
    nprobe: int = 32  # IVF cells visited per query
    hnsw_m: int = 32
    ef_search: int = 128
    ef_construction: int = 80
    train_size: int = 100_000  # IVF k-means sample
    use_gpu: bool = True  # only if faiss reports GPUs


def _faiss():
    import faiss

    return faiss


def build_index(dim: int, n_items: int, cfg: IndexConfig | None = None, train: np.ndarray | None = None):
    """An empty (trained, for IVF) faiss inner-product index; add vectors with ``index.add``."""
    faiss = _faiss()
    cfg = cfg or IndexConfig()
    if cfg.kind not in INDEX_KINDS:
        raise ValueError(f"index kind {cfg.kind!r} is not one of {INDEX_KINDS}")
    if cfg.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif cfg.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
    else:
        nlist = cfg.nlist or max(1, int(4 * np.sqrt(n_items)))
        quant = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quant, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        if train is None:
            raise ValueError("an IVF index needs training vectors")
        index.train(np.ascontiguousarray(train[: cfg.train_size], dtype=np.float32))
        index.nprobe = cfg.nprobe
    return index


def maybe_to_gpu(index, use_gpu: bool = True):
    """Move ``index`` to all GPUs when faiss was built with GPU support and sees one; else return it as is."""
    faiss = _faiss()
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu and n > 0:
        log.info("faiss: using %d GPU(s)", n)
        return faiss.index_cpu_to_all_gpus(index)
    return index


class AudioIndex:
    """Audio embeddings [N, D] (L2-normalised) with their clip ids and a faiss inner-product index.

    Persisted as one directory: ``embeddings.npy``, ``clip_ids.json``, ``index.faiss``, ``index.json``
    (index config, dim, count and any ``meta`` such as the retriever checkpoint it was computed with).
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        clip_ids: Sequence[str],
        cfg: IndexConfig | None = None,
        meta: dict | None = None,
        index=None,
    ) -> None:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(clip_ids):
            raise ValueError(f"embeddings {embeddings.shape} do not match {len(clip_ids)} clip ids")
        self.embeddings, self.clip_ids = embeddings, list(clip_ids)
        self.cfg, self.meta = cfg or IndexConfig(), dict(meta or {})
        if index is None:
            index = build_index(embeddings.shape[1], len(embeddings), self.cfg, train=embeddings)
            index.add(embeddings)
        self._cpu_index = index
        self.index = maybe_to_gpu(index, self.cfg.use_gpu)

    def __len__(self) -> int:
        return len(self.clip_ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [Q, D] -> (scores [Q, k], item indices [Q, k]), best first."""
        if k > len(self):
            raise ValueError(f"asked for the top {k} of only {len(self)} indexed clips")
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def save(self, path: str | Path) -> Path:
        faiss = _faiss()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / "embeddings.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, self.embeddings)
        atomic_write_text(path / "clip_ids.json", json.dumps(self.clip_ids))
        with atomic_path(path / "index.faiss") as tmp:
            faiss.write_index(self._cpu_index, str(tmp))
        atomic_write_text(
            path / "index.json",
            json.dumps(
                {
                    "config": asdict(self.cfg),
                    "dim": int(self.embeddings.shape[1]),
                    "count": len(self),
                    "meta": self.meta,
                },
                indent=2,
            ),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> AudioIndex:
        faiss = _faiss()
        path = Path(path)
        if not (path / "index.json").is_file():
            raise MissingInputError(f"{path}: not an audio index directory (no index.json)")
        info = json.loads((path / "index.json").read_text())
        emb = np.load(path / "embeddings.npy")
        ids = json.loads((path / "clip_ids.json").read_text())
        index = faiss.read_index(str(path / "index.faiss"))
        if index.ntotal != len(ids) or emb.shape[0] != len(ids):
            raise ValueError(
                f"{path}: index holds {index.ntotal} vectors, embeddings {emb.shape[0]}, ids {len(ids)}; rebuild it"
            )
        return cls(emb, ids, IndexConfig(**info["config"]), info.get("meta"), index=index)
