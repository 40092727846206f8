"""Caption-scoring cost and the no-Java fallback: where the time goes when validating on Clotho evaluation
(1045 clips x 5 references), and how far CIDEr-D moves when the PTB tokenizer is replaced by the Python one.
Also times reranking a 1045 x 30 candidates table.

Run: HF_HUB_OFFLINE=1 python benchmarks/scoring.py [--oracle ../shared/oracles/clotho_eval]
Prints absolute times and ratios measured side by side in one run (timings drift between runs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--oracle", type=Path, default=Path(__file__).resolve().parents[2] / "shared/oracles/clotho_eval")
    args = ap.parse_args()

    from aac_metrics.functional import bleu, cider_d, meteor, rouge_l
    from aac_metrics.utils.tokenization import preprocess_mono_sents, preprocess_mult_sents

    from dcase.decoding.rerank import make_candidates, rerank
    from dcase.evaluation.captions import (
        _accept_java,
        java_info,
        metric_cache_dir,
        prepare_metric_cache,
        read_references,
        simple_tokenize,
    )
    from dcase.submission.formats import read_task6

    refs = read_references(args.oracle / "clotho_captions_evaluation.csv")
    pred = read_task6(args.oracle / "baseline_run1_predictions.csv")
    p = dict(zip(pred["file_name"], pred["caption_predicted"], strict=True))
    names = list(refs)
    cands, mrefs = [p[n] for n in names], [refs[n] for n in names]
    prepare_metric_cache()
    java = java_info()
    kw = dict(cache_path=str(metric_cache_dir()), java_path=java.path)
    with _accept_java(str(java.path)):
        (tc, tr), t_ptb = _timed(lambda: (preprocess_mono_sents(cands, **kw), preprocess_mult_sents(mrefs, **kw)))
        _, t_met = _timed(lambda: meteor(tc, tr, **kw))
    _, t_bleu = _timed(lambda: [bleu(tc, tr, n=n) for n in range(1, 5)])
    _, t_rouge = _timed(lambda: rouge_l(tc, tr))
    (c_ptb, _), t_cider = _timed(lambda: cider_d(tc, tr))
    (sc, sr), t_simple = _timed(
        lambda: ([simple_tokenize(c) for c in cands], [[simple_tokenize(r) for r in rs] for rs in mrefs])
    )
    c_simple, _ = cider_d(sc, sr)
    c_ptb, c_simple = float(c_ptb["cider_d"]), float(c_simple["cider_d"])

    print(f"clips: {len(cands)}; java {java.version}")
    print(f"PTB tokenization (cands + refs)      {t_ptb:7.2f} s")
    print(f"python fallback tokenization         {t_simple:7.2f} s   ratio PTB/fallback {t_ptb / t_simple:8.1f}")
    print(f"METEOR (java)                        {t_met:7.2f} s")
    print(f"BLEU-1..4                            {t_bleu:7.2f} s")
    print(f"ROUGE-L                              {t_rouge:7.2f} s")
    print(f"CIDEr-D                              {t_cider:7.2f} s")
    total = t_ptb + t_met + t_bleu + t_rouge + t_cider
    print(f"share of PTB+METEOR (java) in total  {(t_ptb + t_met) / total:7.1%}")
    print(f"CIDEr-D PTB {c_ptb:.6f}  fallback {c_simple:.6f}  relative difference {abs(c_simple - c_ptb) / c_ptb:.3%}")

    rng = np.random.default_rng(0)
    rows = [
        {
            "clip_id": f"c{c}",
            "text": f"caption {c} {j}",
            "decoder_score": rng.normal(),
            "encoder_score": rng.uniform(),
            "fluency_error_prob": rng.uniform(),
        }
        for c in range(1045)
        for j in range(30)
    ]
    table = make_candidates(rows)
    _, t_rr = _timed(lambda: rerank(table))
    print(f"rerank 1045 clips x 30 candidates    {t_rr:7.2f} s")


if __name__ == "__main__":
    main()
