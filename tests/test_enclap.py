"""EnCLAP model: encoder-input layout (eqs. 1-3), padding, generation, sequence scores, checkpoints, learning."""

from __future__ import annotations

import pytest
import torch

from dcase.losses import IGNORE_INDEX
from dcase.models.enclap import (
    BOS_SLOT,
    CLIP_SLOT,
    FIRST_CODE_SLOT,
    EnCLAP,
    EnCLAPConfig,
    build_enclap,
    train_caption_tokenizer,
)

CAPTIONS = [
    "a dog barks loudly",
    "birds chirp in the morning",
    "a car passes by on a wet road",
    "rain falls on a tin roof",
    "people talk in a busy cafe",
]


def _model(**kw) -> EnCLAP:
    torch.manual_seed(0)
    return build_enclap(EnCLAPConfig.tiny(**kw), CAPTIONS * 3).eval()


def _batch(B=3, N=4, L=12, K=16, clip_dim=8, lengths=(12, 7, 3), seed=1):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, K, (B, N, L), generator=g)
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    return codes, mask, torch.randn(B, clip_dim, generator=g)


def test_input_layout_matches_independent_computation():
    m = _model()
    codes, mask, clip = _batch()
    emb, att = m.embed_inputs(codes, mask, clip)
    assert emb.shape == (3, 12 + 3, 32) and att.shape == (3, 15)
    enc = m.bart.model.encoder
    pos_table = enc.embed_positions.weight[2:]  # BART's learned positions are stored with an offset of 2
    tok = enc.embed_tokens.weight * enc.embed_tokens.embed_scale
    for b, n_valid in enumerate((12, 7, 3)):
        expect = [m.clip_proj.weight @ clip[b] + m.clip_proj.bias]  # clip slot: no position (eq. 3)
        expect.append(tok[m.bart.config.bos_token_id] + pos_table[0])
        for t in range(n_valid):
            e_codec = sum(m.codebook_table(n)[codes[b, n, t]] for n in range(4))
            expect.append(e_codec + pos_table[1 + t])
        expect.append(tok[m.bart.config.eos_token_id] + pos_table[1 + n_valid])
        expect = torch.stack(expect)
        torch.testing.assert_close(emb[b, : n_valid + 3], expect)
        assert att[b].tolist() == [1] * (n_valid + 3) + [0] * (12 - n_valid)
    assert (CLIP_SLOT, BOS_SLOT, FIRST_CODE_SLOT) == (0, 1, 2)


def test_positions_skip_the_clip_slot():
    m = _model()
    codes, mask, clip = _batch()
    before, _ = m.embed_inputs(codes, mask, clip)
    with torch.no_grad():
        m.bart.model.encoder.embed_positions.weight.add_(1.0)
    after, att = m.embed_inputs(codes, mask, clip)
    torch.testing.assert_close(after[:, CLIP_SLOT], before[:, CLIP_SLOT])
    valid = att[:, 1:].bool()
    torch.testing.assert_close((after - before)[:, 1:][valid], torch.ones(int(valid.sum()), 32))


def test_codebook_tables_are_separate_with_distinct_pad_and_mask_ids():
    cfg = EnCLAPConfig.tiny()
    assert cfg.pad_code != cfg.mask_code
    assert cfg.pad_code >= cfg.codebook_size and cfg.mask_code >= cfg.codebook_size
    m = _model()
    tables = [m.codebook_table(n) for n in range(4)]
    assert all(t.shape == (cfg.codebook_size + 2, 32) for t in tables)
    assert not torch.equal(tables[0][cfg.pad_code], tables[0][cfg.mask_code])
    assert not torch.equal(tables[0][3], tables[1][3])  # same code, different codebook, different vector
    with torch.no_grad():
        m.codebook_table(2)[5] += 10.0  # a view into the shared storage touches only codebook 2, code 5
    assert m.codebook_table(1)[5].abs().max() < 5 and m.codebook_table(2)[5].abs().min() > 5


def test_padding_does_not_change_valid_outputs():
    m = _model()
    codes, mask, clip = _batch()
    out, att = m.encode(codes, mask, clip)
    garbage = codes.clone()
    garbage[~mask[:, None, :].expand_as(codes)] = 3  # different content in the padding
    longer = torch.cat([garbage, torch.randint(0, 16, (3, 4, 5))], dim=2)  # and more padding frames
    mask2 = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], dim=1)
    out2, att2 = m.encode(longer, mask2, clip)
    for b, n in enumerate((12, 7, 3)):
        torch.testing.assert_close(out2.last_hidden_state[b, : n + 3], out.last_hidden_state[b, : n + 3])


def test_bad_inputs_raise_clear_errors():
    m = _model()
    codes, mask, clip = _batch()
    for bad, msg in ((codes[:, :3], "codebooks"), (codes + 100, "outside")):
        try:
            m.encode(bad, mask, clip)
        except ValueError as e:
            assert msg in str(e)
        else:
            raise AssertionError("no error")
    holes = mask.clone()
    holes[0, 2] = False
    try:
        m.encode(codes, holes, clip)
    except ValueError as e:
        assert "prefix" in str(e)
    else:
        raise AssertionError("no error")


def test_generate_greedy_matches_manual_loop_with_and_without_cache():
    m = _model()
    codes, mask, clip = _batch()
    g_cache = m.generate(codes, mask, clip, max_new_tokens=8, use_cache=True)
    g_plain = m.generate(codes, mask, clip, max_new_tokens=8, use_cache=False)
    assert torch.equal(g_cache, g_plain)
    enc, em = m.encode(codes, mask, clip)
    ids = torch.full((3, 1), m.bart.config.decoder_start_token_id)
    for step in range(8):
        logits = m.decode_logits(enc, em, ids)[:, -1]
        nxt = logits.argmax(-1) if step else torch.full((3,), m.bart.config.bos_token_id)  # <s> is forced
        if step == 7:  # and </s> at the length limit (forced_eos, as the official EnCLAP)
            nxt = torch.full((3,), m.bart.config.eos_token_id)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    # rows that stopped early are padded by generate; compare up to each row's first </s>
    for b in range(3):
        row = ids[b].tolist()
        eos = m.bart.config.eos_token_id
        end = row.index(eos, 1) + 1 if eos in row[1:] else len(row)
        assert g_cache[b, :end].tolist() == row[:end]


def test_sampling_and_beam_search_from_one_encoder_pass():
    m = _model()
    codes, mask, clip = _batch()
    torch.manual_seed(3)
    s1 = m.generate(
        codes, mask, clip, do_sample=True, top_p=0.95, temperature=0.5, num_return_sequences=5, max_new_tokens=6
    )
    enc, em = m.encode(codes, mask, clip)
    torch.manual_seed(3)
    s2 = m.generate_from_encoder(
        enc, em, do_sample=True, top_p=0.95, temperature=0.5, num_return_sequences=5, max_new_tokens=6
    )
    assert s1.shape[0] == 15 and torch.equal(s1, s2)
    assert (s1[:, 0] == m.bart.config.decoder_start_token_id).all() and (s1[:, 1] == 0).all()
    beams = m.generate(codes, mask, clip, num_beams=4, num_return_sequences=2, max_new_tokens=6, length_penalty=0.0)
    assert beams.shape[0] == 6
    # the best beam is at least as likely (sum log p) as the greedy sequence, per clip
    greedy = m.generate(codes, mask, clip, max_new_tokens=6)

    def total_logp(seqs, rep):
        lab = seqs[:, 1:]
        e = torch.repeat_interleave(enc.last_hidden_state, rep, 0)
        n = (lab != m.bart.config.pad_token_id).sum(1)
        return m.sequence_logprobs(e, torch.repeat_interleave(em, rep, 0), lab) * n

    assert (total_logp(beams[::2], 1) >= total_logp(greedy, 1) - 1e-4).all()


def test_sequence_logprobs_matches_forward_logits():
    m = _model()
    codes, mask, clip = _batch()
    labels = m.tokenize(CAPTIONS[:3])
    enc, em = m.encode(codes, mask, clip)
    scores = m.sequence_logprobs(enc.last_hidden_state, em, labels)
    logits = m(codes, mask, clip, labels=labels).logits
    logp = logits.log_softmax(-1)
    for b in range(3):
        keep = labels[b] != IGNORE_INDEX
        expect = logp[b, keep].gather(-1, labels[b, keep][:, None]).mean()
        torch.testing.assert_close(scores[b], expect)
    # pad ids (as generate writes them) are ignored like IGNORE_INDEX
    padded = labels.masked_fill(labels == IGNORE_INDEX, m.bart.config.pad_token_id)
    torch.testing.assert_close(m.sequence_logprobs(enc, em, padded), scores)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path / "ckpt")
    r = EnCLAP.from_pretrained(tmp_path / "ckpt").eval()
    a, b = m.state_dict(), r.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert r.config == m.config
    (tmp_path / "ckpt" / "model.safetensors").unlink()  # config_of reads config.json only
    assert EnCLAP.config_of(tmp_path / "ckpt") == m.config
    assert r.tokenizer(CAPTIONS)["input_ids"] == m.tokenizer(CAPTIONS)["input_ids"]
    codes, mask, clip = _batch()
    labels = m.tokenize(CAPTIONS[:3])
    assert torch.equal(m(codes, mask, clip, labels=labels).logits, r(codes, mask, clip, labels=labels).logits)
    assert torch.equal(m.generate(codes, mask, clip, num_beams=2), r.generate(codes, mask, clip, num_beams=2))


def test_tokenizer_has_bart_special_ids_and_round_trips_text():
    tok = train_caption_tokenizer(CAPTIONS, 300)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    ids = tok(CAPTIONS[1])["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert tok.decode(ids, skip_special_tokens=True) == CAPTIONS[1]


def test_tiny_model_overfits_a_batch():
    m = _model(d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128).train()
    codes, mask, clip = _batch()
    labels = m.tokenize(CAPTIONS[:3])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(120):
        out = m(codes, mask, clip, labels=labels, label_smoothing=0.0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.loss.item() < 0.05
    m.eval()
    assert m.decode_text(m.generate(codes, mask, clip)) == CAPTIONS[:3]


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    m = _model().train()
    codes, mask, clip = _batch()
    labels = m.tokenize(CAPTIONS[:3])
    grads = []
    for ckpt in (False, True):
        if ckpt:
            m.enable_gradient_checkpointing()
        m.zero_grad()
        out = m(codes, mask, clip, labels=labels)
        out.loss.backward()
        grads.append((out.loss.detach(), m.bart.model.encoder.layers[0].fc1.weight.grad.clone()))
    assert m.bart.model.encoder.layers[0].gradient_checkpointing
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_build_from_a_local_bart_directory(tmp_path):
    """The real-config path (bart_name_or_path): BART weights and tokenizer from a local directory, no hub."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    bart = BartForConditionalGeneration(
        BartConfig(
            vocab_size=300,
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            max_position_embeddings=40,
        )
    )
    bart.save_pretrained(tmp_path / "bart")
    train_caption_tokenizer(CAPTIONS, 300).save_pretrained(str(tmp_path / "bart"))
    m = build_enclap(EnCLAPConfig.tiny(bart_name_or_path=str(tmp_path / "bart"), max_codec_positions=38))
    assert m.config.d_model == 16 and m.config.max_position_embeddings == 40  # taken from the BART checkpoint
    assert torch.equal(m.bart.model.shared.weight, bart.model.shared.weight)
    codes, mask, clip = _batch()
    labels = m.tokenize(CAPTIONS[:3])
    assert torch.isfinite(m(codes, mask, clip, labels=labels, mcm=True).loss)
    m.save_pretrained(tmp_path / "enclap")
    r = EnCLAP.from_pretrained(tmp_path / "enclap")
    assert r.config == m.config and all(
        torch.equal(a, b) for a, b in zip(m.state_dict().values(), r.state_dict().values(), strict=True)
    )


def test_constructor_does_no_io_pretrained_bart_comes_from_build_enclap() -> None:
    cfg = EnCLAPConfig.tiny(bart_name_or_path="facebook/bart-large")
    with pytest.raises(ValueError, match="build_enclap"):
        EnCLAP(cfg)  # would otherwise download/load BART inside the constructor


def test_new_layers_use_bart_initialisation():
    """clip_proj and the MCM heads: normal(0, init_std) weights and zero biases, as BART's ``_init_weights`` (which
    the official model's ``post_init`` applies to them), not PyTorch's default uniform init with non-zero biases."""
    torch.manual_seed(0)
    m = EnCLAP(EnCLAPConfig.tiny(d_model=64, clip_dim=96, codebook_size=64, n_codebooks=3))
    std = m.bart.config.init_std
    layers = [m.clip_proj, *m.mcm_heads]
    assert len(layers) == 4
    for layer in layers:
        assert torch.count_nonzero(layer.bias) == 0
        w = layer.weight.detach()
        assert abs(w.mean().item()) < 3 * std / w.numel() ** 0.5
        assert abs(w.std().item() / std - 1) < 0.06, (w.std().item(), std)
        # PyTorch's default would be U(-1/sqrt(fan_in), 1/sqrt(fan_in)): std 1/sqrt(3 fan_in), far from 0.02 here
        assert abs(w.std().item() - (3 * w.shape[1]) ** -0.5) > 0.02
    # the same init as BART's own new layers, e.g. the codebook tables
    assert abs(m.codebook_embed.weight.std().item() / std - 1) < 0.06
