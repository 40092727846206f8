"""Candidate sampling: nucleus semantics vs independent computations, the shared-K/V sampler vs a naive
per-candidate sampler on the same random stream, scores vs teacher forcing, determinism, duplicates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _decode_util import one_thread, tiny_captioner, tiny_inputs

from dcase.decoding.sample import (
    SamplingConfig,
    SharedKVDecoder,
    ban_repeated_ngrams,
    batch_candidates,
    clip_seed,
    clip_uniforms,
    merge_candidates,
    nucleus_probs,
    nucleus_sample,
    sample_candidates,
    score_sequences,
)


@pytest.fixture(autouse=True)
def _single_thread():
    yield from one_thread()


def _numpy_nucleus(logits: np.ndarray, p: float, T: float) -> np.ndarray:
    """Independent reference: loop over tokens in descending probability, keep while the mass before < p."""
    z = logits / T
    q = np.exp(z - z.max())
    q /= q.sum()
    out = np.zeros_like(q)
    mass = 0.0
    for i in np.argsort(-q, kind="stable"):
        if mass >= p:
            break
        out[i] = q[i]
        mass += q[i]
    return out / out.sum()


@pytest.mark.parametrize("p,T", [(0.95, 0.5), (0.5, 1.0), (0.3, 2.0), (1.0, 0.7)])
def test_nucleus_probs_match_numpy_and_hf(p, T):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 11, generator=g, dtype=torch.float64) * 2
    got = nucleus_probs(logits, p, T).numpy()
    want = np.stack([_numpy_nucleus(r, p, T) for r in logits.numpy()])
    np.testing.assert_allclose(got, want, atol=1e-12)
    # Hugging Face's warpers (temperature, then top-p) give the same support and distribution
    warped = TopPLogitsWarper(p)(None, TemperatureLogitsWarper(T)(None, logits.clone()))
    np.testing.assert_allclose(torch.softmax(warped, -1).numpy(), want, atol=1e-12)
    assert (got > 0).sum(1).min() >= 1


def test_nucleus_sample_inverse_cdf_matches_distribution():
    """A fine uniform grid maps to each token with exactly its filtered probability (to grid resolution);
    the partial-sort paths (topk_first small) and the full sort agree token by token."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 200, generator=g) * 1.5
    n = 20000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    want = nucleus_probs(logits, 0.9, 0.5).numpy()
    for r in range(3):
        lp = logits[r : r + 1].expand(n, -1)
        full = nucleus_sample(lp, u, 0.9, 0.5, topk_first=10_000)
        for k in (1, 2, 3, 4):  # partial sorts of width k, 16k (<= 50), then a full sort
            assert torch.equal(full, nucleus_sample(lp, u, 0.9, 0.5, topk_first=k))
        freq = np.bincount(full.numpy(), minlength=200) / n
        np.testing.assert_allclose(freq, want[r], atol=2.0 / n)
        # monotone in u: tokens appear in descending-probability blocks
        order = np.argsort(-want[r], kind="stable")
        firsts = [int(np.argmax(full.numpy() == t)) for t in order if want[r][t] > 0]
        assert firsts == sorted(firsts)


def test_shapes_lengths_and_determinism():
    m = tiny_captioner()
    codes, mask, emb = tiny_inputs(m, B=3)
    cfg = SamplingConfig(num_candidates=7, max_new_tokens=12)
    a = sample_candidates(m, codes, mask, emb, cfg, seeds=[11, 12, 13])
    b = sample_candidates(m, codes, mask, emb, cfg, seeds=[11, 12, 13])
    assert a.tokens.shape == (3, 7, 12) and a.lengths.shape == (3, 7) and a.scores.shape == (3, 7)
    assert a.model_scores.shape == (1, 3, 7)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.scores, b.scores)
    bc = m.bart.config
    assert (a.tokens[:, :, 0] == bc.bos_token_id).all()  # forced <s>
    for bi in range(3):
        for j in range(7):
            n = int(a.lengths[bi, j])
            seq = a.tokens[bi, j]
            assert 2 <= n <= 12
            assert (seq[n:] == bc.pad_token_id).all()
            assert (seq[: n - 1] != bc.eos_token_id).all()
            if n < 12:
                assert seq[n - 1] == bc.eos_token_id  # stops at </s>
    c = sample_candidates(m, codes, mask, emb, cfg, seeds=[11, 12, 99])
    assert torch.equal(c.tokens[:2], a.tokens[:2]) and not torch.equal(c.tokens[2], a.tokens[2])
    # a clip's samples do not depend on the batch it is decoded in
    solo = sample_candidates(m, codes[2:], mask[2:], emb[2:], cfg, seeds=[13])
    assert torch.equal(solo.tokens[0], a.tokens[2])
    torch.testing.assert_close(solo.scores[0], a.scores[2])


def _naive_sample(m, enc, enc_mask, u, cfg):
    """Reference: each candidate decoded on its own by BART's full forward (no cache, no sharing); its logits go
    through Hugging Face's own processors (min length, min new tokens, no-repeat n-grams, forced <s>, forced </s>
    at the length limit), then its step-t token is drawn from u[j, t] with the same inverse-CDF rule."""
    from transformers.generation.logits_process import (
        ForcedBOSTokenLogitsProcessor,
        ForcedEOSTokenLogitsProcessor,
        LogitsProcessorList,
        MinLengthLogitsProcessor,
        MinNewTokensLengthLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
    )

    bc = m.bart.config
    procs = LogitsProcessorList(
        [
            MinLengthLogitsProcessor(cfg.min_length, bc.eos_token_id),
            MinNewTokensLengthLogitsProcessor(1, cfg.min_new_tokens, bc.eos_token_id),
            ForcedBOSTokenLogitsProcessor(bc.bos_token_id),
            ForcedEOSTokenLogitsProcessor(cfg.max_new_tokens + 1, bc.eos_token_id),
        ]
    )
    if cfg.no_repeat_ngram_size:
        procs.insert(1, NoRepeatNGramLogitsProcessor(cfg.no_repeat_ngram_size))
    outs = []
    for j in range(u.shape[0]):
        seq = [bc.decoder_start_token_id]
        for t in range(cfg.max_new_tokens):
            lp = m.decode_logits(enc, enc_mask, torch.tensor([seq]))[:, -1].float().log_softmax(-1)
            lp = procs(torch.tensor([seq]), lp)
            tok = int(nucleus_sample(lp, u[j : j + 1, t], cfg.top_p, cfg.temperature, 10**9, cfg.top_k)[0])
            seq.append(tok)
            if tok == bc.eos_token_id:
                break
        outs.append(seq[1:])
    return outs


@pytest.mark.parametrize(
    "extra",
    [
        {},  # the defaults: top_k 50, no_repeat_ngram_size 3, min_length 5
        {"top_k": 4, "no_repeat_ngram_size": 2, "min_length": 7},
        {"top_k": 0, "no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": 3},
    ],
)
def test_shared_kv_sampler_equals_naive_per_candidate_sampler(extra):
    m = tiny_captioner(seed=3)
    codes, mask, emb = tiny_inputs(m, B=2, L=16, seed=4)
    cfg = SamplingConfig(num_candidates=6, max_new_tokens=10, temperature=1.0, top_p=0.9, **extra)
    seeds = [5, 6]
    sb = sample_candidates(m, codes, mask, emb, cfg, seeds=seeds)
    enc, enc_mask = m.encode(codes, mask, emb)
    for b in range(2):
        u = clip_uniforms(seeds[b], cfg.num_candidates, cfg.max_new_tokens)
        ref = _naive_sample(m, enc.last_hidden_state[b : b + 1], enc_mask[b : b + 1], u, cfg)
        got = [sb.tokens[b, j, : int(sb.lengths[b, j])].tolist() for j in range(cfg.num_candidates)]
        assert got == ref


@pytest.mark.parametrize("score_bos", [False, True])
def test_decoder_scores_equal_teacher_forced_sequence_logprobs(score_bos):
    """Default (Wu et al.): the mean log-likelihood of the caption tokens and </s>, not of the forced <s>;
    ``score_bos``: of every generated token, = ``EnCLAP.sequence_logprobs``."""
    m = tiny_captioner(seed=1)
    codes, mask, emb = tiny_inputs(m, B=3)
    n = 5
    sb = sample_candidates(
        m, codes, mask, emb, SamplingConfig(num_candidates=n, max_new_tokens=12, score_bos=score_bos)
    )
    enc, enc_mask = m.encode(codes, mask, emb)
    hid = enc.last_hidden_state
    labels = sb.tokens.reshape(3 * n, -1)
    if score_bos:
        ref = m.sequence_logprobs(hid.repeat_interleave(n, 0), enc_mask.repeat_interleave(n, 0), labels)
    else:
        bc = m.bart.config
        dec_in = torch.cat([torch.full((3 * n, 1), bc.decoder_start_token_id), labels[:, :-1]], 1)
        logp = m.decode_logits(hid.repeat_interleave(n, 0), enc_mask.repeat_interleave(n, 0), dec_in).log_softmax(-1)
        tok = logp.gather(-1, labels[..., None])[..., 0]
        keep = labels != bc.pad_token_id
        keep[:, 0] = False  # the forced <s>
        assert (labels[:, 0] == bc.bos_token_id).all()
        ref = (tok * keep).sum(1) / keep.sum(1)
    ref = ref.view(3, n).double()
    torch.testing.assert_close(sb.scores, ref, atol=2e-6, rtol=0)
    seqs = [[sb.tokens[b, j, : int(sb.lengths[b, j])].tolist() for j in range(n - b)] for b in range(3)]
    tf = score_sequences(m, hid, enc_mask, seqs, score_bos=score_bos)
    for b in range(3):
        torch.testing.assert_close(tf[b], ref[b, : n - b], atol=2e-6, rtol=0)


def test_shared_kv_decoder_logits_equal_bart():
    m = tiny_captioner(seed=2)
    codes, mask, emb = tiny_inputs(m, B=2)
    enc, enc_mask = m.encode(codes, mask, emb)
    ids = torch.randint(3, 300, (2, 3, 6), generator=torch.Generator().manual_seed(0))
    dm = SharedKVDecoder(m)
    got = dm.logprobs(dm.forward(ids, 0, dm.cross_kv(enc.last_hidden_state), enc_mask))
    for j in range(3):
        want = m.decode_logits(enc, enc_mask, ids[:, j]).float().log_softmax(-1)
        torch.testing.assert_close(got[:, j], want, atol=1e-5, rtol=0)


def test_min_new_tokens_and_greedy():
    m = tiny_captioner(seed=0, eos_bias=4.0)  # </s> very likely: every sample would stop at once
    codes, mask, emb = tiny_inputs(m, B=2)
    short = sample_candidates(m, codes, mask, emb, SamplingConfig(num_candidates=4, max_new_tokens=8, min_length=0))
    forced = sample_candidates(
        m, codes, mask, emb, SamplingConfig(num_candidates=4, max_new_tokens=8, min_length=0, min_new_tokens=7)
    )
    default = sample_candidates(m, codes, mask, emb, SamplingConfig(num_candidates=4, max_new_tokens=8))
    assert short.lengths.float().mean() < 4
    eos = m.bart.config.eos_token_id
    assert (forced.lengths == 8).all() and (forced.tokens[:, :, :7] != eos).all()  # </s> only at the limit
    assert (default.lengths >= 5).all()  # min_length 5: </s> at the earliest as the 5th generated token
    for plain, hf_kw in (
        (dict(no_repeat_ngram_size=0, min_length=0), {}),
        ({}, dict(no_repeat_ngram_size=3, min_length=5)),  # the defaults = HF's processors
    ):
        g = sample_candidates(m, codes, mask, emb, SamplingConfig(max_new_tokens=8, **plain), greedy=True)
        hf = m.generate(codes, mask, emb, max_new_tokens=8, **hf_kw)[:, 1:]
        for b in range(2):
            n = int(g.lengths[b, 0])
            assert g.tokens[b, 0, :n].tolist() == hf[b, :n].tolist()


def test_every_decoder_ends_with_eos_at_the_length_limit():
    """Done-when of issue 10: a caption that reaches the length limit ends with </s> (greedy, beam and our nucleus
    sampler), as the official EnCLAP's ``forced_eos_token_id``; ``forced_eos: false`` keeps the open end."""
    from dcase.decoding.ensemble import beam_candidates

    m = tiny_captioner(seed=0, eos_bias=-30.0)  # </s> is never chosen: every caption runs to the limit
    codes, mask, emb = tiny_inputs(m, B=2)
    eos, L = m.bart.config.eos_token_id, 8
    greedy_hf = m.generate(codes, mask, emb, max_new_tokens=L)
    beam_hf = m.generate(codes, mask, emb, max_new_tokens=L, num_beams=3)
    for ids in (greedy_hf, beam_hf):
        assert ids.shape[1] == L + 1 and (ids[:, -1] == eos).all() and (ids[:, 1:-1] != eos).all()
    for greedy in (False, True):
        sb = sample_candidates(m, codes, mask, emb, SamplingConfig(num_candidates=4, max_new_tokens=L), greedy=greedy)
        assert (sb.lengths == L).all() and (sb.tokens[:, :, L - 1] == eos).all()
        assert (sb.tokens[:, :, : L - 1] != eos).all()
    enc, enc_mask = m.encode(codes, mask, emb)
    for cands in beam_candidates(m, (enc.last_hidden_state, enc_mask), 3, SamplingConfig(max_new_tokens=L)):
        assert cands[0].token_ids[-1] == eos and len(cands[0].token_ids) == L
    open_end = tiny_captioner(seed=0, eos_bias=-30.0, forced_eos=False)
    assert open_end.bart.generation_config.forced_eos_token_id is None
    assert (open_end.generate(codes, mask, emb, max_new_tokens=L)[:, -1] != eos).all()
    sb = sample_candidates(open_end, codes, mask, emb, SamplingConfig(num_candidates=4, max_new_tokens=L))
    assert (sb.tokens != eos).all()


@pytest.mark.parametrize("k,p,T", [(5, 0.95, 0.5), (50, 0.9, 1.0), (1, 0.5, 2.0), (300, 1.0, 0.7)])
def test_top_k_then_nucleus_matches_hf_warpers(k, p, T):
    """Temperature, top-k, top-p: Hugging Face's ``TopKLogitsWarper`` between its temperature and top-p warpers
    gives the same distribution as ``nucleus_probs``; ``nucleus_sample`` draws from it (inverse CDF on a grid)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(k)
    logits = torch.randn(5, 120, generator=g, dtype=torch.float64) * 2
    x = TemperatureLogitsWarper(T)(None, logits.clone())
    want = torch.softmax(TopPLogitsWarper(p)(None, TopKLogitsWarper(k)(None, x)), -1)
    got = nucleus_probs(logits, p, T, top_k=k)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert ((got > 0).sum(1) <= k).all()
    n = 20000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    for r in range(5):
        draws = nucleus_sample(logits[r : r + 1].float().expand(n, -1), u, p, T, top_k=k)
        freq = np.bincount(draws.numpy(), minlength=120) / n
        np.testing.assert_allclose(freq, want[r].numpy(), atol=3.0 / n)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_ban_matches_hf(n):
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    g = torch.Generator().manual_seed(n)
    for T in (1, 2, 3, 5, 9, 16):
        prefix = torch.randint(0, 4, (7, T), generator=g)  # few distinct ids: many repeated n-grams
        scores = torch.randn(7, 10, generator=g)
        want = NoRepeatNGramLogitsProcessor(n)(prefix, scores.clone())
        assert torch.equal(ban_repeated_ngrams(scores, prefix, n), want)
    assert torch.equal(ban_repeated_ngrams(scores, prefix, 0), scores)


def test_min_length_matches_hf():
    """``</s>`` is suppressed at exactly the steps where HF's ``MinLengthLogitsProcessor`` (decoder length with the
    start token) and ``MinNewTokensLengthLogitsProcessor`` (generated tokens) suppress it."""
    from transformers.generation.logits_process import MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor

    eos = 2
    for min_length, min_new in ((5, 0), (0, 3), (4, 6), (0, 0)):
        cfg = SamplingConfig(min_length=min_length, min_new_tokens=min_new, max_new_tokens=20)
        for t in range(12):  # t tokens generated so far: the decoder sequence has t + 1 ids
            ids = torch.zeros(1, t + 1, dtype=torch.long)
            s = MinLengthLogitsProcessor(min_length, eos)(ids, torch.zeros(1, 5))
            s = MinNewTokensLengthLogitsProcessor(1, min_new, eos)(ids, s)
            assert bool(torch.isinf(s[0, eos])) == (t < cfg.eos_allowed_from())


def test_merge_duplicates_keeps_counts_and_first_scores():
    texts = ["a dog barks", "rain falls", " a dog barks ", "", "rain falls", "a dog barks"]
    ids = [[1], [2], [3], [4], [5], [6]]
    scores = [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    c = merge_candidates(texts, ids, scores)
    assert [(x.text, x.count, x.token_ids, x.decoder_score) for x in c] == [
        ("a dog barks", 3, [1], -1.0),
        ("rain falls", 2, [2], -2.0),
    ]
    # on real samples: near-greedy sampling repeats itself, and counts add up to the non-empty samples
    m = tiny_captioner(seed=0, eos_bias=-1.0)
    codes, mask, emb = tiny_inputs(m, B=2)
    sb = sample_candidates(m, codes, mask, emb, SamplingConfig(num_candidates=12, temperature=0.05, max_new_tokens=10))
    cands = batch_candidates(m, sb)
    for b in range(2):
        texts_b = [t.strip() for t in m.decode_text(sb.tokens[b])]
        assert sum(x.count for x in cands[b]) == sum(1 for t in texts_b if t)
        assert len({x.text for x in cands[b]}) == len(cands[b])
    assert max(x.count for cs in cands for x in cs) > 1


def test_clip_seed_is_stable():
    assert clip_seed(0, "a.wav") == clip_seed(0, "a.wav") != clip_seed(1, "a.wav")
    assert 0 <= clip_seed(123, "x") < 2**63
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0).check()
