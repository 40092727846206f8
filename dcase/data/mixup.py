"""Clotho-ChatGPT-Mixup (Wu et al., ICASSP 2024) to manifest rows.

The release (``slseanwu/clotho-chatgpt-mixup-50K``) is two files, accepted under their published names:

- ``clotho_development_chatgpt_mixups.json``: ``{"dataset": [{"selected_pair": [a, b], "audio_files": [file_a,
  file_b], "chatgpt_mixups": [caption, ...]}, ...]}`` over pairs of Clotho *development* clips;
- ``clotho_development_chatgpt_mixups_err.json``: the rejection list ``[{"idx": [i, j]}, ...]``: caption ``j`` of
  pair ``i`` was judged bad by the authors and is excluded.

``root`` may be the release folder, the mixup JSON (the release's ``*_err.json`` beside it is then used as the
rejection list), or a hand folder with exactly one mixup JSON and at most one rejection JSON (named ``*reject*``
or ``*_err.json``). An explicit ``rejected_json`` overrides the one found.

One manifest row per pair (source ``clotho_mixup``, split ``train``, ``clip_id`` = ``clotho_mixup/<pair index>``)
with every kept caption. The mixed audio is never written: rows name the two clips (``mix_clip_ids`` = their
Clotho file names, ``mix_audio_paths``) and a mixing ratio ``mix_ratio_db`` drawn uniformly in [-5, 5] dB from
``numpy.random.default_rng([seed, pair_index])``, so a pair's ratio does not depend on which other pairs were
kept. ``dcase.data.audio.load_clip`` mixes at that ratio with energy matching. Duration = max of the two clips.

Every ``audio_files`` entry must name a file of the Clotho development folder (a plain file name, or one under a
``development/`` folder): an absolute path, a ``..`` escape or another split's folder is refused, naming the pair,
so that no evaluation audio can enter training through a pair.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePath

import numpy as np

from dcase.data.common import BadClips, DataError, clotho_audio_dir, probe_many, read_json_text, resolve_inside
from dcase.data.manifest import ManifestRow

log = logging.getLogger(__name__)

RATIO_RANGE_DB = (-5.0, 5.0)
SPLIT = "train"
RELEASE_JSON = "clotho_development_chatgpt_mixups.json"
RELEASE_REJECTED_JSON = "clotho_development_chatgpt_mixups_err.json"
DEV_SPLIT_DIR = "development"


def mix_ratio_db(seed: int, pair_index: int) -> float:
    """The mixing ratio of pair ``pair_index``: uniform in [-5, 5] dB from rng([seed, pair_index])."""
    return float(np.random.default_rng([seed, pair_index]).uniform(*RATIO_RANGE_DB))


def _is_rejection_name(name: str) -> bool:
    low = name.lower()
    return "reject" in low or low.endswith("_err.json")


def find_mixup_files(path: str | Path) -> tuple[Path, Path | None, str]:
    """(mixup JSON, rejection JSON or None, layout ``"release"`` | ``"hand"``) for a JSON file or a folder."""
    path = Path(path)
    if path.is_file():
        sibling = path.with_name(path.stem + "_err.json")
        layout = "release" if path.name == RELEASE_JSON else "hand"
        return path, (sibling if sibling.is_file() else None), layout
    if not path.is_dir():
        raise DataError(f"Clotho-ChatGPT-Mixup JSON not found: {path}")
    if (path / RELEASE_JSON).is_file():
        rej = path / RELEASE_REJECTED_JSON
        return path / RELEASE_JSON, (rej if rej.is_file() else None), "release"
    jsons = sorted(p for p in path.glob("*.json") if p.is_file())
    cands = [p for p in jsons if not _is_rejection_name(p.name)]
    rejs = [p for p in jsons if _is_rejection_name(p.name)]
    if len(cands) != 1:
        raise DataError(
            f"{path}: expected the release's {RELEASE_JSON} or exactly one mixup JSON (not named *reject* or "
            f"*_err.json), found {[c.name for c in cands]}"
        )
    if len(rejs) > 1:
        raise DataError(f"{path}: several rejection lists {[r.name for r in rejs]}; name one with --rejected-json")
    return cands[0], (rejs[0] if rejs else None), "hand"


def dev_audio_path(dev_dir: Path, name: str) -> Path | None:
    """The development file named by a pair's ``audio_files`` entry, or None if it would be outside ``dev_dir``.

    ``name`` is a plain file name, or a relative path whose last folder is ``development`` (the file is then
    looked up in ``dev_dir``); anything else (absolute, ``..``, another split's folder) gives None."""
    parts = PurePath(name).parts
    if not name or PurePath(name).is_absolute() or ".." in parts:
        return None
    if len(parts) == 1:
        return resolve_inside(dev_dir, name)
    if len(parts) >= 2 and parts[-2] == DEV_SPLIT_DIR:
        return resolve_inside(dev_dir, parts[-1])
    return None


def read_rejections(path: str | Path, n_pairs: int | None = None) -> set[tuple[int, int]]:
    """{(pair index, caption index)} from a rejection JSON ``[{"idx": [i, j]}, ...]``."""
    path = Path(path)
    doc = read_json_text(path, "rejection JSON")
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


MixPlan = tuple[int, list[str], list[str], list[Path]]  # pair index, clip names, kept captions, audio paths


def plan_clotho_mixup(
    json_path: str | Path,
    clotho_root: str | Path,
    bad: BadClips,
    *,
    rejected_json: str | Path | None = None,
) -> tuple[list[MixPlan], int]:
    """The planned pairs (index, clip names, kept captions, development audio paths) and the number of pairs in
    the JSON, without touching the audio (see ``read_clotho_mixup``)."""
    path, found_rejected, _layout = find_mixup_files(json_path)
    if rejected_json is None and found_rejected is not None:
        rejected_json = found_rejected
        log.info("mixup: using the rejection list %s", found_rejected)
    dev_dir = clotho_audio_dir(clotho_root, "development")
    if dev_dir is None:
        raise DataError(
            f"{clotho_root}: Clotho development audio folder not found "
            "(expected clotho_audio_files/development/ or development/)"
        )
    doc = read_json_text(path, "mixup JSON")
    pairs = doc.get("dataset") if isinstance(doc, dict) else None
    if not isinstance(pairs, list):
        raise DataError(f"{path}: expected an object with a 'dataset' list (Clotho-ChatGPT-Mixup format)")
    rejected = read_rejections(rejected_json, len(pairs)) if rejected_json is not None else set()
    for i, j in sorted(rejected):
        caps = pairs[i].get("chatgpt_mixups") if isinstance(pairs[i], dict) else None
        if isinstance(caps, list) and j >= len(caps):
            raise DataError(f"{rejected_json}: idx [{i}, {j}]: pair {i} has only {len(caps)} captions")

    planned: list[MixPlan] = []
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
        audio = [dev_audio_path(dev_dir, f) for f in files]
        outside = [f for f, p in zip(files, audio, strict=True) if p is None]
        if outside:
            bad(
                clip_id,
                path,
                f"pair {i}: field 'audio_files' names {outside[0]!r}, which is not in the Clotho development folder "
                f"{dev_dir} (mixup pairs must be development clips; absolute paths and '..' are refused)",
            )
            continue
        kept = [c for j, c in enumerate(caps) if (i, j) not in rejected]
        n_rejected_caps += len(caps) - len(kept)
        if not kept:
            n_all_rejected += 1
            log.info("mixup pair %d: all %d captions rejected; pair dropped", i, len(caps))
            continue
        paths = [p for p in audio if p is not None]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            bad(clip_id, missing[0], f"pair {i}: audio file not found in {dev_dir} (field 'audio_files')")
            continue
        planned.append((i, [p.name for p in paths], kept, paths))
    if rejected:
        log.info(
            "mixup: %d caption(s) rejected; %d pair(s) lost all captions and were dropped",
            n_rejected_caps,
            n_all_rejected,
        )
    return planned, len(pairs)


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
    """Manifest rows for the mixup JSON ``json_path`` (or a folder holding it, see the module docstring),
    resolving audio against the Clotho development folder of ``clotho_root``. Pairs whose captions are all
    rejected are dropped (logged); pairs naming audio outside the development folder go to ``bad``."""
    bad = bad if bad is not None else BadClips(skip_bad)
    planned, n_pairs = plan_clotho_mixup(json_path, clotho_root, bad, rejected_json=rejected_json)
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
    log.info("Clotho-ChatGPT-Mixup: %d of %d pairs kept", len(rows), n_pairs)
    return rows
