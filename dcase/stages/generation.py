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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dcase.checkpoint import resolve_checkpoint
from dcase.config import PROBABILITY, check_inputs, check_values
from dcase.decoding.rerank import (
    DEFAULT_THRESHOLD,
    apply_fluency,
    lazy_fluency,
    make_candidates,
    rerank,
    selected_captions,
    write_candidates,
)
from dcase.decoding.sample import Candidate, SamplingConfig, clip_seed
from dcase.errors import CheckpointError, InputError, OutputExistsError
from dcase.io import atomic_path, atomic_write_text, check_output, fingerprint, read_json

if TYPE_CHECKING:
    import torch

    from dcase.decoding.fluency import FluencyScorer
    from dcase.models.enclap import EnCLAP
    from dcase.models.retriever import Retriever

log = logging.getLogger(__name__)

MODES = ("sample", "greedy", "beam")
PLAN = "plan.json"


@dataclass
class GenerationSettings:
    """How candidates are made, scored and chosen: shared by ``dcase generate`` (``GenerateConfig.generation``) and
    the Task 6 recipes (``Task6Recipe.generation``). configs/dcase2024/generate.yaml holds the report's values."""

    # token | pool (used with several captioners)
    ensemble: str = field(default="token", metadata={"choices": ("token", "pool")})
    mode: str = field(default="sample", metadata={"choices": MODES})  # sample | greedy | beam
    num_beams: int = field(default=4, metadata={"min": 1})
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    w_enc: float = field(default=0.7, metadata={"min": 0})
    w_dec: float = field(default=0.3, metadata={"min": 0})
    fluency_checker: str | None = None  # FENSE checker checkpoint (aac-metrics format); None: filter off
    fluency_backbone: str | None = None  # local BERT folder overriding the checker's model_type
    # lazy: check candidates in score order until one is fluent (same selection, ~1 checker batch per clip);
    fluency_threshold: float = field(default=DEFAULT_THRESHOLD, metadata=PROBABILITY)
    # all: check every candidate (needed to re-rank the table later with other weights: dcase tune-rerank)
    fluency_scope: str = field(default="lazy", metadata={"choices": ("lazy", "all")})
    # auto | store | compute: where the retriever's clip embedding comes from
    audio_embedding: str = field(default="auto", metadata={"choices": ("auto", "store", "compute")})
    chunk_clips: int = field(default=64, metadata={"min": 1})  # clips per resumable part file
    text_batch_size: int = field(default=64, metadata={"min": 1})

    def check(self) -> None:
        """The field limits (``dcase.config.check_values``) and the sampling settings."""
        check_values(self, "generation", recursive=False)
        self.sampling.check()


@dataclass
class GenerateConfig:
    """``dcase generate`` settings: which checkpoints, clips and stores, and how to generate (``generation``)."""

    captioners: list[str] = field(default_factory=list)  # EnCLAP checkpoint folders (save_pretrained)
    retriever: str | None = None  # retriever folder for the encoder score (None: encoder score off, w_enc must be 0)
    manifest: str = field(default="", metadata={"input": "file"})
    split: str | None = None  # None: every row of the manifest
    codec_stores: list[str] = field(default_factory=list, metadata={"input": "dir"})
    # clip embeddings (the captioners' CLAP slot)
    embed_stores: list[str] = field(default_factory=list, metadata={"input": "dir"})
    out: str = "candidates.parquet"
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    device: str = "cpu"

    def check(self) -> None:
        g = self.generation
        if not self.captioners:
            raise InputError("no captioner checkpoint given (--captioner)")
        g.check()
        if g.mode == "beam" and len(self.captioners) > 1 and g.ensemble == "token":
            raise InputError("beam search with a token-level ensemble is not supported; use --ensemble pool")
        if not self.manifest:
            raise InputError("no manifest given (--manifest)")
        if not self.codec_stores or not self.embed_stores:
            raise InputError("give the codec store(s) and clip-embedding store(s) of the manifest's clips")
        if self.retriever is None and g.w_enc != 0:
            raise InputError(f"w_enc={g.w_enc} needs a retriever for the encoder score (or set w_enc to 0)")


# -------------------------------------------------------------------------------------------- pieces
def load_captioners(paths: Sequence[str | Path], device: str = "cpu") -> list[EnCLAP]:
    """EnCLAP checkpoints in eval mode; all must read the same features (n_codebooks, clip_dim)."""
    from dcase.models.enclap import EnCLAP

    models = [EnCLAP.from_pretrained(p).to(device).eval() for p in paths]
    for p, m in zip(paths[1:], models[1:], strict=True):
        a, b = models[0].config, m.config
        if (a.n_codebooks, a.clip_dim) != (b.n_codebooks, b.clip_dim):
            raise CheckpointError(
                f"{p}: n_codebooks/clip_dim {b.n_codebooks}/{b.clip_dim} differ from {paths[0]}'s "
                f"{a.n_codebooks}/{a.clip_dim}: the ensemble cannot share feature stores"
            )
    for p, m in zip(paths, models, strict=True):
        if m.tokenizer is None:
            raise CheckpointError(f"{p}: captioner checkpoint has no tokenizer/ folder")
    return models


def store_matches_retriever(store: Mapping[str, np.ndarray], retriever_sha: str) -> bool:
    """True when an embed store was written by the retriever checkpoint whose weights hash to ``retriever_sha``
    (``dcase.io.fingerprint``, as recorded in the store's provenance; a mapping without one never matches)."""
    from dcase.features.store import RecordedStore

    prov = (store.provenance if isinstance(store, RecordedStore) else None) or {}
    return prov.get("kind") == "embed" and prov.get("checkpoint_sha256") == retriever_sha


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` [N, D] scaled to unit length (an all-zero row stays zero), in ``x``'s dtype: both sides of the
    encoder score (here, in ``encoder_scores`` and in ``dcase.api``)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def clip_audio_embeddings(
    retriever: Retriever,
    retriever_path: str | Path,
    rows: pd.DataFrame,
    embed_stores: Mapping[str, np.ndarray],
    how: str = "auto",
    retriever_sha: str | None = None,
) -> tuple[np.ndarray, str]:
    """The retriever's L2-normalised audio embedding of each row: float32 [N, D], and where it came from
    (``store`` when the clip-embedding store was made by this retriever, else ``computed`` from the audio)."""
    from dcase.data.audio import load_clip
    from dcase.data.manifest import frame_rows
    from dcase.features.embed import embed_waves
    from dcase.features.store import StoreChain

    sha = retriever_sha or fingerprint(resolve_checkpoint(retriever_path))
    chain = embed_stores if isinstance(embed_stores, StoreChain) else None
    holders = [chain.holder(c) if chain is not None else embed_stores for c in rows["clip_id"]]
    same = all(h is not None and store_matches_retriever(h, sha) for h in holders)
    if how == "store" and not same:
        raise InputError(
            f"audio_embedding=store, but the clip-embedding store(s) were not made by {retriever_path} "
            "(provenance checkpoint_sha256 differs); use auto or compute"
        )
    if how != "compute" and same:
        emb = np.stack([np.asarray(embed_stores[c], dtype=np.float32) for c in rows["clip_id"]])
        src = "store"
    else:
        waves = [load_clip(r, int(retriever.sample_rate)) for r in frame_rows(rows)]
        emb = np.stack(embed_waves(retriever, waves))
        src = "computed"
    if emb.shape[1] != retriever.embed_dim:
        raise InputError(f"clip embeddings have {emb.shape[1]} dims, the retriever's joint space {retriever.embed_dim}")
    return l2_normalise(emb).astype(np.float32), src


def encoder_scores(
    retriever: Retriever, audio_emb: np.ndarray, texts_per_clip: Sequence[Sequence[str]], batch_size: int = 64
) -> list[np.ndarray]:
    """Cosine(audio embedding of clip b, text embedding of each candidate of clip b): per clip float64 [n_b]."""
    flat = [t for ts in texts_per_clip for t in ts]
    if not flat:
        return [np.zeros(0) for _ in texts_per_clip]
    text = retriever.embed_text(flat, batch_size=batch_size).float().numpy()
    text = l2_normalise(text)
    out, i = [], 0
    for b, ts in enumerate(texts_per_clip):
        out.append((text[i : i + len(ts)] @ audio_emb[b]).astype(np.float64))
        i += len(ts)
    return out


def candidates_for_batch(
    models: Sequence[EnCLAP],
    batch: dict[str, torch.Tensor],
    cfg: GenerationSettings,
    seeds: Sequence[int],
    device: str = "cpu",
) -> list[list[Candidate]]:
    """Candidates of one batch of clips (codes/codes_mask/clip_emb tensors) under ``cfg.mode`` / ``cfg.ensemble``."""
    from dcase.decoding.ensemble import beam_candidates, pool_from_encoder
    from dcase.decoding.sample import batch_candidates, encode_batch, sample_from_encoder

    dev = device
    encoded = encode_batch(models, batch["codes"].to(dev), batch["codes_mask"].to(dev), batch["clip_emb"].to(dev))
    greedy = cfg.mode == "greedy"
    if len(models) > 1 and cfg.ensemble == "pool":
        return pool_from_encoder(
            models, encoded, cfg.sampling, seeds, greedy=greedy, beams=cfg.num_beams if cfg.mode == "beam" else 0
        )
    if cfg.mode == "beam":
        return beam_candidates(models[0], encoded[0], cfg.num_beams, cfg.sampling)
    sb = sample_from_encoder(models, encoded, cfg.sampling, seeds, greedy=greedy)
    return batch_candidates(models[0], sb)


def sample_candidates(
    models: Sequence[EnCLAP],
    clips: Sequence[int],
    length: Callable[[int], int],
    item: Callable[[int], Any],
    seed_name: Callable[[int], str],
    cfg: GenerationSettings,
    device: str,
    empty_error: Callable[[int], Exception],
    bar: Any | None = None,
) -> dict[int, list[Candidate]]:
    """Candidates of each clip of ``clips`` (indices): sampled in batches of ``cfg.sampling.batch_clips`` clips of
    similar length (``length(i)``: code frames), ``item(i)`` the (codes, clip embedding, text) to collate, each clip
    seeded by ``seed_name(i)`` (``clip_seed``); a clip whose every sample is empty raises ``empty_error(i)``.
    The one loop of ``dcase generate`` and the Python API (``dcase.api.Captioner``)."""
    import torch

    from dcase.data.datasets import collate_codes

    order = sorted(clips, key=length)
    cands: dict[int, list[Candidate]] = {}
    for s in range(0, len(order), cfg.sampling.batch_clips):
        ids = order[s : s + cfg.sampling.batch_clips]
        batch = collate_codes([item(i) for i in ids], models[0].config.pad_code)
        seeds = [clip_seed(cfg.sampling.seed, seed_name(i)) for i in ids]
        with torch.no_grad():
            for i, c in zip(ids, candidates_for_batch(models, batch, cfg, seeds, device), strict=True):
                if not c:
                    raise empty_error(i)
                cands[i] = c
        if bar is not None:
            bar.update(len(ids))
    return cands


# --------------------------------------------------------------------------------------------- the stage
def _plan_fingerprint(cfg: GenerateConfig, clip_ids: list[str]) -> dict[str, Any]:
    """What the parts depend on (compared on resume)."""
    settings = {
        k: v for k, v in dataclasses.asdict(cfg.generation).items() if k not in ("chunk_clips", "text_batch_size")
    }
    keep = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "device", "generation")}
    keep.update(settings)
    keep["sampling"] = {k: v for k, v in keep["sampling"].items() if k != "batch_clips"}
    keep["captioner_sha256"] = [fingerprint(resolve_checkpoint(p)) for p in cfg.captioners]
    keep["retriever_sha256"] = fingerprint(resolve_checkpoint(cfg.retriever)) if cfg.retriever else None
    keep["clips"] = hashlib.sha256("\n".join(clip_ids).encode()).hexdigest()
    keep["n_clips"] = len(clip_ids)
    return json.loads(json.dumps(keep, default=str))


def _start_or_resume(pdir: Path, plan: dict[str, Any]) -> None:
    """Record ``plan`` in a new parts folder, or check that the parts already there were made with it."""
    if not (pdir / PLAN).is_file():
        pdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(pdir / PLAN, json.dumps(plan, indent=1))
        return
    old = read_json(pdir / PLAN, "generation plan")
    if old != plan:
        diff = sorted(
            k
            for k in set(old["fingerprint"]) | set(plan["fingerprint"])
            if old["fingerprint"].get(k) != plan["fingerprint"].get(k)
        )
        if old.get("chunk_clips") != plan["chunk_clips"]:
            diff.append("chunk_clips")
        raise InputError(
            f"{pdir} holds parts of a run with other settings ({diff}); delete it or rerun with "
            "the same settings to resume"
        )


def parts_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def sidecar_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_suffix(".json")


def generate_candidates(cfg: GenerateConfig, progress: bool = True, overwrite: bool = False) -> pd.DataFrame:
    """Run the stage (module docstring); returns the reranked candidates table written to ``cfg.out``."""

    from dcase.data.datasets import CaptionDataset
    from dcase.data.manifest import read_manifest
    from dcase.decoding.fluency import fluency_stage
    from dcase.features.store import StoreChain, check_coverage

    cfg.check()
    check_inputs(cfg)
    g = cfg.generation
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
        g.fluency_checker, g.fluency_backbone, g.fluency_threshold, cfg.device
    )  # before the models: a bad checker path fails fast
    models = load_captioners(cfg.captioners, cfg.device)
    if len(models) > 1 and g.ensemble == "token":
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
    plan: dict[str, Any] = {"fingerprint": _plan_fingerprint(cfg, clip_ids), "chunk_clips": g.chunk_clips}
    _start_or_resume(pdir, plan)
    chunks = [list(range(s, min(s + g.chunk_clips, len(rows)))) for s in range(0, len(rows), g.chunk_clips)]
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
    for k, idx in enumerate(chunks):
        if k in done:
            continue
        cands = sample_candidates(
            models,
            idx,
            lambda i: lengths[i],
            lambda i: data[i],
            lambda i: clip_ids[i],
            g,
            cfg.device,
            lambda i: InputError(
                f"clip {clip_ids[i]!r}: every sample decoded to an empty caption (the captioner ends at once; check "
                "the checkpoint, or raise sampling.min_new_tokens)"
            ),
            bar,
        )
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
    if bar is not None:
        bar.close()
    table = pd.concat([pd.read_parquet(pdir / f"part-{k:05d}.parquet") for k in range(len(chunks))], ignore_index=True)
    table = rerank(table, g.w_enc, g.w_dec, g.fluency_threshold if checker is not None else None)
    write_candidates(table, out)
    n_fb = int(table.loc[table["selected"], "fallback"].sum())
    meta = {
        **fluency_status,
        **(
            {"fluency_scope": g.fluency_scope, "n_fluency_checked": int(table["fluency_error_prob"].notna().sum())}
            if checker is not None
            else {}
        ),
        "audio_embedding": sorted(audio_src) or (["none"] if retriever is None else ["resumed"]),
        "n_clips": len(rows),
        "n_candidates": len(table),
        "n_fallback_clips": n_fb,
        "mode": g.mode,
        "ensemble": g.ensemble if len(models) > 1 else "none",
        "decoder_score": "mean over captioners of the length-normalised log-likelihood (temperature 1)",
        "encoder_score": "cosine(retriever audio embedding, retriever text embedding)" if retriever else "off",
        "w_enc": g.w_enc,
        "w_dec": g.w_dec,
        "seconds": round(time.perf_counter() - t0, 3),
        "config": dataclasses.asdict(cfg),
    }
    atomic_write_text(sidecar_path(out), json.dumps(meta, indent=2, default=str))
    from dcase.config import write_run_info

    write_run_info(
        out.with_name(out.stem + "_run"),
        cfg,
        seed=g.sampling.seed,
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
    retriever: Retriever | None,
    cfg: GenerateConfig,
    embeds: Mapping[str, np.ndarray],
    checker: FluencyScorer | None,
    audio_src: set[str],
    plan_sha: str | None = None,
) -> pd.DataFrame:
    """Rows of one chunk in clip order, with encoder scores and fluency probabilities."""
    g = cfg.generation
    texts = [[c.text for c in cands[i]] for i in idx]
    enc: list[np.ndarray | None] = [None] * len(idx)
    if retriever is not None and cfg.retriever is not None:
        audio, src = clip_audio_embeddings(
            retriever, cfg.retriever, rows.iloc[list(idx)], embeds, g.audio_embedding, plan_sha
        )
        audio_src.add(src)
        enc = [*encoder_scores(retriever, audio, texts, g.text_batch_size)]
    return candidates_table([clip_ids[i] for i in idx], [cands[i] for i in idx], enc, g, checker)


def candidates_table(
    clip_ids: Sequence[str],
    cands: Sequence[Sequence[Candidate]],
    enc: Sequence[np.ndarray | None],
    g: GenerationSettings,
    checker: FluencyScorer | None,
) -> pd.DataFrame:
    """The candidates table of some clips, in clip order: each clip's candidates with their encoder scores
    (``enc``: per clip, or None without a retriever) and fluency probabilities (``g.fluency_scope``), not yet
    reranked. The one table of ``dcase generate`` (per chunk) and the Python API."""
    recs = [
        {
            "clip_id": clip_id,
            "text": c.text,
            "count": c.count,
            "decoder_score": c.decoder_score,
            "encoder_score": float(scores[r]) if scores is not None else np.nan,
            "token_ids": list(c.token_ids),
        }
        for clip_id, cs, scores in zip(clip_ids, cands, enc, strict=True)
        for r, c in enumerate(cs)
    ]
    table = make_candidates(recs)
    if checker is not None and g.fluency_scope == "lazy":
        table = lazy_fluency(table, checker.error_probabilities, g.w_enc, g.w_dec, g.fluency_threshold)
    elif checker is not None:
        table = apply_fluency(table, checker)
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
    overwrite: bool = False,
) -> dict[str, float]:
    """Grid search of ``w_enc`` (``w_dec = 1 - w_enc``) on a validation candidates table: writes
    ``tuning.csv`` and ``tuning.png`` into ``out_dir`` (existing ones only with ``overwrite``) and returns the best
    row. The fluency filter applies (``threshold``, default 0.9) when the table has fluency probabilities."""
    from dcase.decoding.rerank import plot_tuning, read_candidates, tune_weights
    from dcase.evaluation.captions import evaluate_captions

    out = check_output(out_dir, overwrite=True, kind="folder")
    for name in ("tuning.csv", "tuning.png"):
        check_output(out / name, overwrite)
    table = read_candidates(candidates) if isinstance(candidates, str | Path) else candidates
    refs = read_reference_map(references) if isinstance(references, str | Path) else dict(references)
    has_probs = table["fluency_error_prob"].notna().any()
    thr = (DEFAULT_THRESHOLD if threshold is None else threshold) if has_probs else None
    if not weights:
        raise InputError("no weights to try")

    def metric_fn(cands: list[str], rs: list[list[str]]) -> dict[str, Any]:
        scores = evaluate_captions(cands, rs, [metric])
        if scores.get(metric) is None:
            why = getattr(scores, "missing", {}).get(metric, "unavailable")
            raise InputError(f"metric {metric!r} could not be computed: {why}")
        return {metric: scores[metric]}

    res = tune_weights(table, refs, list(weights), metric_fn, threshold=thr)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "tuning.csv", overwrite=overwrite) as tmp:
        res.to_csv(tmp, index=False)
    plot_tuning(res, metric, out / "tuning.png")
    best = res.iloc[int(np.nanargmax(res[metric].to_numpy(dtype=np.float64)))]  # the first best row, as idxmax
    log.info("best w_enc=%.3f: %s=%.4f", best["w_enc"], metric, best[metric])
    return {str(k): float(v) for k, v in best.items()}
