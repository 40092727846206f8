"""Clotho-ChatGPT-Mixup (Wu et al., ICASSP 2024) to manifest rows.

The release is a JSON ``{"dataset": [{"selected_pair": [a, b], "audio_files": [file_a, file_b],
"chatgpt_mixups": [caption, ...]}, ...]}`` over pairs of Clotho *development* clips, plus an optional
rejection list ``[{"idx": [i, j]}, ...]``: caption ``j`` of pair ``i`` was judged bad and is excluded.

One manifest row per pair (source ``clotho_mixup``, split ``train``, ``clip_id`` = ``clotho_mixup/<pair index>``)
with every kept caption. The mixed audio is never written: rows name the two clips (``mix_clip_ids`` = their
Clotho file names, ``mix_audio_paths``) and a mixing ratio ``mix_ratio_db`` drawn uniformly in [-5, 5] dB from
``numpy.random.default_rng([seed, pair_index])``, so a pair's ratio does not depend on which other pairs were
kept. ``dcase.data.audio.load_clip`` mixes at that ratio with energy matching. Duration = max of the two clips.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from dcase.data.build import BadClips, DataError, probe_many
from dcase.data.clotho import clotho_audio_dir
from dcase.data.manifest import ManifestRow

log = logging.getLogger(__name__)

RATIO_RANGE_DB = (-5.0, 5.0)
SPLIT = "train"


def mix_ratio_db(seed: int, pair_index: int) -> float:
    """The mixing ratio of pair ``pair_index``: uniform in [-5, 5] dB from rng([seed, pair_index])."""
    return float(np.random.default_rng([seed, pair_index]).uniform(*RATIO_RANGE_DB))


def _find_json(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        cands = sorted(p for p in path.glob("*.json") if "reject" not in p.name.lower())
        if len(cands) == 1:
            return cands[0]
        raise DataError(
            f"{path}: expected exactly one mixup JSON (not named *reject*), found {[c.name for c in cands]}"
        )
    raise DataError(f"Clotho-ChatGPT-Mixup JSON not found: {path}")


def read_rejections(path: str | Path, n_pairs: int | None = None) -> set[tuple[int, int]]:
    """{(pair index, caption index)} from a rejection JSON ``[{"idx": [i, j]}, ...]``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable rejection JSON ({e})") from e
    if not isinstance(doc, list):
        raise DataError(f'{path}: expected a list of {{"idx": [pair, caption]}} objects')
    out: set[tuple[int, int]] = set()
    for k, item in enumerate(doc):
        idx = item.get("idx") if isinstance(item, dict) else None
        if not (isinstance(idx, list) and len(idx) == 2 and all(isinstance(v, int) and v >= 0 for v in idx)):
            raise DataError(f"{path}: entry {k}: field 'idx' must be [pair index, caption index], got {item!r}")
        if n_pairs is not None and idx[0] >= n_pairs:
            raise DataError(f"{path}: entry {k}: pair index {idx[0]} out of range (the mixup JSON has {n_pairs} pairs)")
        out.add((idx[0], idx[1]))
    return out


def read_clotho_mixup(
    json_path: str | Path,
    clotho_root: str | Path,
    *,
    rejected_json: str | Path | None = None,
    seed: int = 0,
    decode_check: bool = True,
    skip_bad: bool = False,
    bad: BadClips | None = None,
    progress: bool = False,
    workers: int = 1,
) -> list[ManifestRow]:
    """Manifest rows for the mixup JSON ``json_path`` (or a folder holding one), resolving audio against the
    Clotho development folder of ``clotho_root``. Pairs whose captions are all rejected are dropped (logged)."""
    path = _find_json(Path(json_path))
    bad = bad if bad is not None else BadClips(skip_bad)
    dev_dir = clotho_audio_dir(clotho_root, "development")
    if dev_dir is None:
        raise DataError(
            f"{clotho_root}: Clotho development audio folder not found "
            "(expected clotho_audio_files/development/ or development/)"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable mixup JSON ({e})") from e
    pairs = doc.get("dataset") if isinstance(doc, dict) else None
    if not isinstance(pairs, list):
        raise DataError(f"{path}: expected an object with a 'dataset' list (Clotho-ChatGPT-Mixup format)")
    rejected = read_rejections(rejected_json, len(pairs)) if rejected_json is not None else set()
    for i, j in sorted(rejected):
        caps = pairs[i].get("chatgpt_mixups") if isinstance(pairs[i], dict) else None
        if isinstance(caps, list) and j >= len(caps):
            raise DataError(f"{rejected_json}: idx [{i}, {j}]: pair {i} has only {len(caps)} captions")

    planned: list[tuple[int, list[str], list[str], list[Path]]] = []
    n_all_rejected = n_rejected_caps = 0
    for i, item in enumerate(pairs):
        clip_id = f"clotho_mixup/{i:06d}"
        if not isinstance(item, dict):
            bad(clip_id, path, f"pair {i} is not an object")
            continue
        files, caps = item.get("audio_files"), item.get("chatgpt_mixups")
        if not (isinstance(files, list) and len(files) == 2 and all(isinstance(f, str) and f.strip() for f in files)):
            bad(clip_id, path, f"pair {i}: field 'audio_files' must name 2 files, got {files!r}")
            continue
        if not isinstance(caps, list) or not caps:
            bad(clip_id, path, f"pair {i}: field 'chatgpt_mixups' must be a non-empty list, got {caps!r}")
            continue
        empty = [j for j, c in enumerate(caps) if not isinstance(c, str) or not c.strip()]
        if empty:
            bad(clip_id, path, f"pair {i}: field 'chatgpt_mixups' has empty caption(s) at {empty}")
            continue
        kept = [c for j, c in enumerate(caps) if (i, j) not in rejected]
        n_rejected_caps += len(caps) - len(kept)
        if not kept:
            n_all_rejected += 1
            log.info("mixup pair %d: all %d captions rejected; pair dropped", i, len(caps))
            continue
        audio: list[Path] = []
        for f in files:
            p = dev_dir / f
            if not p.is_file():
                p = dev_dir / Path(f).name
            audio.append(p)
        missing = [str(p) for p in audio if not p.is_file()]
        if missing:
            bad(clip_id, missing[0], f"pair {i}: audio file not found in {dev_dir} (field 'audio_files')")
            continue
        planned.append((i, [Path(f).name for f in files], kept, audio))
    if rejected:
        log.info(
            "mixup: %d caption(s) rejected; %d pair(s) lost all captions and were dropped",
            n_rejected_caps,
            n_all_rejected,
        )

    info = probe_many(
        [(f"clotho_mixup/{i:06d}", p) for i, _, _, ps in planned for p in ps],
        bad,
        decode_check,
        progress,
        desc="mixup source audio",
        workers=workers,
    )
    rows = []
    for i, names, caps, paths in planned:
        if not all(p in info for p in paths):
            continue  # already reported by probe_many
        (d0, sr0), (d1, sr1) = info[paths[0]], info[paths[1]]
        if sr0 != sr1:
            log.warning("mixup pair %d: sample rates differ (%d, %d); load_clip resamples both", i, sr0, sr1)
        rows.append(
            ManifestRow(
                clip_id=f"clotho_mixup/{i:06d}",
                audio_path=str(paths[0].absolute()),
                split=SPLIT,
                source="clotho_mixup",
                duration_s=max(d0, d1),
                sample_rate=max(sr0, sr1),
                captions=caps,
                mix_clip_ids=names,
                mix_audio_paths=[str(p.absolute()) for p in paths],
                mix_ratio_db=mix_ratio_db(seed, i),
            )
        )
    log.info("Clotho-ChatGPT-Mixup: %d of %d pairs kept", len(rows), len(pairs))
    return rows
