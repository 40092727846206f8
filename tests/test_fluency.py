"""FENSE fluency checker: checkpoint round trip, probabilities vs a direct computation, threshold, load errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcase.decoding.fluency import (
    FluencyCheckerError,
    build_debug_checker,
    fluency_stage,
    load_fluency_checker,
    preprocess_texts,
)

WORDS = "a dog barks loudly rain falls on the metal roof bird sings and car passes by".split()
TEXTS = ["A dog barks, loudly!", "rain falls on the metal roof", "bird sings and and and", "car passes by a dog"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_debug_checker(tmp_path_factory.mktemp("checker"), WORDS, seed=3)


def _direct_probs(ckpt_path, texts):
    """Independent forward pass: BertModel + explicit linear head on [CLS], sigmoid."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    states = torch.load(ckpt_path, weights_only=True)
    bb = states["model_type"]
    enc = BertModel(BertConfig.from_pretrained(bb))
    sd = states["state_dict"]
    enc.load_state_dict({k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")})
    enc.eval()
    tok = AutoTokenizer.from_pretrained(bb)
    clean = ["".join(ch for ch in t if ch.isalnum() or ch.isspace() or ch == "_").lower() for t in texts]
    batch = tok(clean, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = enc(**batch).last_hidden_state[:, 0]
        logits = h @ sd["clf.weight"].T + sd["clf.bias"]
    return torch.sigmoid(logits).numpy()


def test_round_trip_matches_direct_computation(ckpt):
    checker = load_fluency_checker(ckpt)
    probs = checker.probabilities(TEXTS)
    direct = _direct_probs(ckpt, TEXTS)
    assert set(probs) == {"add_tail", "repeat_event", "repeat_adv", "remove_conj", "remove_verb", "error"}
    got = np.stack(
        [probs[k] for k in ("add_tail", "repeat_event", "repeat_adv", "remove_conj", "remove_verb", "error")], 1
    )
    assert got.shape == (4, 6)
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(checker.error_probabilities(TEXTS), direct[:, 5], rtol=1e-5, atol=1e-6)
    # batching does not change results
    checker.batch_size = 3
    np.testing.assert_allclose(checker.error_probabilities(TEXTS), direct[:, 5], rtol=1e-5, atol=1e-6)


def test_matches_aac_metrics_fer(ckpt):
    """aac-metrics' own FER code, given our loaded module, sees the same error probabilities."""
    from aac_metrics.functional.fer import fer

    checker = load_fluency_checker(ckpt)
    _, sents = fer(TEXTS, echecker=checker.model, echecker_tokenizer=checker.tokenizer, device="cpu", return_probs=True)
    np.testing.assert_allclose(sents["fer.error_prob"].numpy(), checker.error_probabilities(TEXTS), rtol=1e-5)


def test_preprocess_strips_punctuation():
    assert preprocess_texts(["A Dog's bark, LOUD!"]) == ["a dogs bark loud"]


def test_threshold(ckpt):
    probs = load_fluency_checker(ckpt).error_probabilities(TEXTS)
    thr = float(np.sort(probs)[1])  # exactly the second-lowest probability
    checker = load_fluency_checker(ckpt, threshold=thr)
    flags = checker.is_erroneous(TEXTS)
    np.testing.assert_array_equal(flags, probs > thr)
    assert flags.sum() == 2 and not flags[np.argsort(probs)[1]]  # strictly greater: equal is not an error
    with pytest.raises(ValueError, match="threshold"):
        load_fluency_checker(ckpt, threshold=1.5)


def test_legacy_position_ids_key_is_dropped(ckpt, tmp_path):
    states = torch.load(ckpt, weights_only=True)
    states["state_dict"]["encoder.embeddings.position_ids"] = torch.arange(64)[None]
    legacy = tmp_path / "legacy.ckpt"
    torch.save(states, legacy)
    np.testing.assert_allclose(
        load_fluency_checker(legacy).error_probabilities(TEXTS),
        load_fluency_checker(ckpt).error_probabilities(TEXTS),
    )


def test_configured_but_unloadable_is_an_error(ckpt, tmp_path):
    with pytest.raises(FluencyCheckerError, match="does not exist"):
        load_fluency_checker(tmp_path / "absent.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(FluencyCheckerError, match="cannot read"):
        load_fluency_checker(garbage)
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"weights": torch.zeros(2)}, wrong)
    with pytest.raises(FluencyCheckerError, match="not a FENSE checker"):
        load_fluency_checker(wrong)
    states = torch.load(ckpt, weights_only=True)
    states["model_type"] = str(tmp_path / "no_such_backbone")
    nobb = tmp_path / "nobb.ckpt"
    torch.save(states, nobb)
    with pytest.raises(FluencyCheckerError, match="backbone"):
        load_fluency_checker(nobb)
    states = torch.load(ckpt, weights_only=True)
    states["state_dict"]["clf.weight"] = torch.zeros(6, 8)
    bad = tmp_path / "badshape.ckpt"
    torch.save(states, bad)
    with pytest.raises(FluencyCheckerError, match="does not match"):
        load_fluency_checker(bad)
    with pytest.raises(FluencyCheckerError):
        fluency_stage(tmp_path / "absent.ckpt")


def test_stage_off_without_checker(ckpt):
    checker, status = fluency_stage(None)
    assert checker is None and status["fluency_filter"] == "off"
    checker, status = fluency_stage(ckpt, threshold=0.5)
    assert checker is not None and status == {"fluency_filter": "on", "checker": str(ckpt), "threshold": 0.5}
