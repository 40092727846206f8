"""AudioCaps (Kim et al., NAACL 2019) to manifest rows.

Captions: ``train.csv``, ``val.csv``, ``test.csv`` with columns ``audiocap_id,youtube_id,start_time,caption``; one
row per caption. Train clips have 1 caption, val/test clips 5; rows are grouped into clips by
(youtube_id, start_time) in every split, keeping file order.

Audio is not distributed with the captions: each team downloads it. Two layouts are recognised under ``root``
(the ``AUDIOCAPS`` folder):

- aac-datasets (Labbeti/aac-datasets): audio in ``audio_32000Hz/<split>/{youtube_id}_{start_time}.flac`` (32 kHz
  FLAC; another ``audio_<rate>Hz`` folder is accepted), captions in ``csv_files_v1/`` (0.6-0.7) or beside the audio
  folder (0.5);
- hand: captions in ``root`` or ``dataset/``, audio in ``audio/<split>/`` or ``<split>/`` named ``{youtube_id}.wav``
  (``Y{youtube_id}.wav``, the AudioSet convention, is accepted automatically).

``audio_root`` overrides the audio folder (it may contain ``{split}``) and ``audio_pattern`` the file name
(fields ``{youtube_id}``, ``{start_time}``, ``{audiocap_id}``, ``{split}``). ``clip_id`` =
``audiocaps/<youtube_id>_<start_time>``, unique across sources.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcase.data.audio import is_audio_file
from dcase.data.common import BadClips, DataError, Planned, dir_index, read_table, resolve_inside, rows_from_plan
from dcase.data.manifest import ManifestRow

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
DEFAULT_PATTERN = "{youtube_id}.wav"  # hand layout
AAC_PATTERN = "{youtube_id}_{start_time}.flac"  # aac-datasets' file names
AAC_SAMPLE_RATE = 32000  # aac-datasets' default download rate
AAC_CSV_DIRS = ("csv_files_v1", "csv_files_v2")  # aac-datasets 0.6-0.7 (AudioCaps v1, v2)
HAND_CSV_DIRS = ("", "dataset")


def aac_audio_root(root: str | Path) -> Path | None:
    """aac-datasets' audio folder ``audio_<rate>Hz`` under ``root`` (``audio_32000Hz`` first), or None."""
    root = Path(root)
    preferred = root / f"audio_{AAC_SAMPLE_RATE}Hz"
    if preferred.is_dir():
        return preferred
    others = sorted(p for p in root.glob("audio_*Hz") if p.is_dir() and p.name[6:-2].isdigit())
    if len(others) > 1:
        log.warning("%s: several audio folders %s; using %s", root, [p.name for p in others], others[0].name)
    return others[0] if others else None


def audiocaps_layout(root: str | Path) -> str:
    """``"aac-datasets"`` when ``root`` has an ``audio_<rate>Hz/`` folder, else ``"hand"``."""
    return "aac-datasets" if aac_audio_root(root) is not None else "hand"


def audiocaps_csv(root: str | Path, split: str, csv_dir: str | Path | None = None) -> Path | None:
    """The captions CSV of ``split``: in ``csv_dir`` if given, else ``<root>/<split>.csv``, ``dataset/``,
    ``csv_files_v1/`` then ``csv_files_v2/``; None if absent."""
    root = Path(root)
    dirs = [Path(csv_dir)] if csv_dir is not None else [root / d for d in (*HAND_CSV_DIRS, *AAC_CSV_DIRS)]
    return next((d / f"{split}.csv" for d in dirs if (d / f"{split}.csv").is_file()), None)


def audiocaps_audio_dir(root: str | Path, split: str, audio_root: str | Path | None = None) -> Path | None:
    """The audio folder of ``split`` (see the module docstring), or None."""
    root = Path(root)
    return _split_audio_dir(root, split, audio_root, aac_audio_root(root) if audio_root is None else None)


def _split_audio_dir(root: Path, split: str, audio_root: str | Path | None, aac: Path | None) -> Path | None:
    """``audiocaps_audio_dir`` with aac-datasets' audio folder ``aac`` already looked up (used without
    ``audio_root``)."""
    if audio_root is not None:
        text = str(audio_root)
        if "{split}" in text:
            cands = [Path(text.format(split=split))]
        else:
            cands = [Path(audio_root) / split, Path(audio_root)]
    else:
        cands = ([aac / split] if aac is not None else []) + [root / "audio" / split, root / split]
    return next((c for c in cands if c.is_dir()), None)


def normalise_start(text: str) -> str:
    """'30' / '30.0' -> '30'; '12.5' -> '12.5'. Raises ValueError for non-numbers."""
    v = float(text)
    if not math.isfinite(v) or v < 0:
        raise ValueError(text)
    return str(int(v)) if v.is_integer() else repr(v)


def audiocaps_clip_id(youtube_id: str, start_time: str) -> str:
    return f"audiocaps/{youtube_id}_{normalise_start(start_time)}"


def plan_audiocaps(
    root: str | Path,
    splits: Sequence[str] | None,
    bad: BadClips,
    *,
    audio_pattern: str | None = None,
    audio_root: str | Path | None = None,
    csv_dir: str | Path | None = None,
) -> tuple[list[str], list[Planned]]:
    """The splits read and the planned (split, clip_id, audio path, captions) clips, without touching the audio
    (see ``read_audiocaps``). Audio files of a split folder that no row names are recorded with ``bad.drop``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"AudioCaps root not found: {root}")
    if splits is None:
        splits = [s for s in SPLITS if audiocaps_csv(root, s, csv_dir) is not None]
        if not splits:
            raise DataError(
                f"{root}: no AudioCaps CSV found (expected train.csv, val.csv or test.csv in {csv_dir or root}, "
                f"dataset/ or {'/, '.join(AAC_CSV_DIRS)}/)"
            )
    splits = list(dict.fromkeys(splits))  # a split named twice is read once
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DataError(f"unknown AudioCaps split(s) {unknown}; expected some of {list(SPLITS)}")
    aac = aac_audio_root(root) if audio_root is None else None  # looked up once for every split
    if audio_pattern is None:
        audio_pattern = AAC_PATTERN if aac is not None else DEFAULT_PATTERN
    _check_pattern(audio_pattern)

    planned: list[Planned] = []
    for split in splits:
        csv_path = audiocaps_csv(root, split, csv_dir)
        if csv_path is None:
            raise DataError(f"{csv_dir or root}: {split}.csv not found (needed for split {split!r})")
        audio_dir = _split_audio_dir(root, split, audio_root, aac)
        if audio_dir is None:
            where = audio_root if audio_root is not None else f"{root / 'audio' / split} or {root / split}"
            raise DataError(f"audio folder for AudioCaps split {split!r} not found (looked for {where})")
        clips, row_names = _read_split_rows(csv_path, split, audio_pattern, bad)
        on_disk = dir_index(audio_dir)
        planned += _plan_split_audio(clips, split, csv_path, audio_dir, on_disk, audio_pattern, bad)
        for fname in sorted(n for n in on_disk if is_audio_file(n) and n not in row_names):
            bad.drop(fname, audio_dir / fname, f"audio file not named by any row of {csv_path.name}; left out")
    return splits, planned


def _check_pattern(audio_pattern: str) -> None:
    """A DataError unless ``audio_pattern`` formats with the AudioCaps fields."""
    try:
        audio_pattern.format(youtube_id="x", start_time="0", audiocap_id="0", split="train")
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(
            f"audio pattern {audio_pattern!r} is invalid ({e!r}); use fields {{youtube_id}}, {{start_time}}, "
            "{audiocap_id}, {split}"
        ) from e


def _read_split_rows(
    csv_path: Path, split: str, audio_pattern: str, bad: BadClips
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The clips of one split's CSV ({clip_id: youtube id, start, first audiocap_id and row, captions}) and the audio
    names of every parsable row, bad ones included; bad rows go to ``bad``."""
    df = read_table(csv_path, required=COLUMNS)
    clips: dict[str, dict] = {}
    broken: set[str] = set()
    seen_ids: dict[str, int] = {}
    row_names: set[str] = set()  # audio names of every parsable row, bad ones included
    for i, (cap_id, yid, start, caption) in enumerate(df[list(COLUMNS)].itertuples(index=False, name=None)):
        row_no = i + 1
        if not yid.strip():
            bad(f"<row {row_no}>", csv_path, f"row {row_no}: column 'youtube_id' is empty")
            continue
        try:
            start_text = normalise_start(start)
        except ValueError:
            start_text = start
        name = audio_pattern.format(youtube_id=yid, start_time=start_text, audiocap_id=cap_id, split=split)
        row_names.update((name, "Y" + name))
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
    return clips, row_names


def _plan_split_audio(
    clips: dict[str, dict[str, Any]],
    split: str,
    csv_path: Path,
    audio_dir: Path,
    on_disk: set[str],
    audio_pattern: str,
    bad: BadClips,
) -> list[Planned]:
    """Each clip's audio file in ``audio_dir`` (also tried with YouTube's ``Y`` prefix); missing, escaping or shared
    files go to ``bad``."""
    planned: list[Planned] = []
    used: dict[Path, str] = {}
    for clip_id, clip in clips.items():
        name = audio_pattern.format(
            youtube_id=clip["yid"],
            start_time=normalise_start(clip["start"]),
            audiocap_id=clip["cap_id"],
            split=split,
        )
        cands = [name]
        p = Path(name)
        if not p.name.startswith("Y"):
            cands.append(str(p.with_name("Y" + p.name)))
        if any(resolve_inside(audio_dir, c) is None for c in cands):
            bad(
                clip_id,
                csv_path,
                f"row {clip['row']}: the audio file name {name!r} (from column 'youtube_id' {clip['yid']!r}) "
                f"points outside {audio_dir}",
            )
            continue
        found = None
        for c in cands:
            if ("/" not in c and c in on_disk) or ("/" in c and (audio_dir / c).is_file()):
                found = audio_dir / c
                break
        if found is None:
            bad(
                clip_id,
                audio_dir / name,
                f"audio file not found (also tried {cands[1:]}; {csv_path.name} row {clip['row']}; "
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
        planned.append((split, clip_id, found, clip["caps"]))
    return planned


def read_audiocaps(
    root: str | Path,
    splits: Sequence[str] | None = None,
    *,
    audio_pattern: str | None = None,
    audio_root: str | Path | None = None,
    csv_dir: str | Path | None = None,
    decode_check: bool = True,
    skip_bad: bool = False,
    bad: BadClips | None = None,
    progress: bool = False,
    workers: int = 1,
) -> list[ManifestRow]:
    """Manifest rows (source ``audiocaps``, splits train/val/test) of the AudioCaps folder ``root`` (either layout).

    ``splits`` default: every split whose CSV exists. ``audio_pattern`` default: aac-datasets' names when its
    ``audio_<rate>Hz/`` folder is used, else ``{youtube_id}.wav``. ``csv_dir`` picks the CSV folder (e.g.
    ``csv_files_v2`` for AudioCaps v2). Bad rows/clips raise DataError naming the file and row, or with
    ``skip_bad`` (or a ``bad`` collector) are skipped and recorded.
    """
    bad = bad if bad is not None else BadClips(skip_bad)
    n_before = len(bad)
    splits, planned = plan_audiocaps(
        root, splits, bad, audio_pattern=audio_pattern, audio_root=audio_root, csv_dir=csv_dir
    )
    rows = rows_from_plan(planned, "audiocaps", bad, decode_check, progress, workers, desc="AudioCaps audio")
    log.info("AudioCaps %s: %d clips (%d skipped)", list(splits), len(rows), len(bad) - n_before)
    return rows
