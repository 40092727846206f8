"""The report's 12 retriever configs (configs/dcase2024/retriever_*): one shared base, small per-encoder files, and
resolved configs that agree wherever the report's retrievers do not differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dcase.config import load_config, to_dict
from dcase.stages.retriever import RetrieverStageConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "dcase2024"
TEXT = {
    "bge-base": ("BAAI/bge-base-en-v1.5", "cls"),
    "bert-base": ("bert-base-uncased", "mean"),
    "roberta-base": ("roberta-base", "mean"),
    "bge-large": ("BAAI/bge-large-en-v1.5", "cls"),
    "bert-large": ("bert-large-uncased", "mean"),
    "roberta-large": ("roberta-large", "mean"),
}
PER_ENCODER = {"model.text.name_or_path", "model.text.pooling", "train.output_dir"}
FINETUNE = {
    "data.train_manifests",
    "data.train_splits",
    "train.output_dir",
    "train.max_steps",
    "train.lr",
    "train.warmup_steps",
    "train.eval_every",
    "train.save_every",
}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _resolved(name: str) -> dict:
    return _flat(to_dict(load_config(RetrieverStageConfig, CONFIGS / name)))


def _differing(a: dict, b: dict) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


def test_twelve_configs_share_one_base() -> None:
    pre = {e: _resolved(f"retriever_{e}_pretrain.yaml") for e in TEXT}
    fine = {e: _resolved(f"retriever_{e}_finetune.yaml") for e in TEXT}
    ref = pre["bge-base"]
    for e in TEXT:
        # pretraining configs differ only by the text tower and the output folder
        assert _differing(pre[e], ref) <= PER_ENCODER, e
        assert (pre[e]["model.text.name_or_path"], pre[e]["model.text.pooling"]) == TEXT[e]
        assert pre[e]["train.output_dir"] == f"runs/retriever_{e}_pretrain"
        # finetuning = its pretraining config with the finetuning data and schedule
        assert _differing(fine[e], pre[e]) <= FINETUNE, e
        assert fine[e]["train.output_dir"] == f"runs/retriever_{e}_finetune"
        assert fine[e]["data.train_manifests"] == ["data/clotho/manifest.parquet"]
        assert (fine[e]["train.max_steps"], fine[e]["train.lr"]) == (1500, 2.0e-5)
        # the small files state only what differs
        own = yaml.safe_load((CONFIGS / f"retriever_{e}_pretrain.yaml").read_text())
        assert own["_base_"] == "retriever_base.yaml"
        assert set(_flat({k: v for k, v in own.items() if k != "_base_"})) == PER_ENCODER
        own_ft = yaml.safe_load((CONFIGS / f"retriever_{e}_finetune.yaml").read_text())
        assert own_ft["_base_"] == f"retriever_{e}_pretrain.yaml"
        assert set(_flat({k: v for k, v in own_ft.items() if k != "_base_"})) == FINETUNE


@pytest.mark.parametrize("name", [f"retriever_{e}_{s}.yaml" for e in TEXT for s in ("pretrain", "finetune")])
def test_what_runs_matches_the_comments(name: str) -> None:
    """The settings the comments describe: diagonal metric, Sinkhorn to 1e-9 / 1000 iterations, 32 pairs per
    process, no accumulation (one transport problem over the gathered global batch)."""
    c = _resolved(name)
    assert c["model.loss"] == "mltm" and c["model.mltm_metric"] == "diagonal"
    assert (c["model.mltm_iters"], c["model.mltm_tol"], c["model.mltm_gradient"]) == (1000, 1e-9, "implicit")
    assert (c["model.joint_dim"], c["model.mltm_epsilon"], c["model.mltm_mass"]) == (1024, 0.03, 1.0)
    assert (c["train.batch_size"], c["train.grad_accum"]) == (32, 1)
    assert (c["train.max_grad_norm"], c["train.mixed_precision"]) == (2.0, "bf16")
    text = (CONFIGS / "retriever_base.yaml").read_text()
    assert "32 x processes" in text and "128 on 4 GPUs" in text and "grad_accum must stay 1" in text
