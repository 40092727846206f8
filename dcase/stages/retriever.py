"""The retriever stage: training (m-LTM, shared Accelerate loop), evaluation, ensembles and Task 8 ranking.

EnCLAP DCASE2024 report §2.2, §3.2, Table 1:
- pretraining on Clotho development + AudioCaps + WavCaps, finetuning on Clotho development (``init``);
- text-to-audio evaluation on Clotho: every caption of a clip is a query whose only relevant item is that clip;
- ensembles average per-query z-scored similarity matrices of several retrievers (``ensemble_similarity``);
- Task 8: each query of ``retrieval_captions.csv`` gets the 10 best audio files of the test collection.

Ranking modes: ``cosine`` (inner products of the L2-normalised joint embeddings, searched with a faiss
inner-product index) and ``sinkhorn`` (the log entropic-OT plan between the whole query set and the whole
collection under the model's ground cost: transductive, as the m-LTM paper evaluates).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from dcase.config import check_inputs, check_values
from dcase.data.clotho import read_retrieval_captions
from dcase.data.datasets import AudioCache, PairDataset, pad_waves
from dcase.data.manifest import folder_rows, load_captioned_rows, read_manifest
from dcase.errors import InputError
from dcase.evaluation.retrieval import (
    AudioIndex,
    ensemble_similarity,
    retrieval_metrics,
    sinkhorn_scores,
    top_k,
)
from dcase.features.embed import audio_index, embed_rows
from dcase.models.retriever import Retriever, RetrieverConfig
from dcase.training import TrainConfig, fit

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MODES = ("cosine", "sinkhorn")


# ----------------------------------------------------------------------------------------------- configs
@dataclass
class RetrieverDataConfig:
    """Which clips to train and validate on."""

    train_manifests: list[str] = field(default_factory=list, metadata={"input": "file"})
    train_splits: list[str] = field(default_factory=list)  # keep rows of these splits; empty = all with captions
    val_manifest: str | None = field(default=None, metadata={"input": "file"})
    val_split: str = "validation"
    val_max_clips: int = field(default=0, metadata={"min": 0})  # 0 = every validation clip
    max_seconds: float = field(default=10.0, metadata={"gt": 0})  # random training crop
    # evaluation audio is truncated here (Clotho clips are 15-30 s)
    eval_max_seconds: float = field(default=30.0, metadata={"gt": 0})
    cache_audio: bool = False  # keep decoded 32 kHz audio in memory (small corpora / demos)
    allow_leak: bool = False  # train on DCASE2024 evaluation data (Clotho evaluation/test) anyway: refused otherwise


@dataclass
class RetrieverStageConfig:
    """``dcase retriever train`` config: model, data, optimisation, optional warm start."""

    model: RetrieverConfig = field(default_factory=RetrieverConfig)
    data: RetrieverDataConfig = field(default_factory=RetrieverDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(metric_for_best="map_at_10", greater_is_better=True))
    init: str | None = None  # retriever checkpoint to finetune (its model config replaces ``model``)
    eval_batch_size: int = field(default=16, metadata={"min": 1})


# --------------------------------------------------------------------------------------------- training
class RetrieverTask:
    """``TrainTask`` for the retriever (see dcase.training)."""

    def __init__(self, cfg: RetrieverStageConfig) -> None:
        self.cfg = cfg
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.min_samples = 1
        self.cache = AudioCache(cfg.model.audio.sample_rate, None, cfg.data.cache_audio)
        self._val: tuple[pd.DataFrame, AudioCache] | None = None
        self._unconverged = 0  # training steps whose Sinkhorn stopped unconverged

    def build_model(self) -> Retriever:
        if self.cfg.init:
            model = Retriever.from_pretrained(self.cfg.init)
            log.info("finetuning from %s", self.cfg.init)
        else:
            model = Retriever.build(self.cfg.model)
        self.cfg.model = model.config
        _check_no_accumulation(model.config, self.cfg.train)
        self.tokenizer = model.tokenizer
        self.min_samples = model.audio_encoder.min_samples()
        self.cache = AudioCache(model.sample_rate, None, self.cfg.data.cache_audio)
        return model.train()

    def train_dataset(self) -> torch.utils.data.Dataset:
        df = load_captioned_rows(self.cfg.data.train_manifests, self.cfg.data.train_splits, self.cfg.data.allow_leak)
        log.info("retriever training on %d clips", len(df))
        self._train = PairDataset(df, self.cache, self.cfg.data.max_seconds, self.min_samples, self.cfg.train.seed)
        return self._train

    def item_lengths(self) -> list[int] | None:
        return self._train.lengths()

    def collate(self, items: list) -> dict[str, torch.Tensor]:
        waves, lengths = pad_waves([w for w, _ in items])
        if self.tokenizer is None:
            raise RuntimeError("collate() before build_model(): the text tokenizer is not known yet")
        enc = self.tokenizer(
            [c for _, c in items],
            padding=True,
            truncation=True,
            max_length=self.cfg.model.text.max_length,
            return_tensors="pt",
        )
        return {
            "waves": waves,
            "lengths": lengths,
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
        }

    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The pair loss over the global batch (the same value on every process), and for m-LTM the Sinkhorn
        report as loss parts, which ``fit`` averages into ``train_log.jsonl``: ``sinkhorn_iters``,
        ``sinkhorn_error`` (final marginal error) and ``sinkhorn_unconverged`` (the fraction of steps whose
        Sinkhorn stopped at ``mltm_iters`` above ``mltm_tol``). The first unconverged step logs a warning; later
        ones are counted, and the count is logged again at 10, 100, 1000... steps."""
        out = model(batch["waves"], batch["lengths"], batch["input_ids"], batch["attention_mask"])
        if "sinkhorn_iters" not in out:
            return out["loss"], {}
        if not out["sinkhorn_converged"]:
            self._unconverged += 1
            n = self._unconverged
            if n == 1 or math.log10(n).is_integer():
                c = self.cfg.model
                log.warning(
                    "Sinkhorn did not converge in %d iterations (marginal error %.2e > mltm_tol %.0e) at %d "
                    "training step(s) so far; raise model.mltm_iters (or mltm_epsilon) if this persists",
                    out["sinkhorn_iters"],
                    out["sinkhorn_error"],
                    c.mltm_tol,
                    n,
                )
        parts = {
            "sinkhorn_iters": float(out["sinkhorn_iters"]),
            "sinkhorn_error": float(out["sinkhorn_error"]),
            "sinkhorn_unconverged": float(not out["sinkhorn_converged"]),
        }
        return out["loss"], parts

    def evaluate(self, model: Retriever, accelerator: Any) -> dict[str, float]:
        d = self.cfg.data
        if not d.val_manifest:
            return {}
        if self._val is None:
            df = read_manifest(d.val_manifest, [d.val_split])
            if d.val_max_clips:
                df = df.iloc[: d.val_max_clips].reset_index(drop=True)
            self._val = (df, AudioCache(model.sample_rate, d.eval_max_seconds, d.cache_audio))
        df, cache = self._val
        return evaluate_clotho(model, df, batch_size=self.cfg.eval_batch_size, cache=cache, progress=False)

    def save_model(self, model: Retriever, path: Path) -> None:
        model.save_pretrained(path)


def _check_no_accumulation(model: RetrieverConfig, train: TrainConfig) -> None:
    """m-LTM couples every pair of a batch in one transport problem: accumulating micro-batches would solve
    ``grad_accum`` separate problems, a different objective; refuse it (the global batch is per-process batch x
    processes)."""
    if model.loss == "mltm" and train.grad_accum > 1:
        raise InputError(
            f"train.grad_accum={train.grad_accum} with the m-LTM loss: each micro-batch would be its own transport "
            f"problem, not one over the global batch of {train.batch_size} x {train.grad_accum}. Set "
            "train.grad_accum: 1 and reach the global batch with train.batch_size x processes (the embeddings of "
            "every process are gathered into one problem)"
        )


def train_retriever(cfg: RetrieverStageConfig) -> Path:
    """Train (or finetune, with ``cfg.init``) a retriever; returns the best checkpoint (by validation mAP@10).

    The whole resolved stage config is kept as ``<output_dir>/stage_config.yaml`` (``fit`` writes it, the
    optimisation part and run info as ``config.yaml`` / ``run.json``, and refuses to resume with another config).
    """
    check_values(cfg)
    check_inputs(cfg)
    return fit(RetrieverTask(cfg), cfg.train, run_config=cfg)


# --------------------------------------------------------------------------------------------- scoring
def score_matrix(
    model: Retriever,
    text_emb: np.ndarray,
    audio_emb: np.ndarray,
    mode: str = "cosine",
    index: AudioIndex | None = None,
    epsilon: float | None = None,
) -> np.ndarray:
    """Similarity of every query to every item: text [Q, D], audio [N, D] -> [Q, N] (higher = better).

    ``cosine``: inner products, through ``index`` (faiss; a full search, k = N) when given;
    ``sinkhorn``: log entropic-OT plan under ``model.cost`` (``epsilon`` defaults to the model's m-LTM epsilon).
    """
    if mode not in MODES:
        raise InputError(f"ranking mode must be one of {MODES}, got {mode!r}")
    if mode == "cosine":
        if index is None:
            return text_emb.astype(np.float32) @ audio_emb.astype(np.float32).T
        scores, items = index.search(text_emb, len(index))
        sim = np.full((len(text_emb), len(index)), -np.inf, dtype=np.float32)
        ok = items >= 0  # approximate indexes may return fewer than k items (id -1): those stay -inf
        rows = np.broadcast_to(np.arange(len(text_emb))[:, None], items.shape)
        sim[rows[ok], items[ok]] = scores[ok]
        return sim
    with torch.no_grad():
        dev = next(model.parameters()).device
        cost = model.cost(torch.as_tensor(text_emb, device=dev), torch.as_tensor(audio_emb, device=dev))
    return sinkhorn_scores(cost.double().cpu().numpy(), epsilon or model.config.mltm_epsilon)


def _as_retriever(r: Retriever | str | Path, device: str) -> Retriever:
    return r if isinstance(r, Retriever) else Retriever.from_pretrained(r, device=device)


# ---------------------------------------------------------------------------------------------- Clotho
def clotho_queries(df: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """All captions of the clips in ``df`` as queries, with the index of each caption's clip."""
    texts, relevant = [], []
    for i, caps in enumerate(df["captions"]):
        texts.extend(caps)
        relevant.extend([i] * len(caps))
    if not texts:
        raise InputError("no captions to use as queries in this split")
    return texts, np.asarray(relevant, dtype=np.int64)


def evaluate_clotho(
    model: Retriever,
    df: pd.DataFrame,
    mode: str = "cosine",
    batch_size: int = 16,
    cache: AudioCache | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Text-to-audio mAP@10, R@1/5/10 of one retriever on the clips of ``df`` (see ``clotho_queries``)."""
    rows = list(df.itertuples(index=False))
    texts, relevant = clotho_queries(df)
    audio = embed_rows(model, rows, batch_size, cache=cache, progress=progress)
    text = model.embed_text(texts).numpy()
    return retrieval_metrics(score_matrix(model, text, audio, mode), relevant)


def evaluate_retrievers(
    retrievers: Sequence[Retriever | str | Path],
    manifest: str | Path,
    split: str,
    mode: str = "cosine",
    batch_size: int = 16,
    max_seconds: float | None = 30.0,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Metrics of each retriever and of their ensemble (z-scored mean) on ``split`` of ``manifest``."""
    df = read_manifest(manifest, [split])
    df = df[df["captions"].map(len) > 0].reset_index(drop=True)
    rows = list(df.itertuples(index=False))
    texts, relevant = clotho_queries(df)
    sims: list[np.ndarray] = []
    per_model: dict[str, dict[str, float]] = {}
    for r in retrievers:
        model = _as_retriever(r, device)
        idx = audio_index(model, r, rows, batch_size, max_seconds, cache_dir)
        sim = score_matrix(model, model.embed_text(texts).numpy(), idx.embeddings, mode, index=idx)
        per_model[str(r) if not isinstance(r, Retriever) else f"model{len(per_model)}"] = retrieval_metrics(
            sim, relevant
        )
        sims.append(sim)
    result: dict[str, Any] = {
        "manifest": str(manifest),
        "split": split,
        "mode": mode,
        "queries": len(texts),
        "items": len(rows),
        "models": per_model,
    }
    result["ensemble"] = retrieval_metrics(ensemble_similarity(sims), relevant)
    return result


# ---------------------------------------------------------------------------------------------- Task 8
def collection_rows(audio: str | Path) -> list[Any]:
    """The Task 8 audio collection: every audio file of a folder (``data.manifest.folder_rows``, clip id = file
    name) or every row of a manifest."""
    path = Path(audio)
    if path.is_dir():
        return list(folder_rows(path, "retrieval_audio").itertuples(index=False))
    return list(read_manifest(path).itertuples(index=False))


def rank_task8(
    retrievers: Sequence[Retriever | str | Path],
    audio: str | Path | Sequence[Any],
    captions: str | Path | Sequence[str],
    mode: str = "cosine",
    k: int = 10,
    batch_size: int = 16,
    max_seconds: float | None = 30.0,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
) -> list[tuple[str, list[str]]]:
    """Rank the audio collection for every caption: -> [(caption, [k distinct file names, best first])],
    one row per query in input order. Several retrievers are ensembled (z-scored mean of similarities)."""
    if not retrievers:
        raise InputError("no retriever checkpoints given")
    rows = collection_rows(audio) if isinstance(audio, str | Path) else list(audio)
    texts = read_retrieval_captions(captions) if isinstance(captions, str | Path) else list(captions)
    if len(rows) < k:
        raise InputError(f"the audio collection has {len(rows)} clips; {k} are needed per query")
    sims = []
    for r in retrievers:
        model = _as_retriever(r, device)
        idx = audio_index(model, r, rows, batch_size, max_seconds, cache_dir)
        sims.append(score_matrix(model, model.embed_text(texts).numpy(), idx.embeddings, mode, index=idx))
    best = top_k(ensemble_similarity(sims) if len(sims) > 1 else sims[0], k)
    names = [str(r.clip_id) for r in rows]
    return [(t, [names[j] for j in best[q]]) for q, t in enumerate(texts)]
