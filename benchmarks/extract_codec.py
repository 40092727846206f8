"""Codec extraction speed and memory, measured side by side.

1. Throughput (audio-seconds per wall-second) of ``dcase extract codec`` (length-bucketed batches of hop-aligned
   windows, loading in a background thread, sharded store) against a plain per-file loop (load, encode the clip
   with ``DacModel.encode``, save .npy) on the same files and the same full-size 24 kHz DAC (random weights).
   The two paths alternate, ``--reps`` times, so load drift on a shared machine hits both alike.
2. Peak RSS of a process encoding one long file vs one short file (separate subprocesses).

    python benchmarks/extract_codec.py                       # default (~10 min on 2 quiet cores)
    python benchmarks/extract_codec.py --n-files 4 --long-minutes 2 --short-minutes 0.5 --codec tiny   # quick
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_files(d: Path, durations: list[float], sr: int = 44100) -> list[tuple[Path, float]]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    out = []
    for i, sec in enumerate(durations):
        n = int(sec * sr)
        t = np.arange(n) / sr
        x = 0.1 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t)
        p = d / f"clip{i:03d}.wav"
        sf.write(p, x.astype(np.float32), sr, subtype="PCM_16")
        out.append((p, sec))
    return out


def write_manifest_for(files: list[tuple[Path, float]], path: Path, sr: int = 44100) -> Path:
    from dcase.data.manifest import ManifestRow, write_manifest

    rows = [ManifestRow(p.name, str(p), "development", "synth", sec, sr, ["x"]) for p, sec in files]
    write_manifest(rows, path)
    return path


def plain_loop(files: list[tuple[Path, float]], model, out: Path) -> float:
    """The naive baseline: one file at a time, whole clip through DacModel.encode, one .npy per clip."""
    import torch

    from dcase.data.audio import load_audio

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for p, _ in files:
        x, _ = load_audio(p, 24000)
        pad = (-len(x)) % 320
        x = np.pad(x, (0, pad))
        with torch.inference_mode():
            codes = model.encode(torch.from_numpy(x)[None, None]).audio_codes[0]
        np.save(out / (p.stem + ".npy"), codes.to(torch.int16).numpy())
    return time.perf_counter() - t0


def pipeline(manifest: Path, codec: str, out: Path, batch_size: int, chunk_seconds: float, workers: int) -> float:
    from dcase.features.extract import extract_codec

    t0 = time.perf_counter()
    extract_codec(
        manifest, out, codec, batch_size=batch_size, chunk_seconds=chunk_seconds, progress=False, workers=workers
    )
    return time.perf_counter() - t0


def rss_child(args: argparse.Namespace) -> None:
    """Subprocess: encode one file through the extraction path, print peak RSS in MB."""
    from dcase.features.extract import extract_codec

    with tempfile.TemporaryDirectory() as td:
        extract_codec(
            args.rss_child,
            Path(td) / "s",
            args.codec,
            batch_size=args.batch_size,
            chunk_seconds=args.chunk_seconds,
            progress=False,
            workers=args.workers,
        )
    print(f"RSS_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")


def measure_rss(minutes: float, args: argparse.Namespace, work: Path) -> float:
    d = work / f"rss_{minutes:g}min"
    d.mkdir()
    files = make_files(d, [minutes * 60.0])
    m = write_manifest_for(files, d / "m.parquet")
    cmd = [
        sys.executable,
        __file__,
        "--rss-child",
        str(m),
        "--codec",
        args.codec,
        "--batch-size",
        str(args.batch_size),
        "--chunk-seconds",
        str(args.chunk_seconds),
        "--workers",
        str(args.workers),
    ]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RSS_MB")][-1].split()
    print(f"  {minutes:g}-minute file: peak RSS {float(line[1]):.0f} MB ({time.perf_counter() - t0:.0f} s)")
    return float(line[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", default="full", help="tiny | full | DacModel dir (default: full 24 kHz, random)")
    ap.add_argument("--n-files", type=int, default=8)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--chunk-seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2, help="extraction path: batches at once, 1 thread each")
    ap.add_argument("--long-minutes", type=float, default=10.0)
    ap.add_argument("--short-minutes", type=float, default=1.0)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args)
        return

    import torch

    from dcase.features.codec import load_codec

    print(f"torch threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}, codec: {args.codec}")
    work = Path(tempfile.mkdtemp(prefix="bench_codec_"))
    try:
        durations = list(np.linspace(args.min_seconds, args.max_seconds, args.n_files))
        rng = np.random.default_rng(1)
        rng.shuffle(durations)
        files = make_files(work, durations)
        manifest = write_manifest_for(files, work / "m.parquet")
        total = sum(durations)
        model = load_codec(args.codec).model  # same seed -> same weights as the pipeline's
        print(f"throughput: {args.n_files} files, {total:.1f} s of 44.1 kHz audio, {args.reps} rep(s)")
        tp, tb = 0.0, 0.0
        for r in range(args.reps):
            a = plain_loop(files, model, work / f"plain{r}")
            b = pipeline(manifest, args.codec, work / f"store{r}", args.batch_size, args.chunk_seconds, args.workers)
            tp, tb = tp + a, tb + b
            print(
                f"  rep {r}: plain loop {total / a:.2f} audio-s/s, extraction {total / b:.2f} audio-s/s, "
                f"ratio {a / b:.2f}x"
            )
        print(
            f"THROUGHPUT plain {args.reps * total / tp:.2f} audio-s/s | extraction {args.reps * total / tb:.2f} "
            f"audio-s/s | ratio {tp / tb:.2f}x"
        )
        # the two paths must agree on the codes
        from dcase.features.store import FeatureStore

        store = FeatureStore.open(work / "store0")
        pairs = [(store[p.name], np.load(work / "plain0" / (p.stem + ".npy"))) for p, _ in files]
        same = sum(np.array_equal(a, b) for a, b in pairs)
        agree = sum(int((a == b).sum()) for a, b in pairs) / sum(a.size for a, _ in pairs)
        print(
            f"codes identical for {same}/{len(files)} files; {100 * agree:.3f}% of code entries agree "
            f"(workers={args.workers}: one torch thread per batch vs the loop's {torch.get_num_threads()})"
        )
        if not args.skip_rss:
            print("peak RSS (separate subprocesses):")
            long_rss = measure_rss(args.long_minutes, args, work)
            short_rss = measure_rss(args.short_minutes, args, work)
            print(f"RSS peak {args.long_minutes:g} min / {args.short_minutes:g} min: {long_rss / short_rss:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
