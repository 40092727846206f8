"""The pipeline's system steps: development-testing scores, the Task 6 / Task 8 outputs with meta YAMLs built from
what ran, the system folders that ``dcase caption`` / ``dcase serve`` load, and the submission package.

Every number in a meta YAML comes from the run's records: parameter counts from the checkpoints' safetensors
headers, codebooks from the codec store's provenance, fluency filter on/off from the candidates' sidecar, ensemble
members from the recipe as resolved, external datasets from the manifests the training steps read, and the
development-testing scores from ``devtest/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dcase.config import jsonable, resolve_config_path
from dcase.data.registry import INFO as SOURCE_INFO_BY_NAME
from dcase.data.registry import READABLE_SOURCES
from dcase.errors import InputError
from dcase.io import atomic_write_text, link_or_copy_tree, safetensors_header
from dcase.stages.profiles import parse_use

log = logging.getLogger(__name__)

SYSTEM_FORMAT = "dcase-system"
SYSTEM_FILE = "system.json"
OUTPUTS_FILE = "outputs.json"
# Datasets outside Clotho that a DCASE2024 meta YAML lists under external_datasets
_EXTERNAL_URLS = {
    "audiocaps": "https://audiocaps.github.io/",
    "wavcaps": "https://huggingface.co/datasets/cvssp/WavCaps",
    "clotho_mixup": "https://huggingface.co/datasets/slseanwu/clotho-chatgpt-mixup-50K",
}
EXTERNAL_DATASETS = {k: (SOURCE_INFO_BY_NAME[k].title, url) for k, url in _EXTERNAL_URLS.items()}  # (name, url)
DATASET_NAMES = {s: SOURCE_INFO_BY_NAME[s].title for s in READABLE_SOURCES}  # as a meta YAML names them


# ------------------------------------------------------------------------------------------------ recipes
def load_recipe(
    item: str | Path | Mapping[str, Any],
    task: int,
    team: Mapping[str, Any] | None = None,
    generation: Mapping[str, Any] | None = None,
) -> Any:
    """A Task 6 / Task 8 recipe from a file (a path, or a name under the package configs) or an inline mapping,
    with the team identity (lastname, institute, authors, ...) laid over its ``meta`` and the profile's
    ``generation`` overrides merged into a Task 6 recipe's generation settings."""
    from dcase.config import deep_merge, from_dict, load_yaml
    from dcase.submission.recipes import Task6Recipe, Task8Recipe

    cls: type[Task6Recipe] | type[Task8Recipe] = Task6Recipe if task == 6 else Task8Recipe
    data = dict(item) if isinstance(item, Mapping) else load_yaml(resolve_config_path(str(item)))
    meta = {**(data.get("meta") or {}), **{k: v for k, v in (team or {}).items() if k != "technical_report"}}
    data["meta"] = meta
    if task == 6 and generation:
        data["generation"] = deep_merge(data.get("generation") or {}, generation)
    recipe = from_dict(cls, data, prefix=f"task{task} recipe {data.get('name', '')}")
    if "index" not in recipe.meta:
        raise InputError(f"task{task} recipe {recipe.name!r}: meta.index (1-4) is required")
    return recipe


def generate_config(
    recipe: Any,
    captioners: Sequence[Path],
    retriever: Path | None,
    manifest: Path,
    split: str,
    codec_stores: Sequence[Path],
    embed_stores: Sequence[Path],
    out: Path,
    device: str,
    w_enc: float | None = None,
) -> Any:
    """The ``GenerateConfig`` of a Task 6 recipe on one split of a manifest, with resolved checkpoint paths."""
    from dcase.stages.generation import GenerateConfig

    gen = recipe.generation
    if w_enc is not None:
        gen = dataclasses.replace(gen, w_enc=w_enc, w_dec=round(1.0 - w_enc, 6))
    return GenerateConfig(
        captioners=[str(c) for c in captioners],
        retriever=str(retriever) if retriever else None,
        manifest=str(manifest),
        split=split,
        codec_stores=[str(s) for s in codec_stores],
        embed_stores=[str(s) for s in embed_stores],
        out=str(out),
        generation=gen,
        device=device,
    )


def _tuned_w_enc(pipe: Any) -> float | None:
    if not pipe.p.rerank.use_tuned:
        return None
    weights = pipe.L.rerank / "weights.json"
    return float(json.loads(weights.read_text())["w_enc"])


def _decode(
    pipe: Any, recipe: Any, use: str, out_dir: Path, fluency_scope: str | None = None, w_enc: float | None = None
) -> Any:
    """Candidates of a recipe's captioners on one dataset split, reranked: writes ``out_dir/candidates.parquet``."""
    from dcase.env import resolve_device
    from dcase.stages.generation import generate_candidates

    source, splits = parse_use(use)
    L = pipe.L
    cfg = generate_config(
        recipe,
        [L.resolve(c) for c in recipe.captioners],
        L.resolve(recipe.retriever) if recipe.retriever else None,
        L.manifest(source),
        splits[0],
        [L.codec_store(source)],
        [L.embed_store(source)],
        out_dir / "candidates.parquet",
        resolve_device(pipe.o.device),
        w_enc=w_enc if w_enc is not None else _tuned_w_enc(pipe),
    )
    if fluency_scope is not None:
        cfg = dataclasses.replace(cfg, generation=dataclasses.replace(cfg.generation, fluency_scope=fluency_scope))
    return generate_candidates(cfg, progress=True, overwrite=True)


# ------------------------------------------------------------------------------------------------ rerank
def tune_rerank(pipe: Any, recipe: Any) -> dict[str, Any]:
    """Candidates of ``rerank.captioner`` on the validation split (every candidate fluency-checked), then a grid
    search of ``w_enc`` (``w_dec = 1 - w_enc``): ``rerank/weights.json``, ``tuning.csv``, ``tuning.png``."""
    from dcase.stages.generation import read_reference_map, tune_rerank_weights

    spec = pipe.p.rerank
    probe = dataclasses.replace(recipe, captioners=[spec.captioner])
    table = _decode(pipe, probe, pipe.p.validation, pipe.L.rerank, fluency_scope="all", w_enc=recipe.generation.w_enc)
    source, splits = parse_use(pipe.p.validation)
    refs = {k: v for k, v in read_reference_map(pipe.L.manifest(source)).items() if k in set(table["clip_id"])}
    best = tune_rerank_weights(table, refs, pipe.L.rerank, spec.weights, metric=spec.metric)
    atomic_write_text(
        pipe.L.rerank / "weights.json",
        json.dumps(
            {
                "w_enc": best["w_enc"],
                "w_dec": round(1.0 - best["w_enc"], 6),
                spec.metric: best[spec.metric],
                "split": pipe.p.validation,
                "captioner": spec.captioner,
            },
            indent=1,
        ),
    )
    return {"w_enc": best["w_enc"], spec.metric: best[spec.metric]}


# ------------------------------------------------------------------------------------------------ devtest
def devtest_task6(pipe: Any, recipe: Any, out_dir: Path) -> dict[str, Any]:
    """A Task 6 system on the development-testing split: candidates, the Task 6 CSV, and its caption metrics
    against the split's references (``scores.json``)."""
    from dcase.evaluation.captions import evaluate_captions, write_scores_json
    from dcase.stages.generation import read_reference_map, task6_rows
    from dcase.submission.formats import write_task6

    table = _decode(pipe, recipe, pipe.p.devtest, out_dir)
    rows = task6_rows(table)
    write_task6(rows, out_dir / "output.csv", overwrite=True)
    source, _ = parse_use(pipe.p.devtest)
    refs = read_reference_map(pipe.L.manifest(source))
    scores = evaluate_captions([c for _, c in rows], [refs[f] for f, _ in rows])
    write_scores_json(
        scores,
        out_dir / "scores.json",
        extra={"system": recipe.name, "split": pipe.p.devtest, "clips": len(rows), **_sidecar(out_dir)},
    )
    return {k: v for k, v in scores.items() if isinstance(v, float)}


def devtest_task8(pipe: Any, recipe: Any, out_dir: Path) -> dict[str, Any]:
    """A Task 8 system on the development-testing split: every caption is a query for its clip (mAP@10, R@k)."""
    from dcase.env import resolve_device
    from dcase.stages.retriever import evaluate_retrievers

    source, splits = parse_use(pipe.p.devtest)
    res = evaluate_retrievers(
        [pipe.L.resolve(r) for r in recipe.retrievers],
        pipe.L.manifest(source),
        splits[0],
        mode=recipe.mode,
        batch_size=recipe.batch_size,
        max_seconds=recipe.max_seconds,
        device=resolve_device(pipe.o.device),
    )
    metrics = res["ensemble"] if len(recipe.retrievers) > 1 else next(iter(res["models"].values()))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out_dir / "scores.json",
        json.dumps(
            {
                "system": recipe.name,
                "split": pipe.p.devtest,
                "scores": metrics,
                "queries": res["queries"],
                "items": res["items"],
                "members": res["models"],
            },
            indent=2,
        ),
    )
    return metrics


def _sidecar(out_dir: Path) -> dict[str, Any]:
    """What the generation step recorded (fluency filter on/off, fallback clips, ...)."""
    side = out_dir / "candidates.json"
    if not side.is_file():
        return {}
    meta = json.loads(side.read_text())
    return {k: meta[k] for k in ("fluency_filter", "reason", "n_fallback_clips", "mode", "ensemble") if k in meta}


def _devtest_scores(pipe: Any, task: int, index: int) -> dict[str, Any]:
    path = pipe.L.devtest(task, index) / "scores.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    scores = data.get("scores", data)
    counts = {"clips", "queries", "items", "n_queries", "n_fallback_clips"}
    return {
        k: round(float(v), 4)
        for k, v in scores.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in counts
    }


# ------------------------------------------------------------------------------------------------ meta
def count_parameters(folder: Path, skip_prefixes: Sequence[str] = ()) -> int:
    """Parameters in a checkpoint folder's safetensors files, read from their headers (no weights loaded)."""
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        header, _ = safetensors_header(f)
        for key, ent in header.items():
            if any(key.startswith(p) for p in skip_prefixes):
                continue
            count = 1
            for d in ent["shape"]:
                count *= int(d)
            total += count
    return total


def _training_sources(pipe: Any, task: int) -> list[str]:
    """The datasets (present) that the Task 6 captioner or the Task 8 retrievers train on."""
    steps = pipe.p.training_uses("captioner" if task == 6 else "retriever")
    uses = [u for step_uses in steps.values() for u in step_uses]
    return sorted({parse_use(u)[0] for u in uses} & pipe.present)


def _hours(manifest: Path) -> float:
    from dcase.data.manifest import read_manifest

    return round(float(read_manifest(manifest)["duration_s"].sum()) / 3600.0, 1)


def _external(pipe: Any, task: int) -> list[dict[str, Any]]:
    return [
        {
            "name": EXTERNAL_DATASETS[s][0],
            "url": EXTERNAL_DATASETS[s][1],
            "total_audio_length": f"{_hours(pipe.L.manifest(s))} h",
        }
        for s in _training_sources(pipe, task)
        if s in EXTERNAL_DATASETS
    ]


def _leak_meta(pipe: Any) -> dict[str, Any]:
    """What --allow-leak let through, for the meta YAML (empty when the leak checks passed)."""
    if not pipe.o.allow_leak:
        return {}
    return {"data_leak_check": "disabled with --allow-leak", "data_leaks_allowed": list(pipe.o.leak_notes)}


def task6_meta(pipe: Any, recipe: Any, captioners: Sequence[Path], out_dir: Path) -> dict[str, Any]:
    """The recipe's meta (names, team) plus every fact of the system as it ran."""
    from dcase.features.store import FeatureStore
    from dcase.models.enclap import EnCLAP

    source, _ = parse_use(pipe.p.task6_eval)
    codec = FeatureStore.open(pipe.L.codec_store(source)).provenance
    embed = FeatureStore.open(pipe.L.embed_store(source)).provenance
    side = _sidecar(out_dir)
    fluency_on = side.get("fluency_filter") == "on"
    gen = recipe.generation
    folders = list(
        dict.fromkeys(
            [
                *captioners,
                *(
                    p
                    for p in (
                        pipe.L.resolve(recipe.retriever) if recipe.retriever else None,
                        pipe.L.resolve(pipe.p.clip_embedder),
                    )
                    if p
                ),
            ]
        )
    )
    params = sum(count_parameters(f) for f in folders) + count_parameters(pipe.L.codec, ("decoder.",))
    mc = EnCLAP.config_of(captioners[0])
    sources = _training_sources(pipe, 6)
    rate = float(codec["sample_rate"]) / float(codec["hop"])
    decoding = (
        f"nucleus sampling (p {gen.sampling.top_p}, T {gen.sampling.temperature}, "
        f"{gen.sampling.num_candidates} candidates)"
        if gen.mode == "sample"
        else f"{gen.mode} search" + (f" (beam {gen.num_beams})" if gen.mode == "beam" else "")
    )
    reranking = (
        (
            ("FENSE fluency filter, then " if fluency_on else "no fluency filter; ")
            + f"{gen.w_enc} retriever cosine + {gen.w_dec} log-likelihood"
        )
        if gen.mode == "sample"
        else "none"
    )
    description = {
        **dict(recipe.meta.get("description") or {}),
        "input_sampling_rate": f"{int(codec['sample_rate']) // 1000} kHz (codec), "
        f"{int(embed['sample_rate']) // 1000} kHz (clip embedding)",
        "acoustic_features": f"{codec.get('extractor', 'codec')} codes ({codec['n_codebooks']} codebooks x "
        f"{codec['extractor_config']['codebook_size']}, {rate:g} Hz); clip embedding "
        f"({embed['embed_dim']}-d)",
        "embeddings": f"audio tower of the retriever {pipe.p.clip_embedder}",
        "machine_learning_method": "EnCLAP: BART encoder-decoder over codec codes + clip embedding"
        + f" (d_model {mc.d_model}, {mc.encoder_layers}+{mc.decoder_layers} layers)"
        + ("; masked codec modelling pretraining" if pipe.p.captioner.pretrain_config else ""),
        "data_augmentation": "Clotho-ChatGPT-Mixup" if "clotho_mixup" in sources else "none",
        "decoding": decoding,
        "reranking": reranking,
        "fluency_filter": "on" if fluency_on else "off",
        "ensemble_method": (
            f"{gen.ensemble}-level ensemble of {len(captioners)} captioners" if len(captioners) > 1 else "none"
        ),
        **_leak_meta(pipe),
    }
    return {
        **recipe.meta,
        "description": description,
        "ensemble_num_systems": len(captioners),
        "total_parameters": params,
        "data": [DATASET_NAMES[s] for s in sources],
        "external_datasets": _external(pipe, 6),
        "results": _devtest_scores(pipe, 6, recipe.meta["index"]),
        "parameters": {
            "captioners": [str(c) for c in recipe.captioners],
            "retriever": recipe.retriever,
            "clip_embedder": pipe.p.clip_embedder,
            "n_codebooks": int(codec["n_codebooks"]),
        },
    }


def task8_meta(pipe: Any, recipe: Any, retrievers: Sequence[Path]) -> dict[str, Any]:
    params = sum(count_parameters(f) for f in dict.fromkeys(retrievers))
    sources = _training_sources(pipe, 8)
    description = {
        **dict(recipe.meta.get("description") or {}),
        "ensemble_method": (
            f"mean of per-query z-scored similarity matrices of {len(retrievers)} retrievers"
            if len(retrievers) > 1
            else "none"
        ),
        "ranking": recipe.mode,
        **_leak_meta(pipe),
    }
    return {
        **recipe.meta,
        "description": description,
        "ensemble_num_systems": len(retrievers),
        "total_parameters": params,
        "data": [DATASET_NAMES[s] for s in sources],
        "external_datasets": _external(pipe, 8),
        "results": _devtest_scores(pipe, 8, recipe.meta["index"]),
        "parameters": {"retrievers": list(recipe.retrievers)},
    }


# ------------------------------------------------------------------------------------------------ systems
def export_system(
    out: Path, task: int, parts: Mapping[str, Path | Sequence[Path] | None], settings: Mapping[str, Any]
) -> Path:
    """A self-contained system folder (``system.json`` + the checkpoints it names), written atomically.

    Task 6: ``captioners/0..`` (EnCLAP), ``retriever/`` (reranking), ``clip_embedder/`` (or the retriever when it is
    the same checkpoint), ``codec/`` (DacModel), and the generation settings. Task 8: ``retrievers/0..`` and the
    ranking mode. ``dcase caption --system``, ``Captioner.from_pretrained`` and ``dcase serve`` load it.
    """
    from dcase.io import atomic_dir

    with atomic_dir(out) as tmp:
        doc: dict[str, Any] = {"format": SYSTEM_FORMAT, "format_version": 1, "task": task, **settings}
        seen: dict[Path, str] = {}
        for key, value in parts.items():
            if value is None:
                doc[key] = None
                continue
            many = isinstance(value, list | tuple)
            names = []
            sources = list(value) if isinstance(value, list | tuple) else [Path(str(value))]
            for i, given in enumerate(sources):
                src = Path(given).resolve()
                name = seen.get(src) or (f"{key}/{i}" if many else key)
                if src not in seen:
                    link_or_copy_tree(src, tmp / name)
                    seen[src] = name
                names.append(name)
            doc[key] = names if many else names[0]
        atomic_write_text(tmp / SYSTEM_FILE, json.dumps(doc, indent=2, default=str))
    return out


def _label(recipe: Any, task: int) -> str:
    from dcase.submission.meta import make_label

    return make_label(str(recipe.meta["lastname"]), str(recipe.meta["institute"]), task, int(recipe.meta["index"]))


def system_task6(pipe: Any, recipe: Any, out_dir: Path) -> dict[str, Any]:
    """The Task 6 CSV of a recipe on the DCASE evaluation audio, its meta YAML built from what ran, and its system
    folder (``out_dir/system``)."""
    from dcase.stages.generation import task6_rows
    from dcase.submission.formats import write_task6
    from dcase.submission.meta import build_meta, write_meta

    table = _decode(pipe, recipe, pipe.p.task6_eval, out_dir)
    label = _label(recipe, 6)
    audio_dir = _audio_dir(pipe, pipe.p.task6_eval)
    csv_path = write_task6(task6_rows(table), out_dir / f"{label}.output.csv", overwrite=True, audio_dir=audio_dir)
    captioners = [pipe.L.resolve(c) for c in recipe.captioners]
    meta = build_meta(task6_meta(pipe, recipe, captioners, out_dir), task=6)
    meta_path = write_meta(meta, out_dir / f"{label}.meta.yaml", overwrite=True)
    retriever = pipe.L.resolve(recipe.retriever) if recipe.retriever else None
    export_system(
        out_dir / "system",
        6,
        {
            "captioners": captioners,
            "retriever": retriever,
            "clip_embedder": pipe.L.resolve(pipe.p.clip_embedder),
            "codec": pipe.L.codec,
        },
        {"name": recipe.name, "generation": jsonable(recipe.generation), "label": label},
    )
    record = {
        "task": 6,
        "label": label,
        "csv": csv_path.name,
        "meta": meta_path.name,
        "system": "system",
        "audio_dir": str(audio_dir),
    }
    atomic_write_text(out_dir / OUTPUTS_FILE, json.dumps(record, indent=1))
    return record


def system_task8(pipe: Any, recipe: Any, out_dir: Path) -> dict[str, Any]:
    """The Task 8 CSV of a recipe (the retrieval audio ranked for every query of ``retrieval_captions.csv``), its
    meta YAML built from what ran, and its system folder."""
    from dcase.data.manifest import read_manifest
    from dcase.env import resolve_device
    from dcase.stages.retriever import rank_task8
    from dcase.submission.formats import write_task8
    from dcase.submission.meta import build_meta, write_meta

    source, splits = parse_use(pipe.p.task8_eval)
    rows = list(read_manifest(pipe.L.manifest(source), list(splits)).itertuples(index=False))
    queries = pipe.found[source].files["captions:retrieval_audio"]
    retrievers = [pipe.L.resolve(r) for r in recipe.retrievers]
    ranked = rank_task8(
        retrievers,
        rows,
        queries,
        mode=recipe.mode,
        batch_size=recipe.batch_size,
        max_seconds=recipe.max_seconds,
        device=resolve_device(pipe.o.device),
    )
    label = _label(recipe, 8)
    audio_dir = _audio_dir(pipe, pipe.p.task8_eval)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_task8(
        ranked,
        out_dir / f"{label}.output.csv",
        overwrite=True,
        audio_dir=audio_dir,
        references=queries,
    )
    meta_path = write_meta(
        build_meta(task8_meta(pipe, recipe, retrievers), task=8), out_dir / f"{label}.meta.yaml", overwrite=True
    )
    export_system(
        out_dir / "system", 8, {"retrievers": retrievers}, {"name": recipe.name, "mode": recipe.mode, "label": label}
    )
    record = {
        "task": 8,
        "label": label,
        "csv": csv_path.name,
        "meta": meta_path.name,
        "system": "system",
        "audio_dir": str(audio_dir),
        "queries": str(queries),
    }
    atomic_write_text(out_dir / OUTPUTS_FILE, json.dumps(record, indent=1))
    return record


def _audio_dir(pipe: Any, use: str) -> Path:
    """The folder holding the audio of one split (the names a submission CSV must use)."""
    from dcase.data.manifest import read_manifest

    source, splits = parse_use(use)
    paths = read_manifest(pipe.L.manifest(source), list(splits))["audio_path"]
    folders = {str(Path(p).parent) for p in paths}
    if len(folders) != 1:
        raise InputError(f"{use}: the audio of this split lies in {len(folders)} folders; a submission needs one")
    return Path(folders.pop())


# ------------------------------------------------------------------------------------------------ package
def package_systems(pipe: Any, system_dirs: Sequence[Path]) -> dict[str, Any]:
    """Validate every system and write the DCASE package (``submission/<Lastname>_<Institute>/`` and its zip),
    refusing template placeholders in identity fields and a wrongly named technical report."""
    from dcase.submission.package import package_submission

    task6: list[tuple[Path, Path]] = []
    task8: list[tuple[Path, Path]] = []
    recs: dict[int, dict[str, Any]] = {}
    for d in system_dirs:
        rec = json.loads((d / OUTPUTS_FILE).read_text())
        (task6 if rec["task"] == 6 else task8).append((d / rec["csv"], d / rec["meta"]))
        recs[rec["task"]] = rec
    team = str(recs[min(recs)]["label"]).rsplit("_task", 1)[0]
    report = pipe.p.technical_report
    res = package_submission(
        pipe.L.package / team,
        task6=task6,
        task8=task8,
        overwrite=True,
        audio_dir6=Path(recs[6]["audio_dir"]) if 6 in recs else None,
        audio_dir8=Path(recs[8]["audio_dir"]) if 8 in recs else None,
        references8=Path(recs[8]["queries"]) if 8 in recs else None,
        technical_report=Path(report) if report else None,
    )
    record = {
        "folder": str(res.folder),
        "zip": str(res.zip),
        "team": res.team,
        "systems": res.systems,
        "technical_report": res.technical_report,
    }
    atomic_write_text(pipe.L.package / "package.json", json.dumps(record, indent=1))
    return record
