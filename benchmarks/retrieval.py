"""Approximate (IVF) vs exact faiss inner-product search on a large synthetic embedding collection.

Goal (Task 8 at scale): recall@10 >= 0.95 of the approximate index against exact search, and under 1 s for
1,000 queries on 2 CPU cores.

Data: a clustered distribution, because uniformly random unit vectors have no neighbourhood structure and make
any approximate index look arbitrarily bad or good. ``--clusters`` centres are drawn uniformly on the unit
sphere; each item is ``normalise(centre + sigma * g / sqrt(D))`` with ``g`` standard normal (``sigma`` 0.6 by
default: an item's cosine to its own centre is about 0.86, the typical spread of a text-audio embedding
cluster); queries are fresh draws from the same mixture. Items are generated chunk by chunk from per-chunk
seeds, so exact search streams over the chunks (top-10 merged) instead of holding a second 4 GB copy: peak
memory is about the IVF index itself (N x D x 4 bytes) plus one chunk.

    python benchmarks/retrieval.py                      # 1,000,000 x 1024, 1,000 queries (about 5 GB of RAM)
    python benchmarks/retrieval.py --n 200000           # smaller
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def chunk(i: int, size: int, centres: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 1, i + 1])  # i = -1: the queries
    d = centres.shape[1]
    c = centres[rng.integers(0, len(centres), size)]
    return unit(c + sigma * rng.standard_normal((size, d), dtype=np.float32) / np.sqrt(d))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="collection size")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--sigma", type=float, default=0.6)
    ap.add_argument("--nlist", type=int, default=4096, help="IVF cells")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--train", type=int, default=100_000, help="k-means training sample")
    ap.add_argument("--chunk", type=int, default=50_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    centres = unit(rng.standard_normal((args.clusters, args.dim), dtype=np.float32))
    q = chunk(-1, args.queries, centres, args.sigma, args.seed)
    n_chunks = (args.n + args.chunk - 1) // args.chunk
    sizes = [min(args.chunk, args.n - i * args.chunk) for i in range(n_chunks)]
    print(
        f"collection {args.n} x {args.dim} float32 ({args.n * args.dim * 4 / 2**30:.1f} GiB), {args.queries} "
        f"queries, {args.clusters} clusters, sigma {args.sigma}, {args.threads} threads, faiss {faiss.__version__}"
    )

    # exact search, streamed over the chunks
    t_exact = 0.0
    best_s = np.full((args.queries, 10), -np.inf, dtype=np.float32)
    best_i = np.zeros((args.queries, 10), dtype=np.int64)
    for i, size in enumerate(sizes):
        x = chunk(i, size, centres, args.sigma, args.seed)
        t0 = time.perf_counter()
        s, j = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, j + i * args.chunk], axis=1)
        o = np.argsort(-s_all, axis=1, kind="stable")[:, :10]
        best_s, best_i = np.take_along_axis(s_all, o, 1), np.take_along_axis(i_all, o, 1)
        t_exact += time.perf_counter() - t0
    print(f"exact (flat inner product): {t_exact:.3f} s for {args.queries} queries")

    # IVF: train on a sample, add chunk by chunk
    t0 = time.perf_counter()
    quant = faiss.IndexFlatIP(args.dim)
    index = faiss.IndexIVFFlat(quant, args.dim, args.nlist, faiss.METRIC_INNER_PRODUCT)
    train = np.concatenate(
        [chunk(i, size, centres, args.sigma, args.seed) for i, size in enumerate(sizes)][
            : max(1, args.train // args.chunk)
        ]
    )[: args.train]
    index.train(train)
    del train
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, size in enumerate(sizes):
        index.add(chunk(i, size, centres, args.sigma, args.seed))
    t_add = time.perf_counter() - t0
    print(f"IVF{args.nlist},Flat: train {t_train:.1f} s, add {t_add:.1f} s (build, once)")
    for nprobe in args.nprobe:
        index.nprobe = nprobe
        t0 = time.perf_counter()
        _, ids = index.search(q, 10)
        dt = time.perf_counter() - t0
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, best_i, strict=True)])
        print(
            f"  nprobe {nprobe:4d}: {dt:.3f} s for {args.queries} queries ({t_exact / dt:.1f}x faster than "
            f"exact), recall@10 vs exact {recall:.4f}"
        )


if __name__ == "__main__":
    main()
