"""Masked codec modelling: span-mask statistics, special slots untouched, loss weights, masked-only heads."""

from __future__ import annotations

import math

import numpy as np
import torch

from dcase.losses import IGNORE_INDEX, caption_loss, mcm_codebook_weights, mcm_loss
from dcase.models.enclap import FIRST_CODE_SLOT, EnCLAPConfig, build_enclap, sample_span_mask

CAPTIONS = ["a dog barks loudly", "birds chirp in the morning", "a car passes by on a wet road"]


def _runs(row: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-D bool array."""
    padded = np.concatenate([[False], row, [False]]).astype(np.int8)
    d = np.diff(padded)
    return (np.flatnonzero(d == -1) - np.flatnonzero(d == 1)).tolist()


def test_span_mask_statistics_over_many_draws():
    torch.manual_seed(0)
    lengths = torch.tensor([750, 301, 57, 7, 0])
    L, N, draws = 750, 8, 40
    masks = torch.stack([sample_span_mask(lengths, N, L, rate=0.15, span=10) for _ in range(draws)])  # [d,B,N,L]
    assert masks.shape == (draws, 5, N, L) and masks.dtype == torch.bool
    for b, n in enumerate(lengths.tolist()):
        assert not masks[:, b, :, n:].any()  # never past the valid frames (padding)
        if n == 0:
            continue
        rate = masks[:, b, :, :n].float().mean().item()
        tol = 4 * math.sqrt(0.15 * 10 / (n * N * draws)) + 0.01  # ~4 sigma of the span-count noise
        assert abs(rate - 0.15) < tol, (n, rate)
        span = min(10, n)
        runs = [r for d in range(draws) for c in range(N) for r in _runs(masks[d, b, c, :n].numpy())]
        assert runs and all(r % span == 0 for r in runs)  # whole spans (adjacent spans merge into multiples)
    long_runs = [r for d in range(draws) for c in range(N) for r in _runs(masks[d, 0, c].numpy())]
    assert np.mean(np.array(long_runs) == 10) > 0.7  # mostly isolated spans of exactly 10
    # codebooks and clips are masked independently, and each draw is fresh
    assert not torch.equal(masks[0, 0, 0], masks[0, 0, 1])
    assert not torch.equal(masks[0], masks[1])
    # start positions cover the whole sequence (uniform placement)
    starts = masks[:, 0, :, :].float().mean(dim=(0, 1))
    assert starts[:100].mean() > 0.08 and starts[-100:].mean() > 0.08


def test_forward_masks_fresh_codes_but_never_special_slots_or_padding():
    torch.manual_seed(0)
    m = build_enclap(EnCLAPConfig.tiny(), CAPTIONS)
    B, N, L = 3, 4, 60
    codes = torch.randint(0, 16, (B, N, L))
    mask = torch.arange(L)[None] < torch.tensor([60, 35, 12])[:, None]
    clip = torch.randn(B, 8)
    labels = m.tokenize(CAPTIONS)
    seen = []
    orig = m.embed_inputs
    m.embed_inputs = lambda c, cm, ce: (seen.append(c.clone()), orig(c, cm, ce))[1]
    out1 = m(codes, mask, clip, labels=labels, mcm=True)
    out2 = m(codes, mask, clip, labels=labels, mcm=True)
    m.embed_inputs = orig
    assert not torch.equal(out1.mcm_mask, out2.mcm_mask)  # sampled per batch, never cached
    for out, fed in ((out1, seen[0]), (out2, seen[1])):
        mk = out.mcm_mask
        assert not (mk & ~mask[:, None, :]).any()  # no padding frame masked
        assert torch.equal(fed == m.config.mask_code, mk)  # exactly the masked frames carry the mask id
        assert torch.equal(fed[~mk & mask[:, None, :].expand_as(mk)], codes[~mk & mask[:, None, :].expand_as(mk)])
        assert (fed[~mask[:, None, :].expand_as(mk)] == m.config.pad_code).all()
    # the special slots' embeddings do not depend on the masking
    e_masked, _ = orig(seen[0], mask, clip)
    e_plain, _ = orig(torch.where(mask[:, None], codes, m.config.pad_code), mask, clip)
    for b, n in enumerate((60, 35, 12)):
        for slot in (0, 1, n + FIRST_CODE_SLOT):  # clip, <s>, </s>
            torch.testing.assert_close(e_masked[b, slot], e_plain[b, slot])
    # without MCM nothing is masked
    assert m(codes, mask, clip, labels=labels).mcm_mask is None


def test_loss_weights_against_hand_computation():
    assert mcm_codebook_weights(3).tolist() == [0.5, 0.25, 0.125]
    logits = [torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]), torch.zeros(0, 3)]
    targets = [torch.tensor([0]), torch.tensor([1, 2]), torch.zeros(0, dtype=torch.long)]
    ce0 = -(2 - math.log(math.exp(2) + 2))
    ce1 = (-(1 - math.log(math.e + 2)) + math.log(3)) / 2
    loss, per = mcm_loss(logits, targets)
    np.testing.assert_allclose(per.tolist(), [ce0, ce1, 0.0], rtol=1e-6)
    assert abs(loss.item() - (0.5 * ce0 + 0.25 * ce1)) < 1e-6
    # label smoothing eps: (1 - eps) * nll + eps * mean_v(-log p_v), averaged over non-padding tokens
    lg = torch.tensor([[[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]])
    lab = torch.tensor([[1, IGNORE_INDEX]])
    logp = torch.log_softmax(lg[0, 0], -1)
    expect = 0.8 * -logp[1] + 0.2 * -logp.mean()
    torch.testing.assert_close(caption_loss(lg, lab, 0.2), expect)


def test_total_loss_combines_caption_and_mcm_with_lambda():
    torch.manual_seed(0)
    m = build_enclap(EnCLAPConfig.tiny(), CAPTIONS)
    codes = torch.randint(0, 16, (3, 4, 40))
    mask = torch.ones(3, 40, dtype=torch.bool)
    clip = torch.randn(3, 8)
    labels = m.tokenize(CAPTIONS)
    out = m(codes, mask, clip, labels=labels, mcm=True)
    assert m.config.mcm_lambda == 0.7 and m.config.label_smoothing == 0.2
    torch.testing.assert_close(out.loss, out.caption_loss + 0.7 * out.mcm_loss)
    torch.testing.assert_close(out.caption_loss, caption_loss(out.logits, labels, 0.2))
    torch.testing.assert_close(out.mcm_loss, (mcm_codebook_weights(4) * out.mcm_per_codebook).sum())


def test_masked_only_heads_equal_all_position_heads():
    """The model scores only the masked frames; scoring every frame and ignoring the unmasked ones (computed here,
    from the encoder output of the same corrupted input) gives the same MCM loss and head gradients."""
    torch.manual_seed(0)
    m = build_enclap(EnCLAPConfig.tiny(), CAPTIONS)
    codes = torch.randint(0, 16, (3, 4, 80))
    mask = torch.arange(80)[None] < torch.tensor([80, 50, 20])[:, None]
    clip = torch.randn(3, 8)
    labels = m.tokenize(CAPTIONS)
    torch.manual_seed(7)
    m.zero_grad()
    out = m(codes, mask, clip, labels=labels, mcm=True)
    out.loss.backward()
    grads_masked = [p.grad.clone() for p in m.mcm_heads.parameters()]
    m.zero_grad()
    corrupted = m._checked_codes(codes, mask).masked_fill(out.mcm_mask, m.config.mask_code)
    hidden_all = m.encode(corrupted, mask, clip)[0].last_hidden_state[:, FIRST_CODE_SLOT : FIRST_CODE_SLOT + 80]
    all_logits = [head(hidden_all).flatten(0, 1) for head in m.mcm_heads]
    all_targets = [codes[:, n].masked_fill(~out.mcm_mask[:, n], IGNORE_INDEX).flatten() for n in range(4)]
    all_loss, _ = mcm_loss(all_logits, all_targets)
    (m.config.mcm_lambda * all_loss).backward()  # out.loss = caption loss (no head gradient) + lambda * MCM
    grads_all = [p.grad.clone() for p in m.mcm_heads.parameters()]
    torch.testing.assert_close(out.mcm_loss, all_loss, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_masked, grads_all, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    outs = [out]
    # and against an independent per-position computation
    hidden = m.encode(codes.masked_fill(outs[0].mcm_mask, m.config.mask_code), mask, clip)[0].last_hidden_state
    total = 0.0
    for n in range(4):
        sel = outs[0].mcm_mask[:, n]
        logits = m.mcm_heads[n](hidden[:, FIRST_CODE_SLOT : FIRST_CODE_SLOT + 80])
        ce = torch.nn.functional.cross_entropy(logits[sel], codes[:, n][sel])
        total = total + 0.5 ** (n + 1) * ce
    torch.testing.assert_close(outs[0].mcm_loss, total, rtol=1e-5, atol=1e-6)
