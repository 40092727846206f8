"""The submitted systems' recipes (submissions/task6_*.yaml, task8_*.yaml) and the runs that turn them into
validated submission files.

- ``Task6Recipe``: captioner checkpoints (or uniform soups of them), the retriever for the encoder score, the clip
  embedder and codec of the features, and a ``generation`` sub-config (``stages.generation.GenerationSettings``:
  sampling, reranking weights, fluency filter, ...). ``run_task6_recipe`` = ``dcase submit task6``.
- ``Task8Recipe``: retriever checkpoints (several = an ensemble) and the ranking mode. ``run_task8_recipe`` =
  ``dcase submit task8``.

Relative checkpoint paths resolve under the recipe's ``root``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dcase.checkpoint import kind_of
from dcase.config import ConfigError
from dcase.data.manifest import folder_rows, write_manifest
from dcase.decoding.fluency import FENSE_DEFAULT
from dcase.errors import MissingInputError
from dcase.io import check_output
from dcase.stages.generation import GenerateConfig, GenerationSettings, generate_candidates, task6_rows
from dcase.stages.retriever import MODES, rank_task8
from dcase.submission.formats import write_task6, write_task8
from dcase.submission.meta import build_meta, placeholder_fields, write_meta

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- Task 6
@dataclass
class SoupSpec:
    """A soup built from ingredient checkpoints (paths under the recipe root) before decoding."""

    name: str = ""
    ingredients: list[str] = field(default_factory=list)
    method: str = "uniform"  # uniform only here (greedy soups need a validation evaluator: build them with dcase soup)


@dataclass
class Task6Recipe:
    """One submitted Task 6 system (submissions/task6_*.yaml). Relative paths resolve under ``root``.

    ``captioners`` name checkpoint folders or soups (``soups[].name``); soups are averaged into
    ``<work_dir>/soups/<name>`` when missing. ``clip_embedder`` made the captioners' clip embeddings (the CLAP
    slot); ``retriever`` scores candidates (they may be the same checkpoint). ``codec``: a DacModel folder (see
    ``dcase extract convert-dac``), or ``tiny``/``full`` for random weights (tests only). ``generation``: how
    candidates are sampled, scored and chosen (its fluency checker paths also resolve under ``root``).
    """

    name: str = ""
    description: str = ""
    root: str = "checkpoints"
    captioners: list[str] = field(default_factory=list)
    soups: list[SoupSpec] = field(default_factory=list)
    retriever: str | None = None
    clip_embedder: str = ""
    codec: str = "dac_24khz"
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    meta: dict = field(default_factory=dict)  # dcase.submission.meta.build_meta input (label parts, authors, ...)


def load_task6_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Task6Recipe:
    from dcase.config import load_config

    return load_config(Task6Recipe, path, list(overrides))


def _resolve(root: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else root / q


def recipe_captioners(recipe: Task6Recipe, work_dir: str | Path, root: str | Path | None = None) -> list[Path]:
    """Checkpoint folders of the recipe's captioners, building missing soups into ``<work_dir>/soups``."""
    from dcase.merging import soup_checkpoints

    base = Path(root if root is not None else recipe.root)
    soups = {s.name: s for s in recipe.soups}
    if len(soups) != len(recipe.soups):
        raise ConfigError(f"recipe {recipe.name!r}: two soups share a name")
    out = []
    for c in recipe.captioners:
        if c in soups:
            spec = soups[c]
            if spec.method != "uniform":
                raise ConfigError(
                    f"soup {c!r}: recipes build uniform soups; build a {spec.method} soup with "
                    "`dcase soup --method greedy` and list its folder as a captioner"
                )
            target = Path(work_dir) / "soups" / c
            if kind_of(target) != "enclap":
                ingredients = [_resolve(base, p) for p in spec.ingredients]
                missing = [str(p) for p in ingredients if not p.is_dir()]
                if missing:
                    raise MissingInputError(f"soup {c!r}: ingredient checkpoint(s) not found: {missing}")
                soup_checkpoints(ingredients, target, overwrite=True)
            out.append(target)
        else:
            p = _resolve(base, c)
            kind = kind_of(p)
            if kind != "enclap":
                found = f"a {kind} checkpoint" if kind else "not found"
                raise MissingInputError(
                    f"recipe {recipe.name!r}: captioner checkpoint {p}: {found} "
                    "(set the recipe root with --root or --set root=DIR)"
                )
            out.append(p)
    if not out:
        raise ConfigError(f"recipe {recipe.name!r} lists no captioners")
    return out


def run_task6_recipe(
    recipe: Task6Recipe,
    audio_dir: str | Path,
    out_csv: str | Path,
    meta_out: str | Path | None = None,
    work_dir: str | Path | None = None,
    root: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, Path | None]:
    """Everything ``dcase submit task6`` does: manifest of ``audio_dir`` -> codec + clip-embedding stores
    (extracted when missing, resumable) -> soups -> candidates -> Task 6 CSV (validated) + meta YAML."""
    from dcase.features.extract import extract_codec, extract_embeddings

    out_csv = Path(out_csv)
    for p in (out_csv, meta_out):
        if p is not None:
            check_output(p, overwrite)
    meta = build_meta(recipe.meta, 6) if meta_out is not None else None  # fail early on bad meta
    bad = placeholder_fields(recipe.meta)
    if bad:
        log.warning(
            "recipe %r: meta fields %s still hold template placeholders; fill them in before packaging",
            recipe.name,
            bad,
        )
    base = Path(root if root is not None else recipe.root)
    work = Path(work_dir) if work_dir is not None else out_csv.with_name(out_csv.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "manifest.parquet"
    write_manifest(folder_rows(audio_dir, "evaluation"), manifest)
    codec = recipe.codec if recipe.codec in ("tiny", "full") else str(_resolve(base, recipe.codec))
    codec_store, embed_store = work / "codec", work / "embed"
    extract_codec(manifest, codec_store, codec, progress=progress)
    if not recipe.clip_embedder:
        raise ConfigError(f"recipe {recipe.name!r}: clip_embedder (the checkpoint behind the clip embeddings) is empty")
    extract_embeddings(manifest, embed_store, _resolve(base, recipe.clip_embedder), progress=progress)
    captioners = recipe_captioners(recipe, work, base)
    g = recipe.generation
    generation = dataclasses.replace(
        g,
        fluency_checker=(
            str(_resolve(base, g.fluency_checker))
            if g.fluency_checker not in (None, FENSE_DEFAULT)
            else g.fluency_checker
        ),
        fluency_backbone=str(_resolve(base, g.fluency_backbone)) if g.fluency_backbone else None,
    )
    cfg = GenerateConfig(
        captioners=[str(p) for p in captioners],
        retriever=str(_resolve(base, recipe.retriever)) if recipe.retriever else None,
        manifest=str(manifest),
        codec_stores=[str(codec_store)],
        embed_stores=[str(embed_store)],
        out=str(work / "candidates.parquet"),
        generation=generation,
    )
    table = generate_candidates(cfg, progress=progress, overwrite=True)
    write_task6(task6_rows(table), out_csv, overwrite=overwrite, audio_dir=audio_dir)  # validated as written
    meta_path = None
    if meta is not None and meta_out is not None:
        meta_path = write_meta(meta, meta_out, overwrite=overwrite)
    return out_csv, meta_path


# ------------------------------------------------------------------------------------------------- Task 8
@dataclass
class Task8Recipe:
    """A submitted Task 8 system: which retrievers (paths under ``root``) and how they rank."""

    name: str = ""
    description: str = ""
    root: str = "checkpoints/retrievers"
    retrievers: list[str] = field(default_factory=list)
    mode: str = "cosine"
    batch_size: int = 16
    max_seconds: float = 30.0
    meta: dict = field(default_factory=dict)  # DCASE meta information (dcase.submission.meta.build_meta)

    def paths(self, root: str | Path | None = None) -> list[Path]:
        """Checkpoint directories (relative entries resolve under ``root``, default the recipe's)."""
        root = Path(root or self.root)
        out = [_resolve(root, p) for p in self.retrievers]
        missing = [str(p) for p in out if kind_of(p) != "retriever"]
        if missing:
            raise MissingInputError(f"recipe {self.name!r}: retriever checkpoint(s) not found: {missing}")
        return out


def load_task8_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Task8Recipe:
    from dcase.config import load_config

    rec = load_config(Task8Recipe, path, list(overrides))
    if rec.mode not in MODES:
        raise ConfigError(f"{path}: mode {rec.mode!r} is not one of {MODES}")
    if not rec.retrievers:
        raise ConfigError(f"{path}: the recipe lists no retrievers")
    return rec


def run_task8_recipe(
    recipe: Task8Recipe,
    audio: str | Path,
    captions: str | Path,
    out: str | Path,
    meta_out: str | Path | None = None,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
    device: str = "cpu",
) -> tuple[Path, Path | None]:
    """Rank with the recipe's retrievers, write the validated Task 8 CSV (and the meta YAML if asked)."""
    paths = recipe.paths(root)
    for p in (out, meta_out):
        if p is not None:
            check_output(p, overwrite)
    rows = rank_task8(
        paths,
        audio,
        captions,
        mode=recipe.mode,
        batch_size=recipe.batch_size,
        max_seconds=recipe.max_seconds,
        cache_dir=cache_dir,
        device=device,
    )
    audio_dir = audio if Path(audio).is_dir() else None
    csv_path = write_task8(rows, out, overwrite=overwrite, audio_dir=audio_dir, references=captions)
    meta_path = None
    if meta_out is not None:
        if not recipe.meta:
            raise ConfigError(f"recipe {recipe.name!r} has no meta section for --meta-out")
        meta_path = write_meta(build_meta(recipe.meta, task=8), meta_out, overwrite=overwrite)
    return Path(csv_path), meta_path
