"""Text-to-audio retrieval: the one Task 8 metric core, scoring from files, score standardisation, ensembles,
transductive Sinkhorn scores and the faiss index.

Metrics (DCASE2024 Task 8, the official ``measure()`` of the task's evaluation code): each query has a set of
relevant items (``n_rel`` >= 1 of them; Clotho development data: one, the query caption's clip). With the query's
ranked items, best first,

    R@k    = #(relevant items among the first k) / n_rel
    AP@10  = sum over the relevant items found at positions p_1 < p_2 < ... <= 10 of (j / p_j), divided by n_rel
    mAP@10 = mean of AP@10 over queries

so with one relevant item at rank r, AP@10 = 1/r (r <= 10) and R@k = [r <= k]. Relevance is binary (see
docs/evaluation.md). From a similarity matrix the ranking puts higher scores first, ties broken by item index (as a
stable sort); ``mean_rank`` / ``median_rank`` are those of each query's best-ranked relevant item (the rank of the
relevant item when there is one). ``retrieval_metrics`` (similarity matrix) and ``score_task8_files`` (ranked file
names of a Task 8 CSV) both compute through ``ranking_metrics``, with the same keys.

Ensembles (EnCLAP DCASE2024 report, §3.3): each model's similarity matrix [Q, N] is z-scored per query row
(over the N candidate items), then the standardised matrices are averaged. Per-row z-scoring is a positive
affine map of each row, so an ensemble of one ranks exactly like the model alone.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from dcase.errors import InputError, MissingInputError
from dcase.io import atomic_path, atomic_write_text, read_json

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- metrics
MAP_CUTOFF = 10
RECALL_CUTOFFS = (1, 5, 10)
Relevance = np.ndarray | Sequence[int] | Sequence[Iterable[int]]


def ranking_metrics(hits: np.ndarray, n_relevant: np.ndarray) -> dict[str, float]:
    """The metric core: hits [Q, K] bool (is the item at ranked position k of query q relevant; K >= 10 unless
    the collection is smaller), n_relevant [Q] >= 1 -> map_at_10, r_at_1, r_at_5, r_at_10, n_queries."""
    hits = np.asarray(hits, dtype=bool)
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    if hits.ndim != 2 or n_rel.shape != (hits.shape[0],):
        raise ValueError(f"hits must be [Q, K] and n_relevant [Q]; got {hits.shape} and {n_rel.shape}")
    if hits.shape[0] == 0:
        raise InputError("no queries to score")
    if (n_rel < 1).any():
        raise ValueError(f"queries {np.flatnonzero(n_rel < 1)[:10].tolist()} have no relevant item")
    if (hits.sum(1) > n_rel).any():
        raise ValueError("a query has more relevant hits than relevant items")
    top = hits[:, :MAP_CUTOFF].astype(np.float64)
    positions = np.arange(1, top.shape[1] + 1, dtype=np.float64)
    precision_at_hits = np.cumsum(top, axis=1) / positions * top
    out = {"map_at_10": float(np.mean(precision_at_hits.sum(1) / n_rel))}
    for k in RECALL_CUTOFFS:
        out[f"r_at_{k}"] = float(np.mean(hits[:, :k].sum(1) / n_rel))
    out["n_queries"] = int(hits.shape[0])
    return out


def relevance_matrix(relevant: Relevance, shape: tuple[int, int]) -> np.ndarray:
    """Relevant items of each query as a bool matrix [Q, N], from item indices [Q] (one relevant item per query),
    a list of Q collections of item indices, or a bool matrix [Q, N]."""
    q, n = shape
    if isinstance(relevant, np.ndarray) and relevant.dtype == bool:
        if relevant.shape != (q, n):
            raise ValueError(f"sim must be [Q, N] and relevant [Q, N]; got {shape} and {relevant.shape}")
        return relevant
    if isinstance(relevant, np.ndarray) or (len(relevant) and np.isscalar(relevant[0])):
        idx = np.asarray(relevant, dtype=np.int64)
        if idx.shape != (q,):
            raise ValueError(f"sim must be [Q, N] and relevant [Q]; got {shape} and {idx.shape}")
        sets: list[list[int]] = [[int(i)] for i in idx]
    else:
        item_sets = cast(Sequence[Iterable[int]], relevant)  # its first entry is not a scalar: Q item collections
        sets = [[int(i) for i in r] for r in item_sets]
        if len(sets) != q:
            raise ValueError(f"sim must be [Q, N] and relevant a list of Q item sets; got {shape} and {len(sets)} sets")
    flat = [i for r in sets for i in r]
    if flat and (min(flat) < 0 or max(flat) >= n):
        raise ValueError(f"relevant item indices must be in [0, {n}), got range [{min(flat)}, {max(flat)}]")
    out = np.zeros((q, n), dtype=bool)
    for row, r in enumerate(sets):
        out[row, r] = True
    return out


def _order_and_ranks(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sim [Q, N] -> (items best first [Q, N], 1-based rank of every item [Q, N]); higher first, ties by index."""
    order = np.argsort(-np.asarray(sim), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, order.shape[1] + 1)[None, :], axis=1)
    return order, ranks


def relevant_ranks(sim: np.ndarray, relevant: Relevance) -> np.ndarray:
    """1-based rank of each query's best-ranked relevant item: sim [Q, N] -> [Q] int64."""
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise ValueError(f"sim must be [Q, N]; got {sim.shape}")
    rel = relevance_matrix(relevant, sim.shape)
    return np.where(rel, _order_and_ranks(sim)[1], np.iinfo(np.int64).max).min(1).astype(np.int64)


def retrieval_metrics(sim: np.ndarray, relevant: Relevance) -> dict[str, float]:
    """sim [Q, N] (higher = better) and each query's relevant items (indices [Q], Q index collections, or a bool
    [Q, N]) -> map_at_10, r_at_1, r_at_5, r_at_10, n_queries (``ranking_metrics``), mean_rank, median_rank."""
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise ValueError(f"sim must be [Q, N]; got {sim.shape}")
    rel = relevance_matrix(relevant, sim.shape)
    order, ranks = _order_and_ranks(sim)
    out = ranking_metrics(np.take_along_axis(rel, order[:, :MAP_CUTOFF], axis=1), rel.sum(1))
    best = np.where(rel, ranks, np.iinfo(np.int64).max).min(1)
    out["mean_rank"] = float(best.mean())
    out["median_rank"] = float(np.median(best))
    return out


def ranked_list_metrics(ranked: Sequence[Sequence[str]], relevant: Sequence[Iterable[str]]) -> dict[str, float]:
    """``ranking_metrics`` of ranked name lists: ranked [Q][<= 10] file names (best first), relevant [Q] sets of
    relevant file names (a name repeated in a list counts once, at its first position)."""
    if len(ranked) != len(relevant):
        raise ValueError(f"found {len(ranked)} ranked lists for {len(relevant)} relevance sets")
    hits = np.zeros((len(ranked), MAP_CUTOFF), dtype=bool)
    n_rel = np.zeros(len(ranked), dtype=np.int64)
    for q, (names, rel) in enumerate(zip(ranked, relevant, strict=True)):
        rel_set = set(rel)
        n_rel[q] = len(rel_set)
        seen: set[str] = set()
        for k, name in enumerate(list(names)[:MAP_CUTOFF]):
            hits[q, k] = name in rel_set and name not in seen
            seen.add(name)
    return ranking_metrics(hits, n_rel)


def score_task8_files(predictions: str | Path, references: str | Path) -> dict[str, float]:
    """Score a Task 8 CSV against queries with their relevant files (``submission.formats.read_queries``: a Clotho
    captions CSV, every caption a query relevant to its own clip; or a ``caption,file_name`` ground truth).

    The predictions must pass ``submit validate task8`` (10 distinct non-empty names per row). Rows are matched to
    queries in order when the captions agree row by row; otherwise by caption text, repeated captions being matched
    in order of appearance. Missing, extra or unmatched queries are errors naming them.
    """
    from dcase.submission.formats import SubmissionError, problems_error, read_queries, task8_rows, validate_task8

    # the checks of `dcase submit validate task8` first: an empty slot or a clip repeated in a row would
    # otherwise be scored (a clip repeated 10 times is not 10 hits, but the row is not a valid submission)
    rows = task8_rows(validate_task8(predictions))
    queries, relevant = read_queries(references)
    if relevant is None:
        raise SubmissionError(f"{references}: has no file_name column, so the relevant clips are unknown")
    if len(rows) == len(queries) and all(c == q for (c, _), q in zip(rows, queries, strict=True)):
        return ranked_list_metrics([names for _, names in rows], relevant)
    by_text: dict[str, list[list[str]]] = {}
    for caption, names in rows:
        by_text.setdefault(caption, []).append(names)
    problems = []
    want = Counter(queries)
    for text, lists in by_text.items():
        if len(lists) != want.get(text, 0):
            problems.append(f"caption {text!r}: {len(lists)} rows for {want.get(text, 0)} queries")
    problems += [f"query {text!r} has no row" for text in want if text not in by_text]
    if problems:
        raise problems_error(predictions, problems)
    return ranked_list_metrics([by_text[q].pop(0) for q in queries], relevant)


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
        raise InputError(f"asked for the top {k} of only {sim.shape[1]} items")
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


def _faiss() -> Any:
    """The faiss module (imported lazily; faiss ships no type information, so its objects are ``Any`` here)."""
    import faiss

    return faiss


def build_index(dim: int, n_items: int, cfg: IndexConfig | None = None, train: np.ndarray | None = None) -> Any:
    """An empty (trained, for IVF) faiss inner-product index; add vectors with ``index.add``."""
    faiss = _faiss()
    cfg = cfg or IndexConfig()
    if cfg.kind not in INDEX_KINDS:
        raise InputError(f"index kind {cfg.kind!r} is not one of {INDEX_KINDS}")
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


def maybe_to_gpu(index: Any, use_gpu: bool = True) -> Any:
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
        index: Any = None,
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
            raise InputError(f"asked for the top {k} of only {len(self)} indexed clips")
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
        info = read_json(path / "index.json", "audio index")
        ids = read_json(path / "clip_ids.json", "audio index")
        try:
            emb = np.load(path / "embeddings.npy")
            index = faiss.read_index(str(path / "index.faiss"))
        except Exception as e:  # noqa: BLE001 - numpy and faiss raise many kinds of errors on damaged files
            raise InputError(f"{path}: damaged audio index ({type(e).__name__}: {e}); delete it to rebuild") from e
        if index.ntotal != len(ids) or emb.shape[0] != len(ids):
            raise InputError(
                f"{path}: index holds {index.ntotal} vectors, embeddings {emb.shape[0]}, ids {len(ids)}; rebuild it"
            )
        return cls(emb, ids, IndexConfig(**info["config"]), info.get("meta"), index=index)
