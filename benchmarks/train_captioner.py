"""EnCLAP training-step speed and memory on CPU: MCM heads on masked frames only vs on every frame.

BART-base size (random weights: d_model 768, 6 + 6 layers, 12 heads, FFN 3072, vocabulary 50265), 32 DAC codebooks
of 1024 codes, batch 8 x 750 codec frames (10 s), 20-token captions, MCM on (15 %, spans of 10), AdamW step
included. Each variant runs in its own process (so its peak RSS is its own); the matmul peak is measured in the
same run. Model FLOPs per step are counted by ``torch.utils.flop_counter.FlopCounterMode`` during the untimed
warm-up step (forward + backward matmuls and attention; the optimiser, embeddings and elementwise ops are not
counted), so achieved GFLOP/s = counted FLOPs / measured step time. ``masked_bf16`` adds CPU bf16 autocast
(``train.mixed_precision=bf16``); its GFLOP/s is compared with the fp32 matmul peak too.

    python benchmarks/train_captioner.py            # ~5 minutes on 2 quiet cores
    python benchmarks/train_captioner.py --steps 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = ("masked", "all", "masked_bf16")


def matmul_peak(threads: int, n: int = 2048, seconds: float = 3.0) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
    return 2 * n**3 * k / (time.perf_counter() - t0) / 1e9


def all_position_forward(model, codes, mask, clip, labels):
    """The reference implementation's MCM: every codec frame scored by every head, unmasked frames ignored by the
    loss (same loss as the model's masked-only heads: tests/test_mcm.py). Returns the total loss."""
    from transformers.models.bart.modeling_bart import shift_tokens_right

    from dcase.losses import IGNORE_INDEX, caption_loss, mcm_loss
    from dcase.models.enclap import FIRST_CODE_SLOT, sample_span_mask

    cfg, bc = model.config, model.bart.config
    codes = model._checked_codes(codes, mask)
    span = sample_span_mask(mask.long().sum(1), cfg.n_codebooks, codes.shape[2], cfg.mcm_rate, cfg.mcm_span)
    enc_out, enc_mask = model.encode(codes.masked_fill(span, cfg.mask_code), mask, clip)
    dec_in = shift_tokens_right(labels, bc.pad_token_id, bc.decoder_start_token_id)
    logits = model.bart(encoder_outputs=enc_out, attention_mask=enc_mask, decoder_input_ids=dec_in).logits
    hidden = enc_out.last_hidden_state[:, FIRST_CODE_SLOT : FIRST_CODE_SLOT + codes.shape[2]]
    heads = [head(hidden).flatten(0, 1) for head in model.mcm_heads]
    targets = [codes[:, n].masked_fill(~span[:, n], IGNORE_INDEX).flatten() for n in range(cfg.n_codebooks)]
    return caption_loss(logits, labels, cfg.label_smoothing) + cfg.mcm_lambda * mcm_loss(heads, targets)[0]


def run_variant(variant: str, steps: int, threads: int, batch: int, frames: int, tokens: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dcase.models.enclap import EnCLAP, EnCLAPConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = EnCLAPConfig(
        vocab_size=50265,
        d_model=768,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        max_position_embeddings=1024,
        n_codebooks=32,
        codebook_size=1024,
        clip_dim=768,
        max_codec_positions=1022,
    )
    model = EnCLAP(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    codes = torch.randint(0, 1024, (batch, 32, frames))
    mask = torch.ones(batch, frames, dtype=torch.bool)
    clip = torch.randn(batch, 768)
    labels = torch.randint(5, 50265, (batch, tokens))
    all_pos = variant == "all"
    forward = all_position_forward if all_pos else (lambda m, c, k, e, y: m(c, k, e, labels=y, mcm=True).loss)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.endswith("bf16"))

    def step() -> float:
        with autocast:
            loss = forward(model, codes, mask, clip, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    with FlopCounterMode(display=False) as fc:  # the untimed warm-up step (allocator, optimiser state) counts FLOPs
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "variant": variant,
        "step_s": dt,
        "samples_per_s": batch / dt,
        "peak_rss_gib": peak_kib / 2**20,
        "flops_per_step": fc.get_total_flops(),
        "gflops_per_s": fc.get_total_flops() / dt / 1e9,
        "params_m": model.num_parameters() / 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=750)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.variant:
        print(json.dumps(run_variant(a.variant, a.steps, a.threads, a.batch, a.frames, a.tokens)))
        return
    peak = matmul_peak(a.threads)
    res = {}
    for v in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            v,
            *sum(([f"--{k}", str(getattr(a, k))] for k in ("steps", "threads", "batch", "frames", "tokens")), []),
        ]
        out = subprocess.run(
            cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)}
        )
        res[v] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"matmul peak (fp32 2048^2, {a.threads} threads): {peak:.1f} GFLOP/s")
    print(
        f"BART-base EnCLAP, batch {a.batch} x {a.frames} frames x 32 codebooks, {a.tokens}-token captions, "
        f"MCM on, {a.steps} timed steps"
    )
    for v in VARIANTS:
        r = res[v]
        print(
            f"  MCM heads on {v:6s} frames: {r['samples_per_s']:.3f} samples/s ({r['step_s']:.1f} s/step), "
            f"peak RSS {r['peak_rss_gib']:.2f} GiB, {r['flops_per_step'] / 1e12:.2f} TFLOP/step, "
            f"{r['gflops_per_s']:.1f} GFLOP/s = {r['gflops_per_s'] / peak:.0%} of matmul peak"
        )
    m, al = res["masked"], res["all"]
    print(
        f"masked vs all positions: speed x{m['samples_per_s'] / al['samples_per_s']:.2f}, "
        f"peak memory {m['peak_rss_gib'] / al['peak_rss_gib']:.0%}, "
        f"FLOPs {m['flops_per_step'] / al['flops_per_step']:.0%}"
    )
    ref_sps, ref_gib, quiet_peak = 0.23, 13.5, 185.0
    print(
        f"vs the reference implementation (all-position MCM heads; 0.23 samples/s, 13.5 GiB on this machine kind "
        f"when quiet, fp32 matmul peak ~{quiet_peak:.0f} GFLOP/s): peak memory {m['peak_rss_gib'] / ref_gib:.0%}; "
        f"speed x{m['samples_per_s'] / ref_sps:.2f} raw at today's matmul peak {peak:.0f} GFLOP/s "
        f"(x{m['samples_per_s'] * quiet_peak / peak / ref_sps:.2f} if scaled to a quiet host: an estimate)"
    )


if __name__ == "__main__":
    main()
