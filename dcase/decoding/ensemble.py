"""Captioner ensembles for candidate generation (EnCLAP DCASE2024 technical report §3.3, Task 6 submissions 3-4:
"an ensemble of 7 modified EnCLAP models [and 2 soup models]"). The report does not say how the models were
combined; two ways are provided:

- ``token``: the models decode in lock step and sample from the mean of their per-step log-probabilities
  (:func:`dcase.decoding.sample.sample_from_encoder` with several models). Needs one shared tokenizer.
- ``pool``: every model samples its own candidates; the candidates are pooled per clip (identical texts merged,
  counts added) and reranked together.

In both modes the decoder score of a candidate is the mean over the models of its length-normalised
log-likelihood under each model (teacher-forced at temperature 1; the forced ``<s>`` counted only with
``sampling.score_bos``), so scores are comparable across candidates. The logits processing of
``SamplingConfig`` (``top_k``, ``no_repeat_ngram_size``, ``min_length``) applies to every model's sampling, and
``no_repeat_ngram_size`` / ``min_length`` to beam search too (as the official EnCLAP's beam search and Wu et al.'s
samplers). An ensemble of one is exactly single-model decoding (same seeds, same code path).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from dcase.decoding.sample import (
    Candidate,
    SamplingConfig,
    batch_candidates,
    clip_seed,
    merge_candidates,
    sample_from_encoder,
    score_sequences,
)
from dcase.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from dcase.models.enclap import EnCLAP

log = logging.getLogger(__name__)

ENSEMBLE_MODES = ("token", "pool")
_PROBES = (
    "A dog barks while rain falls on a metal roof.",
    "Birds chirp; cars pass by, people talk!",
    "an engine idles and someone hammers",
)


class TokenizerMismatchError(InputError):
    """Ensembled captioners do not share a tokenizer."""


def tokenizer_signature(tok: PreTrainedTokenizerBase | None) -> dict[str, Any]:
    """What two tokenizers must share to be interchangeable: vocabulary, special token ids, probe encodings."""
    if tok is None:
        raise TokenizerMismatchError("a captioner has no tokenizer")
    return {
        "vocab": dict(tok.get_vocab()),
        "special": {
            k: tok.convert_tokens_to_ids(v) for k, v in sorted(tok.special_tokens_map.items()) if isinstance(v, str)
        },
        "probes": [list(tok(p)["input_ids"]) for p in _PROBES],
    }


def check_same_tokenizer(models: Sequence[EnCLAP], names: Sequence[str] | None = None) -> None:
    """Raise :class:`TokenizerMismatchError` naming the first captioner whose tokenizer differs from the first's
    (vocabulary size, differing entries, special ids or the encoding of probe sentences)."""
    names = list(names) if names is not None else [f"captioner {i}" for i in range(len(models))]
    ref = tokenizer_signature(models[0].tokenizer)
    for m, name in zip(models[1:], names[1:], strict=True):
        sig = tokenizer_signature(m.tokenizer)
        if sig["vocab"] != ref["vocab"]:
            a, b = ref["vocab"], sig["vocab"]
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            ex = ", ".join(f"{k!r}: {a.get(k)} vs {b.get(k)}" for k in diff[:3])
            raise TokenizerMismatchError(
                f"{name}'s tokenizer differs from {names[0]}'s: vocabularies of {len(b)} vs {len(a)} tokens, "
                f"{len(diff)} entries differ (e.g. {ex}); token-level ensembles need one tokenizer"
            )
        for key in ("special", "probes"):
            if sig[key] != ref[key]:
                raise TokenizerMismatchError(
                    f"{name}'s tokenizer differs from {names[0]}'s in its {key} ({sig[key]} vs {ref[key]}); "
                    "token-level ensembles need one tokenizer"
                )
    for m, name in zip(models[1:], names[1:], strict=True):
        if m.bart.config.vocab_size != models[0].bart.config.vocab_size:
            raise TokenizerMismatchError(
                f"{name} has a vocabulary of {m.bart.config.vocab_size} logits, "
                f"{names[0]} of {models[0].bart.config.vocab_size}"
            )


def model_seeds(seeds: Sequence[int], m: int) -> list[int]:
    """Clip seeds of the m-th model of a pool (model 0 keeps the clip seeds, so a pool of one = one model)."""
    return list(seeds) if m == 0 else [clip_seed(s, f"model{m}") for s in seeds]


@torch.no_grad()
def pool_from_encoder(
    models: Sequence[EnCLAP],
    encoded: Sequence[tuple[torch.Tensor, torch.Tensor]],
    cfg: SamplingConfig,
    seeds: Sequence[int],
    greedy: bool = False,
    beams: int = 0,
) -> list[list[Candidate]]:
    """Candidate pooling: each model samples (or decodes greedily / with ``beams`` > 0 beams) its own candidates;
    per clip the texts are merged (counts added, first appearance kept in model order). A candidate's decoder
    score is the mean over models of its length-normalised log-likelihood: a model's score of its own sample is
    taken from sampling, the others are computed teacher-forced (:func:`score_sequences`)."""
    per_model: list[list[list[Candidate]]] = []
    for m, (model, enc) in enumerate(zip(models, encoded, strict=True)):
        if beams > 0:
            per_model.append(beam_candidates(model, enc, beams, cfg))
        else:
            sb = sample_from_encoder([model], [enc], cfg, model_seeds(seeds, m), greedy=greedy)
            per_model.append(batch_candidates(model, sb))
    B = len(seeds)
    out: list[list[Candidate]] = []
    owners: list[list[int]] = []
    for b in range(B):
        merged: dict[str, Candidate] = {}
        owner: dict[str, int] = {}
        for m in range(len(models)):
            for c in per_model[m][b]:
                if c.text in merged:
                    merged[c.text].count += c.count
                else:
                    merged[c.text] = Candidate(
                        c.text, c.count, c.token_ids, c.decoder_score, [float("nan")] * len(models)
                    )
                    merged[c.text].model_scores[m] = c.model_scores[0]
                    owner[c.text] = m
        out.append(list(merged.values()))
        owners.append([owner[c.text] for c in out[-1]])
    for m, (model, (hid, mask)) in enumerate(zip(models, encoded, strict=True)):
        todo = [[c.token_ids for c, o in zip(out[b], owners[b], strict=True) if o != m] for b in range(B)]
        if not any(todo):
            continue
        scores = score_sequences(model, hid, mask, todo, score_bos=cfg.score_bos)
        for b in range(B):
            it = iter(scores[b].tolist())
            for c, o in zip(out[b], owners[b], strict=True):
                if o != m:
                    c.model_scores[m] = next(it)
    for cands in out:
        for c in cands:
            c.decoder_score = float(sum(c.model_scores) / len(c.model_scores))
    return out


@torch.no_grad()
def beam_candidates(
    model: EnCLAP,
    encoded: tuple[torch.Tensor, torch.Tensor],
    beams: int,
    cfg: SamplingConfig,
) -> list[list[Candidate]]:
    """One beam-search caption per clip (Hugging Face ``generate``; the captioner's generation config forces
    ``<s>`` and, by default, ``</s>`` at the length limit), scored like sampled candidates (``score_sequences``).
    Of ``cfg`` it uses the length limits, ``no_repeat_ngram_size`` and ``score_bos``; ``min_length`` (decoder length
    with the start token) is passed as the equivalent ``min_new_tokens`` (HF ignores ``min_length`` when both are
    given), ``cfg.eos_allowed_from()``."""
    hid, mask = encoded
    ids = model.generate_from_encoder(
        hid,
        mask,
        num_beams=beams,
        do_sample=False,
        max_new_tokens=cfg.max_new_tokens,
        min_new_tokens=cfg.eos_allowed_from(),
        no_repeat_ngram_size=cfg.no_repeat_ngram_size,
    )
    labels = ids[:, 1:]
    pad = model.bart.config.pad_token_id
    texts = model.decode_text(labels)
    seqs = []
    for b in range(hid.shape[0]):
        seq = [int(x) for x in labels[b].tolist()]
        while seq and seq[-1] == pad:
            seq.pop()
        seqs.append(seq)
    scores = score_sequences(model, hid, mask, [[q] for q in seqs], score_bos=cfg.score_bos)
    return [merge_candidates([texts[b]], [seqs[b]], [float(scores[b][0])]) for b in range(hid.shape[0])]


__all__ = [
    "ENSEMBLE_MODES",
    "TokenizerMismatchError",
    "beam_candidates",
    "check_same_tokenizer",
    "model_seeds",
    "pool_from_encoder",
    "tokenizer_signature",
]
