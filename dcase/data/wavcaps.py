"""WavCaps (Mei et al., 2023) to manifest rows, with the DCASE2024 filters.

Official release (Hugging Face ``cvssp/WavCaps``): one JSON per source under ``json_files/``::

    FreeSound/fsd_final.json  BBC_Sound_Effects/bbc_final.json  SoundBible/sb_final.json  AudioSet_SL/as_final.json

each ``{"num_captions_per_audio": 1, "data": [{"id", "caption", "duration", "audio", "download_link", ...}]}``.
Two layouts are recognised under ``root`` (the ``WavCaps`` folder):

- aac-datasets (Labbeti/aac-datasets 0.5-0.7): ``json_files/<Source>/*.json`` and the extracted audio in
  ``Audio/<Source>/<id>.flac`` (32 kHz FLAC; AudioSet ids ``Y<yt>.wav`` become ``Y<yt>.flac``);
- hand: ``json_files/`` as above and the audio in ``audio/<Source>/<id>.flac`` (or ``.wav``; ``<Source>_flac/`` is
  accepted too). ``audio_root`` (or ``audio_pattern`` such as ``{source}/{id}.flac`` under it) overrides the search.

Every clip is split ``train``; ``clip_id`` = ``wavcaps/<Source>/<id>``. Ids must be plain file names: an id that
names a folder, ``..`` or an absolute path is refused (it would be read outside the audio folder).

DCASE2024 filters (EnCLAP DCASE2024 report, Sec. 3.1; the DCASE rule is a list of forbidden Freesound ids), applied
in this order, with the counts before and after each step logged and returned in a ``FilterReport``:

1. the FreeSound source, by ``freesound_policy``: ``listed_ids`` (default) drops the FreeSound clips whose id is in
   the DCASE exclusion CSV (``dcase2024_task6_excluded_freesound_ids.csv``), ``all`` drops the whole FreeSound
   source, ``keep`` keeps it (not allowed for DCASE2024 training). The list applies to the FreeSound source only:
   a SoundBible or BBC clip whose id equals a listed Freesound id is a different sound and is kept;
2. only clips of 1 to 30 s (the JSON ``duration``) are kept (``duration_range=None`` turns this off).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dcase.data.audio import AUDIO_EXTENSIONS
from dcase.data.common import (
    BadClips,
    DataError,
    Planned,
    dir_index,
    read_json_text,
    read_table,
    resolve_inside,
    rows_from_plan,
)
from dcase.data.manifest import ManifestRow
from dcase.data.registry import DEFAULT_FREESOUND_POLICY, FREESOUND_POLICIES, FreesoundPolicy

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
DURATION_RANGE = (MIN_DURATION_S, MAX_DURATION_S)
AAC_AUDIO_DIR = "Audio"  # aac-datasets' extracted audio
HAND_AUDIO_DIR = "audio"
JSON_DIR = "json_files"
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
    """The JSON of ``source`` under ``root`` (``<root>/json_files/...`` or ``<root>/...``), or None."""
    root = Path(root)
    rel = JSON_FILES[source]
    return next((c for c in (root / JSON_DIR / rel, root / rel) if c.is_file()), None)


def wavcaps_layout(root: str | Path) -> str:
    """``"aac-datasets"`` when ``root`` has aac-datasets' ``Audio/`` folder, else ``"hand"``."""
    return "aac-datasets" if (Path(root) / AAC_AUDIO_DIR).is_dir() else "hand"


def wavcaps_audio_root(root: str | Path) -> Path:
    """The folder holding ``<Source>/<id>.flac`` for a WavCaps folder (or its ``json_files`` folder) ``root``:
    ``Audio/`` (aac-datasets), ``audio/`` (hand), the same beside a ``json_files`` root, else ``root`` itself."""
    root = Path(root)
    bases = [root] + ([root.parent] if root.name == JSON_DIR else [])
    for base in bases:
        for name in (AAC_AUDIO_DIR, HAND_AUDIO_DIR):
            if (base / name).is_dir():
                return base / name
    return root


def read_wavcaps_json(path: str | Path, source: str, bad: BadClips) -> list[dict]:
    """Valid entries of one WavCaps JSON as dicts {id, caption, duration, clip_id, index}; bad ones go to ``bad``."""
    path = Path(path)
    doc = read_json_text(path, "WavCaps JSON")
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: expected an object with a 'data' list (WavCaps format)")
    out: list[dict] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(doc["data"]):
        if not isinstance(item, dict):
            bad(f"<entry {i}>", path, f"entry {i} is not an object")
            continue
        missing = [k for k in ("id", "caption", "duration") if k not in item]
        if missing:
            bad(f"<entry {i}>", path, f"entry {i}: missing field(s) {missing}")
            continue
        id_ = _id_text(item["id"])
        stem = _stem(id_)
        if stem in ("", ".", "..") or Path(stem).name != stem or "\\" in stem:
            bad(
                f"<entry {i}>",
                path,
                f"entry {i}: field 'id' {item['id']!r} is not a plain file name (it would be read outside the audio "
                "folder)",
            )
            continue
        clip_id = f"wavcaps/{source}/{stem}"
        caps = item["caption"] if isinstance(item["caption"], list) else [item["caption"]]
        if not caps or any(not isinstance(c, str) or not c.strip() for c in caps):
            bad(clip_id, path, f"entry {i}: field 'caption' is empty or not text: {item['caption']!r}")
            continue
        try:
            duration = float(item["duration"])
            if not math.isfinite(duration):
                raise ValueError
        except (TypeError, ValueError):
            bad(clip_id, path, f"entry {i}: field 'duration' is not a number: {item['duration']!r}")
            continue
        if id_ in seen:
            bad(clip_id, path, f"entry {i}: duplicate id {id_!r} (first at entry {seen[id_]})")
            continue
        seen[id_] = i
        out.append({"id": id_, "caption": list(caps), "duration": duration, "clip_id": clip_id, "index": i})
    return out


def _resolve_audio(
    audio_root: Path, source: str, stem: str, pattern: str | None, listings: dict[Path, set[str]]
) -> tuple[Path | None, Path | None]:
    """(found path or None, the first path tried); (None, None) when ``pattern`` leads outside ``audio_root``."""
    if pattern is not None:
        p = resolve_inside(audio_root, pattern.format(source=source, id=stem))
        if p is None:
            return None, None
        return (p if p.is_file() else None), p
    first = None
    for d in (audio_root / source, audio_root / f"{source}_flac"):
        names = listings.get(d)
        if names is None:
            names = listings[d] = dir_index(d)
        for ext in WAVCAPS_EXTENSIONS:
            first = first or d / f"{stem}{ext}"
            if f"{stem}{ext}" in names:
                return d / f"{stem}{ext}", first
    return None, first


def _check_options(
    sources: Sequence[str], freesound_policy: str, exclude_csv: str | Path | None, audio_pattern: str | None
) -> None:
    """DataError for an unknown source or FreeSound policy, an exclusion list the policy ignores, or an audio
    pattern that does not format with ``{source}`` and ``{id}``."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise DataError(f"unknown WavCaps source(s) {unknown}; expected some of {list(SOURCES)}")
    if freesound_policy not in FREESOUND_POLICIES:
        raise DataError(f"unknown FreeSound policy {freesound_policy!r}; expected one of {list(FREESOUND_POLICIES)}")
    if freesound_policy == "keep" and exclude_csv is not None:
        raise DataError(
            f"FreeSound policy 'keep' ignores the exclusion list {exclude_csv}; use policy 'listed_ids' to apply it"
        )
    if audio_pattern is not None:
        try:
            audio_pattern.format(source="s", id="i")
        except (KeyError, IndexError, ValueError) as e:
            raise DataError(f"audio pattern {audio_pattern!r} is invalid ({e!r}); use {{source}} and {{id}}") from e


def plan_wavcaps(
    json_root: str | Path,
    audio_root: str | Path | None,
    bad: BadClips,
    *,
    sources: Sequence[str] | None = None,
    exclude_csv: str | Path | None = None,
    freesound_policy: FreesoundPolicy = DEFAULT_FREESOUND_POLICY,
    duration_range: tuple[float, float] | None = DURATION_RANGE,
    audio_pattern: str | None = None,
) -> tuple[list[Planned], FilterReport]:
    """The planned (split, clip_id, audio path, captions) clips after the filters, and the FilterReport, without
    touching the audio (see ``read_wavcaps``). Entries whose audio file is missing go to ``bad``."""
    sources = list(sources) if sources is not None else list(SOURCES)
    _check_options(sources, freesound_policy, exclude_csv, audio_pattern)  # the options first, as the CLI did
    json_root = Path(json_root)
    if not json_root.is_dir():
        raise DataError(f"WavCaps json folder not found: {json_root}")
    audio_root = Path(audio_root) if audio_root is not None else wavcaps_audio_root(json_root)

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

    n_fsd = sum(1 for s, _ in entries if s == FREESOUND)
    n = len(entries)
    if freesound_policy == "all":
        entries = [(s, e) for s, e in entries if s != FREESOUND]
        report.add("FreeSound policy 'all': drop the FreeSound source", n, len(entries))
    elif freesound_policy == "listed_ids" and n_fsd:
        if exclude_csv is None:
            raise DataError(
                f"{json_root}: {n_fsd} FreeSound clips and no exclusion list: FreeSound policy 'listed_ids' needs the "
                "DCASE CSV of excluded Freesound ids (dcase2024_task6_excluded_freesound_ids.csv, --exclude-csv); "
                "or choose policy 'all' (drop every FreeSound clip)"
            )
        excluded = read_exclude_ids(exclude_csv)
        entries = [
            (s, item)
            for s, item in entries
            if s != FREESOUND or (item["id"] not in excluded and _stem(item["id"]) not in excluded)
        ]
        report.add(
            f"FreeSound policy 'listed_ids': drop FreeSound ids listed in {Path(exclude_csv).name}", n, len(entries)
        )
    elif freesound_policy == "keep" and n_fsd:
        log.warning("WavCaps: %d FreeSound clips kept (policy 'keep'): not allowed for DCASE2024 training", n_fsd)
    if duration_range is not None:
        lo, hi = duration_range
        n = len(entries)
        entries = [(s, item) for s, item in entries if lo <= item["duration"] <= hi]
        report.add(f"keep duration in [{lo:g}, {hi:g}] s", n, len(entries))

    planned: list[Planned] = []
    listings: dict[Path, set[str]] = {}
    for source, item in entries:
        found, tried = _resolve_audio(audio_root, source, _stem(item["id"]), audio_pattern, listings)
        if tried is None:
            bad(
                item["clip_id"],
                JSON_FILES[source],
                f"entry {item['index']}: audio pattern {audio_pattern!r} with id {item['id']!r} points outside "
                f"{audio_root}",
            )
            continue
        if found is None:
            bad(item["clip_id"], tried, f"audio file not found (entry {item['index']} of {JSON_FILES[source]})")
            continue
        planned.append(("train", item["clip_id"], found, item["caption"]))
    return planned, report


def read_wavcaps(
    json_root: str | Path,
    audio_root: str | Path | None = None,
    *,
    sources: Sequence[str] | None = None,
    exclude_csv: str | Path | None = None,
    freesound_policy: FreesoundPolicy = DEFAULT_FREESOUND_POLICY,
    duration_range: tuple[float, float] | None = DURATION_RANGE,
    audio_pattern: str | None = None,
    decode_check: bool = True,
    skip_bad: bool = False,
    bad: BadClips | None = None,
    progress: bool = False,
    workers: int = 1,
) -> tuple[list[ManifestRow], FilterReport]:
    """Manifest rows (source ``wavcaps``, split ``train``) and the FilterReport.

    ``json_root``: the WavCaps folder (either layout), its ``json_files`` folder, or any folder holding
    ``<Source>/<name>_final.json``; sources whose JSON is absent are skipped with a log line. ``audio_root``
    defaults to ``wavcaps_audio_root(json_root)``. See the module docstring for the filters.
    """
    bad = bad if bad is not None else BadClips(skip_bad)
    planned, report = plan_wavcaps(
        json_root,
        audio_root,
        bad,
        sources=sources,
        exclude_csv=exclude_csv,
        freesound_policy=freesound_policy,
        duration_range=duration_range,
        audio_pattern=audio_pattern,
    )
    rows = rows_from_plan(planned, "wavcaps", bad, decode_check, progress, workers, desc="WavCaps audio")
    report.add("audio found and readable", report.steps[-1].after, len(rows))
    return rows, report
