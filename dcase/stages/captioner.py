"""The captioner stage: EnCLAP pretraining (MCM on) and finetuning (MCM off) with the shared training loop.

EnCLAP DCASE2024 report §3.2: pretrain on AudioCaps + WavCaps + Clotho-ChatGPT-Mixup with captioning + MCM,
then finetune on Clotho development without MCM. Inputs are feature stores (``dcase extract codec`` /
``dcase extract embed``) joined with manifests by ``clip_id``:

- one training item per (clip, caption) pair;
- codec sequences longer than ``model.max_codec_positions`` are randomly cropped in training (crop drawn from
  (seed, epoch, item), so resume is exact) and truncated to their head in evaluation;
- validation: caption cross entropy (no label smoothing) over every (clip, caption) pair, and captions
  generated (greedy or beam) for up to ``val_max_clips`` clips, scored with METEOR and CIDEr-D.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from dcase.config import check_inputs, check_values
from dcase.data.datasets import CaptionDataset, collate_codes
from dcase.data.manifest import load_captioned_rows, read_manifest
from dcase.errors import InputError
from dcase.features.store import StoreChain, StoreError, check_coverage, store_sizes
from dcase.losses import IGNORE_INDEX
from dcase.models.enclap import EnCLAP, EnCLAPConfig, build_enclap
from dcase.training import TrainConfig, fit

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- configs
@dataclass
class CaptionerDataConfig:
    """Manifests and the feature stores holding their clips (a clip is looked up in the stores in order)."""

    train_manifests: list[str] = field(default_factory=list, metadata={"input": "file"})
    train_splits: list[str] = field(default_factory=list)  # keep rows of these splits; empty = all captioned
    # DAC codes, int16 [n_codebooks, T]
    codec_stores: list[str] = field(default_factory=list, metadata={"input": "dir"})
    # clip embeddings, float32 [clip_dim]
    embed_stores: list[str] = field(default_factory=list, metadata={"input": "dir"})
    val_manifest: str | None = field(default=None, metadata={"input": "file"})
    val_split: str = "validation"
    # clips whose captions are generated and scored at each evaluation; 0 = all
    val_max_clips: int = field(default=0, metadata={"min": 0})
    allow_leak: bool = False  # train on DCASE2024 evaluation data (Clotho evaluation/test) anyway: refused otherwise


@dataclass
class CaptionerStageConfig:
    """``dcase captioner pretrain|finetune`` config."""

    model: EnCLAPConfig = field(default_factory=EnCLAPConfig)
    data: CaptionerDataConfig = field(default_factory=CaptionerDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(metric_for_best="cider_d", greater_is_better=True))
    mcm: bool = True  # masked codec modelling (pretraining); off for finetuning
    init: str | None = None  # EnCLAP checkpoint to start from (its model config replaces ``model``)
    gradient_checkpointing: bool = False
    eval_batch_size: int = field(default=16, metadata={"min": 1})
    eval_num_beams: int = field(default=1, metadata={"min": 1})  # 1 = greedy
    eval_max_new_tokens: int = field(default=40, metadata={"min": 1})
    eval_metrics: list[str] = field(default_factory=lambda: ["meteor", "cider_d"])


# ------------------------------------------------------------------------------------------ generation
@torch.no_grad()
def generate_captions(
    model: EnCLAP,
    dataset: CaptionDataset,
    batch_size: int = 16,
    indices: Sequence[int] | None = None,
    progress: bool = False,
    **gen_kwargs: Any,
) -> list[str]:
    """Captions for the items ``indices`` (default: all) of ``dataset``, in that order; batches are formed
    by length. ``gen_kwargs`` go to ``EnCLAP.generate`` (e.g. ``num_beams``, ``max_new_tokens``)."""
    device = next(model.parameters()).device
    indices = list(range(len(dataset))) if indices is None else list(indices)
    lengths = dataset.lengths()
    order = sorted(range(len(indices)), key=lambda j: lengths[indices[j]])
    out: list[str] = [""] * len(indices)
    starts: Iterable[int] = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="generate", unit="batch")
    for s in starts:
        js = order[s : s + batch_size]
        batch = collate_codes([dataset[indices[j]] for j in js], model.config.pad_code)
        ids = model.generate(
            batch["codes"].to(device), batch["codes_mask"].to(device), batch["clip_emb"].to(device), **gen_kwargs
        )
        for j, text in zip(js, model.decode_text(ids), strict=True):
            out[j] = text
    return out


def validation_score(
    checkpoint: str | Path,
    manifest: str | Path,
    split: str = "validation",
    codec_stores: Sequence[str | Path] = (),
    embed_stores: Sequence[str | Path] = (),
    metric: str = "cider_d",
    max_clips: int = 0,
    batch_size: int = 16,
    num_beams: int = 1,
    max_new_tokens: int = 40,
) -> float:
    """``metric`` of a checkpoint's greedy (or beam) captions on the captioned clips of ``split``.

    The built-in evaluator of ``dcase soup --method greedy --evaluator captioner`` (greedy soups rank and keep
    ingredients by validation score, Wortsman et al. 2022). ``max_clips`` > 0 scores only the first clips.
    """
    from dcase.evaluation.captions import evaluate_captions

    if not codec_stores or not embed_stores:
        raise InputError("validation_score needs the codec and clip-embedding stores of the manifest's clips")
    df = read_manifest(manifest, [split])
    df = df[df["captions"].map(len) > 0].reset_index(drop=True)
    if max_clips > 0:
        df = df.head(max_clips)
    if len(df) == 0:
        raise InputError(f"{manifest}: split {split!r} has no captioned clips to score")
    model = EnCLAP.from_pretrained(checkpoint).eval()
    codes, embeds = StoreChain.open(codec_stores), StoreChain.open(embed_stores)
    check_coverage(df, codes, embeds, f"{manifest} split {split}")
    cfg = model.config
    ds = CaptionDataset(
        df, codes, embeds, cfg.n_codebooks, cfg.clip_dim, cfg.max_codec_positions, random_crop=False, per_caption=False
    )
    texts = generate_captions(model, ds, batch_size, num_beams=num_beams, max_new_tokens=max_new_tokens)
    scores = evaluate_captions(texts, [list(c) for c in df["captions"]], [metric])
    value = scores.get(metric)
    if value is None:
        raise InputError(f"{metric} cannot be computed here: {scores.missing.get(metric, 'unknown reason')}")
    log.info("%s: %s %.4f on %d clips of %s", checkpoint, metric, value, len(df), split)
    return float(value)


# --------------------------------------------------------------------------------------------- the task
class CaptionerTask:
    """``TrainTask`` for EnCLAP (see dcase.training)."""

    def __init__(
        self,
        cfg: CaptionerStageConfig,
        codes: Mapping[str, np.ndarray] | None = None,
        embeds: Mapping[str, np.ndarray] | None = None,
        val_codes: Mapping[str, np.ndarray] | None = None,
        val_embeds: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Stores default to ``cfg.data.codec_stores`` / ``embed_stores`` (validation uses the same)."""
        self.cfg = cfg
        self.codes = codes if codes is not None else StoreChain.open(cfg.data.codec_stores)
        self.embeds = embeds if embeds is not None else StoreChain.open(cfg.data.embed_stores)
        self.val_codes = val_codes if val_codes is not None else self.codes
        self.val_embeds = val_embeds if val_embeds is not None else self.embeds
        self.df = load_captioned_rows(cfg.data.train_manifests, cfg.data.train_splits, cfg.data.allow_leak)
        check_coverage(self.df, self.codes, self.embeds, "training data")
        self.model_config: EnCLAPConfig = cfg.model
        self._train: CaptionDataset | None = None
        self._val: tuple[pd.DataFrame, CaptionDataset, CaptionDataset] | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None

    def build_model(self) -> EnCLAP:
        """EnCLAP from ``init``, or built from ``model`` with the sizes the feature stores record: codebooks and
        codebook size from the codec store's provenance, the clip-embedding size from the embedding store (never
        typed by hand; a config that says otherwise is overridden with a log line). An ``init`` checkpoint whose sizes
        differ from the stores' is refused before training starts."""
        sizes: dict[str, Any] = {**store_sizes(self.codes), **store_sizes(self.embeds)}
        if self.cfg.init:
            model = EnCLAP.from_pretrained(self.cfg.init)
            log.info("starting from %s", self.cfg.init)
            wrong = {k: (getattr(model.config, k), v) for k, v in sizes.items() if getattr(model.config, k) != v}
            if wrong:
                raise StoreError(
                    f"{self.cfg.init}: the checkpoint was built for { ({k: a for k, (a, _) in wrong.items()}) }"
                    f", the feature stores hold { ({k: b for k, (_, b) in wrong.items()}) }; extract the "
                    "features with the codec and clip embedder this captioner was trained on"
                )
        else:
            differs = {k: (getattr(self.cfg.model, k), v) for k, v in sizes.items() if getattr(self.cfg.model, k) != v}
            if differs:
                log.info("model sizes from the feature stores (config -> store): %s", differs)
            self.cfg.model = dataclasses.replace(self.cfg.model, **sizes)
            model = build_enclap(self.cfg.model, tokenizer=self._run_tokenizer())
        self.model_config = model.config
        self.cfg.model = model.config
        self.tokenizer = model.tokenizer
        model.mcm_heads.requires_grad_(self.cfg.mcm)  # unused heads: no DDP error, no decay
        if self.cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        log.info("EnCLAP with %.1f M parameters, MCM %s", model.num_parameters() / 1e6, "on" if self.cfg.mcm else "off")
        return model.train()

    def _run_tokenizer(self) -> PreTrainedTokenizerBase | None:
        """A random-weight run's tokenizer, trained once on the training captions and kept in
        ``output_dir/tokenizer`` so that a resumed run uses exactly the same one. None with a pretrained BART."""
        if self.cfg.model.bart_name_or_path:
            return None
        import os
        import shutil

        from accelerate import PartialState
        from transformers import AutoTokenizer

        from dcase.models.enclap import train_caption_tokenizer

        where = Path(self.cfg.train.output_dir) / "tokenizer"
        if (where / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(str(where))
        tok = train_caption_tokenizer((c for caps in self.df["captions"] for c in caps), self.cfg.model.vocab_size)
        if PartialState().is_main_process:
            tmp = where.with_name("tokenizer.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tok.save_pretrained(str(tmp))
            os.replace(tmp, where)
        return tok

    def train_dataset(self) -> torch.utils.data.Dataset:
        mc = self.model_config
        self._train = CaptionDataset(
            self.df,
            self.codes,
            self.embeds,
            mc.n_codebooks,
            mc.clip_dim,
            mc.max_codec_positions,
            random_crop=True,
            seed=self.cfg.train.seed,
        )
        log.info("captioner training on %d clips, %d captions", len(self.df), len(self._train))
        return self._train

    def item_lengths(self) -> list[int] | None:
        return self._train.lengths() if self._train is not None else None

    def collate(self, items: list) -> dict[str, torch.Tensor]:
        batch = collate_codes(items, self.model_config.pad_code)
        if self.tokenizer is None:
            raise RuntimeError("collate() before build_model(): the caption tokenizer is not known yet")
        enc = self.tokenizer(
            [c for _, _, c in items],
            padding=True,
            truncation=True,
            max_length=self.model_config.max_caption_tokens,
            return_tensors="pt",
        )
        batch["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
        return batch

    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch["codes"], batch["codes_mask"], batch["clip_emb"], labels=batch["labels"], mcm=self.cfg.mcm)
        parts = {"caption_loss": float(out.caption_loss.detach())}
        if out.mcm_loss is not None:
            parts["mcm_loss"] = float(out.mcm_loss.detach())
        return out.loss, parts

    def _val_data(self) -> tuple[pd.DataFrame, CaptionDataset, CaptionDataset]:
        if self._val is None:
            d, mc = self.cfg.data, self.model_config
            if not d.val_manifest:
                raise InputError("no validation manifest configured (data.val_manifest)")
            df = read_manifest(d.val_manifest, [d.val_split])
            df = df[df["captions"].map(len) > 0].reset_index(drop=True)
            if len(df) == 0:
                raise InputError(f"{d.val_manifest}: no captioned rows in split {d.val_split!r}")
            check_coverage(df, self.val_codes, self.val_embeds, f"validation data ({d.val_manifest})")
            pairs = CaptionDataset(
                df,
                self.val_codes,
                self.val_embeds,
                mc.n_codebooks,
                mc.clip_dim,
                mc.max_codec_positions,
                random_crop=False,
            )
            gen_df = df.iloc[: d.val_max_clips] if d.val_max_clips else df
            clips = CaptionDataset(
                gen_df,
                self.val_codes,
                self.val_embeds,
                mc.n_codebooks,
                mc.clip_dim,
                mc.max_codec_positions,
                random_crop=False,
                per_caption=False,
            )
            self._val = (gen_df.reset_index(drop=True), pairs, clips)
        return self._val

    def evaluate(self, model: EnCLAP, accelerator: Any) -> dict[str, float]:
        """Validation caption loss (all pairs) + METEOR / CIDEr-D of generated captions; items are sharded
        over processes and gathered, so every process returns the same metrics."""
        from accelerate.utils import broadcast_object_list, gather_object

        if not self.cfg.data.val_manifest:
            return {}
        gen_df, pairs, clips = self._val_data()
        rank, world = accelerator.process_index, accelerator.num_processes
        device = accelerator.device
        # loss: token-summed cross entropy over this process's share of the pairs
        nll, ntok = torch.zeros((), dtype=torch.float64, device=device), torch.zeros((), device=device)
        lengths = pairs.lengths()
        order = sorted(range(rank, len(pairs), world), key=lambda i: lengths[i])
        for s in range(0, len(order), self.cfg.eval_batch_size):
            batch = self.collate([pairs[i] for i in order[s : s + self.cfg.eval_batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(batch["codes"], batch["codes_mask"], batch["clip_emb"], labels=batch["labels"]).logits
            keep = batch["labels"] != IGNORE_INDEX
            nll += torch.nn.functional.cross_entropy(logits[keep].float(), batch["labels"][keep], reduction="sum")
            ntok += keep.sum()
        tot = accelerator.reduce(torch.stack([nll.float(), ntok.float()]), "sum")
        metrics: dict[str, float] = {"loss": float(tot[0] / tot[1].clamp(min=1))}
        # generation on this process's share of the clips, gathered in clip order
        ids = list(range(rank, len(clips), world))
        texts = generate_captions(
            model,
            clips,
            self.cfg.eval_batch_size,
            indices=ids,
            num_beams=self.cfg.eval_num_beams,
            max_new_tokens=self.cfg.eval_max_new_tokens,
        )
        pairs_done = list(zip(ids, texts, strict=True))
        gathered = gather_object(pairs_done) if world > 1 else pairs_done
        cands = [t for _, t in sorted(gathered)]
        refs = [list(c) for c in gen_df["captions"]]
        payload: list[dict[str, float] | None] = [None]
        if accelerator.is_main_process:
            from dcase.evaluation.captions import evaluate_captions

            scores = evaluate_captions(cands, refs, list(self.cfg.eval_metrics))
            payload = [{k: float(v) for k, v in dict(scores).items() if v is not None}]
            for k, why in scores.missing.items():
                log.warning("metric %s not computed: %s", k, why)
            for c, r in list(zip(cands, refs, strict=True))[:3]:
                log.info("example: %r (reference %r)", c, r[0])
        if world > 1:
            broadcast_object_list(payload, from_process=0)
        if payload[0] is None:
            raise RuntimeError("the main process sent no validation metrics")
        metrics.update(payload[0])
        return metrics

    def save_model(self, model: EnCLAP, path: Path) -> None:
        model.save_pretrained(path)


def train_captioner(
    cfg: CaptionerStageConfig,
    codes: Mapping[str, np.ndarray] | None = None,
    embeds: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Pretrain (``cfg.mcm``) or finetune (``cfg.init``, usually MCM off) EnCLAP; returns the best checkpoint."""
    check_values(cfg)
    check_inputs(cfg)
    return fit(CaptionerTask(cfg, codes, embeds), cfg.train, run_config=cfg)


def load_stage_config(
    path: str | Path | None, overrides: Sequence[str] = (), init: str | None = None, mcm: bool | None = None
) -> CaptionerStageConfig:
    """The stage config from YAML + ``--set`` overrides (+ ``--init``)."""
    from dcase.config import load_config

    cfg = load_config(CaptionerStageConfig, path, list(overrides))
    if init is not None:
        cfg = dataclasses.replace(cfg, init=init)
    if mcm is not None:
        cfg = dataclasses.replace(cfg, mcm=mcm)
    return cfg
