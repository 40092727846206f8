"""Sharing checkpoints and systems on the Hugging Face Hub: a generated model card and ``dcase push``.

What can be shared (``prepare_upload``):

- a training run folder (``dcase.training``: its best checkpoint, found through ``best.json``), with its
  ``curves.png``;
- a checkpoint folder (EnCLAP, retriever or CNext: ``config.json`` + ``model.safetensors``, ``dcase.checkpoint``);
- a system folder (``system.json`` + its checkpoints, ``dcase.stages.systems.export_system``).

The upload is the folder as it is plus a ``README.md`` model card (YAML front matter + text) built from the run's
records only: the model config (``config.json``), the training data (the manifests named by the run's
``config.yaml``, and the datasets their rows come from), the scores (``best.json`` and the last validation record of
``train_log.jsonl``; for a pipeline system, the ``results`` of its meta YAML) and the licence of every set of weights
it started from (read from that source's own model card, ``license:`` in its front matter, when it is on this
machine; otherwise the card says it is unknown). A pushed repository loads back by its id, from the cache when
offline: ``EnCLAP.from_pretrained("org/name")``, ``Captioner.from_pretrained("org/name")``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from dcase.curves import LOG_FILE
from dcase.errors import DcaseError, InputError, MissingInputError

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
PROJECT_LICENCE = "mit"  # this toolkit's licence: weights trained here from random initialisation
KIND_NAMES = {
    "enclap": "EnCLAP audio captioner (DAC codes + clip embedding into BART)",
    "retriever": "audio-text retriever (CNext audio tower + text encoder, m-LTM)",
    "cnext": "CNext audio encoder",
}


class HubError(DcaseError):
    """The Hub cannot be reached (offline mode, no network, no permission) or refused the upload."""


# -------------------------------------------------------------------------------------------- what it is
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card (``---`` ... ``---`` at the top), or {}."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def source_licence(name_or_path: str | None) -> str | None:
    """The licence declared by a source of weights (a local folder or a Hub repository in the cache, or an
    all-MiniLM-L6-v2 name, which resolves to the packaged copy): ``license`` in its README front matter, or None."""
    if not name_or_path:
        return None
    from dcase.models.retriever import resolve_text_source

    p = Path(resolve_text_source(str(name_or_path))).expanduser()
    folders = [p if p.is_dir() else p.parent] if p.exists() else []
    if not folders and str(name_or_path).count("/") == 1:
        try:
            from huggingface_hub import snapshot_download

            folders.append(Path(snapshot_download(str(name_or_path), local_files_only=True)))
        except Exception:  # noqa: BLE001 - any lookup failure means "not in the cache"
            return None
    for folder in folders:
        card = folder / CARD_FILE
        if card.is_file():
            lic = front_matter(card.read_text(encoding="utf-8")).get("license")
            if lic:
                return str(lic)
    return None


def _weights_sources(kind: str, config: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(what, source) of the pretrained weights a checkpoint of ``kind`` started from; source None = random init."""
    if kind == "enclap":
        return [("BART", (config.get("enclap") or {}).get("bart_name_or_path"))]
    if kind == "retriever":
        return [
            ("text encoder", (config.get("text") or {}).get("name_or_path")),
            ("audio tower (CNext)", config.get("audio_init")),
        ]
    return [("CNext", None)]


def _checkpoint_info(folder: Path) -> tuple[str, dict[str, Any]]:
    from dcase.checkpoint import CONFIG_NAME

    data = _read_json(folder / CONFIG_NAME)
    kind = data.get("dcase_kind")
    if kind not in KIND_NAMES:
        raise InputError(f"{folder}: not a dcase checkpoint (no {CONFIG_NAME} with dcase_kind); nothing to describe")
    return str(kind), dict(data.get("config") or {})


def _datasets(run_dir: Path | None) -> tuple[list[str], list[str]]:
    """(dataset names, manifest descriptions) of a training run, from its ``config.yaml``: the ``data`` section's
    manifests; dataset names from their rows' ``source`` when the manifests are on this machine."""
    from dcase.stages.systems import DATASET_NAMES

    if run_dir is None:
        return [], []
    data = _read_yaml(run_dir / "config.yaml").get("data") or {}
    manifests = [str(m) for m in data.get("train_manifests") or []]
    splits = data.get("train_splits") or []
    names: list[str] = []
    for m in manifests:
        try:
            import pandas as pd

            sources = pd.read_parquet(m, columns=["source"])["source"].unique()
            names.extend(DATASET_NAMES.get(str(s), str(s)) for s in sources)
        except (OSError, ValueError, KeyError, ImportError):
            continue
    described = [f"{Path(m).name}" + (f" (splits {', '.join(map(str, splits))})" if splits else "") for m in manifests]
    return sorted(dict.fromkeys(names)), described


def _scores(run_dir: Path | None) -> dict[str, float]:
    """Validation scores of a training run: the best checkpoint's metric (``best.json``) and the last validation
    (the metrics logged at the last evaluated update) of ``train_log.jsonl`` (``dcase.curves.read_train_log``; an
    unreadable log leaves the validation scores out)."""
    from dcase.curves import read_train_log

    if run_dir is None:
        return {}
    out: dict[str, float] = {}
    if (run_dir / LOG_FILE).is_file():
        try:
            evals = read_train_log(run_dir)["eval"]
        except InputError as e:
            log.warning("model card: no validation scores (%s)", e)
            evals = {}
        last = max((points[-1][0] for points in evals.values() if points), default=None)
        for metric, points in evals.items():
            if points and points[-1][0] == last:
                out[f"validation {metric} (update {last})"] = points[-1][1]
    best = _read_json(run_dir / "best.json")
    if best.get("checkpoints"):
        top = best["checkpoints"][0]
        out[f"best {best.get('metric')} (update {top.get('step')})"] = float(top["value"])
    return out


def _system_records(folder: Path) -> tuple[dict[str, float], list[str]]:
    """A pipeline system's development-testing results and training datasets, from the meta YAML beside its
    folder (``<run>/systems/task6_<n>/<label>.meta.yaml``); empty when there is none."""
    for path in sorted(folder.parent.glob("*.meta.yaml")):
        meta = _read_yaml(path)
        results = meta.get("results") or {}
        flat = {
            f"{split.replace('_', '-')} {k}": float(v)
            for split, d in results.items()
            if isinstance(d, dict)
            for k, v in d.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        data = ((meta.get("system") or {}).get("description") or {}).get("train_datasets") or []
        return flat, [str(d) for d in data]
    return {}, []


# ------------------------------------------------------------------------------------------------- card
def model_card(source: str | Path, repo_id: str | None = None) -> str:
    """The ``README.md`` of an upload of ``source`` (a training run, checkpoint or system folder)."""
    from dcase import __version__
    from dcase.checkpoint import resolve_checkpoint
    from dcase.stages.systems import SYSTEM_FILE

    src = Path(source)
    if not src.is_dir():
        raise MissingInputError(f"{src}: no such folder (a training run, checkpoint or system folder)")
    run_dir = src if (src / LOG_FILE).is_file() or (src / "best.json").is_file() else None
    if run_dir is None and (src.parent / LOG_FILE).is_file():
        run_dir = src.parent  # a checkpoint inside a run (<run>/last)
    if run_dir is None and (src.parent.parent / LOG_FILE).is_file():
        run_dir = src.parent.parent  # <run>/checkpoints/step-N
    title = repo_id or src.resolve().name
    licences: list[tuple[str, str | None, str | None]] = []  # (part, source, licence)
    configs: dict[str, Any] = {}
    if (src / SYSTEM_FILE).is_file():
        doc = _read_json(src / SYSTEM_FILE)
        kind = f"task{doc.get('task')}-system"
        what = (
            "DCASE2024 Task 6 audio-captioning system (DAC codec, clip embedder, EnCLAP captioner(s), retriever "
            "reranking)"
            if doc.get("task") == 6
            else "DCASE2024 Task 8 language-based audio retrieval system"
        )
        parts: dict[str, str] = {}  # folder -> the role it was first named for (one checkpoint may have two roles)
        for key in ("captioners", "retriever", "clip_embedder", "retrievers"):
            for rel in _listify(doc.get(key)):
                parts.setdefault(str(rel), key)
        for rel, key in parts.items():
            k, cfg = _checkpoint_info(src / rel)
            configs[f"{key} ({rel})"] = cfg
            licences += [
                (f"{rel}: {w}", s, source_licence(s) if s else PROJECT_LICENCE) for w, s in _weights_sources(k, cfg)
            ]
        if doc.get("codec"):
            licences.append((f"{doc['codec']}: DAC codec", "not recorded in the system folder", None))
        scores, data_names = _system_records(src)
        settings = {k: v for k, v in doc.items() if k in ("generation", "mode", "ensemble")}
        data_desc: list[str] = []
        usage = (
            "from dcase.api import Captioner\n\n"
            f'captioner = Captioner.from_pretrained("{title}")\n'
            'print(captioner.caption(["my_clip.wav"]))'
            if doc.get("task") == 6
            else "from dcase.api import Retriever\n\n"
            f'retriever = Retriever.from_pretrained("{title}")\n'
            'retriever.index("my_sounds/")\nprint(retriever.search("a dog barks", k=10))'
        )
    else:
        folder = resolve_checkpoint(src)
        kind, cfg = _checkpoint_info(folder)
        what = KIND_NAMES[kind]
        configs[kind] = cfg
        licences += [(w, s, source_licence(s) if s else PROJECT_LICENCE) for w, s in _weights_sources(kind, cfg)]
        scores = _scores(run_dir)
        settings = {}
        data_names, data_desc = _datasets(run_dir)
        cls = {"enclap": "EnCLAP", "retriever": "Retriever", "cnext": "CNext"}[kind]
        module = {"enclap": "enclap", "retriever": "retriever", "cnext": "cnext"}[kind]
        usage = f'from dcase.models.{module} import {cls}\n\nmodel = {cls}.from_pretrained("{title}")'
    known = {lic for _, _, lic in licences if lic}
    unknown = [part for part, _, lic in licences if not lic]
    licence = known.pop() if len(known) == 1 and not unknown else "other"
    meta: dict[str, Any] = {
        "license": licence,
        "library_name": "dcase",
        "tags": [
            "audio",
            "dcase2024",
            kind,
            "audio-captioning" if kind in ("enclap", "task6-system") else "audio-retrieval",
        ],
    }
    if data_names:
        meta["datasets"] = data_names
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {title}",
        "",
        f"A {what}, made with the `dcase` toolkit {__version__} (EnCLAP, Kim et al., ICASSP 2024, and its DCASE2024 "
        "technical report).",
        "",
        "## Use",
        "",
        "```python",
        usage,
        "```",
        "",
        "Offline (`HF_HUB_OFFLINE=1`) it loads from the local Hugging Face cache.",
        "",
        "## Training data",
        "",
    ]
    if data_names or data_desc:
        lines += [f"- datasets: {', '.join(data_names) or 'not recorded'}", *[f"- manifest: {d}" for d in data_desc]]
    else:
        lines.append("Not recorded with these weights (see the run that produced them).")
    lines += ["", "## Scores", ""]
    if scores:
        lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v:.4f} |" for k, v in scores.items()]]
    else:
        lines.append("No scores recorded with these weights.")
    lines += [
        "",
        "## Licence of the weights it came from",
        "",
        "| part | initialised from | licence |",
        "|---|---|---|",
    ]
    for part, s, lic in licences:
        lines.append(
            f"| {part} | {s or 'random initialisation, trained with dcase'} | "
            f"{lic or 'unknown: not recorded here; check the source of these weights'} |"
        )
    lines += ["", "## Configuration", ""]
    if settings:
        lines += ["```yaml", yaml.safe_dump(settings, sort_keys=False).strip(), "```", ""]
    for name, cfg in configs.items():
        lines += [f"{name}:", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).strip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _listify(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v) if isinstance(v, list | tuple) else [v]


# ------------------------------------------------------------------------------------------------ upload
def prepare_upload(source: str | Path, out: str | Path, repo_id: str | None = None) -> Path:
    """Write the folder that ``push`` uploads: the checkpoint (a run's best) or system files, hard-linked where
    possible, the model card ``README.md`` and, for a training run, its ``curves.png``. Returns ``out``."""
    from dcase.checkpoint import resolve_checkpoint
    from dcase.io import atomic_dir, link_or_copy_tree
    from dcase.stages.systems import SYSTEM_FILE

    src = Path(source)
    if not src.is_dir():
        raise MissingInputError(f"{src}: no such folder (a training run, checkpoint or system folder)")
    card = model_card(src, repo_id)
    folder = src if (src / SYSTEM_FILE).is_file() else resolve_checkpoint(src)
    with atomic_dir(out) as tmp:
        link_or_copy_tree(folder.resolve(), tmp)
        if (src / "curves.png").is_file() and folder.resolve() != src.resolve():
            shutil.copy2(src / "curves.png", tmp / "curves.png")
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
    return Path(out)


def push(
    source: str | Path, repo_id: str, private: bool = False, token: str | None = None, endpoint: str | None = None
) -> str:
    """Upload ``source`` (see ``prepare_upload``) to the Hub repository ``repo_id`` (created when missing); returns
    the commit URL. Offline mode or an unreachable Hub is a ``HubError`` that says what to do."""
    import tempfile

    from dcase.checkpoint import _hub_offline

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise InputError(f"repository id {repo_id!r}: expected owner/name")
    if _hub_offline():
        raise HubError(
            "dcase push needs the network, but HF_HUB_OFFLINE is set; unset it on a machine with internet access, or "
            "write the folder with `dcase push SOURCE REPO_ID --out DIR` and upload DIR later "
            "(huggingface-cli upload REPO_ID DIR)"
        )
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="dcase-push-") as tmp:
        staged = prepare_upload(source, Path(tmp) / "upload", repo_id)
        api = HfApi(endpoint=endpoint, token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(staged), commit_message="dcase push")
        except Exception as e:  # noqa: BLE001 - network, HTTP and auth errors come in many types
            where = endpoint or os.environ.get("HF_ENDPOINT", "https://huggingface.co")
            raise HubError(
                f"could not upload to {repo_id} at {where}: {type(e).__name__}: {e}. Check the network and your "
                "token (huggingface-cli login or --token); `--out DIR` writes the folder without uploading it"
            ) from e
    return str(getattr(info, "commit_url", info))
