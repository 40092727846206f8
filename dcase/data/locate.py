"""Find the datasets under a data root before anything else runs (no audio decoded, no model loaded).

Under a data root ``D`` the datasets sit under aac-datasets' folder names, plus the mixup release and the DCASE
exclusion list (folder names from ``dcase.data.sources.REGISTRY``)::

    D/CLOTHO_v2.1/            D/AUDIOCAPS/            D/WavCaps/
    D/Clotho-ChatGPT-Mixup/   D/dcase2024_task6_excluded_freesound_ids.csv

Inside each folder both aac-datasets' layout and the hand layouts of docs/data.md are recognised (each reader
module knows its own: ``clotho_layout``, ``audiocaps_layout``, ``wavcaps_layout``, ``find_mixup_files``).
``paths`` gives per-dataset locations instead of (or over) the data root; its keys are the canonical source
names (aliases accepted) plus ``wavcaps_exclusion_csv`` and ``clotho_mixup_rejected``.

A dataset that is absent is not an error (not every team has WavCaps): it gets a warning. A folder that is
there but cannot be used (no audio folder, a missing captions CSV, mixup without Clotho development audio) is a
*problem*; the caller decides (the pipeline's preflight prints every problem together). ``locate_datasets`` raises
only for bad arguments.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcase.data import audiocaps, clotho, mixup, wavcaps
from dcase.data.common import BadClips, clotho_audio_dir
from dcase.data.sources import READABLE_SOURCES, REGISTRY, FoundDataset, canonical_source
from dcase.errors import DcaseError, InputError

log = logging.getLogger(__name__)

EXCLUSION_CSV = "dcase2024_task6_excluded_freesound_ids.csv"
EXTRA_PATH_KEYS = ("wavcaps_exclusion_csv", "clotho_mixup_rejected")
PATH_KEYS = (*READABLE_SOURCES, *EXTRA_PATH_KEYS)
AAC_WAVCAPS_BLACKLIST = "blacklist_clotho.full.v2.csv"  # aac-datasets' own list (freesound_no_clotho_v2)


@dataclass(frozen=True)
class DatasetsFound:
    """The result of ``locate_datasets``: one ``FoundDataset`` per usable dataset (registry order), warnings for
    absent datasets and problems for datasets that are there but cannot be used."""

    data_root: Path | None
    datasets: Mapping[str, FoundDataset] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "datasets", dict(self.datasets))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings), e.g. to record in a run what data was found."""
        return {
            "data_root": str(self.data_root) if self.data_root is not None else None,
            "datasets": {k: f.to_dict() for k, f in self.datasets.items()},
            "warnings": list(self.warnings),
            "problems": list(self.problems),
        }

    def __contains__(self, source: object) -> bool:
        return isinstance(source, str) and _canonical_or_none(source) in self.datasets

    def __getitem__(self, source: str) -> FoundDataset:
        return self.datasets[canonical_source(source)]

    def __iter__(self) -> Iterator[FoundDataset]:
        return iter(self.datasets.values())

    def __len__(self) -> int:
        return len(self.datasets)

    def get(self, source: str) -> FoundDataset | None:
        return self.datasets.get(canonical_source(source))

    def lines(self) -> list[str]:
        """A human-readable summary: one line per dataset, then the warnings and problems."""
        out = [f"{f.title}: {f.root} ({f.layout} layout; {', '.join(f.splits)})" for f in self.datasets.values()]
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"problem: {p}" for p in self.problems]
        return out


def _canonical_or_none(name: str) -> str | None:
    try:
        return canonical_source(name)
    except InputError:
        return None


def _check_paths(paths: Mapping[str, str | Path] | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for key, value in (paths or {}).items():
        name = key if key in EXTRA_PATH_KEYS else _canonical_or_none(key)
        if name is None:
            raise InputError(f"unknown dataset path key {key!r}; expected one of {list(PATH_KEYS)}")
        out[name] = Path(value).expanduser()
    return out


def _clotho(root: Path, problems: list[str]) -> FoundDataset | None:
    splits = clotho.available_splits(root)
    if not splits:
        problems.append(
            f"Clotho: {root} has no audio folder (expected {clotho.AUDIO_DIR}/<split>/ or <split>/ for a split in "
            f"{list(clotho.SPLITS)}, or {clotho.RETRIEVAL_AUDIO_DIR}/)"
        )
        return None
    files: dict[str, Path] = {}
    for split in splits:
        csv_path = clotho.clotho_captions_csv(root, split)
        if csv_path is not None:
            files[f"captions:{split}"] = csv_path
        elif split in clotho.CAPTIONED_SPLITS:
            problems.append(
                f"Clotho: split {split!r} has audio but no clotho_captions_{split}.csv (looked in {root} and "
                f"{root / clotho.AAC_CSV_DIR})"
            )
    audio_dirs = {s: d for s in splits if (d := clotho_audio_dir(root, s)) is not None}
    return FoundDataset("clotho", root, clotho.clotho_layout(root), tuple(splits), audio_dirs, files)


def _audiocaps(root: Path, warnings: list[str], problems: list[str]) -> FoundDataset | None:
    csv_dirs = [root / d for d in (*audiocaps.HAND_CSV_DIRS, *audiocaps.AAC_CSV_DIRS)]
    csv_dir = next((d for d in csv_dirs if any((d / f"{s}.csv").is_file() for s in audiocaps.SPLITS)), None)
    if csv_dir is None:
        problems.append(
            f"AudioCaps: {root} has no train.csv, val.csv or test.csv (looked in {[str(d) for d in csv_dirs]})"
        )
        return None
    splits, audio_dirs, files = [], {}, {}
    for split in audiocaps.SPLITS:
        csv_path = audiocaps.audiocaps_csv(root, split, csv_dir)
        if csv_path is None:
            continue
        audio_dir = audiocaps.audiocaps_audio_dir(root, split)
        if audio_dir is None:
            warnings.append(f"AudioCaps: {csv_path.name} but no audio folder for split {split!r}; split left out")
            continue
        splits.append(split)
        audio_dirs[split] = audio_dir
        files[f"captions:{split}"] = csv_path
    if not splits:
        problems.append(f"AudioCaps: {root} has captions CSVs but no audio folder for any of them")
        return None
    options = {"csv_dir": csv_dir, "splits": tuple(splits)}
    return FoundDataset("audiocaps", root, audiocaps.audiocaps_layout(root), tuple(splits), audio_dirs, files, options)


def _wavcaps(
    root: Path, exclusion: Path | None, data_root: Path | None, warnings: list[str], problems: list[str]
) -> FoundDataset | None:
    jsons = {s: p for s in wavcaps.SOURCES if (p := wavcaps.wavcaps_json(root, s)) is not None}
    if not jsons:
        problems.append(
            f"WavCaps: {root} has no WavCaps JSON (expected {wavcaps.JSON_DIR}/<Source>/*_final.json for a source "
            f"in {list(wavcaps.SOURCES)})"
        )
        return None
    audio_root = wavcaps.wavcaps_audio_root(root)
    audio_dirs = {s: d for s in jsons for d in (audio_root / s, audio_root / f"{s}_flac") if d.is_dir()}
    missing_audio = [s for s in jsons if s not in audio_dirs]
    if missing_audio:
        warnings.append(f"WavCaps: no audio folder under {audio_root} for source(s) {missing_audio}")
    files: dict[str, Path] = {f"json:{s}": p for s, p in jsons.items()}
    options: dict[str, Any] = {"audio_root": audio_root}
    if exclusion is None:
        cands = ([data_root / EXCLUSION_CSV] if data_root is not None else []) + [root / EXCLUSION_CSV]
        exclusion = next((c for c in cands if c.is_file()), None)
    if exclusion is not None:
        files["exclusion_csv"] = exclusion
        options["exclude_csv"] = exclusion
    elif wavcaps.FREESOUND in jsons:
        where = data_root / EXCLUSION_CSV if data_root is not None else root / EXCLUSION_CSV
        warnings.append(
            f"WavCaps: FreeSound JSON present but no DCASE exclusion list ({where} not found): the default FreeSound "
            "policy 'listed_ids' needs it; download it (dcase data download) or choose freesound_policy 'all'"
        )
    if (root / AAC_WAVCAPS_BLACKLIST).is_file():
        files["aac_blacklist_clotho"] = root / AAC_WAVCAPS_BLACKLIST  # informative: the DCASE list is the rule
    return FoundDataset("wavcaps", root, wavcaps.wavcaps_layout(root), tuple(jsons), audio_dirs, files, options)


def _mixup(
    root: Path, rejected: Path | None, clotho_found: FoundDataset | None, problems: list[str]
) -> FoundDataset | None:
    try:
        json_path, found_rejected, layout = mixup.find_mixup_files(root)
    except DcaseError as e:
        problems.append(f"Clotho-ChatGPT-Mixup: {e}")
        return None
    if clotho_found is None or "development" not in clotho_found.audio_dirs:
        problems.append(
            f"Clotho-ChatGPT-Mixup: {json_path} pairs Clotho development clips, but no Clotho development audio "
            "was found; add the Clotho dataset (CLOTHO_v2.1) or leave the mixup release out"
        )
        return None
    rejected = rejected if rejected is not None else found_rejected
    files = {"mixup_json": json_path} | ({"rejected_json": rejected} if rejected is not None else {})
    options: dict[str, Any] = {"clotho_root": clotho_found.root}
    if rejected is not None:
        options["rejected_json"] = rejected
    dev = clotho_found.audio_dirs["development"]
    return FoundDataset("clotho_mixup", root, layout, (mixup.SPLIT,), {mixup.SPLIT: dev}, files, options)


def locate_datasets(
    data_root: str | Path | None = None, paths: Mapping[str, str | Path] | None = None
) -> DatasetsFound:
    """Find Clotho, AudioCaps, WavCaps and Clotho-ChatGPT-Mixup under ``data_root`` and/or at ``paths``.

    Model-free and cheap: only folder listings and file checks. Returns a ``DatasetsFound`` whose entries feed
    ``dcase.data.sources.build_manifest_from`` and ``audio_files``. Raises InputError only for bad arguments
    (no location at all, an unknown ``paths`` key)."""
    given = _check_paths(paths)
    root = Path(data_root).expanduser() if data_root is not None else None
    if root is None and not given:
        raise InputError("no data location: give a data root (--data-root) or per-dataset paths")
    if root is not None and not root.is_dir():
        raise InputError(f"data root {root} is not a folder")
    warnings: list[str] = []
    problems: list[str] = []
    found: dict[str, FoundDataset] = {}
    for key in EXTRA_PATH_KEYS:
        if key in given and not given[key].is_file():
            problems.append(f"{key}: {given[key]} is not a file")
            given.pop(key)
    for name in READABLE_SOURCES:
        spec = REGISTRY[name]
        if name in given:
            where = given[name]
            if not where.exists():
                problems.append(f"{spec.title}: {where} (given for {name!r}) does not exist")
                continue
        elif root is not None and spec.folder is not None and (root / spec.folder).exists():
            where = root / spec.folder
        else:
            if root is not None:
                warnings.append(f"{spec.title} not found under {root}: looked for {root / str(spec.folder)}/; left out")
            else:
                warnings.append(f"{spec.title}: no path given (and no data root); left out")
            continue
        if name == "clotho":
            entry = _clotho(where, problems)
        elif name == "audiocaps":
            entry = _audiocaps(where, warnings, problems)
        elif name == "wavcaps":
            entry = _wavcaps(where, given.get("wavcaps_exclusion_csv"), root, warnings, problems)
        else:
            entry = _mixup(where, given.get("clotho_mixup_rejected"), found.get("clotho"), problems)
        if entry is not None:
            found[name] = entry
    result = DatasetsFound(root, found, tuple(warnings), tuple(problems))
    for line in result.lines():
        log.info("datasets: %s", line)
    return result


def audio_files(found: FoundDataset, **options: Any) -> dict[str, list[Path]]:
    """The audio files behind each manifest split of a located dataset, as the readers would plan them, without
    decoding anything: {split: [paths]} (Clotho: its split names; AudioCaps: train/val/test; WavCaps and
    Clotho-ChatGPT-Mixup: ``train``, after the WavCaps filters; mixup lists the development clips its pairs use).

    ``options`` override the entry's ``build_options`` (e.g. ``freesound_policy``). Rows that the readers would
    refuse are left out here (the build reports them). Raises DataError when the dataset cannot be planned."""
    kwargs = {**found.build_options, **options}
    lenient = BadClips(skip_bad=True)
    by_split: dict[str, list[Path]] = defaultdict(list)
    if found.source == "clotho":
        _, planned = clotho.plan_clotho(found.root, kwargs.get("splits", found.splits), lenient)
        for split, _clip, path, _caps in planned:
            by_split[split].append(path)
    elif found.source == "audiocaps":
        _, planned = audiocaps.plan_audiocaps(
            found.root,
            kwargs.get("splits", found.splits),
            lenient,
            audio_pattern=kwargs.get("audio_pattern"),
            audio_root=kwargs.get("audio_root"),
            csv_dir=kwargs.get("csv_dir"),
        )
        for split, _clip, path, _caps in planned:
            by_split[split].append(path)
    elif found.source == "wavcaps":
        planned, _report = wavcaps.plan_wavcaps(
            found.root,
            kwargs.get("audio_root"),
            lenient,
            exclude_csv=kwargs.get("exclude_csv"),
            freesound_policy=kwargs.get("freesound_policy") or wavcaps.DEFAULT_FREESOUND_POLICY,
            duration_range=kwargs.get("duration_range", wavcaps.DURATION_RANGE),
            audio_pattern=kwargs.get("audio_pattern"),
        )
        by_split["train"] = [path for _s, _c, path, _caps in planned]
    elif found.source == "clotho_mixup":
        pairs, _n = mixup.plan_clotho_mixup(
            found.root, kwargs["clotho_root"], lenient, rejected_json=kwargs.get("rejected_json")
        )
        by_split[mixup.SPLIT] = list(dict.fromkeys(p for _i, _names, _caps, ps in pairs for p in ps))
    else:  # pragma: no cover - FoundDataset entries are only made for readable sources
        raise ValueError(f"no audio listing for source {found.source!r}")
    return dict(by_split)


__all__ = [
    "EXCLUSION_CSV",
    "PATH_KEYS",
    "DatasetsFound",
    "FoundDataset",
    "audio_files",
    "locate_datasets",
]
