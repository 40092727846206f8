"""The DCASE2024 recipe as one pipeline: ordered steps with declared inputs and outputs under one run root.

``dcase pipeline plan`` prints the steps with their inputs, outputs and status; ``dcase pipeline run`` checks the whole
set-up first (:mod:`dcase.stages.preflight`, before any model is loaded), then runs the steps that are not done.
``dcase demo`` is the same pipeline with the ``tiny`` profile on a synthetic corpus: there is one copy of the recipe.

Steps, in order (groups; ``--only``/``--from``/``--until`` take a group or a step name)::

    manifests   manifests/<dataset>.parquet                    dcase data manifest
    retrievers  retrievers/<name>/{pretrain,finetune}/           dcase retriever train (m-LTM)
    features    codec/  features/{codec,embed}/<dataset>/        convert/build the codec; dcase extract codec|embed
    pretrain    captioner/pretrain/                              dcase captioner pretrain (MCM)
    finetune    captioner/finetune/seed<k>/                      dcase captioner finetune
    soups       soups/<name>/                                    dcase soup
    rerank      rerank/                                          dcase generate (validation) + dcase tune-rerank
    devtest     devtest/task{6,8}_<n>/                           development-testing (Clotho evaluation) scores
    systems     systems/task{6,8}_<n>/                           Task 6 / Task 8 CSVs + meta YAMLs (+ system folders)
    package     submission/                                      validated package + zip

A step is done when ``pipeline/done/<step>.json`` records it with the same settings and its outputs exist: done
steps are skipped, a step killed half-way resumes (the training loops and extractors resume on their own), and a
done step whose settings changed is refused (``changed``), never silently redone or overwritten. Model sizes are
read from the stores (codebooks and codebook size from the codec store's provenance, the clip-embedding size from the
embedding store), never typed by hand.

Under ``torchrun``/``accelerate launch`` every process runs the pipeline: training and extraction steps use all
processes (Accelerate); the other steps run on the main process while the others wait.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcase.checkpoint import best_of_run as best_checkpoint
from dcase.checkpoint import is_training_run
from dcase.config import jsonable, resolve_config_path
from dcase.errors import InputError, MissingInputError
from dcase.io import atomic_write_text
from dcase.stages.profiles import Profile, parse_use, stage_overrides, uses_by_source

log = logging.getLogger(__name__)

GROUPS = (
    "manifests",
    "retrievers",
    "features",
    "pretrain",
    "finetune",
    "soups",
    "rerank",
    "devtest",
    "systems",
    "package",
)
STATES = ("done", "partial", "todo", "changed", "blocked")


# --------------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class RunLayout:
    """Every path of a pipeline run: the one naming convention that commands, configs, recipes and docs use."""

    root: Path

    def manifest(self, source: str) -> Path:
        return self.root / "manifests" / f"{source}.parquet"

    def retriever_run(self, name: str, stage: str) -> Path:
        return self.root / "retrievers" / name / stage

    @property
    def codec(self) -> Path:
        return self.root / "codec"

    def codec_store(self, source: str) -> Path:
        return self.root / "features" / "codec" / source

    def embed_store(self, source: str) -> Path:
        return self.root / "features" / "embed" / source

    @property
    def captioner_pretrain(self) -> Path:
        return self.root / "captioner" / "pretrain"

    def captioner_finetune(self, seed: int) -> Path:
        return self.root / "captioner" / "finetune" / f"seed{seed}"

    def soup(self, name: str) -> Path:
        return self.root / "soups" / name

    @property
    def rerank(self) -> Path:
        return self.root / "rerank"

    def devtest(self, task: int, index: int) -> Path:
        return self.root / "devtest" / f"task{task}_{index}"

    def system(self, task: int, index: int) -> Path:
        return self.root / "systems" / f"task{task}_{index}"

    @property
    def package(self) -> Path:
        return self.root / "submission"

    @property
    def state(self) -> Path:
        return self.root / "pipeline"

    def done_record(self, step: str) -> Path:
        return self.state / "done" / (step.replace("/", "__") + ".json")

    def resolve(self, ref: str) -> Path:
        """A run-root reference (``captioner/finetune/seed0``, ``soups/soup5``, ``codec``) or an absolute path ->
        the checkpoint folder. A training run folder resolves to its best checkpoint (``best.json``)."""
        path = Path(ref).expanduser()
        path = path if path.is_absolute() else self.root / path
        return best_checkpoint(path) if is_training_run(path) else path


# ----------------------------------------------------------------------------------------------------- steps
@dataclass
class Step:
    """One unit of the pipeline. ``settings`` is everything its outputs depend on (recorded and compared on resume)."""

    name: str
    group: str
    description: str
    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]
    settings: dict[str, Any]
    action: Callable[[], dict[str, Any]]
    distributed: bool = False  # runs on every process (training, extraction); otherwise on the main process

    def settings_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StepStatus:
    step: Step
    state: str  # one of STATES
    detail: str = ""


@dataclass
class PipelineOptions:
    """What ``dcase pipeline plan|run`` takes besides the profile."""

    out: Path = Path("runs/dcase2024")
    data_root: Path | None = None
    dataset_paths: dict[str, Path] = field(default_factory=dict)  # per-dataset locations instead of the data root
    allow_leak: bool = False
    only: list[str] = field(default_factory=list)
    start: str | None = None  # --from
    until: str | None = None
    device: str | None = None  # None: cuda when available
    leak_notes: list[str] = field(default_factory=list)  # leaks allowed by --allow-leak (preflight), for the meta


@dataclass
class Pipeline:
    """A resolved plan: the profile, where everything lives, the datasets found and the steps."""

    profile: Profile
    options: PipelineOptions
    layout: RunLayout
    found: Any  # dcase.data.locate.DatasetsFound
    steps: list[Step]
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # found while planning; the preflight reports them with its own
    recipes: dict[int, list[Any]] = field(default_factory=dict)  # task -> its recipes, loaded once (``task_recipes``)

    def task_recipes(self, task: int) -> list[Any]:
        """The Task 6 or Task 8 recipes of the profile (loaded on first use, then kept)."""
        if task not in self.recipes:
            self.recipes[task] = load_recipes(self.profile, task)
        return self.recipes[task]

    def selected(self) -> list[Step]:
        return select_steps(self.steps, self.options.only, self.options.start, self.options.until)


def select_steps(
    steps: Sequence[Step], only: Sequence[str] = (), start: str | None = None, until: str | None = None
) -> list[Step]:
    """Steps named by ``only`` (groups or step names), or the range ``start``..``until`` (inclusive). A name that
    matches nothing is an error listing the valid ones."""
    names = [s.name for s in steps]

    def matches(step: Step, key: str) -> bool:
        return step.group == key or step.name == key or step.name.startswith(key.rstrip("/") + "/")

    for key in [*only, *(k for k in (start, until) if k)]:
        if not any(matches(s, key) for s in steps):
            raise InputError(f"no step or group {key!r} in this plan; groups: {list(GROUPS)}; steps: {names}")
    if only:
        return [s for s in steps if any(matches(s, k) for k in only)]
    lo = next(i for i, s in enumerate(steps) if matches(s, start)) if start else 0
    hi = max(i for i, s in enumerate(steps) if matches(s, until)) if until else len(steps) - 1
    return list(steps[lo : hi + 1])


def step_status(step: Step, layout: RunLayout, produced: set[Path]) -> StepStatus:
    """``done`` / ``changed`` (done with other settings) / ``partial`` (outputs begun, resumable) / ``todo`` /
    ``blocked`` (an input is missing and no earlier step of the run produces it)."""
    rec_path = layout.done_record(step.name)
    if rec_path.is_file():
        rec = json.loads(rec_path.read_text())
        if rec.get("settings_hash") != step.settings_hash():
            changed = sorted(
                k
                for k in set(rec.get("settings", {})) | set(step.settings)
                if json.dumps(rec.get("settings", {}).get(k), sort_keys=True, default=str)
                != json.dumps(step.settings.get(k), sort_keys=True, default=str)
            )
            return StepStatus(step, "changed", f"settings changed since it ran: {changed}")
        missing = [str(p) for p in step.outputs if not p.exists()]
        if not missing:
            return StepStatus(step, "done", f"done {rec.get('finished', '')}".strip())
        return StepStatus(step, "partial", f"recorded as done but outputs are missing: {missing[:3]}")
    missing_in = [p for p in step.inputs if not p.exists() and p not in produced]
    if missing_in:
        return StepStatus(step, "blocked", f"missing inputs: {[str(p) for p in missing_in[:3]]}")
    if any(p.exists() for p in step.outputs):
        return StepStatus(step, "partial", "begun: reruns resume it")
    return StepStatus(step, "todo")


def statuses(pipe: Pipeline) -> list[StepStatus]:
    """Status of every step, in order (outputs of earlier steps count as available to later ones)."""
    produced: set[Path] = set()
    out = []
    for s in pipe.steps:
        st = step_status(s, pipe.layout, produced)
        out.append(st)
        if st.state != "blocked":
            produced.update(s.outputs)
    return out


# ------------------------------------------------------------------------------------------------- the plan
def build_pipeline(profile: Profile, options: PipelineOptions) -> Pipeline:
    """Locate the datasets and build every step of ``profile`` under ``options.out`` (no model is loaded)."""
    from dcase.data.locate import locate_datasets

    layout = RunLayout(Path(options.out).resolve())
    found = locate_datasets(options.data_root, options.dataset_paths or None)
    warnings = list(found.warnings)
    b = _Builder(profile, options, layout, found, warnings)
    steps = b.build()
    problems = [*found.problems, *b.problems]
    return Pipeline(profile, options, layout, found, steps, warnings, problems=problems, recipes=b.recipes)


def load_recipes(profile: Profile, task: int) -> list[Any]:
    """The profile's Task 6 (with its ``generation`` overrides) or Task 8 recipes, with its team identity."""
    from dcase.stages.systems import load_recipe

    if task == 6:
        return [load_recipe(item, 6, profile.team, profile.generation) for item in profile.task6]
    return [load_recipe(item, 8, profile.team) for item in profile.task8]


class _Builder:
    """Turns a profile into steps. Each ``_*`` method adds the steps of one group."""

    def __init__(
        self, profile: Profile, options: PipelineOptions, layout: RunLayout, found: Any, warnings: list[str]
    ) -> None:
        self.p, self.o, self.L, self.found, self.warnings = profile, options, layout, found, warnings
        self.steps: list[Step] = []
        self.problems: list[str] = []
        self.present = {s for s in profile.datasets if s in found}
        self.recipes: dict[int, list[Any]] = {}  # task -> recipes, loaded once for every group that needs them

    # -- helpers
    def add(self, **kw: Any) -> None:
        self.steps.append(Step(**kw))

    def uses(self, uses: Sequence[str], what: str, required: bool = True) -> dict[str, tuple[str, ...]]:
        """Dataset uses restricted to the datasets present; absent ones are dropped with a warning."""
        by = uses_by_source(uses)
        kept = {s: sp for s, sp in by.items() if s in self.present}
        dropped = sorted(set(by) - set(kept))
        if dropped:
            self.warnings.append(f"{what}: dataset(s) {dropped} not found; left out of this step")
        if required and not kept:
            raise InputError(f"{what} needs one of the datasets {sorted(by)}, and none was found ({_where(self.o)})")
        return kept

    def manifests_of(self, uses: dict[str, tuple[str, ...]]) -> tuple[list[str], list[str]]:
        manifests = [str(self.L.manifest(s)) for s in uses]
        splits = list(dict.fromkeys(sp for sps in uses.values() for sp in sps))
        return manifests, splits

    # -- groups
    def build(self) -> list[Step]:
        p = self.p
        for source in p.datasets:
            if source not in self.present:
                self.warnings.append(f"dataset {source!r} not found ({_where(self.o)}): left out of the plan")
        self._manifests()
        self._retrievers()
        self._features()
        self._captioner()
        self._soups()
        if p.rerank.tune:
            self._rerank()
        self._devtest()
        self._systems()
        self._package()
        return self.steps

    def _manifests(self) -> None:
        from dcase.data.sources import build_manifest_from

        for source in [s for s in self.p.datasets if s in self.present]:
            entry = self.found[source]
            opts = dict(self.p.datasets.get(source) or {})
            out = self.L.manifest(source)

            def action(entry: Any = entry, out: Path = out, opts: dict = opts) -> dict:
                res = build_manifest_from(entry, out, overwrite=True, progress=True, **opts)
                return {"clips": len(res.frame), "skipped": len(res.skipped)}

            self.add(
                name=f"manifests/{source}",
                group="manifests",
                description=f"manifest of {source}",
                inputs=(entry.root,),
                outputs=(out,),
                settings={"source": source, "options": opts, "location": entry.to_dict()},
                action=action,
            )

    def _retrievers(self) -> None:
        from dcase.config import load_config
        from dcase.stages.retriever import RetrieverStageConfig, train_retriever

        val_source, val_splits = parse_use(self.p.validation)
        for spec in self.p.retrievers:
            for stage in ("pretrain", "finetune"):
                config = spec.pretrain_config if stage == "pretrain" else spec.finetune_config
                if not config:
                    continue
                data = spec.pretrain_data if stage == "pretrain" else spec.finetune_data
                uses = self.uses(data, f"retriever {spec.name} {stage}")
                manifests, splits = self.manifests_of(uses)
                run_dir = self.L.retriever_run(spec.name, stage)
                overrides = stage_overrides(
                    self.p, spec.pretrain_overrides if stage == "pretrain" else spec.finetune_overrides, retriever=True
                )
                init = self.L.retriever_run(spec.name, "pretrain") if stage == "finetune" else None
                cfg_path = resolve_config_path(config)
                cfg = load_config(RetrieverStageConfig, cfg_path)
                cfg = _apply_mapping(cfg, overrides)
                cfg = dataclasses.replace(
                    cfg,
                    data=dataclasses.replace(
                        cfg.data,
                        allow_leak=self.o.allow_leak,
                        train_manifests=manifests,
                        train_splits=splits,
                        val_manifest=str(self.L.manifest(val_source)),
                        val_split=val_splits[0] if val_splits else cfg.data.val_split,
                    ),
                    train=dataclasses.replace(cfg.train, output_dir=str(run_dir), seed=self.p.seed),
                )

                def action(cfg: Any = cfg, init: Path | None = init) -> dict:
                    c = dataclasses.replace(cfg, init=str(best_checkpoint(init)) if init else None)
                    return {"best": str(train_retriever(c))}

                self.add(
                    name=f"retrievers/{spec.name}/{stage}",
                    group="retrievers",
                    description=f"retriever {spec.name} ({stage}, m-LTM) from {cfg_path.name}",
                    inputs=tuple(Path(m) for m in manifests) + ((init / "best.json",) if init else ()),
                    outputs=(run_dir / "best.json",),
                    settings={"config": jsonable(cfg)},
                    action=action,
                    distributed=True,
                )

    def _feature_sources(self) -> dict[str, tuple[str, ...]]:
        """Which splits of which dataset the captioner steps read (codec codes and clip embeddings are extracted for
        exactly these clips)."""
        c = self.p.captioner
        uses = [*c.pretrain_data, *c.finetune_data, self.p.validation, self.p.devtest, self.p.task6_eval]
        return {s: sp for s, sp in uses_by_source(uses).items() if s in self.present}

    def _features(self) -> None:
        from dcase.features.codec import materialize_codec
        from dcase.features.extract import extract_codec, extract_embeddings

        codec = self.p.codec
        self.add(
            name="codec",
            group="features",
            description=f"the codec ({codec.model}) saved once in codec/ for every store and system",
            inputs=(),
            outputs=(self.L.codec / "config.json",),
            settings={"model": codec.model, "seed": self.p.seed},
            action=lambda: {"codec": str(materialize_codec(codec.model, self.L.codec, seed=self.p.seed))},
        )
        embedder_run = self.L.root / self.p.clip_embedder
        for source, splits in self._feature_sources().items():
            manifest, store = self.L.manifest(source), self.L.codec_store(source)
            split_list = list(splits) or None

            def codec_action(manifest: Path = manifest, store: Path = store, split_list: Any = split_list) -> dict:
                rep = extract_codec(
                    manifest,
                    store,
                    str(self.L.codec),
                    batch_size=codec.batch_size,
                    splits=split_list,
                    chunk_seconds=codec.chunk_seconds,
                    workers=codec.workers,
                )
                return {"encoded": rep.encoded, "store_clips": rep.store_clips}

            self.add(
                name=f"features/codec/{source}",
                group="features",
                description=f"DAC codes of {source} {list(splits) or 'all splits'}",
                inputs=(manifest, self.L.codec / "config.json"),
                outputs=(store / "index.json",),
                settings={"splits": split_list, "batch_size": codec.batch_size, "chunk_seconds": codec.chunk_seconds},
                action=codec_action,
                distributed=True,
            )
            estore = self.L.embed_store(source)

            def embed_action(manifest: Path = manifest, estore: Path = estore, split_list: Any = split_list) -> dict:
                rep = extract_embeddings(
                    manifest,
                    estore,
                    best_checkpoint(embedder_run),
                    batch_size=self.p.embed_batch_size,
                    splits=split_list,
                )
                return {"encoded": rep.encoded, "store_clips": rep.store_clips}

            self.add(
                name=f"features/embed/{source}",
                group="features",
                description=f"clip embeddings of {source} from {self.p.clip_embedder}",
                inputs=(manifest, embedder_run / "best.json"),
                outputs=(estore / "index.json",),
                settings={"splits": split_list, "embedder": self.p.clip_embedder},
                action=embed_action,
                distributed=True,
            )

    def _captioner_config(self, stage: str, seed: int) -> Any:
        from dcase.stages.captioner import load_stage_config

        c = self.p.captioner
        config = c.pretrain_config if stage == "pretrain" else c.finetune_config
        data = c.pretrain_data if stage == "pretrain" else c.finetune_data
        uses = self.uses(data, f"captioner {stage}")
        manifests, splits = self.manifests_of(uses)
        val_source, val_splits = parse_use(self.p.validation)
        sources = list(self._feature_sources())
        cfg = load_stage_config(resolve_config_path(config))
        cfg = _apply_mapping(
            cfg, stage_overrides(self.p, c.pretrain_overrides if stage == "pretrain" else c.finetune_overrides)
        )
        run_dir = self.L.captioner_pretrain if stage == "pretrain" else self.L.captioner_finetune(seed)
        return dataclasses.replace(
            cfg,
            mcm=stage == "pretrain",
            data=dataclasses.replace(
                cfg.data,
                allow_leak=self.o.allow_leak,
                train_manifests=manifests,
                train_splits=splits,
                codec_stores=[str(self.L.codec_store(s)) for s in sources],
                embed_stores=[str(self.L.embed_store(s)) for s in sources],
                val_manifest=str(self.L.manifest(val_source)),
                val_split=val_splits[0] if val_splits else cfg.data.val_split,
            ),
            train=dataclasses.replace(cfg.train, output_dir=str(run_dir), seed=seed),
        ), [self.L.codec_store(s) / "index.json" for s in sources] + [
            self.L.embed_store(s) / "index.json" for s in sources
        ] + [Path(m) for m in manifests]

    def _captioner(self) -> None:
        from dcase.stages.captioner import train_captioner

        cfg, inputs = self._captioner_config("pretrain", self.p.seed)

        def pretrain(cfg: Any = cfg) -> dict:
            return {"best": str(train_captioner(cfg))}

        self.add(
            name="captioner/pretrain",
            group="pretrain",
            description="EnCLAP pretraining with MCM",
            inputs=tuple(inputs),
            outputs=(self.L.captioner_pretrain / "best.json",),
            settings={"config": jsonable(cfg)},
            action=pretrain,
            distributed=True,
        )
        for seed in self.p.captioner.seeds:
            fcfg, finputs = self._captioner_config("finetune", seed)

            def finetune(fcfg: Any = fcfg) -> dict:
                c = dataclasses.replace(fcfg, init=str(best_checkpoint(self.L.captioner_pretrain)))
                return {"best": str(train_captioner(c))}

            self.add(
                name=f"captioner/finetune/seed{seed}",
                group="finetune",
                description=f"EnCLAP finetuning (no MCM), seed {seed}",
                inputs=(*finputs, self.L.captioner_pretrain / "best.json"),
                outputs=(self.L.captioner_finetune(seed) / "best.json",),
                settings={"config": jsonable(fcfg)},
                action=finetune,
                distributed=True,
            )

    def _soups(self) -> None:
        from dcase.merging import soup_checkpoints

        for spec in self.p.soups:
            runs = [self.L.captioner_finetune(s) for s in spec.seeds]
            out = self.L.soup(spec.name)

            def action(runs: list[Path] = runs, out: Path = out) -> dict:
                soup_checkpoints([best_checkpoint(r) for r in runs], out, method="uniform", overwrite=True)
                return {"ingredients": [str(best_checkpoint(r)) for r in runs]}

            self.add(
                name=f"soups/{spec.name}",
                group="soups",
                description=f"uniform soup of seeds {spec.seeds}",
                inputs=tuple(r / "best.json" for r in runs),
                outputs=(out / "config.json",),
                settings={"seeds": spec.seeds},
                action=action,
            )

    # -- systems (rerank, devtest, systems, package share the recipes)
    def task_recipes(self, task: int) -> list[Any]:
        if task not in self.recipes:
            self.recipes[task] = load_recipes(self.p, task)
        return self.recipes[task]

    def _decode_inputs(self, recipe: Any) -> list[Path]:
        refs = [*recipe.captioners, *([recipe.retriever] if recipe.retriever else [])]
        return [_ref_marker(self.L, r) for r in refs]

    def _rerank(self) -> None:
        from dcase.stages.systems import tune_rerank

        recipes = self.task_recipes(6)
        if not recipes:
            raise InputError("rerank.tune needs at least one Task 6 system (its generation settings are tuned)")
        recipe = recipes[0]
        source, splits = parse_use(self.p.validation)
        self.add(
            name="rerank/tune",
            group="rerank",
            description=f"candidates of {self.p.rerank.captioner} on {self.p.validation}; w_enc grid search",
            inputs=(self.L.manifest(source), _ref_marker(self.L, self.p.rerank.captioner)),
            outputs=(self.L.rerank / "weights.json",),
            settings={"rerank": dataclasses.asdict(self.p.rerank), "generation": jsonable(recipe.generation)},
            action=lambda: tune_rerank(self, recipe),
        )

    def _devtest(self) -> None:
        from dcase.stages.systems import devtest_task6, devtest_task8

        uses = {6: self.p.devtest, 8: self.p.devtest}
        self._per_system("devtest", uses, "scores.json", {6: devtest_task6, 8: devtest_task8}, {})

    def system_settings(self, recipe: Any) -> dict[str, Any]:
        rr = dataclasses.asdict(self.p.rerank) if self.p.rerank.use_tuned else None
        return {"recipe": jsonable(recipe), "devtest": self.p.devtest, "rerank": rr}

    def _systems(self) -> None:
        from dcase.stages.systems import system_task6, system_task8

        uses = {6: self.p.task6_eval, 8: self.p.task8_eval}
        actions = {6: system_task6, 8: system_task8}
        self._per_system("systems", uses, "outputs.json", actions, {"team": self.p.team})

    def _per_system(
        self,
        group: str,
        uses: Mapping[int, str],
        output: str,
        actions: Mapping[int, Callable[[Any, Any, Path], dict[str, Any]]],
        extra: dict[str, Any],
    ) -> None:
        """One step per Task 6 and Task 8 recipe of ``group`` ("devtest" or "systems"): the recipe's system on the
        split ``uses[task]``, written to ``<group>/task<task>_<n>/<output>`` by ``actions[task]``. A task whose split
        is absent gets a warning and no steps."""
        tasks = ((6, self.task_recipes(6), self._decode_inputs), (8, self.task_recipes(8), self._retriever_inputs))
        for task, recipes, inputs in tasks:
            split, _ = parse_use(uses[task])
            if recipes and split not in self.present:
                self.warnings.append(f"{group}: Task {task} needs {uses[task]}, which is not found; no steps")
                continue
            for recipe in recipes:
                idx = recipe.meta.get("index")
                out = self.L.devtest(task, idx) if group == "devtest" else self.L.system(task, idx)
                self.add(
                    name=f"{group}/task{task}_{idx}",
                    group=group,
                    description=f"Task {task} system {idx} ({recipe.name}) on {uses[task]}",
                    inputs=(self.L.manifest(split), *inputs(recipe)),
                    outputs=(out / output,),
                    settings=self.system_settings(recipe) | extra,
                    action=lambda recipe=recipe, out=out, act=actions[task]: act(self, recipe, out),
                )

    def _retriever_inputs(self, recipe: Any) -> list[Path]:
        """The done markers of a Task 8 recipe's retrievers."""
        return [_ref_marker(self.L, r) for r in recipe.retrievers]

    def _package(self) -> None:
        from dcase.stages.systems import package_systems

        systems = [s for s in self.steps if s.group == "systems"]
        if not systems:
            return
        self.add(
            name="package",
            group="package",
            description="validated submission package + zip",
            inputs=tuple(s.outputs[0] for s in systems),
            outputs=(self.L.package / "package.json",),
            settings={
                "systems": [s.name for s in systems],
                "team": self.p.team,
                "technical_report": self.p.technical_report,
            },
            action=lambda: package_systems(self, [s.outputs[0].parent for s in systems]),
        )


def _where(o: PipelineOptions) -> str:
    if o.dataset_paths:
        return f"paths {sorted(o.dataset_paths)}" + (f" and data root {o.data_root}" if o.data_root else "")
    return f"data root {o.data_root}" if o.data_root else "no --data-root given"


def _ref_marker(layout: RunLayout, ref: str) -> Path:
    """The file whose existence says that a run-root reference is ready (a run's best.json, a checkpoint's config)."""
    path = Path(ref)
    path = path if path.is_absolute() else layout.root / path
    top = ref.split("/")[0]
    if top in ("captioner", "retrievers"):
        return path / "best.json"
    return path / "config.json"


def _apply_mapping(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Merge a nested mapping into a dataclass config, typed by the dataclass (unknown keys are errors)."""
    if not overrides:
        return cfg
    from dcase.config import deep_merge, from_dict, to_dict

    return from_dict(type(cfg), deep_merge(to_dict(cfg), overrides))


# ------------------------------------------------------------------------------------------------------ run
def run_pipeline(pipe: Pipeline, progress: bool = True) -> list[StepStatus]:
    """Run the selected steps that are not done, in order; returns the final statuses of the selected steps.

    A ``changed`` step stops the run before anything runs (its outputs would no longer match its record). A
    ``blocked`` step stops the run when it is reached. Distributed steps run on every process; the others on the
    main process while the others wait.
    """
    from dcase.features.extract import process_state

    state = process_state()
    selected = pipe.selected()
    sel_names = {s.name for s in selected}
    current = {st.step.name: st for st in statuses(pipe)}
    changed = [current[s.name] for s in selected if current[s.name].state == "changed"]
    if changed:
        lines = [f"  {st.step.name}: {st.detail}; outputs {[str(p.parent) for p in st.step.outputs]}" for st in changed]
        raise InputError(
            "steps already done with other settings (their outputs would be overwritten):\n"
            + "\n".join(lines)
            + "\nUse a new --out, or delete those outputs to rerun them."
        )
    timings_path = pipe.layout.state / "timings.json"
    for step in pipe.steps:
        if step.name not in sel_names:
            continue
        st = step_status(step, pipe.layout, set())
        if st.state == "done":
            log.info("[pipeline] %s: done, skipping", step.name)
            continue
        missing = [str(p) for p in step.inputs if not p.exists()]
        if missing:
            raise MissingInputError(
                f"step {step.name}: inputs missing: {missing}; run the steps that make them "
                f"first (dcase pipeline plan shows them)"
            )
        log.info("[pipeline] %s: %s", step.name, step.description)
        t0 = time.perf_counter()
        record: dict[str, Any] = {}
        if step.distributed or state.is_main_process:
            record = step.action() or {}
        state.wait_for_everyone()
        seconds = round(time.perf_counter() - t0, 1)
        if state.is_main_process:
            atomic_write_text(
                pipe.layout.done_record(step.name),
                json.dumps(
                    {
                        "step": step.name,
                        "settings_hash": step.settings_hash(),
                        "settings": step.settings,
                        "outputs": [str(p) for p in step.outputs],
                        "record": record,
                        "seconds": seconds,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    },
                    indent=1,
                    default=str,
                ),
            )
            timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
            timings[step.name] = seconds
            atomic_write_text(timings_path, json.dumps(timings, indent=1))
        state.wait_for_everyone()
        log.info("[pipeline] %s: done in %.1f s", step.name, seconds)
    return [step_status(s, pipe.layout, set()) for s in selected]


def write_run_record(pipe: Pipeline, leak_notes: Sequence[str] = ()) -> None:
    """``pipeline/profile.yaml`` (the resolved profile) and ``pipeline/run.json`` (seed, git hash, versions,
    options, datasets found) beside the outputs."""
    from dcase.config import write_run_info

    pipe.options.leak_notes = list(leak_notes)
    write_run_info(
        pipe.layout.state,
        pipe.profile,
        seed=pipe.profile.seed,
        extra={
            "options": json.loads(json.dumps(dataclasses.asdict(pipe.options), default=str)),
            "datasets": pipe.found.to_dict(),
            "warnings": pipe.warnings,
            "allow_leak": pipe.options.allow_leak,
            "leaks_allowed": list(leak_notes),
        },
    )
    shutil.copyfile(pipe.layout.state / "config.yaml", pipe.layout.state / "profile.yaml")


def plan_lines(pipe: Pipeline) -> list[str]:
    """Human-readable plan: every step with its status, inputs and outputs (relative to the run root)."""
    root = pipe.layout.root

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    sel = {s.name for s in pipe.selected()}
    lines = [f"profile {pipe.profile.name}: {len(pipe.steps)} steps under {root}"]
    lines += [f"warning: {w}" for w in pipe.warnings]
    for st in statuses(pipe):
        mark = " " if st.step.name in sel else "-"
        lines.append(
            f"{mark} [{st.state:<7}] {st.step.name}: {st.step.description}" + (f" ({st.detail})" if st.detail else "")
        )
        if st.step.inputs:
            lines.append(f"      in : {', '.join(rel(p) for p in st.step.inputs)}")
        lines.append(f"      out: {', '.join(rel(p) for p in st.step.outputs)}")
    return lines


__all__ = [
    "GROUPS",
    "Pipeline",
    "PipelineOptions",
    "RunLayout",
    "Step",
    "StepStatus",
    "best_checkpoint",
    "build_pipeline",
    "plan_lines",
    "run_pipeline",
    "select_steps",
    "statuses",
    "write_run_record",
]
