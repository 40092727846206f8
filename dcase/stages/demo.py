"""``dcase demo``: a synthetic corpus, then the pipeline with the ``tiny`` profile. There is no second copy of the
recipe: the demo runs exactly the steps a team runs with ``dcase pipeline run --profile tiny``.

Layout of ``out``::

    data/CLOTHO_v2.1/                 the synthetic corpus in the Clotho v2.1 layout (``dcase data synth``)
    data/Clotho-ChatGPT-Mixup/        its mixup pairs, under the release's file name
    run/                              the pipeline's run root (manifests, retrievers, features, captioner, ...)
    system/                           the best Task 6 system folder: ``dcase caption --system demo_out/system``
    scores.json                       development-testing scores of every system, timings
    decoding_comparison.png           the Task 6 systems side by side

Everything resumes: rerunning the same command skips what is done.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcase.io import atomic_write_text

log = logging.getLogger(__name__)

MIN_TASK8_CLIPS = 12  # a Task 8 row names 10 distinct clips, so the collection needs more than 10


@dataclass
class DemoConfig:
    """``dcase demo`` settings: the corpus size and seed, and the pipeline profile (``--set`` overrides of it)."""

    clips: int = 300  # captioned synthetic clips (70/15/15 development/validation/evaluation)
    seed: int = 0
    profile: str = "tiny"
    profile_overrides: list[str] = field(default_factory=list)  # e.g. ["captioner.seeds=[0,1,2]"]


def make_demo_data(data: Path, clips: int, seed: int) -> Path:
    """The synthetic corpus under ``data/`` in the layouts the pipeline reads (Clotho v2.1 + the mixup release)."""
    from dcase.data.mixup import RELEASE_JSON
    from dcase.data.synth import INFO_JSON, MIXUP_JSON, make_synth_corpus

    corpus = data / "CLOTHO_v2.1"
    if not (corpus / INFO_JSON).is_file():
        make_synth_corpus(
            corpus, clips, seed, n_retrieval=max(MIN_TASK8_CLIPS, clips // 20), overwrite=True, progress=True
        )
    mixup = data / "Clotho-ChatGPT-Mixup" / RELEASE_JSON
    if not mixup.is_file() and (corpus / MIXUP_JSON).is_file():
        mixup.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / MIXUP_JSON, mixup)
        (corpus / MIXUP_JSON).unlink()
    return data


def run_demo(out: str | Path, cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Make (or reuse) the corpus and run (or resume) the tiny pipeline on it; returns ``out/scores.json``."""
    from dcase.config import write_run_info
    from dcase.stages.pipeline import PipelineOptions, build_pipeline, run_pipeline, write_run_record
    from dcase.stages.preflight import preflight
    from dcase.stages.profiles import load_profile

    cfg = cfg or DemoConfig()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out / "demo", cfg, seed=cfg.seed)
    t0 = time.perf_counter()
    make_demo_data(out / "data", cfg.clips, cfg.seed)
    t_data = time.perf_counter() - t0
    profile = load_profile(cfg.profile, [f"seed={cfg.seed}", *cfg.profile_overrides])
    pipe = build_pipeline(profile, PipelineOptions(out=out / "run", data_root=out / "data"))
    for w in pipe.warnings:
        log.info("[demo] %s", w)
    write_run_record(pipe, preflight(pipe))
    run_pipeline(pipe)
    scores = collect_scores(pipe)
    scores["timings_s"] = {"synthetic corpus": round(t_data, 1), **scores["timings_s"]}
    scores["wall_time_s_this_run"] = round(time.perf_counter() - t0, 1)
    best = _best_task6(scores)
    if best is not None:
        _replace_dir(pipe.layout.system(6, best) / "system", out / "system")
        scores["system"] = {"folder": str(out / "system"), "task6_system": best}
    plot_task6(scores, out / "decoding_comparison.png")
    atomic_write_text(out / "scores.json", json.dumps(scores, indent=2))
    return scores


def collect_scores(pipe: Any) -> dict[str, Any]:
    """Development-testing scores of every system of a run, its timings and the Task 8 check against the synthetic
    corpus's ground truth (when the corpus has one)."""
    root = pipe.layout.root
    task6: dict[str, Any] = {}
    task8: dict[str, Any] = {}
    for d in sorted((root / "devtest").glob("task*_*")):
        data = json.loads((d / "scores.json").read_text()) if (d / "scores.json").is_file() else None
        if data is None:
            continue
        (task6 if d.name.startswith("task6") else task8)[d.name] = data
    timings_path = pipe.layout.state / "timings.json"
    out: dict[str, Any] = {
        "profile": pipe.profile.name,
        "devtest_split": pipe.profile.devtest,
        "task6": task6,
        "task8": task8,
        "timings_s": json.loads(timings_path.read_text()) if timings_path.is_file() else {},
    }
    truth = _ground_truth(pipe)
    if truth is not None:
        from dcase.evaluation.retrieval import score_task8_files

        out["task8_eval_audio"] = {}
        for d in sorted((root / "systems").glob("task8_*")):
            rec = json.loads((d / "outputs.json").read_text())
            out["task8_eval_audio"][d.name] = score_task8_files(d / rec["csv"], truth)
    return out


def _ground_truth(pipe: Any) -> Path | None:
    from dcase.data.synth import RETRIEVAL_TRUTH_CSV

    if "clotho" not in pipe.found:
        return None
    path = pipe.found["clotho"].root / RETRIEVAL_TRUTH_CSV
    return path if path.is_file() else None


def _best_task6(scores: dict[str, Any]) -> int | None:
    ranked = sorted(((v.get("cider_d") or 0.0, k) for k, v in scores["task6"].items()), reverse=True)
    return int(ranked[0][1].split("_")[1]) if ranked else None


def _replace_dir(src: Path, dst: Path) -> None:
    from dcase.io import atomic_dir, link_or_copy_tree

    if dst.exists():
        shutil.rmtree(dst)
    with atomic_dir(dst) as tmp:
        link_or_copy_tree(src, tmp)


def plot_task6(scores: dict[str, Any], path: Path) -> None:
    """Bar charts of CIDEr-D, METEOR, ROUGE-L and BLEU-4 of the Task 6 systems on the development-testing split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = scores["task6"]
    if not systems:
        return
    names = list(systems)
    keys = [
        k
        for k in ("cider_d", "meteor", "rouge_l", "bleu_4")
        if any(isinstance(systems[n].get(k), float) for n in names)
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        vals = [systems[n].get(key) or 0.0 for n in names]
        ax.bar(range(len(names)), vals, color=["#4c72b0", "#55a868", "#c44e52", "#8172b2"][: len(names)])
        ax.set_xticks(range(len(names)), [f"{n}\n{systems[n].get('system', '')}" for n in names], fontsize=6)
        ax.set_title(key)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(f"dcase demo: Task 6 systems on {scores['devtest_split']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def summary_lines(scores: dict[str, Any]) -> list[str]:
    """A short human summary of ``scores.json`` for the terminal."""

    def f(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, int | float) else "n/a"

    lines = [f"Task 6 systems on {scores['devtest_split']} (CIDEr-D / METEOR / SPIDEr):"]
    for name, s in scores["task6"].items():
        lines.append(
            f"  {name} {s.get('system', ''):<16} CIDEr-D {f(s.get('cider_d'))}  METEOR {f(s.get('meteor'))}"
            f"  SPIDEr {f(s.get('spider'))}  fluency filter {s.get('fluency_filter', 'off')}"
        )
    first: dict[str, Any] = next(iter(scores["task6"].values()), {})
    for k, why in (first.get("missing") or {}).items():
        lines.append(f"  {k}: not computed ({why})")
    for name, s in scores["task8"].items():
        m = s["scores"]
        lines.append(
            f"Task 8 {name} {s.get('system', '')}: mAP@10 {f(m.get('map_at_10'))} R@1 {f(m.get('r_at_1'))} "
            f"R@10 {f(m.get('r_at_10'))} ({s.get('queries')} queries x {s.get('items')} clips)"
        )
    lines.append(f"Wall time: {scores.get('wall_time_s_this_run', 0):.0f} s this run")
    return lines
