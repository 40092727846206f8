"""Wall time and peak memory of every step of a pipeline profile, each step in its own process.

The profile runs step by step (``dcase pipeline run --only STEP``, in plan order), so each step's peak resident set
size is its own (read from ``getrusage`` in that process). Resume makes it safe to stop and restart: done steps are
skipped and keep their recorded numbers. A Markdown table goes to stdout and the numbers to ``<out>/steps.json``.

Run (the full-size shapes with random weights, on the 12 real clips arranged in the official layouts):

    HF_HUB_OFFLINE=1 python benchmarks/pipeline_steps.py --profile full-random --out /tmp/full-random

``--data-root D`` uses an existing data root instead of building one from ../shared/clotho-mini.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WRAPPER = """
import json, resource, runpy, sys, atexit
out = sys.argv.pop(1)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
atexit.register(lambda: open(out, "w").write(json.dumps({"max_rss_kb": peak()})))
sys.argv = ["dcase", *sys.argv[1:]]
runpy.run_module("dcase.cli", run_name="__main__")
"""


def step_names(profile: str, data_root: Path, out: Path) -> list[str]:
    from dcase.stages.pipeline import PipelineOptions, build_pipeline
    from dcase.stages.profiles import load_profile

    pipe = build_pipeline(load_profile(profile), PipelineOptions(out=out, data_root=data_root))
    return [s.name for s in pipe.steps]


def prune(run: Path) -> None:
    """Free disk between steps (not part of any measurement): the resume states of finished training runs, and
    their ``last/`` copy when the best checkpoint is another one. At full size they take ~8 GB per captioner run."""
    import shutil

    for state in [*run.rglob("state"), *run.rglob("state.old")]:
        if state.is_dir() and (state.parent / "best.json").is_file():
            shutil.rmtree(state)
    for last in run.rglob("last"):
        best = last.parent / "best"
        if last.is_dir() and best.is_symlink() and best.resolve() != last.resolve():
            shutil.rmtree(last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="full-random")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    args = ap.parse_args()
    out = args.out.resolve()
    data = args.data_root
    if data is None:
        sys.path.insert(0, str(REPO / "tests"))
        from _official_layouts import build_data_root

        data = out / "data"
        if not (data / "CLOTHO_v2.1").is_dir():
            build_data_root(args.shared / "clotho-mini", data)
    run = out / "run"
    record_path = out / "steps.json"
    records = json.loads(record_path.read_text()) if record_path.is_file() else {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    names = step_names(args.profile, data, run)
    for name in names:
        if name in records:
            continue
        rss_file = out / "rss.json"
        cmd = [
            sys.executable,
            "-c",
            WRAPPER,
            str(rss_file),
            "pipeline",
            "run",
            "--profile",
            args.profile,
            "--data-root",
            str(data),
            "--out",
            str(run),
            "--only",
            name,
        ]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            sys.stderr.write(res.stderr[-5000:])
            raise SystemExit(f"step {name} failed (exit {res.returncode})")
        rss = json.loads(rss_file.read_text())["max_rss_kb"]
        prune(run)
        records[name] = {"wall_s": round(wall, 1), "peak_rss_gb": round(rss / 1024**2, 2)}
        record_path.write_text(json.dumps(records, indent=1))
        print(f"{name}: {wall:.1f} s, {rss / 1024**2:.2f} GB", file=sys.stderr, flush=True)
    total = sum(r["wall_s"] for r in records.values())
    print("| step | wall time (s) | peak RSS (GB) |\n|---|---:|---:|")
    for name in names:
        r = records[name]
        print(f"| {name} | {r['wall_s']} | {r['peak_rss_gb']} |")
    print(f"| **total** | **{total:.0f}** | **{max(r['peak_rss_gb'] for r in records.values())}** (max) |")


if __name__ == "__main__":
    main()
