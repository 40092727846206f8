"""The demo's numbers over several seeds: mean and spread of every system's development-testing scores, and wall time.

Each seed is a whole `dcase demo` (its own synthetic corpus and its own training), run one after the other in
separate processes; a seed already run (``<out>/seed<k>/scores.json``) is reused. The README's demo table is this
script's output.

Run (about 5 minutes per seed on 2 CPU cores):

    HF_HUB_OFFLINE=1 python benchmarks/demo_seeds.py --seeds 0 1 2 --out demo_seeds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("cider_d", "meteor", "rouge_l", "bleu_4")


def run_seed(seed: int, out: Path) -> dict:
    scores = out / "scores.json"
    if not scores.is_file():
        t0 = time.perf_counter()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        res = subprocess.run(
            [sys.executable, "-m", "dcase.cli", "demo", "--out", str(out), "--set", f"seed={seed}"],
            env=env,
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            sys.stderr.write(res.stderr[-4000:])
            raise SystemExit(f"seed {seed} failed")
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return json.loads(scores.read_text())


def fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("demo_seeds"))
    args = ap.parse_args()
    runs = {s: run_seed(s, args.out / f"seed{s}") for s in args.seeds}
    first = runs[args.seeds[0]]
    print(
        f"Seeds {args.seeds}: mean ± standard deviation over the seeds (development-testing split "
        f"{first['devtest_split']}, the synthetic corpus's held-out clips).\n"
    )
    print("| Task 6 system | " + " | ".join(METRICS) + " |")
    print("|---|" + "---:|" * len(METRICS))
    for name in first["task6"]:
        cells = [fmt([runs[s]["task6"][name][m] for s in args.seeds]) for m in METRICS]
        print(f"| {name} {first['task6'][name].get('system', '')} | " + " | ".join(cells) + " |")
    print("\n| Task 8 system | map_at_10 | r_at_1 | r_at_10 |\n|---|---:|---:|---:|")
    for name in first["task8"]:
        cells = [
            fmt([runs[s]["task8"][name]["scores"][m] for s in args.seeds]) for m in ("map_at_10", "r_at_1", "r_at_10")
        ]
        print(f"| {name} {first['task8'][name].get('system', '')} | " + " | ".join(cells) + " |")
    walls = [runs[s]["wall_time_s_this_run"] for s in args.seeds]
    print(f"\nWall time per demo: {fmt(walls)} s (the runs of this invocation; a reused seed keeps its first time).")


if __name__ == "__main__":
    main()
