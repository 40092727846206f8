"""Pipeline profiles: the whole DCASE2024 recipe as one typed, declarative description.

A profile says which datasets feed which stage, which retrievers and captioners are trained with which stage configs,
how candidates are generated and reranked, and which Task 6 / Task 8 systems are submitted. The pipeline
(:mod:`dcase.stages.pipeline`) turns it into ordered steps under one run root. Three profiles ship with the package
(``dcase/configs/profiles/``):

- ``dcase2024``: the EnCLAP DCASE2024 technical report's systems (BART-large, DAC 24 kHz, CNext, the six text encoders,
  seven finetuning seeds, soups, the 4 + 4 submissions);
- ``tiny``: the demo's models (seconds per step on a CPU);
- ``full-random``: the ``dcase2024`` shapes with random weights and a few updates per step, to prove on a CPU that the
  full-size chain runs.

Datasets are named by their manifest source (``clotho``, ``audiocaps``, ``wavcaps``, ``clotho_mixup``) and splits are
selected as ``"source:split"`` (``"clotho:development"``, ``"audiocaps:train"``). Stage configs are the YAML files of
``dcase/configs/`` (a path, or a name relative to that folder); ``overrides`` are nested mappings merged into them,
typed by the stage's dataclass (never ``--set`` strings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcase.config import PACKAGE_CONFIGS, ConfigError, deep_merge, load_yaml
from dcase.data.registry import READABLE_SOURCES, canonical_source
from dcase.errors import InputError, MissingInputError

PROFILES_DIR = PACKAGE_CONFIGS / "profiles"
DATASETS = READABLE_SOURCES  # what a data root can hold, in build order (dcase.data.registry)


def parse_use(text: str) -> tuple[str, tuple[str, ...]]:
    """``"clotho:development"`` -> ("clotho", ("development",)); ``"wavcaps"`` -> ("wavcaps", ()) = every split;
    ``"audiocaps:train+val"`` -> two splits."""
    source, _, splits = text.partition(":")
    source = source.strip()
    try:
        source = canonical_source(source)
    except InputError:
        raise ConfigError(
            f"dataset use {text!r}: unknown dataset {source!r}; expected one of {list(DATASETS)}"
        ) from None
    return source, tuple(s.strip() for s in splits.split("+") if s.strip())


@dataclass
class RetrieverSpec:
    """One retriever of the recipe: pretraining (and optionally finetuning) with its stage configs."""

    name: str = ""  # e.g. "bge-base": the run folders are retrievers/<name>/pretrain and .../finetune
    pretrain_config: str = ""  # stage config (RetrieverStageConfig YAML)
    pretrain_data: list[str] = field(
        default_factory=list
    )  # dataset uses, e.g. ["clotho:development", "audiocaps:train"]
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)
    finetune_config: str | None = None  # None: this retriever is not finetuned
    finetune_data: list[str] = field(default_factory=lambda: ["clotho:development"])
    finetune_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaptionerSpec:
    """EnCLAP pretraining with MCM, then finetuning without MCM over several seeds (report §3.2)."""

    pretrain_config: str = ""
    pretrain_data: list[str] = field(default_factory=list)
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)
    finetune_config: str = ""
    finetune_data: list[str] = field(default_factory=lambda: ["clotho:development"])
    finetune_overrides: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class SoupSpec:
    """A uniform soup of finetuned captioners (report §3.3, Submission 2), by seed."""

    name: str = ""
    seeds: list[int] = field(default_factory=list)


@dataclass
class RerankSpec:
    """Reranking-weight tuning on the validation split (report §2.3 fixes 0.7 / 0.3; tuning is optional)."""

    tune: bool = False
    captioner: str = "captioner/finetune/seed0"  # run-root reference of the model whose candidates are tuned on
    weights: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    metric: str = "cider_d"
    use_tuned: bool = False  # True: systems use the tuned w_enc (w_dec = 1 - w_enc) instead of their own


@dataclass
class CodecSpec:
    """The neural codec: ``tiny`` / ``full`` (random DAC, seeded), a Descript ``.pth``, a DacModel folder or a hub
    id. The pipeline materialises it once in ``<run>/codec/`` so every store and system uses the same weights."""

    model: str = "tiny"
    batch_size: int = 8
    chunk_seconds: float = 10.0
    workers: int = 1


@dataclass
class Profile:
    """A whole recipe (see the module docstring). ``systems`` items are recipe files (Task6Recipe / Task8Recipe
    YAML, resolved like stage configs) or inline recipe mappings; their checkpoint references are run-root names
    (``captioner/finetune/seed0``, ``retrievers/bge-base/pretrain``, ``soups/soup5``, ``codec``)."""

    name: str = ""
    description: str = ""
    seed: int = 0
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # manifest options per dataset (may be {})
    codec: CodecSpec = field(default_factory=CodecSpec)
    retrievers: list[RetrieverSpec] = field(default_factory=list)
    clip_embedder: str = ""  # run-root reference of the retriever whose audio tower fills the CLAP slot
    embed_batch_size: int = 8
    captioner: CaptionerSpec = field(default_factory=CaptionerSpec)
    validation: str = "clotho:validation"  # model selection and rerank tuning
    devtest: str = "clotho:evaluation"  # DCASE "development-testing": the scores the systems report
    task6_eval: str = "clotho:test"  # the DCASE Task 6 evaluation audio (the Task 6 CSV)
    task8_eval: str = "clotho:retrieval_audio"  # the DCASE Task 8 audio collection (queries: retrieval_captions.csv)
    soups: list[SoupSpec] = field(default_factory=list)
    rerank: RerankSpec = field(default_factory=RerankSpec)
    task6: list[Any] = field(default_factory=list)  # recipe paths or inline Task6Recipe mappings
    task8: list[Any] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)  # merged into the train: section of every training step
    retriever_overrides: dict[str, Any] = field(default_factory=dict)  # merged into every retriever stage config
    generation: dict[str, Any] = field(default_factory=dict)  # merged into the generation: of every Task 6 system
    team: dict[str, Any] = field(default_factory=dict)  # submission identity: lastname, institute, authors, ...
    technical_report: str | None = None  # PDF to include in the package

    def training_uses(self, model: str | None = None) -> dict[str, list[str]]:
        """{step description: dataset uses} of every training step of the profile (``captioner pretraining``,
        ``retriever <name> finetuning``, ...), or of one model's steps only (``model``: captioner | retriever)."""
        out = {
            "captioner pretraining": list(self.captioner.pretrain_data),
            "captioner finetuning": list(self.captioner.finetune_data),
        }
        for r in self.retrievers:
            out[f"retriever {r.name} pretraining"] = list(r.pretrain_data)
            if r.finetune_config:
                out[f"retriever {r.name} finetuning"] = list(r.finetune_data)
        return {what: uses for what, uses in out.items() if model is None or what.startswith(f"{model} ")}


def list_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path, overrides: Sequence[str] = (), team: str | Path | None = None) -> Profile:
    """A profile by name (``dcase2024``, ``tiny``, ``full-random``) or YAML path, with dotted ``--set`` overrides
    (typed by the profile's fields; ``_base_`` inheritance works as in stage configs) and a team file (lastname,
    institute, authors, technical_report) laid over ``team``. Unknown keys are errors listing the valid ones."""
    from dcase.config import load_config

    path = Path(name_or_path)
    if not path.is_file():
        cand = PROFILES_DIR / f"{name_or_path}.yaml"
        if not cand.is_file():
            raise MissingInputError(
                f"profile {name_or_path!r} not found: not a file, and not one of {list_profiles()} ({PROFILES_DIR})"
            )
        path = cand
    profile = load_config(Profile, path, list(overrides))
    if not profile.name:
        profile.name = path.stem
    for source in profile.datasets:
        parse_use(source)
    if team is not None:
        data = load_yaml(team)
        report = data.pop("technical_report", None)
        profile.team = deep_merge(profile.team, data)
        if report:
            rp = Path(str(report)).expanduser()
            profile.technical_report = str(rp if rp.is_absolute() else Path(team).parent / rp)
    return profile


def stage_overrides(profile: Profile, own: Mapping[str, Any], retriever: bool = False) -> dict[str, Any]:
    """What is merged into a training stage config: the profile's ``train`` section, its ``retriever_overrides``
    (retrievers only), then the step's own overrides."""
    base = {"train": dict(profile.train)} if profile.train else {}
    if retriever:
        base = deep_merge(base, profile.retriever_overrides)
    return deep_merge(base, own)


def uses_by_source(uses: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``["clotho:development", "audiocaps:train"]`` -> {"clotho": ("development",), "audiocaps": ("train",)}."""
    out: dict[str, tuple[str, ...]] = {}
    for u in uses:
        source, splits = parse_use(u)
        out[source] = tuple(dict.fromkeys(out.get(source, ()) + splits))
    return out
