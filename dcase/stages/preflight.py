"""Preflight: everything a pipeline run needs is checked before any model is loaded, and every problem is reported
at once (``dcase pipeline run`` prints the list and exits with status 2).

Checks:
- datasets: each training step finds at least one of its datasets (absent optional datasets are warnings);
- weights and tokenizers: BART, the text encoders, the codec, the CNext initialisation, the FENSE checker and any
  checkpoint a recipe names exist as local files or in the Hugging Face cache (never downloaded here);
- sizes: existing feature stores agree with the planned codec (codebooks, codebook size) and clip embedder
  (embedding size); BART's positions hold the codec frames; tokenizers fit the model vocabulary;
- data leaks: no training step reads an evaluation split (``evaluation``, ``test``, ``retrieval_audio``) unless
  ``--allow-leak``, and no audio file's content appears both in a training split and in an evaluation split
  (files are compared by size first, then by SHA-256 of the candidates only);
- the run: steps already done with other settings, a run root holding another profile's run, placeholder identity
  fields when the package step is selected, the technical report's file name.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcase.data.registry import EVALUATION_SPLITS, is_evaluation_split
from dcase.errors import DcaseError, InputError
from dcase.io import sha256_file

if TYPE_CHECKING:
    from dcase.submission.recipes import Task6Recipe
from dcase.stages.profiles import uses_by_source

log = logging.getLogger(__name__)

RANDOM_CODECS = ("tiny", "full")


class PreflightError(InputError):
    """One or more problems found before the run; the message lists all of them."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"preflight found {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


# ---------------------------------------------------------------------------------------------- resources
def hub_or_local(name: str) -> Path | None:
    """A local folder/file, or the snapshot folder of a hub repository in the Hugging Face cache (never downloads)."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    if name.count("/") != 1 or path.is_absolute() or name.startswith("."):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        return None


def _resource(problems: list[str], what: str, name: str | None, hint: str) -> Path | None:
    if not name:
        return None
    found = hub_or_local(name)
    if found is None:
        problems.append(f"{what}: {name!r} is neither a local path nor in the Hugging Face cache; {hint}")
    return found


def is_random_text_encoder(name: str) -> bool:
    """``tiny-bert`` and ``random:<family>-<size>`` text towers are built with random weights (no files needed)."""
    return name == "tiny-bert" or name.startswith("random:")


def _text_encoder(name: str) -> str:
    from dcase.models.retriever import resolve_text_source

    return name if is_random_text_encoder(name) else resolve_text_source(name)


def check_weights(pipe: Any, problems: list[str]) -> None:
    """Every pretrained model and checkpoint the selected steps load exists locally or in the cache."""
    selected = pipe.selected()
    groups = {s.group for s in selected}
    for step in selected:  # the configs exactly as the steps will run them (profile overrides applied)
        if step.group == "retrievers" and step.name.endswith("/pretrain"):
            _check_retriever_weights(step.name, step.settings["config"], problems)
    for step in selected:
        if step.name == "captioner/pretrain":
            _check_captioner_weights(step.settings["config"], problems)
    if "features" in groups:
        _check_codec_weights(pipe.profile.codec.model, problems)
    if groups & {"rerank", "devtest", "systems"}:
        for recipe in pipe.task_recipes(6):
            _check_recipe_weights(recipe, pipe.profile.clip_embedder, problems)


def _check_retriever_weights(step: str, settings: Mapping[str, Any], problems: list[str]) -> None:
    """A retriever pretraining step's text encoder and CNext initialisation."""
    from dcase.config import from_dict
    from dcase.stages.retriever import RetrieverStageConfig

    cfg = from_dict(RetrieverStageConfig, settings)
    name = _text_encoder(cfg.model.text.name_or_path)
    if not (is_random_text_encoder(name) or cfg.model.text.random_init):
        _resource(
            problems,
            f"{step}: text encoder",
            name,
            "download it on a machine with internet (huggingface-cli download) or give a local folder",
        )
    if cfg.model.audio_init:
        _resource(
            problems,
            f"{step}: CNext initialisation",
            cfg.model.audio_init,
            "give the published CNext .pth (Pellegrini et al.) or a CNext folder",
        )


def _check_captioner_weights(settings: Mapping[str, Any], problems: list[str]) -> None:
    """The captioner pretraining step's BART (or, for a random BART, that its positions hold the codec frames)."""
    from dcase.config import from_dict
    from dcase.stages.captioner import CaptionerStageConfig

    cfg = from_dict(CaptionerStageConfig, settings)
    if cfg.model.bart_name_or_path:
        found = _resource(
            problems,
            "captioner: BART",
            cfg.model.bart_name_or_path,
            "download facebook/bart-large on a machine with internet or give a local folder",
        )
        if found is not None:
            _check_bart(found, cfg.model, problems)
    elif cfg.model.max_codec_positions + 2 > cfg.model.max_position_embeddings:
        problems.append(
            f"captioner: max_codec_positions {cfg.model.max_codec_positions} + 2 (<s>, </s>) exceed "
            f"max_position_embeddings {cfg.model.max_position_embeddings}"
        )


def _check_codec_weights(spec: str, problems: list[str]) -> None:
    """The DAC weights named by the profile (random codecs and codec configs need none)."""
    if spec in RANDOM_CODECS or spec.endswith((".json", ".yaml", ".yml")):
        return
    found = _resource(
        problems,
        "codec",
        spec,
        "give Descript's weights_24khz_8kbps_0.0.4.pth, a DacModel folder, or a cached hub id such as "
        "descript/dac_24khz",
    )
    if found is not None and found.is_dir() and not (found / "config.json").is_file():
        problems.append(f"codec: {found} is a folder without config.json (not a DacModel folder)")


def _check_recipe_weights(recipe: Task6Recipe, clip_embedder: str, problems: list[str]) -> None:
    """A Task 6 recipe's clip embedder matches the profile's; its fluency checker and backbone exist."""
    gen = recipe.generation
    if recipe.clip_embedder and recipe.clip_embedder != clip_embedder:
        problems.append(
            f"task6 {recipe.name}: clip_embedder {recipe.clip_embedder!r} is not the profile's "
            f"{clip_embedder!r}: its captioners would read embeddings of another model"
        )
    if gen.fluency_checker:
        from dcase.decoding.fluency import FluencyCheckerError, resolve_checker_path

        try:
            if not resolve_checker_path(gen.fluency_checker).is_file():
                problems.append(
                    f"task6 {recipe.name}: FENSE fluency checker {gen.fluency_checker!r} not "
                    "found; set generation.fluency_checker: null to run without the filter"
                )
        except FluencyCheckerError as e:
            problems.append(
                f"task6 {recipe.name}: {e}; or run without the filter: --set generation.fluency_checker=null"
            )
    if gen.fluency_backbone and hub_or_local(gen.fluency_backbone) is None:
        problems.append(
            f"task6 {recipe.name}: fluency checker backbone {gen.fluency_backbone!r} is neither a "
            "local folder nor in the Hugging Face cache"
        )


def _check_bart(folder: Path, model_cfg: Any, problems: list[str]) -> None:
    """BART's tokenizer files exist and its vocabulary fits the model; its positions hold the codec frames."""
    if folder.is_dir():
        has_tok = (folder / "tokenizer.json").is_file() or (
            (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
        )
        if not has_tok:
            problems.append(
                f"captioner: BART folder {folder} has no tokenizer (tokenizer.json or vocab.json + merges.txt)"
            )
        cfg_file = folder / "config.json"
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text())
            positions = int(cfg.get("max_position_embeddings", 1024))
            if model_cfg.max_codec_positions + 2 > positions:
                problems.append(
                    f"captioner: max_codec_positions {model_cfg.max_codec_positions} + 2 (<s>, </s>) exceed "
                    f"BART's {positions} positions ({folder})"
                )
            tok = folder / "tokenizer.json"
            if tok.is_file():
                vocab = len(json.loads(tok.read_text()).get("model", {}).get("vocab", {}))
                if vocab > int(cfg.get("vocab_size", vocab)):
                    problems.append(f"captioner: BART tokenizer has {vocab} tokens, the model {cfg['vocab_size']}")


# ---------------------------------------------------------------------------------------------- sizes
def planned_codec_sizes(spec: str) -> dict[str, int] | None:
    """{n_codebooks, codebook_size} of the planned codec, from its config (None when unknown before loading)."""
    from dcase.features.codec import dac_config

    if spec in RANDOM_CODECS or spec.endswith((".json", ".yaml", ".yml")):
        cfg = dac_config(spec)
        return {"n_codebooks": int(cfg.n_codebooks), "codebook_size": int(cfg.codebook_size)}
    found = hub_or_local(spec)
    if found is not None and found.is_dir() and (found / "config.json").is_file():
        cfg = json.loads((found / "config.json").read_text())
        return {"n_codebooks": int(cfg["n_codebooks"]), "codebook_size": int(cfg["codebook_size"])}
    return None  # a Descript .pth: known once converted (32 x 1024 for the 24 kHz model)


def check_sizes(pipe: Any, problems: list[str]) -> None:
    """Existing stores agree with what this run would write into them (codec sizes, embedding size)."""
    from dcase.features.store import FeatureStore

    L = pipe.layout
    planned = planned_codec_sizes(pipe.profile.codec.model) if (L.codec / "config.json").is_file() is False else None
    if (L.codec / "config.json").is_file():
        cfg = json.loads((L.codec / "config.json").read_text())
        planned = {"n_codebooks": int(cfg["n_codebooks"]), "codebook_size": int(cfg["codebook_size"])}
    dims: dict[int, list[str]] = defaultdict(list)
    for step in pipe.steps:
        if not step.name.startswith(("features/codec/", "features/embed/")):
            continue
        store = step.outputs[0].parent
        if not (store / "provenance.json").is_file() or not (store / "index.json").is_file():
            continue
        prov = FeatureStore.open(store).provenance
        if step.name.startswith("features/codec/") and planned:
            have = {
                "n_codebooks": int(prov["n_codebooks"]),
                "codebook_size": int(prov["extractor_config"]["codebook_size"]),
            }
            if have != planned:
                problems.append(
                    f"{store}: the store holds codes with {have}, the planned codec gives {planned}; "
                    "use a new --out or delete the store"
                )
        if step.name.startswith("features/embed/"):
            dims[int(prov["embed_dim"])].append(str(store))
    if len(dims) > 1:
        problems.append(f"clip-embedding stores disagree on the embedding size: {dict(dims)}")


# ---------------------------------------------------------------------------------------------- leaks
def check_leak_splits(profile: Any, problems: list[str], allow_leak: bool) -> list[str]:
    """Training steps that read an evaluation split; problems unless ``allow_leak`` (then returned as notes)."""
    notes: list[str] = []
    for what, uses in profile.training_uses().items():
        for source, splits in uses_by_source(uses).items():
            bad = [s for s in splits if is_evaluation_split(source, s)]
            if not splits:
                bad = [f"every split of {source}"] if source in EVALUATION_SPLITS else []
            if bad:
                msg = (
                    f"{what} reads evaluation data {source}:{bad} (DCASE2024 forbids training on Clotho "
                    "evaluation/test audio)"
                )
                (notes if allow_leak else problems).append(
                    msg
                    + (
                        ""
                        if allow_leak
                        else "; pass --allow-leak to run anyway (recorded in the run and the meta YAML)"
                    )
                )
    return notes


def duplicate_audio(train: Iterable[Path], evaluation: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(training file, evaluation file) pairs with identical content. Files are grouped by size first; only files
    whose size occurs on both sides are hashed, so the cost is one stat per file plus a few hashes."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for p in evaluation:
        by_size[p.stat().st_size].append(p)
    eval_hash: dict[Path, str] = {}
    pairs = []
    for t in train:
        candidates = by_size.get(t.stat().st_size)
        if not candidates:
            continue
        th = sha256_file(t)
        for e in candidates:
            if e.resolve() == t.resolve():
                pairs.append((t, e))
                continue
            if e not in eval_hash:
                eval_hash[e] = sha256_file(e)
            if eval_hash[e] == th:
                pairs.append((t, e))
    return pairs


def check_duplicate_audio(pipe: Any, problems: list[str], allow_leak: bool) -> list[str]:
    """No audio file of a training split has the content of an evaluation-split file (any dataset)."""
    from dcase.data.locate import audio_files

    train_splits: dict[str, set[str]] = defaultdict(set)
    for uses in pipe.profile.training_uses().values():
        for source, splits in uses_by_source(uses).items():
            train_splits[source].update(splits or ["*"])
    train: list[Path] = []
    evaluation: list[Path] = []
    for entry in pipe.found:
        source = entry.source
        files = audio_files(entry)
        for split, paths in files.items():
            if is_evaluation_split(source, split):
                evaluation.extend(paths)
            elif split in train_splits.get(source, ()) or "*" in train_splits.get(source, ()):
                train.extend(paths)
    notes: list[str] = []
    pairs = duplicate_audio(train, evaluation)
    for t, e in pairs[:20]:
        msg = f"training audio {t} has the same content as evaluation audio {e}"
        (notes if allow_leak else problems).append(msg)
    if len(pairs) > 20:
        (notes if allow_leak else problems).append(f"... and {len(pairs) - 20} more duplicated files")
    return notes


# ---------------------------------------------------------------------------------------------- run
def check_run(pipe: Any, problems: list[str]) -> None:
    """The run root: not another profile's run; no selected step done with other settings; identity and report
    ready when the package step is selected."""
    from dcase.stages.pipeline import statuses

    root = pipe.layout.root
    if root.exists() and not root.is_dir():
        problems.append(f"--out {root} is a file, not a folder")
        return
    prev = pipe.layout.state / "profile.yaml"
    if prev.is_file():
        import yaml

        name = (yaml.safe_load(prev.read_text()) or {}).get("name")
        if name and name != pipe.profile.name:
            problems.append(
                f"--out {root} holds a run of profile {name!r}, not {pipe.profile.name!r}; use another --out"
            )
    selected = {s.name for s in pipe.selected()}
    made: set[Path] = set()
    for step in pipe.selected():
        missing = [p for p in step.inputs if not p.exists() and p not in made]
        if missing:
            problems.append(
                f"step {step.name} needs {[str(p) for p in missing[:3]]}, which no selected step makes and "
                "which does not exist yet; run the steps that make it first (see dcase pipeline plan)"
            )
        made.update(step.outputs)
    for st in statuses(pipe):
        if st.step.name in selected and st.state == "changed":
            problems.append(
                f"step {st.step.name} is done with other settings ({st.detail}); use a new --out or "
                f"delete {', '.join(str(p.parent) for p in st.step.outputs)}"
            )
    if "package" in selected:
        from dcase.submission.meta import placeholder_fields

        for task in (6, 8):
            for recipe in pipe.task_recipes(task):
                bad = placeholder_fields(recipe.meta)
                if bad:
                    problems.append(
                        f"task{task} system {recipe.meta.get('index')}: identity fields {bad} still hold "
                        "template placeholders; give your team with --team team.yaml (see CHALLENGE.md)"
                    )
        report = pipe.profile.technical_report
        if report:
            from dcase.submission.package import check_report_name

            try:
                check_report_name(Path(report), pipe.profile.team)
            except DcaseError as e:  # missing file, not a PDF, wrong name: listed with the other problems
                problems.append(f"technical_report of the team YAML (a path relative to that file): {e}")


def preflight(pipe: Any) -> list[str]:
    """Run every check; returns notes (e.g. leaks allowed by --allow-leak). Raises PreflightError listing all
    problems."""
    problems: list[str] = list(getattr(pipe, "problems", []))
    allow = pipe.options.allow_leak
    notes = check_leak_splits(pipe.profile, problems, allow)
    notes += check_duplicate_audio(pipe, problems, allow)
    check_weights(pipe, problems)
    check_sizes(pipe, problems)
    check_run(pipe, problems)
    if problems:
        raise PreflightError(problems)
    for n in notes:
        log.warning("preflight (allowed by --allow-leak): %s", n)
    return notes
