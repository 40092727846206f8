"""Shared helpers of the decoding tests: tiny captioners that emit words, tiny retrievers, tiny corpora."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dcase.models.enclap import EnCLAP, EnCLAPConfig, build_enclap

CAPS = [
    "a dog barks loudly",
    "rain falls on the metal roof",
    "a bird sings while a car passes by",
    "people talk in a busy room",
    "water runs from a tap",
    "a door creaks and slams shut",
]


def word_tokens(tok) -> list[int]:
    """Ids of word tokens with the leading-space marker (" dog", " a", ...) of a caption tokenizer."""
    out = []
    for t, i in tok.get_vocab().items():
        w = t[1:]
        if t.startswith("\u0120") and w.isalpha() and w.isascii() and (len(w) >= 3 or w == "a"):
            out.append(i)
    return sorted(out)


def tiny_captioner(seed: int = 0, eos_bias: float = 1.0, **overrides) -> EnCLAP:
    """A random tiny EnCLAP whose output layer only favours whole words and </s> (readable captions)."""
    torch.manual_seed(seed)
    cfg = EnCLAPConfig.tiny(vocab_size=400, **overrides)
    m = build_enclap(cfg, CAPS * 4).eval()
    bias = torch.full_like(m.bart.final_logits_bias, -30.0)
    bias[0, word_tokens(m.tokenizer)] = 0.0
    bias[0, m.bart.config.eos_token_id] = eos_bias
    bias[0, m.bart.config.bos_token_id] = -3.0  # forced first anyway; never chosen later
    with torch.no_grad():
        m.bart.final_logits_bias.copy_(bias)
    return m


def tiny_inputs(model: EnCLAP, B: int = 3, L: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    codes = torch.randint(0, c.codebook_size, (B, c.n_codebooks, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    if B > 1:
        mask[1, L // 2 :] = False
    emb = torch.randn(B, c.clip_dim, generator=g)
    return codes, mask, emb


def write_tone(path: Path, freq: float, seconds: float = 0.5, sr: int = 24000) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


def one_thread():
    """Generator body of an autouse fixture: tiny models run fastest on one thread (no sync on a busy host)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
