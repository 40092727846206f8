"""WavCaps (Mei et al., 2023) to manifest rows, with the DCASE2024 challenge filters.

Official release: one JSON per source under ``json_files/``::

    FreeSound/fsd_final.json  BBC_Sound_Effects/bbc_final.json  SoundBible/sb_final.json  AudioSet_SL/as_final.json

each ``{"num_captions_per_audio": 1, "data": [{"id", "caption", "duration", "audio", "download_link", ...}]}``.
Audio lives at ``<audio_root>/<Source>/<id>.flac`` (or ``.wav``; ``<Source>_flac/`` is accepted too; an
``audio_pattern`` such as ``{source}/{id}.flac`` overrides the search). Every clip is split ``train``;
``clip_id`` = ``wavcaps/<Source>/<id>``.

Challenge filters (on by default; EnCLAP DCASE2024 report, Sec. 3 "Dataset"): Clotho is drawn from Freesound,
so (1) the FreeSound source is dropped, (2) every id of the DCASE excluded-Freesound-ids CSV is dropped from
any remaining source (ids are matched as strings), (3) only clips of 1 to 30 s (the JSON ``duration``) are kept.
Counts before/after each step are logged and returned in a ``FilterReport``. An ``exclude_csv`` is applied
even with ``challenge_filters=False``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dcase.data.audio import AUDIO_EXTENSIONS
from dcase.data.build import BadClips, DataError, read_table, rows_from_plan
from dcase.data.manifest import ManifestRow

log = logging.getLogger(__name__)

JSON_FILES = {
    "AudioSet_SL": "AudioSet_SL/as_final.json",
    "BBC_Sound_Effects": "BBC_Sound_Effects/bbc_final.json",
    "SoundBible": "SoundBible/sb_final.json",
    "FreeSound": "FreeSound/fsd_final.json",
}
SOURCES = tuple(JSON_FILES)
FREESOUND = "FreeSound"
MIN_DURATION_S = 1.0
MAX_DURATION_S = 30.0
EXCLUDE_ID_COLUMNS = ("fsd_id", "id", "sound_id")
# the release is FLAC: look for .flac first, then the other accepted extensions
WAVCAPS_EXTENSIONS = (".flac", *(e for e in AUDIO_EXTENSIONS if e != ".flac"))


@dataclass
class FilterStep:
    """One filtering step: clips before and after."""

    name: str
    before: int
    after: int

    @property
    def removed(self) -> int:
        return self.before - self.after


@dataclass
class FilterReport:
    """Counts through the WavCaps pipeline: entries per source, then each filter step."""

    per_source: dict[str, int] = field(default_factory=dict)
    steps: list[FilterStep] = field(default_factory=list)

    def add(self, name: str, before: int, after: int) -> None:
        self.steps.append(FilterStep(name, before, after))
        log.info("WavCaps %s: %d -> %d (-%d)", name, before, after, before - after)

    def lines(self) -> list[str]:
        out = [f"entries per source: {self.per_source}"]
        out += [f"{s.name}: {s.before} -> {s.after} (removed {s.removed})" for s in self.steps]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _id_text(v: object) -> str:
    """Ids as strings: ints and integral floats without '.0'; strings stripped."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    s = str(v).strip()
    if s.endswith(".0") and s[:-2].isdigit():
        return s[:-2]
    return s


def _stem(id_: str) -> str:
    low = id_.lower()
    for ext in WAVCAPS_EXTENSIONS:
        if low.endswith(ext):
            return id_[: -len(ext)]
    return id_


def read_exclude_ids(path: str | Path) -> set[str]:
    """Ids in the DCASE excluded-Freesound-ids CSV: column fsd_id / id / sound_id, else the first column.

    A header-less file (first line already an id) is handled: the header itself counts as an id.
    """
    path = Path(path)
    df = read_table(path, required=(), allow_extra=True)
    if len(df.columns) == 0:
        raise DataError(f"{path}: no columns")
    col = next((c for c in EXCLUDE_ID_COLUMNS if c in df.columns), df.columns[0])
    ids = {_id_text(v) for v in df[col] if str(v).strip()}
    if col == df.columns[0] and _id_text(col).isdigit():
        ids.add(_id_text(col))
    log.info("%s: %d excluded ids (column %r)", path, len(ids), col)
    return ids


def wavcaps_json(root: str | Path, source: str) -> Path | None:
    root = Path(root)
    rel = JSON_FILES[source]
    return next((c for c in (root / rel, root / "json_files" / rel) if c.is_file()), None)


def read_wavcaps_json(path: str | Path, source: str, bad: BadClips) -> list[dict]:
    """Valid entries of one WavCaps JSON as dicts {id, caption, duration, clip_id, index}; bad ones go to ``bad``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable WavCaps JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: expected an object with a 'data' list (WavCaps format)")
    out: list[dict] = []
    seen: dict[str, int] = {}
    for i, e in enumerate(doc["data"]):
        if not isinstance(e, dict):
            bad(f"<entry {i}>", path, f"entry {i} is not an object")
            continue
        missing = [k for k in ("id", "caption", "duration") if k not in e]
        if missing:
            bad(f"<entry {i}>", path, f"entry {i}: missing field(s) {missing}")
            continue
        id_ = _id_text(e["id"])
        clip_id = f"wavcaps/{source}/{_stem(id_)}"
        caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
        if not caps or any(not isinstance(c, str) or not c.strip() for c in caps):
            bad(clip_id, path, f"entry {i}: field 'caption' is empty or not text: {e['caption']!r}")
            continue
        try:
            duration = float(e["duration"])
            if not math.isfinite(duration):
                raise ValueError
        except (TypeError, ValueError):
            bad(clip_id, path, f"entry {i}: field 'duration' is not a number: {e['duration']!r}")
            continue
        if id_ in seen:
            bad(clip_id, path, f"entry {i}: duplicate id {id_!r} (first at entry {seen[id_]})")
            continue
        seen[id_] = i
        out.append({"id": id_, "caption": list(caps), "duration": duration, "clip_id": clip_id, "index": i})
    return out


def _resolve_audio(audio_root: Path, source: str, id_: str, pattern: str | None) -> tuple[Path | None, Path]:
    """(found path or None, the first path tried)."""
    stem = _stem(id_)
    if pattern is not None:
        p = audio_root / pattern.format(source=source, id=stem)
        return (p if p.is_file() else None), p
    cands = [audio_root / d / f"{stem}{ext}" for d in (source, f"{source}_flac") for ext in WAVCAPS_EXTENSIONS]
    return next((c for c in cands if c.is_file()), None), cands[0]


def read_wavcaps(
    json_root: str | Path,
    audio_root: str | Path | None = None,
    *,
    sources: Sequence[str] | None = None,
    exclude_csv: str | Path | None = None,
    challenge_filters: bool = True,
    min_duration: float = MIN_DURATION_S,
    max_duration: float = MAX_DURATION_S,
    audio_pattern: str | None = None,
    decode_check: bool = True,
    skip_bad: bool = False,
    bad: BadClips | None = None,
    progress: bool = False,
    workers: int = 1,
) -> tuple[list[ManifestRow], FilterReport]:
    """Manifest rows (source ``wavcaps``, split ``train``) and the FilterReport.

    ``json_root``: the folder holding ``<Source>/<name>_final.json`` (or its parent with ``json_files/``);
    sources whose JSON is absent are skipped with a log line. ``audio_root`` defaults to ``json_root``.
    """
    json_root = Path(json_root)
    audio_root = Path(audio_root) if audio_root is not None else json_root
    if not json_root.is_dir():
        raise DataError(f"WavCaps json folder not found: {json_root}")
    bad = bad if bad is not None else BadClips(skip_bad)
    sources = list(sources) if sources is not None else list(SOURCES)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise DataError(f"unknown WavCaps source(s) {unknown}; expected some of {list(SOURCES)}")
    if audio_pattern is not None:
        try:
            audio_pattern.format(source="s", id="i")
        except (KeyError, IndexError, ValueError) as e:
            raise DataError(f"audio pattern {audio_pattern!r} is invalid ({e!r}); use {{source}} and {{id}}") from e

    report = FilterReport()
    entries: list[tuple[str, dict]] = []
    n_raw = 0
    for source in sources:
        path = wavcaps_json(json_root, source)
        if path is None:
            log.info("WavCaps: %s not found under %s; source skipped", JSON_FILES[source], json_root)
            continue
        n_before_bad = len(bad)
        got = read_wavcaps_json(path, source, bad)
        n_raw += len(got) + (len(bad) - n_before_bad)
        report.per_source[source] = len(got)
        entries.extend((source, e) for e in got)
    if not report.per_source:
        raise DataError(f"{json_root}: no WavCaps JSON found; expected some of {list(JSON_FILES.values())}")
    report.add("valid entries", n_raw, len(entries))

    if challenge_filters:
        n = len(entries)
        entries = [(s, e) for s, e in entries if s != FREESOUND]
        report.add("drop FreeSound source", n, len(entries))
    if exclude_csv is not None:
        excluded = read_exclude_ids(exclude_csv)
        n = len(entries)
        entries = [(s, e) for s, e in entries if e["id"] not in excluded and _stem(e["id"]) not in excluded]
        report.add(f"drop excluded ids ({Path(exclude_csv).name})", n, len(entries))
    if challenge_filters:
        n = len(entries)
        entries = [(s, e) for s, e in entries if min_duration <= e["duration"] <= max_duration]
        report.add(f"keep duration in [{min_duration:g}, {max_duration:g}] s", n, len(entries))

    planned: list[tuple[str, str, Path, list[str]]] = []
    for source, e in entries:
        found, tried = _resolve_audio(audio_root, source, e["id"], audio_pattern)
        if found is None:
            bad(e["clip_id"], tried, f"audio file not found (entry {e['index']} of {JSON_FILES[source]})")
            continue
        planned.append(("train", e["clip_id"], found, e["caption"]))
    rows = rows_from_plan(planned, "wavcaps", bad, decode_check, progress, workers, desc="WavCaps audio")
    report.add("audio found and readable", len(entries), len(rows))
    return rows, report
