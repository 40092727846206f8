"""AudioCaps (Kim et al., NAACL 2019) to manifest rows.

Layout under ``root``: ``train.csv``, ``val.csv``, ``test.csv`` (also ``dataset/<split>.csv``) with columns
``audiocap_id,youtube_id,start_time,caption``; one row per caption. Train clips have 1 caption, val/test clips
5; rows are grouped into clips by (youtube_id, start_time) in every split, keeping file order.

Audio is not distributed with the captions: each team downloads it. The folder of a split is
``<root>/audio/<split>/`` or ``<root>/<split>/`` by default (``audio_root`` overrides it; it may contain
``{split}``), and the file name follows ``audio_pattern`` (default ``{youtube_id}.wav``; fields
``{youtube_id}``, ``{start_time}``, ``{audiocap_id}``, ``{split}``). A ``Y`` prefix (``Y{youtube_id}.wav``,
the AudioSet convention) is accepted automatically. ``clip_id`` = ``audiocaps/<youtube_id>_<start_time>``,
unique across sources.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from dcase.data.build import BadClips, DataError, dir_index, read_table, rows_from_plan
from dcase.data.manifest import ManifestRow

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
DEFAULT_PATTERN = "{youtube_id}.wav"


def audiocaps_csv(root: str | Path, split: str) -> Path | None:
    """``<root>/<split>.csv`` or ``<root>/dataset/<split>.csv``, or None."""
    root = Path(root)
    return next((c for c in (root / f"{split}.csv", root / "dataset" / f"{split}.csv") if c.is_file()), None)


def audiocaps_audio_dir(root: str | Path, split: str, audio_root: str | Path | None = None) -> Path | None:
    """The audio folder of ``split`` (see the module docstring), or None."""
    root = Path(root)
    if audio_root is not None:
        text = str(audio_root)
        if "{split}" in text:
            cands = [Path(text.format(split=split))]
        else:
            cands = [Path(audio_root) / split, Path(audio_root)]
    else:
        cands = [root / "audio" / split, root / split]
    return next((c for c in cands if c.is_dir()), None)


def normalise_start(text: str) -> str:
    """'30' / '30.0' -> '30'; '12.5' -> '12.5'. Raises ValueError for non-numbers."""
    v = float(text)
    if not math.isfinite(v) or v < 0:
        raise ValueError(text)
    return str(int(v)) if v.is_integer() else repr(v)


def audiocaps_clip_id(youtube_id: str, start_time: str) -> str:
    return f"audiocaps/{youtube_id}_{normalise_start(start_time)}"


def read_audiocaps(
    root: str | Path,
    splits: Sequence[str] | None = None,
    *,
    audio_pattern: str = DEFAULT_PATTERN,
    audio_root: str | Path | None = None,
    decode_check: bool = True,
    skip_bad: bool = False,
    bad: BadClips | None = None,
    progress: bool = False,
    workers: int = 1,
) -> list[ManifestRow]:
    """Manifest rows (source ``audiocaps``, splits train/val/test) of the AudioCaps folder ``root``.

    ``splits`` default: every split whose CSV exists. Bad rows/clips raise DataError naming the file and row,
    or with ``skip_bad`` (or a ``bad`` collector) are skipped and recorded.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"AudioCaps root not found: {root}")
    bad = bad if bad is not None else BadClips(skip_bad)
    if splits is None:
        splits = [s for s in SPLITS if audiocaps_csv(root, s) is not None]
        if not splits:
            raise DataError(f"{root}: no AudioCaps CSV found (expected train.csv, val.csv or test.csv)")
    splits = list(dict.fromkeys(splits))  # a split named twice is read once
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DataError(f"unknown AudioCaps split(s) {unknown}; expected some of {list(SPLITS)}")
    try:
        audio_pattern.format(youtube_id="x", start_time="0", audiocap_id="0", split="train")
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(
            f"audio pattern {audio_pattern!r} is invalid ({e!r}); use fields {{youtube_id}}, {{start_time}}, "
            "{audiocap_id}, {split}"
        ) from e

    planned: list[tuple[str, str, Path, list[str]]] = []
    for split in splits:
        csv_path = audiocaps_csv(root, split)
        if csv_path is None:
            raise DataError(f"{root}: {split}.csv not found (needed for split {split!r})")
        audio_dir = audiocaps_audio_dir(root, split, audio_root)
        if audio_dir is None:
            where = audio_root if audio_root is not None else f"{root / 'audio' / split} or {root / split}"
            raise DataError(f"audio folder for AudioCaps split {split!r} not found (looked for {where})")
        df = read_table(csv_path, required=COLUMNS)
        clips: dict[str, dict] = {}
        broken: set[str] = set()
        seen_ids: dict[str, int] = {}
        for i, (cap_id, yid, start, caption) in enumerate(df[list(COLUMNS)].itertuples(index=False, name=None)):
            row_no = i + 1
            if not yid.strip():
                bad(f"<row {row_no}>", csv_path, f"row {row_no}: column 'youtube_id' is empty")
                continue
            try:
                clip_id = audiocaps_clip_id(yid, start)
            except ValueError:
                bad(f"{yid}@{start}", csv_path, f"row {row_no}: column 'start_time' is not a number: {start!r}")
                continue
            if cap_id in seen_ids:
                bad(
                    clip_id,
                    csv_path,
                    f"row {row_no}: duplicate audiocap_id {cap_id!r} (first at row {seen_ids[cap_id]})",
                )
                continue
            seen_ids[cap_id] = row_no
            if clip_id in broken:
                continue
            if not caption.strip():
                bad(clip_id, csv_path, f"row {row_no}: column 'caption' is empty")
                broken.add(clip_id)
                clips.pop(clip_id, None)
                continue
            entry = clips.setdefault(clip_id, {"yid": yid, "start": start, "cap_id": cap_id, "row": row_no, "caps": []})
            entry["caps"].append(caption)
        on_disk = dir_index(audio_dir)
        used: dict[Path, str] = {}
        for clip_id, e in clips.items():
            name = audio_pattern.format(
                youtube_id=e["yid"], start_time=normalise_start(e["start"]), audiocap_id=e["cap_id"], split=split
            )
            cands = [name]
            p = Path(name)
            if not p.name.startswith("Y"):
                cands.append(str(p.with_name("Y" + p.name)))
            found = None
            for c in cands:
                if ("/" not in c and c in on_disk) or ("/" in c and (audio_dir / c).is_file()):
                    found = audio_dir / c
                    break
            if found is None:
                bad(
                    clip_id,
                    audio_dir / name,
                    f"audio file not found (also tried {cands[1:]}; {csv_path.name} row {e['row']}; "
                    "set --audio-pattern if your files are named differently)",
                )
                continue
            if found in used:
                bad(
                    clip_id,
                    found,
                    f"audio file already used by clip {used[found]!r}; "
                    "use an --audio-pattern with {start_time} to tell the clips apart",
                )
                continue
            used[found] = clip_id
            planned.append((split, clip_id, found, e["caps"]))

    rows = rows_from_plan(planned, "audiocaps", bad, decode_check, progress, workers, desc="AudioCaps audio")
    log.info("AudioCaps %s: %d clips (%d skipped)", list(splits), len(rows), len(bad))
    return rows
