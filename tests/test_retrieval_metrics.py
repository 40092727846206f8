"""Retrieval metrics, standardisation, ensembles and the faiss index (dcase.evaluation.retrieval)."""

from __future__ import annotations

import numpy as np
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
