"""``dcase demo``: the whole DCASE2024 chain on a synthetic corpus with tiny models, offline, on a CPU.

Steps (each writes files under ``out`` and is skipped when its output already exists, so an interrupted demo
resumes where it stopped; the training loops resume mid-run on their own):

1. synthetic corpus in the Clotho v2.1 layout (``dcase data synth``);
2. one manifest: the Clotho splits + Clotho-ChatGPT-Mixup-style rows (``dcase data manifest``);
3. a retriever: tiny CNext + the real all-MiniLM-L6-v2 text encoder, m-LTM loss (``dcase retriever train``);
4. clip embeddings from its audio tower (``dcase extract embed``);
5. DAC codes from a tiny random-weight DAC (``dcase extract codec``);
6. captioner pretraining with masked codec modelling on development + mixup rows (``dcase captioner pretrain``);
7. finetuning without MCM, with several seeds (``dcase captioner finetune``);
8. a uniform soup of the finetuned models (``dcase soup``);
9. decoding on the held-out split: greedy, and 30 nucleus samples reranked by 0.7 retriever cosine + 0.3
   log-likelihood (the fluency filter is off: no FENSE checker offline), for one model and for the soup
   (``dcase generate``);
10. Task 6 and Task 8 CSVs + meta YAMLs, validated and packaged (``dcase submit``);
11. ``scores.json`` (``dcase score``) and ``decoding_comparison.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcase.checkpoint import kind_of
from dcase.config import ConfigError, to_dict, with_overrides, write_run_info
from dcase.errors import MissingInputError
from dcase.io import atomic_write_text

log = logging.getLogger(__name__)

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MIN_TASK8_CLIPS = 12  # a Task 8 row names 10 distinct clips, so the collection needs more than 10
UNTRAINED_MIN_TOKENS = 8  # the untrained reference captioner must emit at least this many tokens


@dataclass
class DemoConfig:
    """Sizes and settings of the demo (``configs/demo.yaml``); stage configs live in ``configs/demo/``."""

    clips: int = 400  # captioned synthetic clips (70/15/15 development/validation/evaluation)
    seed: int = 0
    codec: str = "tiny"  # random-weight DAC layout (dcase.features.codec: tiny | full | a DacConfig file)
    retriever_config: str = "demo/retriever_minilm.yaml"  # relative to configs/
    retriever_overrides: list[str] = field(default_factory=list)
    pretrain_config: str = "demo/captioner_pretrain.yaml"
    finetune_config: str = "demo/captioner_finetune.yaml"
    captioner_overrides: list[str] = field(default_factory=list)  # applied to pretraining and finetuning
    pretrain_overrides: list[str] = field(default_factory=list)
    finetune_overrides: list[str] = field(default_factory=list)
    finetune_seeds: list[int] = field(default_factory=lambda: [0, 1])  # >= 2: the soup needs 2 ingredients
    eval_split: str = "evaluation"  # held-out split that is decoded and scored ("development-testing")
    num_candidates: int = 30
    top_p: float = 0.95
    temperature: float = 0.5
    max_new_tokens: int = 30
    w_enc: float = 0.7
    w_dec: float = 0.3
    metrics: list[str] = field(
        default_factory=lambda: [
            "bleu_1",
            "bleu_4",
            "meteor",
            "rouge_l",
            "cider_d",
            "spice",
            "spider",
            "spider_fl",
            "fense",
            "sbert_sim",
            "vocab",
        ]
    )


def _config_path(name: str) -> Path:
    path = Path(name)
    if not path.is_absolute() and not path.exists():
        path = REPO_CONFIGS / name
    if not path.is_file():
        raise MissingInputError(
            f"demo stage config {name} not found (looked in {REPO_CONFIGS}); run the demo from a checkout of the "
            "dcase repository, or give absolute paths in configs/demo.yaml"
        )
    return path


class _Steps:
    """Runs named steps once, logs them, and records wall time (also of skipped = already-done steps)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.timings_path = out / "timings.json"
        self.timings: dict[str, float] = (
            json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        )

    def run(self, name: str, done: Callable[[], bool], fn: Callable[[], Any]) -> None:
        if done():
            log.info("[demo] %s: already done, skipping", name)
            return
        log.info("[demo] %s ...", name)
        t0 = time.perf_counter()
        fn()
        self.timings[name] = round(time.perf_counter() - t0, 1)
        atomic_write_text(self.timings_path, json.dumps(self.timings, indent=2))
        log.info("[demo] %s done in %.1f s", name, self.timings[name])


def _chance_map_at_10(n_items: int) -> float:
    """Expected mAP@10 of a uniformly random ranking with one relevant item among ``n_items``."""
    return sum(1.0 / r for r in range(1, min(10, n_items) + 1)) / n_items


def _score(rows: list[tuple[str, str]], refs: dict[str, list[str]], metrics: list[str]) -> dict[str, Any]:
    from dcase.evaluation.captions import evaluate_captions

    cands = [t for _, t in rows]
    references = [refs[c] for c, _ in rows]
    return evaluate_captions(cands, references, metrics).to_json_dict()


def _plot(comparison: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(comparison)
    keys = [
        k
        for k in ("cider_d", "meteor", "rouge_l", "bleu_4")
        if any(isinstance(comparison[n].get("scores", {}).get(k), float) for n in names)
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        vals = [comparison[n]["scores"].get(key) or 0.0 for n in names]
        ax.bar(range(len(names)), vals, color=["#999999", "#4c72b0", "#55a868", "#c44e52"][: len(names)])
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
        ax.set_title(key)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle("dcase demo: decoding on the held-out synthetic split")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def run_demo(out: str | Path, cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Run (or resume) the demo chain into ``out``; returns the content of ``out/scores.json``."""
    import torch

    from dcase.config import load_config
    from dcase.data.manifest import concat_manifests, read_manifest, write_manifest
    from dcase.data.sources import build_manifest
    from dcase.data.synth import INFO_JSON, MIXUP_JSON, RETRIEVAL_TRUTH_CSV, make_synth_corpus
    from dcase.decoding.sample import SamplingConfig
    from dcase.evaluation.retrieval import score_task8_files
    from dcase.features.extract import extract_codec, extract_embeddings
    from dcase.features.store import FeatureStore
    from dcase.merging import soup_checkpoints
    from dcase.models.enclap import build_enclap
    from dcase.stages.captioner import CaptionerStageConfig, train_captioner
    from dcase.stages.generation import GenerateConfig, GenerationSettings, generate_candidates, task6_rows
    from dcase.stages.retriever import RetrieverStageConfig, evaluate_retrievers, rank_task8, train_retriever
    from dcase.submission.formats import write_task6, write_task8
    from dcase.submission.meta import build_meta, write_meta
    from dcase.submission.package import package_submission

    replace = dataclasses.replace
    cfg = cfg or DemoConfig()
    if len(cfg.finetune_seeds) < 2:
        raise ConfigError("finetune_seeds needs at least 2 seeds: the demo soups the finetuned models")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out / "run", cfg, seed=cfg.seed)
    steps = _Steps(out)
    t_start = time.perf_counter()
    corpus, manifest = out / "corpus", out / "manifest.parquet"
    feats, runs, decode_dir, sub = out / "features", out / "runs", out / "decode", out / "submission"
    torch.manual_seed(cfg.seed)

    # 1-2. data ---------------------------------------------------------------------------------------------
    steps.run(
        "synth corpus",
        lambda: (corpus / INFO_JSON).is_file(),
        lambda: make_synth_corpus(
            corpus,
            cfg.clips,
            cfg.seed,
            n_retrieval=max(MIN_TASK8_CLIPS, cfg.clips // 20),
            overwrite=True,
            progress=True,
        ),
    )

    def _manifests() -> None:
        clotho = build_manifest("clotho", corpus, out / "manifest_clotho.parquet", overwrite=True, progress=True)
        mixup = build_manifest(
            "clotho-mixup",
            corpus / MIXUP_JSON,
            out / "manifest_mixup.parquet",
            clotho_root=corpus,
            seed=cfg.seed,
            overwrite=True,
            progress=True,
        )
        write_manifest(concat_manifests([clotho.frame, mixup.frame]), manifest)

    steps.run("manifests", manifest.is_file, _manifests)
    df = read_manifest(manifest)
    refs = {r.clip_id: list(r.captions) for r in df[df["split"] == cfg.eval_split].itertuples(index=False)}

    # 3. retriever -------------------------------------------------------------------------------------------
    ret_dir = runs / "retriever"
    ret_best = ret_dir / "best_checkpoint.txt"

    def _retriever() -> None:
        rcfg = load_config(RetrieverStageConfig, _config_path(cfg.retriever_config))
        rcfg = replace(
            rcfg,
            data=replace(
                rcfg.data,
                train_manifests=[str(manifest)],
                train_splits=["development"],
                val_manifest=str(manifest),
                val_split="validation",
            ),
            train=replace(rcfg.train, output_dir=str(ret_dir), seed=cfg.seed),
        )
        rcfg = with_overrides(rcfg, cfg.retriever_overrides)
        best = train_retriever(rcfg)
        atomic_write_text(ret_best, str(best))

    steps.run("retriever training (m-LTM)", ret_best.is_file, _retriever)
    retriever = Path(ret_best.read_text().strip())

    # 4-5. features ------------------------------------------------------------------------------------------
    emb_store, dac_store = feats / "emb", feats / "dac"
    steps.run(
        "clip embeddings",
        lambda: (emb_store / "index.json").is_file(),
        lambda: extract_embeddings(manifest, emb_store, retriever, progress=True),
    )
    steps.run(
        "DAC codes",
        lambda: (dac_store / "index.json").is_file(),
        lambda: extract_codec(manifest, dac_store, codec=cfg.codec, progress=True),
    )
    codec_prov = FeatureStore.open(dac_store).provenance
    emb = FeatureStore.open(emb_store)
    clip_dim = int(next(iter(emb.values())).shape[0])
    n_codebooks = int(codec_prov["n_codebooks"])
    codebook_size = int(codec_prov["extractor_config"]["codebook_size"])

    def captioner_config(
        name: str,
        overrides: list[str],
        train_splits: list[str] | None = None,
        output_dir: Path | None = None,
        seed: int = 0,
    ) -> CaptionerStageConfig:
        """A captioner stage config from configs/<name>, pointed at the demo's manifest and feature stores."""
        c = load_config(CaptionerStageConfig, _config_path(name))
        data = replace(
            c.data,
            codec_stores=[str(dac_store)],
            embed_stores=[str(emb_store)],
            val_manifest=str(manifest),
            val_split="validation",
            train_manifests=[str(manifest)],
            train_splits=train_splits if train_splits is not None else c.data.train_splits,
        )
        train = replace(c.train, output_dir=str(output_dir), seed=seed) if output_dir is not None else c.train
        model = replace(c.model, n_codebooks=n_codebooks, codebook_size=codebook_size, clip_dim=clip_dim)
        return with_overrides(replace(c, model=model, data=data, train=train), overrides)

    # 6-8. captioner -----------------------------------------------------------------------------------------
    pre_dir = runs / "captioner_pretrain"
    pre_best = pre_dir / "best_checkpoint.txt"

    def _pretrain() -> None:
        pcfg = captioner_config(
            cfg.pretrain_config,
            [*cfg.captioner_overrides, *cfg.pretrain_overrides],
            ["development", "train"],
            pre_dir,
            cfg.seed,
        )
        atomic_write_text(pre_best, str(train_captioner(pcfg)))

    steps.run("captioner pretraining (MCM)", pre_best.is_file, _pretrain)
    finetuned: list[Path] = []
    for s in cfg.finetune_seeds:
        ft_dir = runs / f"captioner_finetune_seed{s}"
        ft_best = ft_dir / "best_checkpoint.txt"

        def _finetune(ft_dir: Path = ft_dir, ft_best: Path = ft_best, s: int = s) -> None:
            fcfg = captioner_config(
                cfg.finetune_config, [*cfg.captioner_overrides, *cfg.finetune_overrides], ["development"], ft_dir, s
            )
            fcfg = replace(fcfg, init=pre_best.read_text().strip(), mcm=False)
            atomic_write_text(ft_best, str(train_captioner(fcfg)))

        steps.run(f"captioner finetuning (seed {s})", ft_best.is_file, _finetune)
        finetuned.append(Path(ft_best.read_text().strip()))
    soup = out / "soup"
    steps.run(
        "uniform soup",
        lambda: kind_of(soup) == "enclap",
        lambda: soup_checkpoints(finetuned, soup, method="uniform", overwrite=True),
    )

    # an untrained captioner of the same shape: the floor the trained ones must clear
    untrained = runs / "captioner_untrained"

    def _untrained() -> None:
        pcfg = captioner_config(cfg.pretrain_config, list(cfg.captioner_overrides))
        torch.manual_seed(cfg.seed)
        build_enclap(pcfg.model, captions=[c for cs in df["captions"] for c in cs]).save_pretrained(untrained)

    steps.run("untrained captioner (reference floor)", lambda: kind_of(untrained) == "enclap", _untrained)
    untrained_csv = decode_dir / "untrained_greedy.csv"
    steps.run(
        "decode: untrained_greedy",
        untrained_csv.is_file,
        lambda: _untrained_captions(untrained, manifest, cfg, dac_store, emb_store, untrained_csv),
    )

    # 9. decoding ----------------------------------------------------------------------------------------------
    def gen(name: str, captioners: list[Path], mode: str) -> Path:
        path = decode_dir / f"{name}.parquet"
        gcfg = GenerateConfig(
            captioners=[str(c) for c in captioners],
            retriever=str(retriever),
            manifest=str(manifest),
            split=cfg.eval_split,
            codec_stores=[str(dac_store)],
            embed_stores=[str(emb_store)],
            out=str(path),
            generation=GenerationSettings(
                mode=mode,
                w_enc=cfg.w_enc,
                w_dec=cfg.w_dec,
                sampling=replace(
                    SamplingConfig(),
                    num_candidates=cfg.num_candidates,
                    top_p=cfg.top_p,
                    temperature=cfg.temperature,
                    max_new_tokens=cfg.max_new_tokens,
                    seed=cfg.seed,
                ),
            ),
        )
        steps.run(f"decode: {name}", path.is_file, lambda: generate_candidates(gcfg, overwrite=True))
        return path

    systems: dict[str, Path] = {
        "untrained_greedy": untrained_csv,
        "single_greedy": gen("single_greedy", [finetuned[0]], "greedy"),
        "single_sampled_reranked": gen("single_sampled_reranked", [finetuned[0]], "sample"),
        "soup_sampled_reranked": gen("soup_sampled_reranked", [soup], "sample"),
    }

    # 10. submissions ------------------------------------------------------------------------------------------
    eval_audio = corpus / "clotho_audio_files" / cfg.eval_split
    t6 = {
        1: ("single_sampled_reranked", "Demo single", "DemoSgl"),
        2: ("soup_sampled_reranked", "Demo soup", "DemoSoup"),
    }
    t6_files: list[tuple[Path, Path]] = []
    for idx, (system, name, abbr) in t6.items():
        csv_path, meta_path = sub / f"Demo_Synth_task6_{idx}.output.csv", sub / f"Demo_Synth_task6_{idx}.meta.yaml"

        def _t6(
            system: str = system,
            csv_path: Path = csv_path,
            meta_path: Path = meta_path,
            idx: int = idx,
            name: str = name,
            abbr: str = abbr,
        ) -> None:
            write_task6(task6_rows(systems[system]), csv_path, overwrite=True, audio_dir=eval_audio)
            meta = build_meta(
                {
                    "lastname": "Demo",
                    "institute": "Synth",
                    "index": idx,
                    "name": name,
                    "abbreviation": abbr,
                    "data": ["dcase synthetic corpus (development split + mixup pairs)"],
                    "ensemble_num_systems": 1 if idx == 1 else len(finetuned),
                    "description": {
                        "decoding": f"nucleus sampling p={cfg.top_p} T={cfg.temperature}, "
                        f"{cfg.num_candidates} candidates; rerank {cfg.w_enc} cos + {cfg.w_dec} loglik"
                    },
                    "source_code": "dcase demo",
                },
                task=6,
            )
            write_meta(meta, meta_path, overwrite=True)

        steps.run(f"task6 submission {idx}", csv_path.is_file, _t6)
        t6_files.append((csv_path, meta_path))

    t8_csv, t8_meta = sub / "Demo_Synth_task8_1.output.csv", sub / "Demo_Synth_task8_1.meta.yaml"

    def _t8() -> None:
        rows = rank_task8([retriever], corpus / "test_retrieval_audio", corpus / "retrieval_captions.csv")
        write_task8(
            rows,
            t8_csv,
            overwrite=True,
            audio_dir=corpus / "test_retrieval_audio",
            references=corpus / "retrieval_captions.csv",
        )
        write_meta(
            build_meta(
                {
                    "lastname": "Demo",
                    "institute": "Synth",
                    "index": 1,
                    "name": "Demo retriever",
                    "abbreviation": "DemoRet",
                    "data": ["dcase synthetic corpus (development split)"],
                    "source_code": "dcase demo",
                },
                task=8,
            ),
            t8_meta,
            overwrite=True,
        )

    steps.run("task8 submission", t8_csv.is_file, _t8)
    package = sub / "package"
    steps.run(
        "package",
        lambda: package.is_dir(),
        lambda: package_submission(
            package,
            task6=t6_files,
            task8=[(t8_csv, t8_meta)],
            overwrite=True,
            audio_dir6=eval_audio,
            audio_dir8=corpus / "test_retrieval_audio",
            references8=corpus / "retrieval_captions.csv",
        ),
    )

    # 11. scores -----------------------------------------------------------------------------------------------
    t_score = time.perf_counter()
    comparison = {}
    for name, path in systems.items():
        sidecar = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}
        rows = _read_rows_csv(path) if path.suffix == ".csv" else task6_rows(path)
        comparison[name] = {
            "scores": _score(rows, refs, cfg.metrics),
            "fluency_filter": sidecar.get("fluency_filter", sidecar.get("fluency", "off")),
        }
    n_eval_clips = len(refs)
    retrieval = evaluate_retrievers([retriever], manifest, cfg.eval_split)
    ret_scores = retrieval["models"][next(iter(retrieval["models"]))]
    task8_scores = score_task8_files(t8_csv, corpus / RETRIEVAL_TRUTH_CSV)
    scores: dict[str, Any] = {
        "task6": {
            "split": cfg.eval_split,
            "clips": n_eval_clips,
            "systems": comparison,
            "submitted": {str(p.name): n for p, (n, _, _) in zip([c for c, _ in t6_files], t6.values(), strict=True)},
        },
        "task8": {
            "split": cfg.eval_split,
            "queries": retrieval["queries"],
            "items": retrieval["items"],
            "metrics": ret_scores,
            "chance_map_at_10": _chance_map_at_10(retrieval["items"]),
            "retrieval_audio_csv": {"file": t8_csv.name, **task8_scores},
        },
        "fluency_filter": "off: no FENSE error-detector checkpoint is available offline (dcase.decoding.fluency)",
        "timings_s": steps.timings,
        "demo_config": to_dict(cfg),
    }
    _plot(comparison, out / "decoding_comparison.png")
    steps.timings["scoring"] = round(time.perf_counter() - t_score, 1)
    scores["timings_s"] = steps.timings
    scores["wall_time_s_this_run"] = round(time.perf_counter() - t_start, 1)
    atomic_write_text(out / "scores.json", json.dumps(scores, indent=2, default=_json_default))
    return scores


def _untrained_captions(
    ckpt: Path, manifest: Path, cfg: DemoConfig, dac_store: Path, emb_store: Path, out_csv: Path
) -> None:
    """Greedy captions of a random-weight captioner on the held-out split. Such a decoder mostly emits special
    tokens (decoded as an empty string), so they are suppressed and ``UNTRAINED_MIN_TOKENS`` tokens forced:
    the floor is then a real, scoreable caption rather than an empty one."""
    from dcase.data.datasets import CaptionDataset
    from dcase.data.manifest import read_manifest
    from dcase.features.store import StoreChain
    from dcase.models.enclap import EnCLAP
    from dcase.stages.captioner import generate_captions
    from dcase.submission.formats import write_task6

    model = EnCLAP.from_pretrained(ckpt).eval()
    df = read_manifest(manifest, [cfg.eval_split])
    ds = CaptionDataset(
        df,
        StoreChain.open([dac_store]),
        StoreChain.open([emb_store]),
        model.config.n_codebooks,
        model.config.clip_dim,
        model.config.max_codec_positions,
        random_crop=False,
        per_caption=False,
    )
    tok = model.tokenizer
    special = [i for i in tok.all_special_ids if i != tok.eos_token_id]
    texts = generate_captions(
        model,
        ds,
        max_new_tokens=cfg.max_new_tokens,
        min_new_tokens=UNTRAINED_MIN_TOKENS,
        suppress_tokens=special,
        forced_bos_token_id=None,
        do_sample=False,
        num_beams=1,
    )
    write_task6(list(zip(df["clip_id"].astype(str), texts, strict=True)), out_csv, overwrite=True)


def _read_rows_csv(path: Path) -> list[tuple[str, str]]:
    from dcase.submission.formats import read_task6

    df = read_task6(path)
    return list(zip(df["file_name"].astype(str), df["caption_predicted"].astype(str), strict=True))


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def summary_lines(scores: dict[str, Any]) -> list[str]:
    """A short human summary of ``scores.json`` for the terminal."""
    lines = ["Task 6 (held-out split, CIDEr-D / METEOR / SPIDEr):"]
    for name, s in scores["task6"]["systems"].items():
        sc = s["scores"]

        def f(k: str, sc: dict = sc) -> str:
            v = sc.get(k)
            return f"{v:.3f}" if isinstance(v, int | float) else "n/a"

        lines.append(f"  {name:<26} CIDEr-D {f('cider_d')}  METEOR {f('meteor')}  SPIDEr {f('spider')}")
    missing = next(iter(scores["task6"]["systems"].values()))["scores"].get("missing", {})
    for k, why in missing.items():
        lines.append(f"  {k}: not computed ({why})")
    t8 = scores["task8"]
    m = t8["metrics"]
    lines.append(
        f"Task 8 ({t8['queries']} queries x {t8['items']} clips): mAP@10 {m['map_at_10']:.3f} "
        f"R@1 {m['r_at_1']:.3f} R@10 {m['r_at_10']:.3f} (chance mAP@10 {t8['chance_map_at_10']:.3f})"
    )
    lines.append(f"Wall time: {sum(v for v in scores['timings_s'].values()):.0f} s over all steps")
    return lines
