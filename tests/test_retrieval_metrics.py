"""Retrieval metrics, standardisation, ensembles and the faiss index (dcase.evaluation.retrieval)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dcase.evaluation.retrieval import (
    AudioIndex,
    IndexConfig,
    ensemble_similarity,
    relevant_ranks,
    retrieval_metrics,
    sinkhorn_scores,
    standardize,
    top_k,
)


def test_metrics_hand_computed() -> None:
    # 3 queries over 12 items; relevant items land at ranks 1, 3 and 11
    sim = np.zeros((3, 12))
    sim[0] = np.linspace(1, 0, 12)  # item 0 best
    sim[1] = np.linspace(1, 0, 12)  # item 2 is 3rd
    sim[2] = np.linspace(1, 0, 12)  # item 10 is 11th
    relevant = np.array([0, 2, 10])
    assert relevant_ranks(sim, relevant).tolist() == [1, 3, 11]
    m = retrieval_metrics(sim, relevant)
    assert m["map_at_10"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m["r_at_1"] == pytest.approx(1 / 3)
    assert m["r_at_5"] == pytest.approx(2 / 3)
    assert m["r_at_10"] == pytest.approx(2 / 3)
    assert m["mean_rank"] == pytest.approx(5.0)
    assert m["median_rank"] == 3.0


def test_ties_broken_by_index_and_bad_input() -> None:
    sim = np.array([[0.5, 0.5, 0.5, 0.1]])
    assert relevant_ranks(sim, np.array([2])).tolist() == [3]
    assert relevant_ranks(sim, np.array([0])).tolist() == [1]
    with pytest.raises(ValueError, match="relevant item indices"):
        retrieval_metrics(sim, np.array([4]))
    with pytest.raises(ValueError, match=r"\[Q, N\]"):
        retrieval_metrics(sim, np.array([0, 1]))


def test_standardize_and_ensemble() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=(5, 20))
    z = standardize(s)
    np.testing.assert_allclose(z.mean(1), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(1), 1, atol=1e-12)
    # invariance: any positive affine map per row gives the same standardised matrix
    scale, shift = rng.uniform(0.1, 5, size=(5, 1)), rng.normal(size=(5, 1))
    np.testing.assert_allclose(standardize(scale * s + shift), z, atol=1e-10)
    # ensemble of one ranks exactly like the model
    assert (top_k(ensemble_similarity([s]), 10) == top_k(s, 10)).all()
    # two members: equal to the mean of z-scores, not of raw scores
    t = 100 * rng.normal(size=(5, 20))
    np.testing.assert_allclose(ensemble_similarity([s, t]), (z + standardize(t)) / 2)
    with pytest.raises(ValueError, match="shape"):
        ensemble_similarity([s, s[:, :3]])


def test_sinkhorn_scores_are_log_plan() -> None:
    rng = np.random.default_rng(1)
    cost = rng.uniform(size=(6, 4))
    lp = sinkhorn_scores(cost, epsilon=0.1)
    P = np.exp(lp)
    np.testing.assert_allclose(P.sum(1), 1 / 6, atol=1e-7)
    np.testing.assert_allclose(P.sum(0), 1 / 4, atol=1e-7)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_index_matches_exact_and_round_trips(kind: str, tmp_path) -> None:
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(8, 16))
    x = centers[rng.integers(0, 8, 400)] + 0.3 * rng.normal(size=(400, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[:20] + 0.01 * rng.normal(size=(20, 16)).astype(np.float32)
    ids = [f"clip{i}.wav" for i in range(400)]
    cfg = IndexConfig(kind=kind, nlist=8, nprobe=8)  # IVF visiting every cell = exact
    idx = AudioIndex(x, ids, cfg, meta={"retriever": "x"})
    scores, items = idx.search(q, 5)
    exact = top_k(q @ x.T, 5)
    assert (items[:, 0] == exact[:, 0]).all()
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(items, exact, strict=True)]) >= 0.9
    idx.save(tmp_path / "idx")
    back = AudioIndex.load(tmp_path / "idx")
    assert back.clip_ids == ids and back.meta == {"retriever": "x"} and back.cfg.kind == kind
    s2, i2 = back.search(q, 5)
    assert (i2 == items).all()
    np.testing.assert_allclose(s2, scores, rtol=1e-5)


def _official_measure(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Independent transcription of the DCASE Task 8 evaluation's ``measure()``: per query, sort the items by
    descending score; R@k = relevant in the first k / all relevant; AP@10 = sum over the relevant items found in the
    first 10, at positions p_1 < p_2 < ..., of i / p_i, divided by all relevant; means over queries."""
    r1, r5, r10, ap10 = [], [], [], []
    for s, t in zip(scores, targets, strict=True):
        t = t[np.argsort(s)[::-1]].astype(float)
        n_rel = t.sum()
        r1.append(t[:1].sum() / n_rel)
        r5.append(t[:5].sum() / n_rel)
        r10.append(t[:10].sum() / n_rel)
        positions = np.arange(1, 11, dtype=float)[t[:10] > 0]
        ap10.append((np.arange(1, len(positions) + 1) / positions).sum() / n_rel if len(positions) else 0.0)
    return {"map_at_10": np.mean(ap10), "r_at_1": np.mean(r1), "r_at_5": np.mean(r5), "r_at_10": np.mean(r10)}


def test_relevance_sets_match_the_official_measure(tmp_path) -> None:
    """Several relevant items per query: the similarity-matrix path and the ranked-file-names path both equal the
    official formula to 1e-12, with the same keys."""
    from dcase.evaluation.retrieval import score_task8_files
    from dcase.submission.formats import TASK8_COLUMNS

    rng = np.random.default_rng(0)
    for case in range(20):
        q, n = int(rng.integers(1, 30)), int(rng.integers(10, 60))
        sim = rng.normal(size=(q, n))  # continuous: no ties
        targets = np.zeros((q, n), dtype=bool)
        sets = []
        for i in range(q):
            rel = rng.choice(n, size=int(rng.integers(1, 6)), replace=False)
            if case % 2:  # push some relevant items into the top 10
                sim[i, rel[: len(rel) // 2 + 1]] += 2.0
            targets[i, rel] = True
            sets.append(sorted(rel.tolist()))
        want = _official_measure(sim, targets)
        got = retrieval_metrics(sim, sets)
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-12), (case, k)
        assert retrieval_metrics(sim, targets) == got  # bool matrix form
        # the same case as files: a Task 8 CSV of the top-10 names and a caption,file_name ground truth
        names = [f"clip {j}.wav" for j in range(n)]
        captions = [f"query {i}" for i in range(q)]
        top = np.argsort(-sim, axis=1)[:, :10]
        pred = tmp_path / f"pred{case}.csv"
        pd.DataFrame(
            [[c, *[names[j] for j in row]] for c, row in zip(captions, top, strict=True)], columns=list(TASK8_COLUMNS)
        ).to_csv(pred, index=False)
        truth = tmp_path / f"truth{case}.csv"
        pd.DataFrame({"caption": captions, "file_name": ["|".join(names[j] for j in s) for s in sets]}).to_csv(
            truth, index=False
        )
        from_files = score_task8_files(pred, truth)
        for k, v in want.items():
            assert from_files[k] == pytest.approx(v, abs=1e-12), (case, k)
        assert set(from_files) == {*want, "n_queries"} and from_files["n_queries"] == q
        assert set(got) == {*from_files, "mean_rank", "median_rank"}


def test_one_relevant_item_keeps_the_reciprocal_rank_formula() -> None:
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(40, 25))
    relevant = rng.integers(0, 25, size=40)
    ranks = relevant_ranks(sim, relevant)
    m = retrieval_metrics(sim, relevant)
    assert m["map_at_10"] == pytest.approx(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0)), abs=1e-15)
    for k in (1, 5, 10):
        assert m[f"r_at_{k}"] == pytest.approx(np.mean(ranks <= k), abs=1e-15)
    assert m == retrieval_metrics(sim, [[int(r)] for r in relevant])
    # several relevant items: mean/median rank are those of each query's best-ranked relevant item
    sets = [[int(r), (int(r) + 3) % 25] for r in relevant]
    best = np.minimum(relevant_ranks(sim, relevant), relevant_ranks(sim, [s[1] for s in sets]))
    assert relevant_ranks(sim, sets).tolist() == best.tolist()
    assert retrieval_metrics(sim, sets)["mean_rank"] == pytest.approx(best.mean())
    with pytest.raises(ValueError, match="no relevant item"):
        retrieval_metrics(sim[:1], [[]])
