"""Manifest building speed: header-only vs full decode check (1 and N threads), and synthetic corpus generation.

Run: python benchmarks/data_manifest.py [--clips 200] [--workers 2] [--codec-clips 40]
(--codec-clips N also times the "tiny" random-weight DAC on N synth clips, to size the demo corpus.)
Prints absolute times and ratios measured side by side in one run (timings drift between runs).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dcase.data.clotho import read_clotho
from dcase.data.synth import make_synth_corpus


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--codec-clips", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        t = time.perf_counter()
        make_synth_corpus(root, args.clips, seed=0)
        t_synth = time.perf_counter() - t
        rows = read_clotho(root, decode_check=False)
        audio_s = sum(r.duration_s for r in rows)
        n = len(rows)
        t_header = _best(lambda: read_clotho(root, decode_check=False))
        t_decode = _best(lambda: read_clotho(root, decode_check=True))
        t_decode_n = _best(lambda: read_clotho(root, decode_check=True, workers=args.workers))
        codec_rt = None
        if args.codec_clips:
            import torch

            from dcase.data.audio import load_audio
            from dcase.features.codec import load_codec

            torch.set_num_threads(2)
            codec = load_codec("tiny")
            waves = [load_audio(r.audio_path, codec.sample_rate)[0] for r in rows[: args.codec_clips]]
            sec = sum(len(w) for w in waves) / codec.sample_rate
            t = time.perf_counter()
            codec.encode_many(waves)
            codec_rt = sec / (time.perf_counter() - t)
    print(f"corpus: {n} clips, {audio_s:.0f} s of 44.1 kHz audio")
    print(f"synth generation: {t_synth:.2f} s ({n / t_synth:.0f} clips/s, {audio_s / t_synth:.0f}x real time)")
    print(f"manifest, header only:         {t_header:.3f} s ({n / t_header:.0f} clips/s)")
    print(f"manifest, decode check:        {t_decode:.3f} s ({n / t_decode:.0f} clips/s)")
    print(f"manifest, decode, {args.workers} threads:   {t_decode_n:.3f} s ({n / t_decode_n:.0f} clips/s)")
    print(f"ratio decode / header-only: {t_decode / t_header:.2f}")
    print(f"ratio decode 1 thread / {args.workers} threads: {t_decode / t_decode_n:.2f}")
    if codec_rt is not None:
        print(
            f"tiny DAC on {args.codec_clips} synth clips: {codec_rt:.1f}x real time -> "
            f"{audio_s / codec_rt:.0f} s for this corpus"
        )


if __name__ == "__main__":
    main()
