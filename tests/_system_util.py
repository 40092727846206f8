"""Test helper: tiny Task 6 / Task 8 system folders (``export_system``) and a folder of varied audio files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

JOINT = 8


def write_audio(path: Path, seconds: float, sr: int, channels: int = 1, freq: float = 440.0, seed: int = 0) -> Path:
    """A tone with noise and a slow amplitude wobble, at ``sr`` Hz with ``channels`` channels."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t)) + 0.05 * rng.standard_normal(
        len(t)
    )
    if channels > 1:
        x = np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), sr)
    return path


def build_parts(root: Path) -> dict[str, Path]:
    """A tiny captioner (codebooks of the tiny DAC, clip slot = the retriever's joint space), a tiny retriever
    (tiny CNext + tiny BERT text tower) and the tiny random DAC, each saved as a checkpoint folder."""
    from _decode_util import tiny_captioner
    from _retriever_util import build_tiny_bert

    from dcase.features.codec import materialize_codec
    from dcase.models.cnext import CNextConfig
    from dcase.models.retriever import Retriever, RetrieverConfig, TextTowerConfig

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    text_dir = build_tiny_bert(root / "bert", hidden=16, layers=1)
    ret = Retriever.build(
        RetrieverConfig(
            audio=CNextConfig.tiny(), text=TextTowerConfig(name_or_path=str(text_dir)), joint_dim=JOINT, loss="infonce"
        )
    )
    ret.save_pretrained(root / "retriever")
    tiny_captioner(seed=0, eos_bias=0.0, clip_dim=JOINT, codebook_size=64).save_pretrained(root / "cap")
    materialize_codec("tiny", root / "codec")
    return {"captioner": root / "cap", "retriever": root / "retriever", "codec": root / "codec"}


def generation_settings(num_candidates: int = 6, seed: int = 7) -> dict:
    from dcase.config import to_dict
    from dcase.decoding.sample import SamplingConfig
    from dcase.stages.generation import GenerationSettings

    gen = GenerationSettings(
        chunk_clips=2,
        sampling=SamplingConfig(num_candidates=num_candidates, max_new_tokens=10, batch_clips=2, seed=seed),
    )
    return json.loads(json.dumps(to_dict(gen)))


def build_system(root: Path, parts: dict[str, Path] | None = None, **gen_kw) -> Path:
    """A Task 6 system folder at ``root/system`` (the retriever is also the clip embedder, as in the recipes)."""
    from dcase.stages.systems import export_system

    parts = parts or build_parts(root / "parts")
    return export_system(
        root / "system",
        6,
        {
            "captioners": [parts["captioner"]],
            "retriever": parts["retriever"],
            "clip_embedder": parts["retriever"],
            "codec": parts["codec"],
        },
        {"name": "tiny", "label": "Test_T_task6_1", "generation": generation_settings(**gen_kw)},
    )


def build_task8_system(root: Path, retrievers: list[Path]) -> Path:
    from dcase.stages.systems import export_system

    return export_system(
        root / "system8", 8, {"retrievers": list(retrievers)}, {"name": "t8", "mode": "cosine", "label": "x"}
    )


def hub_cache(cache: Path, repo_id: str, folder: Path, revision: str = "0" * 40) -> Path:
    """Lay ``folder`` out in ``cache`` as the Hugging Face Hub cache holds a downloaded model repository:
    ``models--org--name/snapshots/<revision>/`` and ``refs/main``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "blobs").mkdir(exist_ok=True)
    return snap
