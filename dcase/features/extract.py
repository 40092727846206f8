"""The extraction driver: manifest -> feature store, resumable, distributed with Accelerate.

Each process takes the manifest rows ``i`` with ``i % num_processes == process_index`` (deterministic), skips the
clips already in the store's shards, sorts the rest by duration (length bucketing), loads batches in a
background thread while the previous batch is encoded, and writes its own shards. After a barrier the main
process rebuilds the index, merges the skip reports and records the provenance and run info.

Bad input: a clip that cannot be loaded, is empty, non-finite, or shorter than one codec frame raises an
``ExtractError`` naming the clip (the clips finished before it are kept), or, with ``skip_bad``, is listed
in ``skipped.json``. Silent (all-zero) audio is valid audio: it is encoded and a warning is logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dcase.errors import InputError
from dcase.features.store import (
    SKIPPED,
    ShardWriter,
    audio_changed,
    check_provenance,
    finalize_store,
    read_row_audio,
    remove_stale_tmp,
    scan_shards,
    write_provenance,
)
from dcase.io import atomic_write_text, check_output, read_json

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


class ExtractError(InputError):
    """A clip that cannot be turned into features; the message names the clip and its file."""


@dataclass
class ExtractConfig:
    """The resolved settings of one extraction run (saved as run/config.yaml)."""

    kind: str = "codec"  # codec | embed
    manifest: str = ""
    out: str = ""
    model: str = "tiny"  # codec spec or embedder path
    batch_size: int = 8
    chunk_seconds: float = 10.0
    skip_bad: bool = False
    splits: list[str] | None = None
    shard_size: int = 256  # a shard is written every shard_size clips ...
    flush_seconds: float = 120.0  # ... or every flush_seconds, whichever comes first (a kill loses at most that)
    prefetch: int = 2
    workers: int = 1


@dataclass
class ExtractReport:
    """What one process did (the main process's report also has the totals of the finished store)."""

    encoded: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    already_done: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    store_clips: int = 0


def process_state() -> Any:
    """Accelerate's process state. Without a GPU, torchrun / ``accelerate launch --cpu`` processes join a gloo
    group (MULTI_CPU); Accelerate only does that when asked for CPU, so ask when no GPU is present."""
    import os

    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() == "true" or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _dcase_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dcase")
    except metadata.PackageNotFoundError:
        return "unknown"


def load_row_audio(row: Any, sample_rate: int, min_samples: int = 1, data: Sequence[bytes] | None = None) -> np.ndarray:
    """A manifest row's audio at ``sample_rate`` (mixup rows mixed); ExtractError naming the clip if unusable.
    ``data``: the bytes of its audio files, already read (see ``load_clip``)."""
    from dcase.data.audio import AudioError, load_clip

    try:
        x = load_clip(row, sample_rate, data=data)
    except AudioError as e:
        raise ExtractError(f"clip {row.clip_id!r}: {e}") from e
    if x.size < min_samples:
        raise ExtractError(
            f"clip {row.clip_id!r} ({row.audio_path}): {x.size} samples at {sample_rate} Hz is shorter than "
            f"one frame ({min_samples} samples)"
        )
    if not np.isfinite(x).all():  # mixing can not create NaN, but keep the guarantee explicit
        raise ExtractError(f"clip {row.clip_id!r} ({row.audio_path}): audio contains NaN or inf samples")
    if not np.any(x):
        log.warning("clip %r (%s): silent audio (all zeros); encoding it anyway", row.clip_id, row.audio_path)
    return x


def run_extraction(
    rows: pd.DataFrame,
    out: str | Path,
    provenance: dict[str, Any],
    encode_batch: Callable[[list[np.ndarray]], list[np.ndarray]],
    sample_rate: int,
    min_samples: int,
    cfg: ExtractConfig,
    progress: bool = True,
) -> ExtractReport:
    """The shared driver (see module docstring). ``rows``: manifest DataFrame; ``encode_batch``: waves -> arrays."""
    from dcase.data.manifest import manifest_hash

    out = check_output(out, overwrite=True, kind="folder")  # a store is resumed, never replaced
    state = process_state()
    rank, world = state.process_index, state.num_processes
    provenance = {**provenance, "dcase_version": _dcase_version(), "manifest_hash": manifest_hash(rows)}
    exists = check_provenance(out, provenance)  # every process checks: all raise alike on a mismatch
    if state.is_main_process:
        if not exists:
            write_provenance(out, provenance)
        remove_stale_tmp(out)  # before the barrier: no process of this run writes yet
    state.wait_for_everyone()

    mine, todo = _clips_to_do(rows, out, rank, world)
    report = ExtractReport(already_done=mine - len(todo))
    if report.already_done:
        log.info("process %d: %d clips already in %s, %d to do", rank, report.already_done, out, len(todo))
    bar = None
    if progress and state.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo) * world, unit="clip", desc=f"extract {provenance.get('kind')}", dynamic_ncols=True)
    t0 = time.perf_counter()
    with ShardWriter(out, rank, cfg.shard_size, cfg.flush_seconds) as writer:
        error = _encode_clips(todo, encode_batch, sample_rate, min_samples, cfg, writer, report, bar, world)
    if bar is not None:
        bar.close()
    report.wall_seconds = time.perf_counter() - t0
    skip_file = out / f"skipped-r{rank:03d}.json"
    if report.skipped:
        prev = read_json(skip_file, "skip report") if skip_file.is_file() else []
        atomic_write_text(skip_file, json.dumps(prev + report.skipped, indent=1))
    if error is not None:
        # Other processes may be waiting at the barrier below; a distributed launcher tears them down.
        raise ExtractError(f"{error} (clips finished so far are kept in {out}; rerun with --skip-bad to skip it)")
    state.wait_for_everyone()
    if state.is_main_process:
        _finish_store(out, provenance, cfg, report, world)
    state.wait_for_everyone()
    return report


def _clips_to_do(rows: pd.DataFrame, out: Path, rank: int, world: int) -> tuple[int, list[Any]]:
    """This process's share of ``rows`` (every ``world``-th row from ``rank``): how many, and the rows still to
    encode (not in a shard, or whose audio changed since), longest first."""
    from dcase.data.manifest import frame_rows

    done = scan_shards(out)
    mine = [r for i, r in enumerate(frame_rows(rows)) if i % world == rank]
    todo, stale = [], []
    for r in mine:
        if r.clip_id not in done:
            todo.append(r)
        elif why := audio_changed(done[r.clip_id].get("audio"), r):
            stale.append(f"{r.clip_id!r}: {why}")
            todo.append(r)
    if stale:
        log.warning(
            "process %d: the audio of %d clip(s) in %s changed after it was encoded; re-extracting them (%s)",
            rank,
            len(stale),
            out,
            "; ".join(stale[:5]) + (" ..." if len(stale) > 5 else ""),
        )
    todo.sort(key=lambda r: (-float(r.duration_s), r.clip_id))
    return len(mine), todo


Loaded = list[tuple[Any, np.ndarray | Exception, Any]]  # (row, audio or its error, audio fingerprint) per clip


def _encode_clips(
    todo: list[Any],
    encode_batch: Callable[[list[np.ndarray]], list[np.ndarray]],
    sample_rate: int,
    min_samples: int,
    cfg: ExtractConfig,
    writer: ShardWriter,
    report: ExtractReport,
    bar: Any,
    world: int,
) -> Exception | None:
    """Encode ``todo`` in batches into ``writer`` while a thread decodes the next ``cfg.prefetch`` batches; fills
    ``report``. Returns the first unusable clip's error (then stops), or None (``cfg.skip_bad`` skips them)."""
    batches = [todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]

    def load(batch: Sequence[Any]) -> Loaded:
        res: Loaded = []
        for r in batch:
            try:
                blobs, fp = read_row_audio(r)  # each file read once: hashed, then decoded from these bytes
                res.append((r, load_row_audio(r, sample_rate, min_samples, data=blobs), fp))
            except ExtractError as e:
                res.append((r, e, None))
            except OSError as e:
                res.append((r, ExtractError(f"clip {r.clip_id!r}: cannot read its audio ({e})"), None))
        return res

    t0 = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        futures = [pool.submit(load, b) for b in batches[: cfg.prefetch]]
        for bi in range(len(batches)):
            loaded = futures[bi].result()
            if bi + cfg.prefetch < len(batches):
                futures.append(pool.submit(load, batches[bi + cfg.prefetch]))
            good: list[tuple[Any, np.ndarray, Any]] = []
            for r, x, fp in loaded:
                if isinstance(x, Exception):
                    if not cfg.skip_bad:
                        for future in futures:
                            future.cancel()
                        return x
                    log.warning("skipping %s", x)
                    report.skipped.append({"clip_id": r.clip_id, "reason": str(x)})
                else:
                    good.append((r, x, fp))
            if good:
                feats = encode_batch([x for _, x, _ in good])
                for (r, x, fp), feat in zip(good, feats, strict=True):
                    writer.add(r.clip_id, feat, fp)
                    report.audio_seconds += x.size / sample_rate
                report.encoded += len(good)
            if bar is not None:
                bar.update(len(loaded) * world)
                el = time.perf_counter() - t0
                bar.set_postfix(audio_s_per_s=f"{report.audio_seconds / max(el, 1e-9):.1f}")
    return None


def _finish_store(out: Path, provenance: dict[str, Any], cfg: ExtractConfig, report: ExtractReport, world: int) -> None:
    """Main process, after every process finished: the store's index, its skip report and run record."""
    from dcase.config import write_run_info

    skipped: list[dict[str, str]] = []
    for f in sorted(out.glob("skipped-r*.json")):
        skipped += read_json(f, "skip report")
    index = finalize_store(out, provenance)
    skipped = [s for s in {s["clip_id"]: s for s in skipped}.values() if s["clip_id"] not in index]
    atomic_write_text(out / SKIPPED, json.dumps(skipped, indent=1))
    report.store_clips = len(index)
    write_run_info(
        out / "run",
        cfg,
        extra={"world_size": world, "provenance": provenance, "encoded_main_process": report.encoded},
    )
    log.info("%s: %d clips in the store, %d skipped", out, len(index), len(skipped))


def _read_rows(manifest: str | Path, splits: Sequence[str] | None) -> pd.DataFrame:
    from dcase.data.manifest import read_manifest

    return read_manifest(manifest, splits)


def extract_codec(
    manifest: str | Path,
    out: str | Path,
    codec: str = "tiny",
    batch_size: int = 8,
    skip_bad: bool = False,
    splits: Sequence[str] | None = None,
    chunk_seconds: float = 10.0,
    shard_size: int = 256,
    progress: bool = True,
    workers: int = 1,
    flush_seconds: float = 120.0,
) -> ExtractReport:
    """DAC codes (int16 [n_codebooks, T]) for every manifest row into the store ``out``.

    ``codec``: ``tiny`` / ``full`` / a DacConfig file (random weights), a DacModel directory, or a hub name.
    ``workers``: batches encoded at once on one torch thread each (CPU; see ``DacCodec.encode_many``).
    A shard is written every ``shard_size`` clips or ``flush_seconds`` seconds, whichever comes first.
    """
    from dcase.features.codec import load_codec

    cfg = ExtractConfig(
        "codec",
        str(manifest),
        str(out),
        str(codec),
        batch_size,
        chunk_seconds,
        skip_bad,
        list(splits) if splits else None,
        shard_size,
        flush_seconds,
        workers=workers,
    )
    model = load_codec(codec, chunk_seconds=chunk_seconds)
    model.model.to(process_state().device)
    rows = _read_rows(manifest, splits)
    prov = {"kind": "codec", **model.provenance()}
    return run_extraction(
        rows, out, prov, lambda w: model.encode_many(w, workers), model.sample_rate, model.hop, cfg, progress
    )


def extract_embeddings(
    manifest: str | Path,
    out: str | Path,
    embedder: str | Path,
    batch_size: int = 8,
    skip_bad: bool = False,
    splits: Sequence[str] | None = None,
    shard_size: int = 256,
    progress: bool = True,
    flush_seconds: float = 120.0,
) -> ExtractReport:
    """One clip embedding (float32 [D]) per manifest row, from a retriever / CNext checkpoint (shards as in
    ``extract_codec``)."""
    import torch

    from dcase.features.embed import embed_waves, embedder_provenance, load_embedder

    cfg = ExtractConfig(
        "embed",
        str(manifest),
        str(out),
        str(embedder),
        batch_size,
        0.0,
        skip_bad,
        list(splits) if splits else None,
        shard_size,
        flush_seconds,
    )
    model = load_embedder(embedder)
    if isinstance(model, torch.nn.Module):
        model.to(process_state().device)
    rows = _read_rows(manifest, splits)
    prov = {"kind": "embed", **embedder_provenance(model, embedder)}
    # embedders handle short clips themselves (CNext zero-pads them to one output frame)
    return run_extraction(rows, out, prov, lambda w: embed_waves(model, w), int(model.sample_rate), 1, cfg, progress)
