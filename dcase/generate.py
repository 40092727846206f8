"""The generation stage: captioner checkpoints + manifest + feature stores -> the candidates table, and Task 6 rows
(EnCLAP DCASE2024 technical report §2.3, §3.1, §3.3).

For every clip of the manifest (split): sample candidates (nucleus sampling, p 0.95, T 0.5, 30 samples; or greedy /
beam search for comparison) with one captioner or an ensemble, merge identical texts, then score them:

- decoder score: length-normalised log-likelihood under the captioner(s) (see dcase.decoding.sample);
- encoder score: cosine between the retriever's audio embedding of the clip and its text embedding of the
  candidate. The audio embedding is read from the clip-embedding store when that store was made by the same
  retriever checkpoint (provenance ``checkpoint_sha256``), otherwise computed from the clip's audio;
- fluency-error probability from the FENSE checker when one is configured (otherwise the filter is off, which
  is logged and written to the sidecar JSON). By default (``fluency_scope="lazy"``) candidates are checked in
  final-score order until one is fluent, which selects exactly what checking all of them selects at about one
  checker batch per clip; ``"all"`` checks every candidate (needed to re-rank later with other weights);

and rerank (``final = w_enc * encoder + w_dec * decoder``, fluency filter, argmax per clip: dcase.decoding.rerank).
The table has one extra column, ``token_ids`` (the generated ids of the candidate's first sample, after the decoder
start token, ``</s>`` included), e.g. for rescoring with other captioners.

Resumable: clips are processed in chunks of ``chunk_clips``; each finished chunk is written atomically to
``<out>.parts/part-<k>.parquet``. Besides ``<out>`` and ``<out stem>.json``, ``<out stem>_run/`` gets the
resolved config and run info (``write_run_info``). A killed run, restarted with the same settings, skips finished chunks
(``plan.json`` refuses parts made with other settings). The final table and ``<out stem>.json`` are written
atomically at the end and the parts folder is removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dcase.decoding.rerank import (
    DEFAULT_THRESHOLD,
    lazy_fluency,
    make_candidates,
    rerank,
    selected_captions,
    write_candidates,
)
from dcase.decoding.sample import Candidate, SamplingConfig, clip_seed
from dcase.errors import MissingInputError, OutputExistsError
from dcase.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

MODES = ("sample", "greedy", "beam")
PLAN = "plan.json"


@dataclass
class GenerateConfig:
    """``dcase generate`` settings (configs/dcase2024/generate.yaml holds the report's values)."""

    captioners: list[str] = field(default_factory=list)  # EnCLAP checkpoint folders (save_pretrained)
    ensemble: str = "token"  # token | pool (used with several captioners)
    retriever: str | None = None  # retriever folder for the encoder score (None: encoder score off, w_enc must be 0)
    manifest: str = ""
    split: str | None = None  # None: every row of the manifest
    codec_stores: list[str] = field(default_factory=list)
    embed_stores: list[str] = field(default_factory=list)  # clip embeddings (the captioners' CLAP slot)
    out: str = "candidates.parquet"
    mode: str = "sample"  # sample | greedy | beam
    num_beams: int = 4
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    w_enc: float = 0.7
    w_dec: float = 0.3
    fluency_checker: str | None = None  # FENSE checker checkpoint (aac-metrics format); None: filter off
    fluency_backbone: str | None = None  # local BERT folder overriding the checker's model_type
    fluency_threshold: float = DEFAULT_THRESHOLD
    # lazy: check candidates in score order until one is fluent (same selection, ~1 checker batch per clip);
    # all: check every candidate (needed to re-rank the table later with other weights: dcase tune-rerank)
    fluency_scope: str = "lazy"
    audio_embedding: str = "auto"  # auto | store | compute: where the retriever's clip embedding comes from
    chunk_clips: int = 64  # clips per resumable part file
    text_batch_size: int = 64
    device: str = "cpu"

    def check(self) -> None:
        if not self.captioners:
            raise ValueError("no captioner checkpoint given (--captioner)")
        if self.ensemble not in ("token", "pool"):
            raise ValueError(f"ensemble must be token or pool, got {self.ensemble!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "beam" and len(self.captioners) > 1 and self.ensemble == "token":
            raise ValueError("beam search with a token-level ensemble is not supported; use --ensemble pool")
        if self.mode == "beam" and self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if not self.manifest:
            raise ValueError("no manifest given (--manifest)")
        if not self.codec_stores or not self.embed_stores:
            raise ValueError("give the codec store(s) and clip-embedding store(s) of the manifest's clips")
        if self.retriever is None and self.w_enc != 0:
            raise ValueError(f"w_enc={self.w_enc} needs a retriever for the encoder score (or set w_enc to 0)")
        if self.w_enc < 0 or self.w_dec < 0:
            raise ValueError(f"reranking weights must be >= 0, got w_enc={self.w_enc}, w_dec={self.w_dec}")
        if self.fluency_scope not in ("lazy", "all"):
            raise ValueError(f"fluency_scope must be lazy or all, got {self.fluency_scope!r}")
        if self.audio_embedding not in ("auto", "store", "compute"):
            raise ValueError(f"audio_embedding must be auto, store or compute, got {self.audio_embedding!r}")
        if self.chunk_clips < 1:
            raise ValueError("chunk_clips must be >= 1")
        self.sampling.check()


# -------------------------------------------------------------------------------------------- pieces
def load_captioners(paths: Sequence[str | Path], device: str = "cpu") -> list[Any]:
    """EnCLAP checkpoints in eval mode; all must read the same features (n_codebooks, clip_dim)."""
    from dcase.models.enclap import EnCLAP

    models = [EnCLAP.from_pretrained(p).to(device).eval() for p in paths]
    for p, m in zip(paths[1:], models[1:], strict=True):
        a, b = models[0].config, m.config
        if (a.n_codebooks, a.clip_dim) != (b.n_codebooks, b.clip_dim):
            raise ValueError(
                f"{p}: n_codebooks/clip_dim {b.n_codebooks}/{b.clip_dim} differ from {paths[0]}'s "
                f"{a.n_codebooks}/{a.clip_dim}: the ensemble cannot share feature stores"
            )
    for p, m in zip(paths, models, strict=True):
        if m.tokenizer is None:
            raise ValueError(f"{p}: captioner checkpoint has no tokenizer/ folder")
    return models


def _checkpoint_sha(path: str | Path) -> str:
    from dcase.io import sha256_dir

    return sha256_dir(path, "*.safetensors")


def store_matches_retriever(store: Any, retriever_sha: str) -> bool:
    """True when an embed store was written by the retriever checkpoint whose weights hash to ``retriever_sha``
    (``sha256_dir(path, "*.safetensors")``, as recorded in the store's provenance)."""
    prov = getattr(store, "provenance", {}) or {}
    return prov.get("kind") == "embed" and prov.get("checkpoint_sha256") == retriever_sha


def clip_audio_embeddings(
    retriever: Any,
    retriever_path: str | Path,
    rows: pd.DataFrame,
    embed_stores: Any,
    how: str = "auto",
    retriever_sha: str | None = None,
) -> tuple[np.ndarray, str]:
    """The retriever's L2-normalised audio embedding of each row: float32 [N, D], and where it came from
    (``store`` when the clip-embedding store was made by this retriever, else ``computed`` from the audio)."""
    from dcase.data.audio import load_clip
    from dcase.features.embed import embed_waves

    sha = retriever_sha or _checkpoint_sha(retriever_path)
    holders = [embed_stores._find(c) if hasattr(embed_stores, "_find") else embed_stores for c in rows["clip_id"]]
    same = all(h is not None and store_matches_retriever(h, sha) for h in holders)
    if how == "store" and not same:
        raise ValueError(
            f"audio_embedding=store, but the clip-embedding store(s) were not made by {retriever_path} "
            "(provenance checkpoint_sha256 differs); use auto or compute"
        )
    if how != "compute" and same:
        emb = np.stack([np.asarray(embed_stores[c], dtype=np.float32) for c in rows["clip_id"]])
        src = "store"
    else:
        waves = [load_clip(r, int(retriever.sample_rate)) for r in rows.itertuples(index=False)]
        emb = np.stack(embed_waves(retriever, waves))
        src = "computed"
    if emb.shape[1] != retriever.embed_dim:
        raise ValueError(f"clip embeddings have {emb.shape[1]} dims, the retriever's joint space {retriever.embed_dim}")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.astype(np.float32), src


def encoder_scores(
    retriever: Any, audio_emb: np.ndarray, texts_per_clip: Sequence[Sequence[str]], batch_size: int = 64
) -> list[np.ndarray]:
    """Cosine(audio embedding of clip b, text embedding of each candidate of clip b): per clip float64 [n_b]."""
    flat = [t for ts in texts_per_clip for t in ts]
    if not flat:
        return [np.zeros(0) for _ in texts_per_clip]
    text = retriever.embed_text(flat, batch_size=batch_size).float().numpy()
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    out, i = [], 0
    for b, ts in enumerate(texts_per_clip):
        out.append((text[i : i + len(ts)] @ audio_emb[b]).astype(np.float64))
        i += len(ts)
    return out


def candidates_for_batch(
    models: Sequence[Any], batch: dict, cfg: GenerateConfig, seeds: Sequence[int]
) -> list[list[Candidate]]:
    """Candidates of one batch of clips (codes/codes_mask/clip_emb tensors) under ``cfg.mode`` / ``cfg.ensemble``."""
    from dcase.decoding.ensemble import beam_candidates, pool_from_encoder
    from dcase.decoding.sample import batch_candidates, encode_batch, sample_from_encoder

    dev = cfg.device
    encoded = encode_batch(models, batch["codes"].to(dev), batch["codes_mask"].to(dev), batch["clip_emb"].to(dev))
    greedy = cfg.mode == "greedy"
    if len(models) > 1 and cfg.ensemble == "pool":
        return pool_from_encoder(
            models, encoded, cfg.sampling, seeds, greedy=greedy, beams=cfg.num_beams if cfg.mode == "beam" else 0
        )
    if cfg.mode == "beam":
        sc = cfg.sampling
        return beam_candidates(
            models[0],
            encoded[0],
            cfg.num_beams,
            sc.max_new_tokens,
            sc.min_new_tokens,
            no_repeat_ngram_size=sc.no_repeat_ngram_size,
            min_length=sc.min_length,
            score_bos=sc.score_bos,
        )
    sb = sample_from_encoder(models, encoded, cfg.sampling, seeds, greedy=greedy)
    return batch_candidates(models[0], sb)


# --------------------------------------------------------------------------------------------- the stage
def _fingerprint(cfg: GenerateConfig, clip_ids: list[str]) -> dict[str, Any]:
    """What the parts depend on (compared on resume)."""
    keep = {
        k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "chunk_clips", "device", "text_batch_size")
    }
    keep["sampling"] = {k: v for k, v in keep["sampling"].items() if k != "batch_clips"}
    keep["captioner_sha256"] = [_checkpoint_sha(p) for p in cfg.captioners]
    keep["retriever_sha256"] = _checkpoint_sha(cfg.retriever) if cfg.retriever else None
    keep["clips"] = hashlib.sha256("\n".join(clip_ids).encode()).hexdigest()
    keep["n_clips"] = len(clip_ids)
    return json.loads(json.dumps(keep, default=str))


def parts_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def sidecar_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_suffix(".json")


def generate_candidates(
    cfg: GenerateConfig, progress: bool = True, overwrite: bool = False, stop_after_chunks: int | None = None
) -> pd.DataFrame:
    """Run the stage (module docstring); returns the reranked candidates table written to ``cfg.out``.

    ``stop_after_chunks`` stops after that many newly finished chunks (used to test resuming) and returns the
    rows done so far (not reranked, nothing final written).
    """
    import torch

    from dcase.captioner import CaptionDataset, StoreChain, check_coverage, collate_codes
    from dcase.data.manifest import read_manifest
    from dcase.decoding.fluency import fluency_stage

    cfg.check()
    out = Path(cfg.out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    t0 = time.perf_counter()
    rows = read_manifest(cfg.manifest, [cfg.split] if cfg.split else None)
    clip_ids = rows["clip_id"].astype(str).tolist()
    codes = StoreChain.open(cfg.codec_stores)
    embeds = StoreChain.open(cfg.embed_stores)
    check_coverage(rows, codes, embeds, f"{cfg.manifest}" + (f" split {cfg.split}" if cfg.split else ""))
    checker, fluency_status = fluency_stage(
        cfg.fluency_checker, cfg.fluency_backbone, cfg.fluency_threshold, cfg.device
    )  # before the models: a bad checker path fails fast
    models = load_captioners(cfg.captioners, cfg.device)
    if len(models) > 1 and cfg.ensemble == "token":
        from dcase.decoding.ensemble import check_same_tokenizer

        check_same_tokenizer(models, [str(p) for p in cfg.captioners])
    retriever = None
    if cfg.retriever:
        from dcase.models.retriever import Retriever

        retriever = Retriever.from_pretrained(cfg.retriever, device=cfg.device)
    mc = models[0].config
    max_frames = min(m.config.max_codec_positions for m in models)
    data = CaptionDataset(
        rows, codes, embeds, mc.n_codebooks, mc.clip_dim, max_frames, random_crop=False, per_caption=False
    )

    pdir = parts_dir(out)
    plan = {"fingerprint": _fingerprint(cfg, clip_ids), "chunk_clips": cfg.chunk_clips}
    if (pdir / PLAN).is_file():
        old = json.loads((pdir / PLAN).read_text())
        if old != plan:
            diff = sorted(
                k
                for k in set(old["fingerprint"]) | set(plan["fingerprint"])
                if old["fingerprint"].get(k) != plan["fingerprint"].get(k)
            )
            if old.get("chunk_clips") != plan["chunk_clips"]:
                diff.append("chunk_clips")
            raise ValueError(
                f"{pdir} holds parts of a run with other settings ({diff}); delete it or rerun with "
                "the same settings to resume"
            )
    else:
        pdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(pdir / PLAN, json.dumps(plan, indent=1))
    chunks = [list(range(s, min(s + cfg.chunk_clips, len(rows)))) for s in range(0, len(rows), cfg.chunk_clips)]
    done = {k for k in range(len(chunks)) if (pdir / f"part-{k:05d}.parquet").is_file()}
    if done:
        log.info("resuming: %d of %d chunks already in %s", len(done), len(chunks), pdir)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(rows), initial=sum(len(chunks[k]) for k in done), unit="clip", desc="generate", dynamic_ncols=True
        )
    lengths = data.lengths()
    audio_src: set[str] = set()
    new_chunks = 0
    for k, idx in enumerate(chunks):
        if k in done:
            continue
        order = sorted(idx, key=lambda i: lengths[i])
        cands: dict[int, list[Candidate]] = {}
        for s in range(0, len(order), cfg.sampling.batch_clips):
            ids = order[s : s + cfg.sampling.batch_clips]
            batch = collate_codes([data[i] for i in ids], mc.pad_code)
            seeds = [clip_seed(cfg.sampling.seed, clip_ids[i]) for i in ids]
            with torch.no_grad():
                for i, c in zip(ids, candidates_for_batch(models, batch, cfg, seeds), strict=True):
                    if not c:
                        raise ValueError(
                            f"clip {clip_ids[i]!r}: every sample decoded to an empty caption (the "
                            "captioner ends at once; check the checkpoint, or raise "
                            "sampling.min_new_tokens)"
                        )
                    cands[i] = c
            if bar is not None:
                bar.update(len(ids))
        part = _chunk_table(
            idx,
            cands,
            rows,
            clip_ids,
            retriever,
            cfg,
            embeds,
            checker,
            audio_src,
            plan["fingerprint"]["retriever_sha256"],
        )
        with atomic_path(pdir / f"part-{k:05d}.parquet") as tmp:
            part.to_parquet(tmp, index=False)
        new_chunks += 1
        if stop_after_chunks is not None and new_chunks >= stop_after_chunks:
            if bar is not None:
                bar.close()
            return part
    if bar is not None:
        bar.close()
    table = pd.concat([pd.read_parquet(pdir / f"part-{k:05d}.parquet") for k in range(len(chunks))], ignore_index=True)
    table = rerank(table, cfg.w_enc, cfg.w_dec, cfg.fluency_threshold if checker is not None else None)
    write_candidates(table, out)
    n_fb = int(table.loc[table["selected"], "fallback"].sum())
    meta = {
        **fluency_status,
        **(
            {"fluency_scope": cfg.fluency_scope, "n_fluency_checked": int(table["fluency_error_prob"].notna().sum())}
            if checker is not None
            else {}
        ),
        "audio_embedding": sorted(audio_src) or (["none"] if retriever is None else ["resumed"]),
        "n_clips": len(rows),
        "n_candidates": len(table),
        "n_fallback_clips": n_fb,
        "mode": cfg.mode,
        "ensemble": cfg.ensemble if len(models) > 1 else "none",
        "decoder_score": "mean over captioners of the length-normalised log-likelihood (temperature 1)",
        "encoder_score": "cosine(retriever audio embedding, retriever text embedding)" if retriever else "off",
        "w_enc": cfg.w_enc,
        "w_dec": cfg.w_dec,
        "seconds": round(time.perf_counter() - t0, 3),
        "config": dataclasses.asdict(cfg),
    }
    atomic_write_text(sidecar_path(out), json.dumps(meta, indent=2, default=str))
    from dcase.config import write_run_info

    write_run_info(
        out.with_name(out.stem + "_run"),
        cfg,
        seed=cfg.sampling.seed,
        extra={k: v for k, v in meta.items() if k != "config"},
    )
    shutil.rmtree(pdir, ignore_errors=True)
    log.info(
        "%s: %d candidates for %d clips (fluency filter %s, %d fallback clips)",
        out,
        len(table),
        len(rows),
        fluency_status["fluency_filter"],
        n_fb,
    )
    return table


def _chunk_table(
    idx: Sequence[int],
    cands: dict[int, list[Candidate]],
    rows: pd.DataFrame,
    clip_ids: list[str],
    retriever: Any,
    cfg: GenerateConfig,
    embeds: Any,
    checker: Any,
    audio_src: set[str],
    plan_sha: str | None = None,
) -> pd.DataFrame:
    """Rows of one chunk in clip order, with encoder scores and fluency probabilities."""
    texts = [[c.text for c in cands[i]] for i in idx]
    enc: list[np.ndarray | None] = [None] * len(idx)
    if retriever is not None:
        audio, src = clip_audio_embeddings(
            retriever, cfg.retriever, rows.iloc[list(idx)], embeds, cfg.audio_embedding, plan_sha
        )
        audio_src.add(src)
        enc = encoder_scores(retriever, audio, texts, cfg.text_batch_size)  # type: ignore[assignment]
    recs = []
    for j, i in enumerate(idx):
        for r, c in enumerate(cands[i]):
            recs.append(
                {
                    "clip_id": clip_ids[i],
                    "text": c.text,
                    "count": c.count,
                    "decoder_score": c.decoder_score,
                    "encoder_score": float(enc[j][r]) if enc[j] is not None else np.nan,
                    "token_ids": list(c.token_ids),
                }
            )
    table = make_candidates(recs)
    if checker is not None and cfg.fluency_scope == "lazy":
        table = lazy_fluency(table, checker.error_probabilities, cfg.w_enc, cfg.w_dec, cfg.fluency_threshold)
    elif checker is not None:
        table["fluency_error_prob"] = np.asarray(checker.error_probabilities(table["text"].tolist()), np.float64)
    return table


# ------------------------------------------------------------------------------------------------ Task 6
def task6_rows(candidates: pd.DataFrame | str | Path) -> list[tuple[str, str]]:
    """(file_name, caption) of the selected candidate of every clip, in clip order (a reranked table or its path)."""
    from dcase.decoding.rerank import read_candidates

    df = read_candidates(candidates) if isinstance(candidates, str | Path) else candidates
    return selected_captions(df)


# --------------------------------------------------------------------------------------------- tuning
def read_reference_map(path: str | Path) -> dict[str, list[str]]:
    """{clip_id: [captions]} from a Clotho captions CSV or a manifest parquet (captioned rows)."""
    path = Path(path)
    if path.suffix == ".parquet":
        from dcase.data.manifest import read_manifest

        df = read_manifest(path)
        return {str(c): list(caps) for c, caps in zip(df["clip_id"], df["captions"], strict=True) if len(caps)}
    from dcase.evaluation.captions import read_references

    return read_references(path)


def tune_rerank_weights(
    candidates: str | Path | pd.DataFrame,
    references: str | Path | dict,
    out_dir: str | Path,
    weights: Sequence[float],
    metric: str = "cider_d",
    threshold: float | None = None,
) -> dict[str, float]:
    """Grid search of ``w_enc`` (``w_dec = 1 - w_enc``) on a validation candidates table: writes
    ``tuning.csv`` and ``tuning.png`` into ``out_dir`` and returns the best row. The fluency filter applies
    (``threshold``, default 0.9) when the table has fluency probabilities."""
    from dcase.decoding.rerank import plot_tuning, read_candidates, tune_weights
    from dcase.evaluation.captions import evaluate_captions

    table = read_candidates(candidates) if isinstance(candidates, str | Path) else candidates
    refs = read_reference_map(references) if isinstance(references, str | Path) else dict(references)
    has_probs = table["fluency_error_prob"].notna().any()
    thr = (DEFAULT_THRESHOLD if threshold is None else threshold) if has_probs else None
    if not weights:
        raise ValueError("no weights to try")

    def metric_fn(cands: list[str], rs: list[list[str]]) -> dict[str, Any]:
        scores = evaluate_captions(cands, rs, [metric])
        if scores.get(metric) is None:
            why = getattr(scores, "missing", {}).get(metric, "unavailable")
            raise ValueError(f"metric {metric!r} could not be computed: {why}")
        return {metric: scores[metric]}

    res = tune_weights(table, refs, list(weights), metric_fn, threshold=thr)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "tuning.csv") as tmp:
        res.to_csv(tmp, index=False)
    plot_tuning(res, metric, out / "tuning.png")
    best = res.loc[res[metric].idxmax()]
    log.info("best w_enc=%.3f: %s=%.4f", best["w_enc"], metric, best[metric])
    return {k: float(v) for k, v in best.items()}


# ------------------------------------------------------------------------------------------ Task 6 recipes
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
    ``dcase extract convert-dac``), or ``tiny``/``full`` for random weights (tests only).
    """

    name: str = ""
    description: str = ""
    root: str = "checkpoints"
    captioners: list[str] = field(default_factory=list)
    soups: list[SoupSpec] = field(default_factory=list)
    ensemble: str = "token"
    retriever: str | None = None
    clip_embedder: str = ""
    codec: str = "dac_24khz"
    mode: str = "sample"
    num_beams: int = 4
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    w_enc: float = 0.7
    w_dec: float = 0.3
    fluency_checker: str | None = None
    fluency_backbone: str | None = None
    fluency_threshold: float = DEFAULT_THRESHOLD
    chunk_clips: int = 64
    meta: dict = field(default_factory=dict)  # dcase.submission.build_meta input (label parts, authors, ...)


PLACEHOLDER_NAMES = ("lastname", "institute", "firstname", "changeme")


def load_task6_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Task6Recipe:
    from dcase.config import load_config

    return load_config(Task6Recipe, path, list(overrides))


def placeholder_fields(meta: dict) -> list[str]:
    """Meta fields still holding template placeholders (``Lastname``, ``Institute``, ...)."""
    bad = [k for k in ("lastname", "institute") if str(meta.get(k, "")).strip().lower() in PLACEHOLDER_NAMES]
    for i, a in enumerate(meta.get("authors") or []):
        for k in ("lastname", "firstname", "email"):
            v = str((a or {}).get(k, "")).strip().lower()
            if v in PLACEHOLDER_NAMES or "example.org" in v:
                bad.append(f"authors[{i}].{k}")
    return bad


def audio_dir_manifest(audio_dir: str | Path, out: str | Path, split: str = "evaluation") -> pd.DataFrame:
    """A caption-less manifest of the audio files directly in ``audio_dir`` (clip_id = file name)."""
    from dcase.data.audio import AUDIO_EXTENSIONS, audio_info, is_audio_file
    from dcase.data.manifest import write_manifest

    d = Path(audio_dir)
    if not d.is_dir():
        raise MissingInputError(f"audio folder {d} does not exist")
    files = sorted(p for p in d.iterdir() if p.is_file() and is_audio_file(p.name))
    if not files:
        raise MissingInputError(f"{d}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    recs = []
    for p in files:
        dur, sr = audio_info(p)
        recs.append(
            {
                "clip_id": p.name,
                "audio_path": str(p.resolve()),
                "split": split,
                "source": "clotho",
                "duration_s": dur,
                "sample_rate": sr,
                "captions": [],
            }
        )
    return write_manifest(recs, out)


def _resolve(root: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else root / q


def recipe_captioners(recipe: Task6Recipe, work_dir: str | Path, root: str | Path | None = None) -> list[Path]:
    """Checkpoint folders of the recipe's captioners, building missing soups into ``<work_dir>/soups``."""
    from dcase.merging import soup_checkpoints

    base = Path(root if root is not None else recipe.root)
    soups = {s.name: s for s in recipe.soups}
    if len(soups) != len(recipe.soups):
        raise ValueError(f"recipe {recipe.name!r}: two soups share a name")
    out = []
    for c in recipe.captioners:
        if c in soups:
            spec = soups[c]
            if spec.method != "uniform":
                raise ValueError(
                    f"soup {c!r}: recipes build uniform soups; build a {spec.method} soup with "
                    "`dcase soup --method greedy` and list its folder as a captioner"
                )
            target = Path(work_dir) / "soups" / c
            if not (target / "enclap_config.json").is_file():
                ingredients = [_resolve(base, p) for p in spec.ingredients]
                missing = [str(p) for p in ingredients if not p.is_dir()]
                if missing:
                    raise MissingInputError(f"soup {c!r}: ingredient checkpoint(s) not found: {missing}")
                soup_checkpoints(ingredients, target, overwrite=True)
            out.append(target)
        else:
            p = _resolve(base, c)
            if not (p / "enclap_config.json").is_file():
                raise MissingInputError(
                    f"recipe {recipe.name!r}: captioner checkpoint {p} not found "
                    "(set the recipe root with --root or --set root=DIR)"
                )
            out.append(p)
    if not out:
        raise ValueError(f"recipe {recipe.name!r} lists no captioners")
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
    from dcase.submission import build_meta, validate_task6, write_meta, write_task6

    out_csv = Path(out_csv)
    for p in (out_csv, meta_out):
        if p is not None and Path(p).exists() and not overwrite:
            raise OutputExistsError(f"{p} exists; pass --overwrite to replace it")
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
    audio_dir_manifest(audio_dir, manifest)
    codec = recipe.codec if recipe.codec in ("tiny", "full") else str(_resolve(base, recipe.codec))
    codec_store, embed_store = work / "codec", work / "embed"
    extract_codec(manifest, codec_store, codec, progress=progress)
    if not recipe.clip_embedder:
        raise ValueError(f"recipe {recipe.name!r}: clip_embedder (the checkpoint behind the clip embeddings) is empty")
    extract_embeddings(manifest, embed_store, _resolve(base, recipe.clip_embedder), progress=progress)
    captioners = recipe_captioners(recipe, work, base)
    cfg = GenerateConfig(
        captioners=[str(p) for p in captioners],
        ensemble=recipe.ensemble,
        retriever=str(_resolve(base, recipe.retriever)) if recipe.retriever else None,
        manifest=str(manifest),
        codec_stores=[str(codec_store)],
        embed_stores=[str(embed_store)],
        out=str(work / "candidates.parquet"),
        mode=recipe.mode,
        num_beams=recipe.num_beams,
        sampling=recipe.sampling,
        w_enc=recipe.w_enc,
        w_dec=recipe.w_dec,
        fluency_checker=str(_resolve(base, recipe.fluency_checker)) if recipe.fluency_checker else None,
        fluency_backbone=str(_resolve(base, recipe.fluency_backbone)) if recipe.fluency_backbone else None,
        fluency_threshold=recipe.fluency_threshold,
        chunk_clips=recipe.chunk_clips,
    )
    table = generate_candidates(cfg, progress=progress, overwrite=True)
    write_task6(task6_rows(table), out_csv, overwrite=overwrite, audio_dir=audio_dir)
    validate_task6(out_csv, audio_dir)
    meta_path = None
    if meta is not None and meta_out is not None:
        meta_path = write_meta(meta, meta_out, overwrite=overwrite)
    return out_csv, meta_path


__all__ = [
    "GenerateConfig",
    "MODES",
    "candidates_for_batch",
    "clip_audio_embeddings",
    "encoder_scores",
    "generate_candidates",
    "load_captioners",
    "parts_dir",
    "sidecar_path",
    "store_matches_retriever",
    "task6_rows",
    "tune_rerank_weights",
    "read_reference_map",
    "Task6Recipe",
    "SoupSpec",
    "audio_dir_manifest",
    "load_task6_recipe",
    "placeholder_fields",
    "recipe_captioners",
    "run_task6_recipe",
]
