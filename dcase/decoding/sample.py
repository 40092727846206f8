"""Candidate generation: nucleus sampling with one encoder pass and shared cross-attention keys/values per clip
(EnCLAP DCASE2024 technical report §2.3, §3.1: p = 0.95, temperature 0.5, 30 candidates per clip).

How it is fast (vs. Hugging Face ``generate`` with ``num_return_sequences=30``, which copies the encoder output 30
times and projects cross-attention keys/values on every copy):

- the encoder runs once per clip;
- each decoder layer's cross-attention K/V are projected once per clip, [B, H, S, d], and the 30 samples of a
  clip attend to them as 30 query rows of one attention call ([B, H, 30, d] x [B, H, S, d]): nothing is copied;
- self-attention keys/values live in a preallocated cache [B * n, H, T_max, d], written in place each step;
- the LM head runs only on unfinished samples, and clips whose samples have all ended leave the batch;
- nucleus filtering partial-sorts the top ``topk_first`` tokens and widens the partial sort (16x, up to a full
  sort) only for rows whose nucleus is wider (so the result is exactly the full-sort result).

Randomness: clip ``b`` draws its uniforms ``u[b]`` [n, max_new_tokens] from its own generator seeded with
``seeds[b]``; sample ``j`` at step ``t`` takes the token at which the cumulative filtered probability (tokens in
descending probability order) first exceeds ``u[b, j, t]``. Results therefore depend only on the seed of the
clip, not on batch composition or order (a resumed run reproduces a full run exactly).

Logits processing at each step, in Hugging Face's order (the reference samplers of Wu et al. 2023, whose sampling
and reranking the report adopts, run ``generate(do_sample=True, temperature=0.5, top_p=0.95, min_length=5,
no_repeat_ngram_size=3)`` with HF's default ``top_k=50``; the official EnCLAP forces ``</s>`` at the length limit):
``</s>`` is suppressed while the decoder sequence (start token included) is shorter than ``min_length``
(``MinLengthLogitsProcessor``) and before ``min_new_tokens`` generated tokens; tokens that would repeat an n-gram
of size ``no_repeat_ngram_size`` are banned (``NoRepeatNGramLogitsProcessor``); ``<s>`` is forced first and ``</s>``
last (at step ``max_new_tokens``) when the captioner's generation config forces them (``forced_bos_token_id``,
``forced_eos_token_id``); then temperature, ``top_k`` (``TopKLogitsWarper``) and nucleus filtering.

Nucleus semantics (same as Hugging Face's ``TemperatureLogitsWarper``, ``TopKLogitsWarper``, then
``TopPLogitsWarper``): scale the log-probabilities by 1 / temperature, keep the ``top_k`` most probable tokens
(all with ``top_k = 0``) and renormalise, sort tokens by probability (descending); a token is kept when the total
probability of the tokens ranked strictly above it is < ``top_p`` (so the token crossing ``top_p`` is kept, and
the best token always is); the kept probabilities are renormalised.

Decoder score (report §2.3, "the log-likelihood of the generated caption given the input audio"): the
length-normalised log-likelihood at temperature 1 (before any logits processing) of the sampled caption tokens
and ``</s>``, as Wu et al.'s decoder reranking computes it; the forced ``<s>`` is not counted (``score_bos: true``
counts it, which equals ``EnCLAP.sequence_logprobs`` teacher-forced on the sample). It is accumulated during
sampling from the same logits (no second pass); :func:`score_sequences` computes it teacher-forced for sequences a
model did not sample itself (candidate pooling), again with shared cross-attention K/V.

Ensembles (token level): several captioners decode in lock step; at every step the per-model log-probabilities
(temperature 1) are averaged and the average is filtered and sampled. The decoder score is then the mean over
the models of each model's length-normalised log-likelihood.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dcase.config import ConfigError, check_values
from dcase.errors import CheckpointError

if TYPE_CHECKING:
    from dcase.models.enclap import EnCLAP

log = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    """Nucleus sampling settings (report §3.1; ``top_k``, ``no_repeat_ngram_size``, ``min_length`` and the decoder
    score without ``<s>`` follow Wu et al.'s samplers, which the report adopts). ``max_new_tokens`` counts
    generated tokens incl. ``<s>``/``</s>``; ``min_new_tokens`` suppresses ``</s>`` before that many generated
    tokens (0 = never); ``min_length`` suppresses it while the decoder sequence with its start token is shorter
    (Hugging Face's ``min_length``; 5 = at least 3 words after the forced ``<s>``); ``top_k`` 0 and
    ``no_repeat_ngram_size`` 0 switch those filters off."""

    num_candidates: int = field(default=30, metadata={"min": 1})
    top_p: float = field(default=0.95, metadata={"gt": 0, "max": 1})
    temperature: float = field(default=0.5, metadata={"gt": 0})
    max_new_tokens: int = field(default=40, metadata={"min": 1})
    min_new_tokens: int = field(default=0, metadata={"min": 0})
    top_k: int = field(default=50, metadata={"min": 0})  # Hugging Face's default, applied by the reference samplers
    no_repeat_ngram_size: int = field(default=3, metadata={"min": 0})  # Wu et al.'s samplers; EnCLAP's beam search
    min_length: int = field(default=5, metadata={"min": 0})  # Wu et al.'s samplers
    score_bos: bool = False  # count the forced <s> in the decoder score (Wu et al. do not; it has no <s>)
    seed: int = 0
    # clips decoded together (self-attention cache: batch_clips * num_candidates rows)
    batch_clips: int = field(default=8, metadata={"min": 1})
    # partial-sort width tried before a full sort (exact either way)
    topk_first: int = field(default=64, metadata={"min": 1})

    def check(self) -> None:
        """The field limits (``dcase.config.check_values``) and ``min_new_tokens <= max_new_tokens``."""
        check_values(self, "sampling")
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"sampling.min_new_tokens ({self.min_new_tokens}) exceeds sampling.max_new_tokens "
                f"({self.max_new_tokens})"
            )

    def eos_allowed_from(self) -> int:
        """The first step (0-based generated token) at which ``</s>`` may be sampled (min_new_tokens, min_length)."""
        return max(self.min_new_tokens, self.min_length - 1)


def clip_seed(seed: int, key: str | int) -> int:
    """A 63-bit seed for one clip from the run seed and the clip id (stable across runs and platforms)."""
    h = hashlib.sha256(f"{int(seed)}\x00{key}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def clip_uniforms(seed: int, n: int, steps: int) -> torch.Tensor:
    """The uniforms of one clip: float64 [n, steps] from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand(n, steps, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------------------------- nucleus
def nucleus_probs(logprobs: torch.Tensor, top_p: float, temperature: float, top_k: int = 0) -> torch.Tensor:
    """The filtered, renormalised sampling distribution: logprobs [R, V] (any normalisation) -> probs [R, V]
    (float64). Reference form of what :func:`nucleus_sample` draws from (full sort)."""
    p = torch.softmax(logprobs.double() / temperature, dim=-1)
    if 0 < top_k < p.shape[-1]:
        kth = p.topk(top_k, dim=-1).values[:, -1:]
        p = torch.where(p >= kth, p, 0.0)
        p = p / p.sum(-1, keepdim=True)
    vals, idx = p.sort(dim=-1, descending=True)
    keep = (vals.cumsum(-1) - vals) < top_p
    out = torch.zeros_like(p).scatter_(-1, idx, vals * keep)
    return out / out.sum(-1, keepdim=True)


def _pick(vals: torch.Tensor, idx: torch.Tensor, u: torch.Tensor, top_p: float, renorm: bool = False) -> torch.Tensor:
    """Inverse-CDF draw from descending ``vals`` [R, K] (token ids ``idx``) after nucleus filtering (of ``vals``
    renormalised to sum 1 with ``renorm``: the top-k set)."""
    v = vals.double()
    if renorm:
        v = v / v.sum(-1, keepdim=True)
    keep = (v.cumsum(-1) - v) < top_p
    c = (v * keep).cumsum(-1)
    target = (u * c[:, -1]).unsqueeze(-1)
    j = torch.searchsorted(c, target, right=True).squeeze(-1)
    j = torch.minimum(j, keep.sum(-1) - 1)  # u * total == total only through rounding
    return idx.gather(-1, j.unsqueeze(-1)).squeeze(-1)


def nucleus_sample(
    logprobs: torch.Tensor, u: torch.Tensor, top_p: float, temperature: float, topk_first: int = 64, top_k: int = 0
) -> torch.Tensor:
    """Draw one token per row: logprobs [R, V], uniforms u [R] (float64 in [0, 1)) -> token ids [R] (long).

    Token ``argmin_j {C_j > u * C_K}`` of the descending cumulative kept mass ``C`` (module docstring).
    With ``0 < top_k < V`` one partial sort of width ``top_k`` holds every candidate (renormalised, then nucleus
    filtered). Otherwise rows whose nucleus fits in the top ``topk_first`` tokens use a partial sort of that width;
    the others are retried with 16x wider partial sorts while those stay below V / 4, then with a full sort.
    """
    probs = torch.softmax(logprobs.float() / temperature, dim=-1)
    R, V = probs.shape
    if 0 < top_k < V:
        vals, idx = probs.topk(top_k, dim=-1, sorted=True)
        return _pick(vals, idx, u, top_p, renorm=True)
    out = torch.empty(R, dtype=torch.long, device=probs.device)
    rest = torch.arange(R, device=probs.device)
    k = min(topk_first, V) if top_p < 1.0 else V
    while rest.numel():
        if k >= V:  # full sort for the rows left
            vals, idx = probs[rest].sort(dim=-1, descending=True)
            out[rest] = _pick(vals, idx, u[rest], top_p)
            break
        vals, idx = probs[rest].topk(k, dim=-1, sorted=True)
        fits = vals.double().sum(-1) >= top_p  # then the (k+1)-th token has >= top_p mass above it: dropped
        if fits.any():
            out[rest[fits]] = _pick(vals[fits], idx[fits], u[rest[fits]], top_p)
        rest = rest[~fits]
        k = k * 16 if k * 16 <= V // 4 else V  # one wider partial sort, else a full sort
    return out


def ban_repeated_ngrams(scores: torch.Tensor, prefix: torch.Tensor, n: int) -> torch.Tensor:
    """Hugging Face's ``NoRepeatNGramLogitsProcessor``: scores [R, V], decoder prefixes [R, T] (start token
    included) -> scores with ``-inf`` at every token that would complete an n-gram already in its row's prefix.
    A new tensor; ``n = 0`` returns ``scores``."""
    R, T = prefix.shape
    if n <= 0 or T + 1 < n:
        return scores
    if n == 1:
        follow, hit = prefix, torch.ones_like(prefix, dtype=torch.bool)
    else:
        windows = prefix.unfold(1, n - 1, 1)[:, : T - n + 1]  # [R, T-n+1, n-1]: every (n-1)-gram but the last
        hit = (windows == prefix[:, None, T - n + 1 :]).all(-1)  # equal to the last n-1 tokens
        follow = prefix[:, n - 1 :]  # the token that followed each of them
    banned = torch.zeros_like(scores, dtype=torch.float32).scatter_add_(1, follow, hit.float()) > 0
    return scores.masked_fill(banned, float("-inf"))


# ------------------------------------------------------------------------------------ decoder with shared K/V
class SharedKVDecoder:
    """BART's decoder run from its own modules, with cross-attention K/V computed once per clip.

    Hidden states are laid out [B, n, T, D] (clip, sample, position); cross-attention treats the ``n * T``
    positions of a clip as query rows against the clip's [H, S, d] keys/values. Numerically this is BART's
    decoder (post-norm layers, scaled embeddings, learned positions with offset 2, final_logits_bias).
    """

    def __init__(self, model: EnCLAP) -> None:
        bart = model.bart
        self.model = model
        self.decoder = bart.model.decoder
        self.lm_head = bart.lm_head
        self.logits_bias = bart.final_logits_bias
        cfg = bart.config
        self.n_heads = cfg.decoder_attention_heads
        self.d_model = cfg.d_model
        self.head_dim = cfg.d_model // cfg.decoder_attention_heads
        self.n_layers = len(self.decoder.layers)
        self.pad_id = cfg.pad_token_id
        self.eos_id = cfg.eos_token_id
        gen = bart.generation_config
        self.start_id = cfg.decoder_start_token_id
        self.forced_bos = gen.forced_bos_token_id if gen.forced_bos_token_id is not None else None
        self.forced_eos = gen.forced_eos_token_id if gen.forced_eos_token_id is not None else None
        self.max_positions = self.decoder.embed_positions.weight.shape[0] - self.decoder.embed_positions.offset

    def cross_kv(self, enc_hidden: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """enc_hidden [B, S, D] -> per layer (K, V), each [B, H, S, d]."""
        B, S, _ = enc_hidden.shape
        out = []
        for layer in self.decoder.layers:
            ca = layer.encoder_attn
            k = ca.k_proj(enc_hidden).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
            v = ca.v_proj(enc_hidden).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
            out.append((k, v))
        return out

    def new_cache(self, rows: int, steps: int, like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Self-attention cache: per layer (K, V), each [rows, H, steps, d] (uninitialised)."""
        shape = (rows, self.n_heads, steps, self.head_dim)
        return [(like.new_empty(shape), like.new_empty(shape)) for _ in range(self.n_layers)]

    def forward(
        self,
        tokens: torch.Tensor,
        start: int,
        cross: list[tuple[torch.Tensor, torch.Tensor]],
        enc_mask: torch.Tensor,
        cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """tokens [B, n, T] at positions ``start ..`` -> hidden [B, n, T, D].

        With ``cache`` (incremental decoding, T = 1 usually): K/V are written at ``start ..`` and attention spans
        ``[0, start + T)``. Without it (teacher forcing, start = 0): causal self-attention over the T tokens.
        """
        B, n, T = tokens.shape
        H, d, D = self.n_heads, self.head_dim, self.d_model
        if cache is not None and T > 1 and start > 0:
            raise ValueError("cached decoding takes one token per step after the first call")
        dec = self.decoder
        pos = dec.embed_positions.weight[dec.embed_positions.offset + start : dec.embed_positions.offset + start + T]
        x = dec.embed_tokens(tokens) + pos  # [B, n, T, D]
        x = dec.layernorm_embedding(x)
        enc_keep = enc_mask.bool()[:, None, None, :]  # [B, 1, 1, S]
        for i, layer in enumerate(dec.layers):
            sa = layer.self_attn
            rows = x.reshape(B * n, T, D)
            q = sa.q_proj(rows).view(B * n, T, H, d).transpose(1, 2)
            k = sa.k_proj(rows).view(B * n, T, H, d).transpose(1, 2)
            v = sa.v_proj(rows).view(B * n, T, H, d).transpose(1, 2)
            if cache is not None:
                kc, vc = cache[i]
                kc[:, :, start : start + T] = k
                vc[:, :, start : start + T] = v
                k, v = kc[:, :, : start + T], vc[:, :, : start + T]
                a = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1 and start == 0, scale=sa.scaling)
            else:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=sa.scaling)
            h = sa.out_proj(a.transpose(1, 2).reshape(B, n, T, D))
            x = layer.self_attn_layer_norm(x + h)
            ca = layer.encoder_attn
            ck, cv = cross[i]
            q = ca.q_proj(x).view(B, n * T, H, d).transpose(1, 2)  # [B, H, n*T, d]
            a = F.scaled_dot_product_attention(q, ck, cv, attn_mask=enc_keep, scale=ca.scaling)
            h = ca.out_proj(a.transpose(1, 2).reshape(B, n, T, D))
            x = layer.encoder_attn_layer_norm(x + h)
            h = layer.fc2(layer.activation_fn(layer.fc1(x)))
            x = layer.final_layer_norm(x + h)
        return x

    def logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> log-probabilities at temperature 1 [..., V] (float32)."""
        return (self.lm_head(hidden) + self.logits_bias).float().log_softmax(-1)


# ------------------------------------------------------------------------------------------------ sampling
@dataclass
class SampleBatch:
    """Raw samples of B clips: ``tokens`` [B, n, L] (generated ids after the decoder start token, ``pad`` after
    ``</s>``), ``lengths`` [B, n] (tokens incl. ``</s>``), ``scores`` [B, n] float64 (decoder score: mean over
    models of the length-normalised log-likelihood), ``model_scores`` [M, B, n]."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor
    model_scores: torch.Tensor


def _as_list(models: EnCLAP | Sequence[EnCLAP]) -> list[EnCLAP]:
    return [models] if isinstance(models, torch.nn.Module) else list(models)


@torch.no_grad()
def encode_batch(
    models: Sequence[EnCLAP], codes: torch.Tensor, codes_mask: torch.Tensor, clip_emb: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One encoder pass per model: -> [(hidden [B, S, D], enc_mask [B, S])]."""
    out = []
    for m in models:
        enc, mask = m.encode(codes, codes_mask, clip_emb)
        out.append((enc.last_hidden_state, mask))
    return out


def _ensemble_decoders(
    models: Sequence[EnCLAP], encoded: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> list[SharedKVDecoder]:
    """One ``SharedKVDecoder`` per model (one encoder output each); the models must agree on the special ids."""
    if len(encoded) != len(models):
        raise ValueError(f"{len(models)} models but {len(encoded)} encoder outputs")
    decs = [SharedKVDecoder(m) for m in models]
    d0 = decs[0]
    for dm in decs[1:]:
        ids = (dm.start_id, dm.eos_id, dm.pad_id, dm.forced_bos, dm.forced_eos)
        if ids != (d0.start_id, d0.eos_id, d0.pad_id, d0.forced_bos, d0.forced_eos):
            raise CheckpointError(
                "ensembled captioners disagree on decoder start / eos / pad / forced bos / eos token ids"
            )
    return decs


@torch.no_grad()
def sample_from_encoder(
    models: EnCLAP | Sequence[EnCLAP],
    encoded: Sequence[tuple[torch.Tensor, torch.Tensor]],
    cfg: SamplingConfig,
    seeds: Sequence[int],
    greedy: bool = False,
) -> SampleBatch:
    """Sample ``cfg.num_candidates`` captions per clip (or one greedy caption with ``greedy``) from encoder
    outputs of one or several models (token-level ensemble: mean of per-step log-probabilities).

    encoded: per model (hidden [B, S_m, D_m], enc_mask [B, S_m]); seeds: one per clip (see :func:`clip_seed`).
    """
    models = _as_list(models)
    cfg.check()
    decs = _ensemble_decoders(models, encoded)
    d0 = decs[0]
    B = encoded[0][0].shape[0]
    if len(seeds) != B:
        raise ValueError(f"{B} clips but {len(seeds)} seeds")
    n = 1 if greedy else cfg.num_candidates
    L = min(cfg.max_new_tokens, min(dm.max_positions for dm in decs))
    device = encoded[0][0].device
    u = torch.stack([clip_uniforms(s, n, L) for s in seeds]).to(device)  # [B, n, L]
    crosses = [dm.cross_kv(h) for dm, (h, _) in zip(decs, encoded, strict=True)]
    masks = [mk for _, mk in encoded]
    caches = [dm.new_cache(B * n, L, h) for dm, (h, _) in zip(decs, encoded, strict=True)]
    tokens = torch.full((B, n, L), d0.pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(B, n, dtype=torch.long, device=device)
    sums = torch.zeros(len(models), B, n, dtype=torch.float64, device=device)
    scored = torch.zeros(B, n, dtype=torch.long, device=device)  # tokens counted in the decoder score
    skip_bos = d0.forced_bos is not None and not cfg.score_bos
    eos_from = cfg.eos_allowed_from()
    start = torch.full((1,), d0.start_id, dtype=torch.long, device=device)
    cur = torch.full((B, n), d0.start_id, dtype=torch.long, device=device)
    done = torch.zeros(B, n, dtype=torch.bool, device=device)
    active = torch.arange(B, device=device)  # original clip index of each batch row
    M = len(models)
    for t in range(L):
        alive = ~done  # [A, n]
        lp_models = []
        for dm, cross, mask, cache in zip(decs, crosses, masks, caches, strict=True):
            h = dm.forward(cur[:, :, None], t, cross, mask, cache)[:, :, 0]  # [A, n, D]
            lp_models.append(dm.logprobs(h[alive]))  # [R, V]
        lp = lp_models[0] if M == 1 else torch.stack(lp_models).mean(0)
        if t == 0 and d0.forced_bos is not None:
            nxt = torch.full((lp.shape[0],), d0.forced_bos, dtype=torch.long, device=device)
        elif t == L - 1 and d0.forced_eos is not None:
            nxt = torch.full((lp.shape[0],), d0.forced_eos, dtype=torch.long, device=device)
        else:
            if t < eos_from:
                lp = lp.clone()
                lp[:, d0.eos_id] = float("-inf")
            if cfg.no_repeat_ngram_size > 0 and t + 2 >= cfg.no_repeat_ngram_size:
                prefix = torch.cat([start.expand(lp.shape[0], 1), tokens[active, :, :t][alive]], dim=1)
                lp = ban_repeated_ngrams(lp, prefix, cfg.no_repeat_ngram_size)
            if greedy:
                nxt = lp.argmax(-1)
            else:
                ua = u[active][:, :, t][alive]
                nxt = nucleus_sample(lp, ua, cfg.top_p, cfg.temperature, cfg.topk_first, cfg.top_k)
        if t > 0 or not skip_bos:
            for m, lpm in enumerate(lp_models):
                sums[m, active] += torch.zeros_like(done, dtype=torch.float64).masked_scatter(
                    alive, lpm.gather(-1, nxt[:, None])[:, 0].double()
                )
            scored[active] += alive.long()
        step = torch.full_like(cur, d0.pad_id)
        step[alive] = nxt
        tokens[active, :, t] = step
        lengths[active] += alive.long()
        cur = step
        done = done | (step == d0.eos_id)
        finished = done.all(1)
        if finished.all():
            break
        if finished.any():  # drop clips whose samples have all ended
            keep = (~finished).nonzero().squeeze(1)
            rows = (keep[:, None] * n + torch.arange(n, device=device)).reshape(-1)
            active, cur, done = active[keep], cur[keep], done[keep]
            crosses = [[(k[keep], v[keep]) for k, v in cr] for cr in crosses]
            masks = [mk[keep] for mk in masks]
            caches = [[(k[rows], v[rows]) for k, v in ca] for ca in caches]
    model_scores = sums / scored.clamp(min=1)[None].double()
    return SampleBatch(tokens, lengths, model_scores.mean(0), model_scores)


@torch.no_grad()
def sample_candidates(
    models: EnCLAP | Sequence[EnCLAP],
    codes: torch.Tensor,
    codes_mask: torch.Tensor,
    clip_emb: torch.Tensor,
    cfg: SamplingConfig,
    seeds: Sequence[int] | None = None,
    greedy: bool = False,
) -> SampleBatch:
    """Encode once per model, then :func:`sample_from_encoder`. codes [B, N, L], codes_mask [B, L],
    clip_emb [B, clip_dim]; ``seeds`` default to ``clip_seed(cfg.seed, b)`` for b in range(B)."""
    models = _as_list(models)
    B = codes.shape[0]
    seeds = list(seeds) if seeds is not None else [clip_seed(cfg.seed, b) for b in range(B)]
    return sample_from_encoder(models, encode_batch(models, codes, codes_mask, clip_emb), cfg, seeds, greedy)


@torch.no_grad()
def score_sequences(
    model: EnCLAP,
    enc_hidden: torch.Tensor,
    enc_mask: torch.Tensor,
    sequences: Sequence[Sequence[Sequence[int]]],
    score_bos: bool = False,
) -> list[torch.Tensor]:
    """Teacher-forced length-normalised log-likelihood (temperature 1) of token sequences, one batched pass with
    shared cross-attention K/V: enc_hidden [B, S, D], enc_mask [B, S], sequences[b] = list of id lists (ids after
    the decoder start token; a trailing pad is ignored) -> per clip float64 [len(sequences[b])].
    The first token is not counted when the model forces it (``<s>``) unless ``score_bos`` (the sampler's decoder
    score); with ``score_bos`` it equals ``EnCLAP.sequence_logprobs`` on the same sequences."""
    dm = SharedKVDecoder(model)
    B = enc_hidden.shape[0]
    if len(sequences) != B:
        raise ValueError(f"{B} clips but {len(sequences)} sequence lists")
    n = max((len(s) for s in sequences), default=0)
    T = max((len(q) for s in sequences for q in s), default=0)
    if n == 0 or T == 0:
        return [torch.zeros(len(s), dtype=torch.float64) for s in sequences]
    device = enc_hidden.device
    labels = torch.full((B, n, T), dm.pad_id, dtype=torch.long, device=device)
    for b, seqs in enumerate(sequences):
        for j, q in enumerate(seqs):
            labels[b, j, : len(q)] = torch.as_tensor(list(q), dtype=torch.long)
    dec_in = torch.cat([torch.full((B, n, 1), dm.start_id, dtype=torch.long, device=device), labels[:, :, :-1]], 2)
    dec_in = dec_in.masked_fill(dec_in == dm.pad_id, dm.pad_id)
    h = dm.forward(dec_in, 0, dm.cross_kv(enc_hidden), enc_mask)  # [B, n, T, D]
    lp = dm.logprobs(h).gather(-1, labels[..., None])[..., 0].double()  # [B, n, T]
    keep = labels != dm.pad_id
    if dm.forced_bos is not None and not score_bos:
        keep[:, :, 0] &= labels[:, :, 0] != dm.forced_bos
    score = (lp * keep).sum(-1) / keep.sum(-1).clamp(min=1)
    return [score[b, : len(s)].cpu() for b, s in enumerate(sequences)]


# ------------------------------------------------------------------------------------------- candidates
@dataclass
class Candidate:
    """One distinct caption of a clip: how many samples produced it, the ids of its first sample and that
    sample's decoder score (per model in ``model_scores``)."""

    text: str
    count: int
    token_ids: list[int]
    decoder_score: float
    model_scores: list[float]


def merge_candidates(
    texts: Sequence[str],
    token_ids: Sequence[Sequence[int]],
    scores: Sequence[float],
    model_scores: Sequence[Sequence[float]] | None = None,
) -> list[Candidate]:
    """Merge samples with identical text (after stripping) keeping first-appearance order and counts; empty
    texts are dropped (logged). The first sample's ids and scores represent the merged candidate."""
    out: dict[str, Candidate] = {}
    dropped = 0
    for i, (t, ids, s) in enumerate(zip(texts, token_ids, scores, strict=True)):
        t = t.strip()
        if not t:
            dropped += 1
            continue
        if t in out:
            out[t].count += 1
        else:
            ms = list(model_scores[i]) if model_scores is not None else [float(s)]
            out[t] = Candidate(t, 1, [int(x) for x in ids], float(s), [float(x) for x in ms])
    if dropped:
        log.debug("%d empty sample(s) dropped", dropped)
    return list(out.values())


def batch_candidates(model: EnCLAP, batch: SampleBatch) -> list[list[Candidate]]:
    """Decode a SampleBatch with ``model``'s tokenizer and merge duplicates per clip."""
    B, n, _ = batch.tokens.shape
    out = []
    for b in range(B):
        ids = [batch.tokens[b, j, : int(batch.lengths[b, j])].tolist() for j in range(n)]
        texts = model.decode_text(batch.tokens[b])
        ms = batch.model_scores[:, b].T.tolist()  # [n, M]
        out.append(merge_candidates(texts, ids, batch.scores[b].tolist(), ms))
    return out


__all__ = [
    "Candidate",
    "SampleBatch",
    "SamplingConfig",
    "SharedKVDecoder",
    "ban_repeated_ngrams",
    "batch_candidates",
    "clip_seed",
    "clip_uniforms",
    "encode_batch",
    "merge_candidates",
    "nucleus_probs",
    "nucleus_sample",
    "sample_candidates",
    "sample_from_encoder",
    "score_sequences",
]
