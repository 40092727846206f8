"""Manifest building speed: header-only vs full decode check (1 and N threads), and synthetic corpus generation.

Run: python benchmarks/data_manifest.py [--clips 200] [--workers 2]
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
    print(f"corpus: {n} clips, {audio_s:.0f} s of 44.1 kHz audio")
    print(f"synth generation: {t_synth:.2f} s ({n / t_synth:.0f} clips/s, {audio_s / t_synth:.0f}x real time)")
    print(f"manifest, header only:         {t_header:.3f} s ({n / t_header:.0f} clips/s)")
    print(f"manifest, decode check:        {t_decode:.3f} s ({n / t_decode:.0f} clips/s)")
    print(f"manifest, decode, {args.workers} threads:   {t_decode_n:.3f} s ({n / t_decode_n:.0f} clips/s)")
    print(f"ratio decode / header-only: {t_decode / t_header:.2f}")
    print(f"ratio decode 1 thread / {args.workers} threads: {t_decode / t_decode_n:.2f}")


if __name__ == "__main__":
    main()
