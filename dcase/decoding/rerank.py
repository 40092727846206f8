"""The candidates table and reranking (EnCLAP DCASE2024 technical report §2.3, §3.1).

Candidates come from nucleus sampling (p = 0.95, temperature 0.5, 30 samples per clip). Selection is two-stage:

1. fluency filter: candidates whose FENSE error probability exceeds the threshold (0.9) are discarded;
2. reranking: ``final_score = w_enc * encoder_score + w_dec * decoder_score`` with ``w_enc = 0.7, w_dec = 0.3``,
   where ``encoder_score`` is the retriever cosine similarity between the clip and the caption and
   ``decoder_score`` the length-normalised log-likelihood of the caption under the captioner. The argmax per clip
   is selected. If every candidate of a clip fails the filter, the best-scoring one is kept and the clip is
   marked ``fallback``.

The candidates table (one row per distinct candidate of a clip) is the file format between ``dcase generate``
and ``dcase submit``; its schema and validator are defined here only:

=====================  ==========  ====================================================================
column                 dtype       meaning
=====================  ==========  ====================================================================
clip_id                str         manifest clip id (Task 6: the audio file name)
text                   str         candidate caption (non-empty; unique per clip)
count                  int64       how many samples produced this text (>= 1)
decoder_score          float64     length-normalised log-likelihood (NaN only if its weight is 0)
encoder_score          float64     retriever cosine similarity (NaN only if its weight is 0)
fluency_error_prob     float64     FENSE P(error); NaN when the fluency filter is off
final_score            float64     w_enc * encoder_score + w_dec * decoder_score (NaN before reranking)
selected               bool        the chosen caption of its clip (at most one per clip)
fallback               bool        True on every row of a clip where no candidate passed the filter
=====================  ==========  ====================================================================

Extra columns (e.g. the source model of an ensemble) are kept as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dcase.errors import InputError, MissingInputError
from dcase.io import atomic_path

if TYPE_CHECKING:
    from dcase.decoding.fluency import FluencyScorer

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS: dict[str, str] = {
    "clip_id": "object",
    "text": "object",
    "count": "int64",
    "decoder_score": "float64",
    "encoder_score": "float64",
    "fluency_error_prob": "float64",
    "final_score": "float64",
    "selected": "bool",
    "fallback": "bool",
}
DEFAULT_W_ENC = 0.7
DEFAULT_W_DEC = 0.3
DEFAULT_THRESHOLD = 0.9


class CandidatesError(InputError):
    """The candidates table breaks its schema; the message names the column / clip / row."""


def make_candidates(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a valid table from dicts with at least clip_id, text, decoder_score / encoder_score (either may be
    missing -> NaN); count defaults to 1, fluency_error_prob / final_score to NaN, selected / fallback to False."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        df = pd.DataFrame(columns=list(CANDIDATE_COLUMNS))
    defaults: dict[str, Any] = {
        "count": 1,
        "decoder_score": np.nan,
        "encoder_score": np.nan,
        "fluency_error_prob": np.nan,
        "final_score": np.nan,
        "selected": False,
        "fallback": False,
    }
    for col, val in defaults.items():
        if col not in df.columns:
            df[col] = val
    return validate_candidates(df)


def validate_candidates(df: pd.DataFrame, source: str = "candidates") -> pd.DataFrame:
    """Check and coerce the schema above; returns the table with canonical dtypes and column order.

    Errors (naming the column, clip and row): missing column, non-numeric score, empty text, count < 1,
    duplicate (clip_id, text), more than one selected row per clip, probabilities outside [0, 1].
    """
    missing = [c for c in CANDIDATE_COLUMNS if c not in df.columns]
    if missing:
        raise CandidatesError(f"{source}: missing columns {missing} (schema: {list(CANDIDATE_COLUMNS)})")
    out = df.copy()
    for col in ("clip_id", "text"):
        bad = out[col].isna() | ~out[col].map(lambda v: isinstance(v, str))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise CandidatesError(f"{source}: row {i}: {col} must be a string, got {out[col].iloc[i]!r}")
        out[col] = out[col].astype(object)
    empty = out["text"].str.strip() == ""
    if empty.any():
        i = int(np.flatnonzero(empty.to_numpy())[0])
        raise CandidatesError(f"{source}: row {i} (clip {out['clip_id'].iloc[i]!r}): empty text")
    for col in ("decoder_score", "encoder_score", "fluency_error_prob", "final_score"):
        try:
            out[col] = pd.to_numeric(out[col], errors="raise").astype("float64")
        except (ValueError, TypeError) as e:
            raise CandidatesError(f"{source}: column {col} is not numeric ({e})") from e
    try:
        cnt = pd.to_numeric(out["count"], errors="raise")
    except (ValueError, TypeError) as e:
        raise CandidatesError(f"{source}: column count is not an integer ({e})") from e
    if cnt.isna().any() or (cnt < 1).any() or (cnt != np.floor(cnt)).any():
        i = int(np.flatnonzero((cnt.isna() | (cnt < 1) | (cnt != np.floor(cnt))).to_numpy())[0])
        raise CandidatesError(f"{source}: row {i}: count must be an integer >= 1, got {out['count'].iloc[i]!r}")
    out["count"] = cnt.astype("int64")
    for col in ("selected", "fallback"):
        if out[col].isna().any():
            raise CandidatesError(f"{source}: column {col} has missing values")
        out[col] = out[col].astype(bool)
    p = out["fluency_error_prob"]
    bad_p = p.notna() & ((p < 0) | (p > 1))
    if bad_p.any():
        i = int(np.flatnonzero(bad_p.to_numpy())[0])
        raise CandidatesError(f"{source}: row {i}: fluency_error_prob {p.iloc[i]} is outside [0, 1]")
    dup = out.duplicated(["clip_id", "text"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise CandidatesError(
            f"{source}: row {i}: duplicate candidate {out['text'].iloc[i]!r} for clip {out['clip_id'].iloc[i]!r} "
            "(merge duplicates and add their counts)"
        )
    n_sel = out.groupby("clip_id", sort=False)["selected"].sum()
    if (n_sel > 1).any():
        raise CandidatesError(
            f"{source}: clips with more than one selected candidate: {list(n_sel[n_sel > 1].index[:10])}"
        )
    extra = [c for c in out.columns if c not in CANDIDATE_COLUMNS]
    return out[[*CANDIDATE_COLUMNS, *extra]].reset_index(drop=True)


def write_candidates(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate and write the table as parquet, atomically."""
    df = validate_candidates(df, str(path))
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def read_candidates(path: str | Path) -> pd.DataFrame:
    """Read and validate a candidates parquet file."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"candidates file {path} does not exist")
    try:
        table = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any parquet failure is reported with the file name
        raise CandidatesError(f"{path}: not a readable candidates parquet file ({e}); rerun dcase generate") from e
    return validate_candidates(table, str(path))


def apply_fluency(df: pd.DataFrame, checker: FluencyScorer) -> pd.DataFrame:
    """Fill ``fluency_error_prob`` with ``checker.error_probabilities(texts)`` (a loaded FluencyChecker)."""
    out = validate_candidates(df)
    out["fluency_error_prob"] = np.asarray(checker.error_probabilities(out["text"].tolist()), dtype=np.float64)
    return out


def final_scores(df: pd.DataFrame, w_enc: float = DEFAULT_W_ENC, w_dec: float = DEFAULT_W_DEC) -> np.ndarray:
    """float64 [R]: ``w_enc * encoder_score + w_dec * decoder_score``; a score with weight 0 is ignored (so it may
    be NaN); a NaN score with a non-zero weight is an error naming the clip."""
    total = np.zeros(len(df), dtype=np.float64)
    for col, w in (("encoder_score", w_enc), ("decoder_score", w_dec)):
        if w == 0:
            continue
        vals = df[col].to_numpy(dtype=np.float64)
        if np.isnan(vals).any():
            i = int(np.flatnonzero(np.isnan(vals))[0])
            raise CandidatesError(f"{col} is missing for clip {df['clip_id'].iloc[i]!r} but its weight is {w}")
        total += w * vals
    return total


def rank_order(df: pd.DataFrame) -> np.ndarray:
    """Row indices best-first by (final_score desc, count desc, row asc): the order ``rerank`` selects in."""
    return np.lexsort((np.arange(len(df)), -df["count"].to_numpy(), -df["final_score"].to_numpy()))


def lazy_fluency(
    df: pd.DataFrame,
    error_probabilities: Callable[[Sequence[str]], np.ndarray],
    w_enc: float = DEFAULT_W_ENC,
    w_dec: float = DEFAULT_W_DEC,
    threshold: float = DEFAULT_THRESHOLD,
    batch: int = 4,
) -> pd.DataFrame:
    """Fill ``fluency_error_prob`` only where the selection needs it (report §2.3: filter, then rank).

    Per clip, candidates are checked in ``rerank`` order, ``batch`` at a time, until one passes
    (P(error) <= ``threshold``) or all are checked; the rest stay NaN. ``rerank`` with the same weights and
    threshold then selects exactly what it selects when every candidate is checked (filtering then taking the
    argmax = the first fluent candidate in score order), at the cost of about one checker batch per clip instead
    of one call per candidate. ``error_probabilities``: texts -> float [n] (``FluencyChecker.error_probabilities``).
    """
    out = validate_candidates(df)
    out["final_score"] = final_scores(out, w_enc, w_dec)
    probs = np.full(len(out), np.nan)
    clip = out["clip_id"].to_numpy()
    per_clip: dict[str, list[int]] = {}
    for i in rank_order(out):
        per_clip.setdefault(clip[i], []).append(int(i))
    pending = {c: rows for c, rows in per_clip.items()}
    while pending:
        # one checker call for the next batch of every clip still without a fluent candidate
        take = {c: rows[:batch] for c, rows in pending.items()}
        idx = [i for rows in take.values() for i in rows]
        probs[idx] = np.asarray(error_probabilities(out["text"].iloc[idx].tolist()), dtype=np.float64)
        pending = {
            c: rows[batch:] for c, rows in pending.items() if rows[batch:] and not (probs[take[c]] <= threshold).any()
        }
    out["fluency_error_prob"] = probs
    return out


def rerank(
    df: pd.DataFrame,
    w_enc: float = DEFAULT_W_ENC,
    w_dec: float = DEFAULT_W_DEC,
    threshold: float | None = DEFAULT_THRESHOLD,
) -> pd.DataFrame:
    """Score, filter and select: returns a copy with ``final_score``, ``selected`` and ``fallback`` set.

    ``threshold=None`` (or every ``fluency_error_prob`` NaN) -> no filtering. With a threshold, a candidate passes
    when P(error) <= threshold; a clip with some but not all probabilities missing is an error. Within a clip the
    selected row is the highest final score among passing candidates (ties: higher count, then first row); if
    none passes, the highest final score overall, and the clip's rows get ``fallback=True``.
    """
    out = validate_candidates(df)
    out["final_score"] = final_scores(out, w_enc, w_dec)
    probs = out["fluency_error_prob"].to_numpy(dtype=np.float64)
    filter_on = threshold is not None and not np.isnan(probs).all()
    if threshold is not None and filter_on:
        passes = probs <= float(threshold)
    else:
        passes = np.ones(len(out), dtype=bool)
    out["selected"] = False
    out["fallback"] = False
    sel_idx, fb_clips = [], []
    order = rank_order(out)
    # `order` ranks all rows best-first; walk it once per clip. With the filter on, a row without a probability
    # is allowed only after the clip's first passing row (a lazily checked table, see `lazy_fluency`).
    first_pass: dict[str, int] = {}
    first_any: dict[str, int] = {}
    clip = out["clip_id"].to_numpy()
    for i in order:
        c = clip[i]
        first_any.setdefault(c, int(i))
        if filter_on and c not in first_pass and np.isnan(probs[i]):
            raise CandidatesError(
                f"fluency_error_prob is missing for candidate {out['text'].iloc[i]!r} of clip {c!r}, which ranks above "
                "every fluent candidate under these weights: score all candidates (dcase generate --fluency-scope all)"
            )
        if passes[i]:
            first_pass.setdefault(c, int(i))
    for c in pd.unique(clip):
        if c in first_pass:
            sel_idx.append(first_pass[c])
        else:
            sel_idx.append(first_any[c])
            fb_clips.append(c)
    out.loc[sel_idx, "selected"] = True
    if fb_clips:
        out.loc[out["clip_id"].isin(fb_clips), "fallback"] = True
        log.warning("fluency filter rejected every candidate of %d clip(s); kept the best-scoring one", len(fb_clips))
    return out


def selected_captions(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(clip_id, text) of the selected candidate of every clip, in first-appearance order of the clips.
    A clip without a selected row is an error (run :func:`rerank` first)."""
    df = validate_candidates(df)
    sel = df[df["selected"]]
    missing = [c for c in pd.unique(df["clip_id"]) if c not in set(sel["clip_id"])]
    if missing:
        raise CandidatesError(f"clips without a selected candidate: {missing[:10]} (run rerank first)")
    by_clip = dict(zip(sel["clip_id"], sel["text"], strict=True))
    return [(c, by_clip[c]) for c in pd.unique(df["clip_id"])]


def tune_weights(
    table: pd.DataFrame,
    references: Mapping[str, Sequence[str]],
    weights: Sequence[float],
    metric_fn: Callable[[list[str], list[list[str]]], float | Mapping[str, Any]],
    threshold: float | None = DEFAULT_THRESHOLD,
) -> pd.DataFrame:
    """Grid search over the encoder weight on a validation set: for each ``w`` in ``weights`` rerank with
    ``w_enc = w, w_dec = 1 - w`` and score the selected captions with ``metric_fn(candidates, references)``.

    ``references``: {clip_id: [captions]}; every clip of the table must have references. ``metric_fn`` returns a
    float (column ``score``) or a mapping of metric -> float (one column each; None values kept as NaN).
    Returns one row per weight: ``w_enc, w_dec, n_fallback, <metrics>``.
    """
    clips = list(pd.unique(validate_candidates(table)["clip_id"]))
    missing = [c for c in clips if c not in references]
    if missing:
        raise InputError(f"{len(missing)} clips of the candidates table have no references: {missing[:10]}")
    rows = []
    for w in weights:
        if not 0.0 <= w <= 1.0:
            raise InputError(f"encoder weight {w} is outside [0, 1]")
        ranked = rerank(table, w_enc=float(w), w_dec=1.0 - float(w), threshold=threshold)
        sel = selected_captions(ranked)
        cands = [t for _, t in sel]
        refs = [list(references[c]) for c, _ in sel]
        res = metric_fn(cands, refs)
        row: dict[str, Any] = {"w_enc": float(w), "w_dec": 1.0 - float(w)}
        row["n_fallback"] = int(ranked.loc[ranked["selected"], "fallback"].sum())
        if isinstance(res, Mapping):
            row.update({k: (np.nan if v is None else float(v)) for k, v in res.items() if not isinstance(v, dict)})
        else:
            row["score"] = float(res)
        rows.append(row)
        log.info("w_enc=%.3f -> %s", w, {k: v for k, v in row.items() if k not in ("w_enc", "w_dec")})
    return pd.DataFrame(rows)


def plot_tuning(results: pd.DataFrame, metric: str, path: str | Path) -> Path:
    """Plot ``metric`` against the encoder weight (PNG, written atomically; matplotlib Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in results.columns:
        raise InputError(f"metric {metric!r} is not a column of the tuning results: {list(results.columns)}")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(results["w_enc"], results[metric], marker="o")
    best = int(np.nanargmax(results[metric].to_numpy(dtype=np.float64)))  # the first best row, as idxmax
    ax.axvline(float(results["w_enc"].iloc[best]), ls="--", c="gray", lw=0.8)
    ax.set_xlabel("encoder weight w_enc (w_dec = 1 - w_enc)")
    ax.set_ylabel(metric)
    ax.set_title(f"reranking weight vs {metric}")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path
