"""Analytic GPU memory of every training step of the dcase2024 profile, at its configured batch size per GPU.

For each training config (the report's six retrievers, pretraining and finetuning, and the EnCLAP-large captioner):

- **parameters**: counted on the real-size model (random weights);
- **weights + gradients + AdamW**: 16 bytes per trainable parameter (fp32 master weights 4, gradients 4, Adam's two
  moments 8; bf16 autocast keeps fp32 weights);
- **activations**: the elements of every leaf module's output in one forward pass of ONE training item at the
  config's longest input (captioner: 1022 codec frames + a 64-token caption; retriever: 10 s of audio + 64 text
  tokens), measured on the CPU with forward hooks, times the batch size, times 2 bytes (bf16). Leaf outputs are
  roughly what autograd keeps for the backward pass; attention score matrices are not counted (SDPA/flash attention
  does not store them);
- a fixed 1.5 GB for the CUDA context, the allocator's fragmentation and workspaces.

It prints, per config, the total and whether it fits a 24, 40 and 80 GB GPU. These are estimates, not measurements on
a GPU (none here); `train.batch_size`, `gradient_checkpointing` (captioner) and more processes are the levers.

Run: HF_HUB_OFFLINE=1 python benchmarks/gpu_memory.py
"""

from __future__ import annotations

import dataclasses
import sys

import torch

OVERHEAD_GB = 1.5
BYTES_STATE = 16  # fp32 weights + fp32 grads + Adam m + v
BYTES_ACT = 2  # bf16 activations
GPUS = (24, 40, 80)


def leaf_output_elements(model: torch.nn.Module, run) -> int:  # noqa: ANN001
    total = [0]

    def hook(_m, _i, out) -> None:  # noqa: ANN001
        outs = out if isinstance(out, tuple | list) else (out,)
        total[0] += sum(o.numel() for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def captioner(config_name: str) -> tuple[int, int, int]:
    from dcase.config import load_config, resolve_config_path
    from dcase.models.enclap import EnCLAP
    from dcase.stages.captioner import CaptionerStageConfig

    cfg = load_config(CaptionerStageConfig, resolve_config_path(config_name))
    mc = dataclasses.replace(cfg.model, bart_name_or_path=None, n_codebooks=32, codebook_size=1024, clip_dim=1024)
    torch.manual_seed(0)
    model = EnCLAP(mc).eval()
    L, T = mc.max_codec_positions, mc.max_caption_tokens
    codes = torch.randint(0, mc.codebook_size, (1, mc.n_codebooks, L))
    mask = torch.ones(1, L, dtype=torch.bool)
    labels = torch.randint(5, 1000, (1, T))
    acts = leaf_output_elements(
        model, lambda: model(codes, mask, torch.randn(1, mc.clip_dim), labels=labels, mcm=cfg.mcm)
    )
    return sum(p.numel() for p in model.parameters()), acts, cfg.train.batch_size


def retriever(config_name: str) -> tuple[int, int, int]:
    from dcase.config import load_config, resolve_config_path
    from dcase.models.retriever import Retriever, random_text_tower, resolve_pooling
    from dcase.stages.retriever import RetrieverStageConfig

    cfg = load_config(RetrieverStageConfig, resolve_config_path(config_name))
    torch.manual_seed(0)
    text, tok = random_text_tower(cfg.model.text.name_or_path)
    mcfg = dataclasses.replace(
        cfg.model, text=dataclasses.replace(cfg.model.text, pooling=resolve_pooling(cfg.model.text))
    )
    model = Retriever(mcfg, text, tok).eval()
    n = int(cfg.data.max_seconds * model.sample_rate)
    ids = torch.randint(5, 90, (1, cfg.model.text.max_length))
    am = torch.ones_like(ids)

    def run() -> None:
        model.encode_audio(torch.randn(1, n), torch.tensor([n]))
        model.encode_text(ids, am)

    return sum(p.numel() for p in model.parameters()), leaf_output_elements(model, run), cfg.train.batch_size


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    configs = [
        ("captioner pretrain (EnCLAP-large, MCM)", captioner, "dcase2024/captioner_pretrain.yaml"),
        ("captioner finetune", captioner, "dcase2024/captioner_finetune.yaml"),
    ]
    for enc in ("bge-base", "bert-base", "roberta-base", "bge-large", "bert-large", "roberta-large"):
        configs.append((f"retriever {enc} (pretrain, finetune)", retriever, f"dcase2024/retriever_{enc}_pretrain.yaml"))
    for name, fn, cfg in configs:
        params, acts, batch = fn(cfg)
        state = params * BYTES_STATE / 1e9
        act = acts * batch * BYTES_ACT / 1e9
        total = state + act + OVERHEAD_GB
        fits = " / ".join("yes" if total <= g else "no" for g in GPUS)
        rows.append((name, params / 1e6, batch, state, act, total, fits))
        print(f"{name}: {params / 1e6:.1f} M params, batch {batch}: {total:.1f} GB", file=sys.stderr, flush=True)
    print(
        "| training step | parameters (M) | batch per GPU | weights+grads+AdamW (GB) | activations (GB) | total (GB) "
        "| fits 24 / 40 / 80 GB |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, p, b, s, a, t, f in rows:
        print(f"| {name} | {p:.1f} | {b} | {s:.1f} | {a:.1f} | {t:.1f} | {f} |")


if __name__ == "__main__":
    main()
