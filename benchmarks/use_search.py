"""``Retriever.search`` over 10k indexed clips: latency per query, split into the query's text embedding and the
faiss search, for a retriever with the real all-MiniLM-L6-v2 text tower and a 1024-d joint space.

The collection's audio embeddings are random unit vectors (embedding 10k real clips with CNext would measure
``dcase index``, not search): an ``AudioCollection`` of 10k entries, saved and loaded back through
``Retriever.load_index`` as ``dcase search`` does (the load time is printed too). Queries are 100 different
captions, searched one at a time (as a user types them).

Run: HF_HUB_OFFLINE=1 python benchmarks/use_search.py [--clips 10000] [--queries 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

WORDS = "a dog cat bird car rain wind door water people talk bark sing pass fall run slam creak metal roof".split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from dcase.api import AudioCollection, FileKey, Retriever
    from dcase.models.retriever import Retriever as RetrieverModel
    from dcase.models.retriever import RetrieverConfig, TextTowerConfig

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = RetrieverModel.build(
            RetrieverConfig(text=TextTowerConfig(name_or_path="sentence-transformers/all-MiniLM-L6-v2"), joint_dim=1024)
        )
        model.save_pretrained(root / "retriever")
        r = Retriever.from_pretrained(root / "retriever", device="cpu")
        emb = rng.standard_normal((a.clips, 1024)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        keys = [FileKey(f"/sounds/clip{i:05d}.wav", 1000, 0, "0" * 64) for i in range(a.clips)]
        AudioCollection(keys, [emb], r.fingerprints(), str(root / "retriever"), 30.0).save(root / "index")
        t0 = time.perf_counter()
        r = Retriever.load_index(root / "index", device="cpu")
        load_s = time.perf_counter() - t0
        queries = [" ".join(rng.choice(WORDS, size=8)) for _ in range(a.queries)]
        r.search(queries[0], k=10)  # warm-up
        total, text, faiss_s = [], [], []
        for q in queries:
            t0 = time.perf_counter()
            hits = r.search(q, k=10)
            total.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            qe = r.embed_text([q])[0]
            t1 = time.perf_counter()
            r.collection.indexes[0].search(qe, 10)
            t2 = time.perf_counter()
            text.append(t1 - t0)
            faiss_s.append(t2 - t1)
            assert len(hits) == 10
    ms = lambda v: f"{1000 * statistics.median(v):.2f} ms"  # noqa: E731
    print(f"collection: {a.clips} clips x 1024-d, load_index {load_s:.2f} s; {a.queries} queries, top 10")
    print(f"search per query (median): {ms(total)}; text embedding {ms(text)}; faiss flat search {ms(faiss_s)}")
    print(f"p90 per query: {1000 * sorted(total)[int(0.9 * len(total))]:.2f} ms")


if __name__ == "__main__":
    main()
