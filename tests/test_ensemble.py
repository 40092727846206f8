"""Captioner ensembles: one-model ensembles equal single-model decoding, token-level averaging, pooling, and
tokenizer checks."""

from __future__ import annotations

import pytest
import torch
from _decode_util import CAPS, one_thread, tiny_captioner, tiny_inputs

from dcase.decoding.ensemble import TokenizerMismatchError, check_same_tokenizer, pool_from_encoder
from dcase.decoding.sample import (
    SamplingConfig,
    batch_candidates,
    encode_batch,
    sample_candidates,
    sample_from_encoder,
    score_sequences,
)

CFG = SamplingConfig(num_candidates=6, max_new_tokens=10)
SEEDS = [3, 4]


@pytest.fixture(autouse=True)
def _single_thread():
    yield from one_thread()


def _as_tuples(cands):
    return [[(c.text, c.count, c.token_ids, c.decoder_score) for c in cs] for cs in cands]


def test_ensemble_of_one_equals_single_model_bit_exact():
    m = tiny_captioner(seed=0)
    codes, mask, emb = tiny_inputs(m, B=2)
    single = sample_candidates(m, codes, mask, emb, CFG, seeds=SEEDS)
    token1 = sample_candidates([m], codes, mask, emb, CFG, seeds=SEEDS)
    assert torch.equal(single.tokens, token1.tokens) and torch.equal(single.scores, token1.scores)
    pooled = pool_from_encoder([m], encode_batch([m], codes, mask, emb), CFG, SEEDS)
    assert _as_tuples(pooled) == _as_tuples(batch_candidates(m, single))


def test_token_ensemble_of_identical_models_equals_one_model():
    m = tiny_captioner(seed=0)
    twin = tiny_captioner(seed=0)
    codes, mask, emb = tiny_inputs(m, B=2)
    one = sample_candidates(m, codes, mask, emb, CFG, seeds=SEEDS)
    two = sample_candidates([m, twin], codes, mask, emb, CFG, seeds=SEEDS)
    assert torch.equal(one.tokens, two.tokens)
    assert torch.equal(one.scores, two.scores)
    assert torch.equal(two.model_scores[0], two.model_scores[1])


def test_token_ensemble_samples_from_mean_logprobs():
    """Two different models: greedy ensemble decoding follows argmax of the mean of their log-probabilities,
    and the decoder score is the mean of both models' teacher-forced length-normalised log-likelihoods."""
    a, b = tiny_captioner(seed=0, eos_bias=-2.0), tiny_captioner(seed=1, eos_bias=-2.0)
    codes, mask, emb = tiny_inputs(a, B=2)
    enc = encode_batch([a, b], codes, mask, emb)
    cfg = SamplingConfig(max_new_tokens=6, no_repeat_ngram_size=0, min_length=0)
    g = sample_from_encoder([a, b], enc, cfg, SEEDS, greedy=True)
    bc = a.bart.config
    for i in range(2):
        seq = [bc.decoder_start_token_id]
        for _ in range(6):
            lps = [
                m.decode_logits(e[0][i : i + 1], e[1][i : i + 1], torch.tensor([seq]))[0, -1].log_softmax(-1)
                for m, e in zip((a, b), enc, strict=True)
            ]
            nxt = bc.bos_token_id if len(seq) == 1 else int(torch.stack(lps).mean(0).argmax())
            nxt = bc.eos_token_id if len(seq) == 6 else nxt  # forced </s> at the length limit
            seq.append(nxt)
            if nxt == bc.eos_token_id:
                break
        n = int(g.lengths[i, 0])
        assert g.tokens[i, 0, :n].tolist() == seq[1:]
        per_model = [
            score_sequences(m, e[0][i : i + 1], e[1][i : i + 1], [[seq[1:]]])[0][0]
            for m, e in zip((a, b), enc, strict=True)
        ]
        torch.testing.assert_close(g.scores[i, 0], (per_model[0] + per_model[1]) / 2, atol=2e-6, rtol=0)


def test_pool_merges_candidates_and_averages_scores():
    a, b = tiny_captioner(seed=0), tiny_captioner(seed=1)
    codes, mask, emb = tiny_inputs(a, B=2)
    enc = encode_batch([a, b], codes, mask, emb)
    pooled = pool_from_encoder([a, b], enc, CFG, SEEDS)
    own_a = batch_candidates(a, sample_from_encoder([a], enc[:1], CFG, SEEDS))
    for i in range(2):
        texts = [c.text for c in pooled[i]]
        assert len(texts) == len(set(texts))
        assert texts[: len(own_a[i])] == [c.text for c in own_a[i]]  # model 0's candidates first
        assert sum(c.count for c in pooled[i]) >= sum(c.count for c in own_a[i])
        for c in pooled[i]:
            want = [
                score_sequences(m, e[0][i : i + 1], e[1][i : i + 1], [[c.token_ids]])[0][0].item()
                for m, e in zip((a, b), enc, strict=True)
            ]
            assert c.model_scores == pytest.approx(want, abs=2e-6)
            assert c.decoder_score == pytest.approx(sum(want) / 2, abs=2e-6)


def test_tokenizer_mismatch_is_refused():
    from dcase.models.enclap import EnCLAPConfig, build_enclap

    a = tiny_captioner(seed=0)
    check_same_tokenizer([a, tiny_captioner(seed=5)])  # same captions -> same tokenizer
    other = build_enclap(EnCLAPConfig.tiny(vocab_size=400), [c.upper() + " zzz" for c in CAPS] * 4)
    with pytest.raises(TokenizerMismatchError, match="other.*tokenizer differs"):
        check_same_tokenizer([a, other], ["base", "other"])
