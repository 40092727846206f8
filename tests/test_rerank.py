"""Candidates table schema, reranking (argmax of the weighted score), fluency filtering and fallback, tuning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dcase.decoding.rerank import (
    CANDIDATE_COLUMNS,
    CandidatesError,
    apply_fluency,
    lazy_fluency,
    make_candidates,
    plot_tuning,
    read_candidates,
    rerank,
    selected_captions,
    tune_weights,
    validate_candidates,
    write_candidates,
)


def _random_table(seed=0, n_clips=6, n_cands=5, with_probs=True):
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_clips):
        for j in range(n_cands):
            rows.append({
                "clip_id": f"clip{c}.wav", "text": f"caption {c} {j}", "count": int(rng.integers(1, 4)),
                "decoder_score": float(rng.normal(-1.5, 0.5)), "encoder_score": float(rng.uniform(0, 0.6)),
                "fluency_error_prob": float(rng.uniform()) if with_probs else np.nan,
            })  # fmt: skip
    return make_candidates(rows)


def _expected(df, w_enc, w_dec, thr):
    """Independent selection: plain Python loops over the rows."""
    out = {}
    for clip in dict.fromkeys(df["clip_id"]):
        rows = [r for r in df.to_dict("records") if r["clip_id"] == clip]
        score = {r["text"]: w_enc * r["encoder_score"] + w_dec * r["decoder_score"] for r in rows}
        ok = [r for r in rows if thr is None or np.isnan(r["fluency_error_prob"]) or r["fluency_error_prob"] <= thr]
        pool = ok or rows
        out[clip] = (max(pool, key=lambda r: score[r["text"]])["text"], not ok)
    return out


@pytest.mark.parametrize(
    ("w_enc", "w_dec", "thr"), [(0.7, 0.3, 0.9), (0.7, 0.3, None), (0.2, 0.8, 0.5), (1.0, 0.0, 0.3)]
)
def test_selects_argmax_of_stated_score(w_enc, w_dec, thr):
    df = _random_table(1)
    ranked = rerank(df, w_enc, w_dec, thr)
    np.testing.assert_allclose(ranked["final_score"], w_enc * df["encoder_score"] + w_dec * df["decoder_score"])
    exp = _expected(df, w_enc, w_dec, thr)
    sel = ranked[ranked["selected"]]
    assert len(sel) == df["clip_id"].nunique()
    assert dict(zip(sel["clip_id"], sel["text"], strict=True)) == {c: t for c, (t, _) in exp.items()}
    for clip, (_, fb) in exp.items():
        assert ranked.loc[ranked["clip_id"] == clip, "fallback"].eq(fb).all()
    assert selected_captions(ranked) == [(c, exp[c][0]) for c in exp]


def test_filter_and_fallback():
    df = make_candidates([
        {"clip_id": "a", "text": "best but broken", "decoder_score": 0.0, "encoder_score": 1.0,
         "fluency_error_prob": 0.95},
        {"clip_id": "a", "text": "fluent", "decoder_score": -1.0, "encoder_score": 0.5, "fluency_error_prob": 0.1},
        {"clip_id": "b", "text": "bad one", "decoder_score": -2.0, "encoder_score": 0.1, "fluency_error_prob": 0.99},
        {"clip_id": "b", "text": "bad two", "decoder_score": -1.0, "encoder_score": 0.2, "fluency_error_prob": 0.91},
        {"clip_id": "c", "text": "at threshold", "decoder_score": -1.0, "encoder_score": 0.2,
         "fluency_error_prob": 0.9},
    ])  # fmt: skip
    ranked = rerank(df)
    assert selected_captions(ranked) == [("a", "fluent"), ("b", "bad two"), ("c", "at threshold")]
    assert ranked.groupby("clip_id")["fallback"].all().to_dict() == {"a": False, "b": True, "c": False}
    # filter off: the highest score wins even if flagged
    assert selected_captions(rerank(df, threshold=None))[0] == ("a", "best but broken")


def test_nan_handling():
    df = _random_table(2, with_probs=False)
    assert rerank(df, threshold=0.9)["selected"].sum() == df["clip_id"].nunique()  # all NaN -> filter off
    # filter on, every other clip fully checked; clip0 has a probability only on its lowest-ranked candidate,
    # so unchecked candidates rank above its only fluent one: an error naming the clip
    partial = df.copy()
    partial["fluency_error_prob"] = 0.0
    clip0 = partial.index[partial["clip_id"] == "clip0.wav"]
    scores = 0.7 * partial.loc[clip0, "encoder_score"] + 0.3 * partial.loc[clip0, "decoder_score"]
    partial.loc[clip0, "fluency_error_prob"] = np.nan
    partial.loc[scores.idxmin(), "fluency_error_prob"] = 0.5
    with pytest.raises(CandidatesError, match="clip0.wav"):
        rerank(partial, threshold=0.9)
    no_enc = df.copy()
    no_enc["encoder_score"] = np.nan
    with pytest.raises(CandidatesError, match="encoder_score is missing"):
        rerank(no_enc)
    ranked = rerank(no_enc, w_enc=0.0, w_dec=1.0)  # decoder-only reranking needs no retriever
    exp = _expected(df, 0.0, 1.0, None)
    assert selected_captions(ranked) == [(c, t) for c, (t, _) in exp.items()]


def test_schema_validation_and_parquet_round_trip(tmp_path):
    df = rerank(_random_table(3))
    path = write_candidates(df.assign(model="m1"), tmp_path / "cands.parquet")
    back = read_candidates(path)
    assert list(back.columns) == [*CANDIDATE_COLUMNS, "model"]
    pd.testing.assert_frame_equal(back.drop(columns="model"), df)
    with pytest.raises(CandidatesError, match="missing columns"):
        validate_candidates(df.drop(columns=["count"]))
    with pytest.raises(CandidatesError, match="duplicate candidate"):
        validate_candidates(pd.concat([df, df.iloc[:1]]))
    bad = df.copy()
    bad.loc[2, "text"] = " "
    with pytest.raises(CandidatesError, match="row 2.*empty text"):
        validate_candidates(bad)
    bad = df.copy()
    bad.loc[1, "count"] = 0
    with pytest.raises(CandidatesError, match="count"):
        validate_candidates(bad)
    bad = df.copy()
    bad.loc[1, "fluency_error_prob"] = 1.5
    with pytest.raises(CandidatesError, match="outside"):
        validate_candidates(bad)
    bad = df.copy()
    bad["selected"] = True
    with pytest.raises(CandidatesError, match="more than one selected"):
        validate_candidates(bad)
    with pytest.raises(CandidatesError, match="without a selected"):
        selected_captions(_random_table(3))


def test_apply_fluency_uses_the_checker():
    class FakeChecker:  # a stand-in exposing the FluencyChecker interface used here
        def error_probabilities(self, texts):
            return np.array([0.95 if t.endswith("0") else 0.05 for t in texts])

    out = apply_fluency(_random_table(4, with_probs=False), FakeChecker())
    assert (out.loc[out["text"].str.endswith("0"), "fluency_error_prob"] == 0.95).all()
    ranked = rerank(out)
    assert not ranked.loc[ranked["selected"], "text"].str.endswith("0").any()


def test_tune_weights_and_plot(tmp_path):
    df = _random_table(5)
    refs = {c: [f"ref of {c}"] for c in df["clip_id"].unique()}
    calls = []

    def metric(cands, references):
        calls.append((list(cands), references))
        return {"score": float(np.mean([int(c.split()[-1]) for c in cands])), "skip": None}

    res = tune_weights(df, refs, [0.0, 0.5, 1.0], metric)
    assert list(res["w_enc"]) == [0.0, 0.5, 1.0] and list(res["w_dec"]) == [1.0, 0.5, 0.0]
    for w, (cands, references) in zip([0.0, 0.5, 1.0], calls, strict=True):
        exp = _expected(df, w, 1 - w, 0.9)
        assert cands == [t for t, _ in exp.values()]
        assert references == [refs[c] for c in exp]
    assert res["skip"].isna().all()
    png = plot_tuning(res, "score", tmp_path / "tune.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no references"):
        tune_weights(df, {}, [0.5], metric)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(
    ("w_enc", "w_dec", "thr", "batch"),
    [(0.7, 0.3, 0.9, 4), (0.7, 0.3, 0.3, 2), (0.5, 0.5, 0.6, 1), (1.0, 0.0, 0.05, 3)],
)
def test_lazy_fluency_selects_what_the_full_check_selects(seed, w_enc, w_dec, thr, batch):
    """Checking candidates in score order until one is fluent gives the same selection and fallbacks as checking
    all of them, with fewer checker calls; unchecked candidates only rank below the selected one."""
    full = _random_table(seed, n_clips=7, n_cands=9)
    truth = dict(zip(full["text"], full["fluency_error_prob"], strict=True))
    asked: list[str] = []

    def checker(texts):
        asked.extend(texts)
        return np.array([truth[t] for t in texts])

    lazy = lazy_fluency(full.assign(fluency_error_prob=np.nan), checker, w_enc, w_dec, thr, batch=batch)
    want = rerank(full, w_enc, w_dec, thr)
    got = rerank(lazy, w_enc, w_dec, thr)
    assert selected_captions(got) == selected_captions(want)
    assert got["fallback"].tolist() == want["fallback"].tolist()
    assert selected_captions(got) == [(c, t) for c, (t, _) in _expected(full, w_enc, w_dec, thr).items()]
    assert len(asked) == len(set(asked)) == lazy["fluency_error_prob"].notna().sum()
    checked = lazy["fluency_error_prob"].notna()
    assert np.allclose(lazy.loc[checked, "fluency_error_prob"], full.loc[checked, "fluency_error_prob"])
    for clip, rows in got.groupby("clip_id"):
        sel_score = rows.loc[rows["selected"], "final_score"].item()
        unchecked = rows[rows["fluency_error_prob"].isna()]
        assert (unchecked["final_score"] <= sel_score).all(), clip
        if rows["fallback"].any():
            assert unchecked.empty, clip  # a fallback clip had every candidate checked


def test_lazy_fluency_checks_one_batch_per_clip_when_the_best_is_fluent():
    full = _random_table(3, n_clips=5, n_cands=30).assign(fluency_error_prob=0.01)
    asked: list[str] = []

    def checker(texts):
        asked.extend(texts)
        return np.full(len(texts), 0.01)

    lazy = lazy_fluency(full.assign(fluency_error_prob=np.nan), checker, batch=4)
    assert len(asked) == 5 * 4
    assert selected_captions(rerank(lazy)) == selected_captions(rerank(full))
    # re-ranking a lazily checked table with other weights may need unchecked candidates: refused, naming the clip
    with pytest.raises(CandidatesError, match="fluency-scope all"):
        rerank(lazy, w_enc=0.0, w_dec=1.0)
