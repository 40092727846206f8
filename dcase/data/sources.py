"""The data sources' readers and ``build_manifest``.

The names come from ``dcase.data.registry`` (re-exported here: ``SOURCES``, ``READABLE_SOURCES``,
``SOURCE_CHOICES``, ``canonical_source``); this module attaches a reader to each readable name (``REGISTRY``):

============  ========================  ===========================  ==========================
name          alias (CLI spelling)      folder under a data root     reader
============  ========================  ===========================  ==========================
clotho                                  ``CLOTHO_v2.1``              ``data.clotho``
audiocaps                               ``AUDIOCAPS``                ``data.audiocaps``
wavcaps                                 ``WavCaps``                  ``data.wavcaps``
clotho_mixup  ``clotho-mixup``          ``Clotho-ChatGPT-Mixup``     ``data.mixup``
synth                                   (none)                       (none: ``dcase data synth`` writes a Clotho
                                                                     layout, read back as ``clotho``)
============  ========================  ===========================  ==========================

The folder names are aac-datasets' (``CLOTHO_v2.1``, ``AUDIOCAPS``, ``WavCaps``) plus the mixup release's.
``build_manifest`` reads one source and writes its manifest; ``build_manifest_from`` does the same from an entry
of ``dcase.data.locate.locate_datasets``. Module graph (no cycle): ``registry`` <- ``manifest`` <- ``common`` <-
readers <- ``sources`` <- ``locate``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import pandas as pd

from dcase.data import audiocaps, clotho, mixup, wavcaps
from dcase.data.common import BadClip, BadClips, DataError, report_path_for
from dcase.data.manifest import ManifestRow, write_manifest
from dcase.data.registry import (
    DEFAULT_FREESOUND_POLICY,
    INFO,
    READABLE_SOURCES,
    SOURCE_CHOICES,
    SOURCES,
    FreesoundPolicy,
    canonical_source,
)
from dcase.errors import InputError
from dcase.io import check_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadOptions:
    """Every option a reader may take; ``None`` means "not given" (each reader refuses options that do not
    apply to it, so that a misplaced option is an error rather than silently ignored)."""

    splits: Sequence[str] | None = None
    audio_pattern: str | None = None
    audio_root: Path | None = None
    csv_dir: Path | None = None
    exclude_csv: Path | None = None
    freesound_policy: str | None = None
    duration_range: tuple[float, float] | None = wavcaps.DURATION_RANGE
    rejected_json: Path | None = None
    clotho_root: Path | None = None
    seed: int = 0
    decode_check: bool = True
    progress: bool = False
    workers: int = 1


Reader = Callable[[Path, BadClips, ReadOptions], tuple[list[ManifestRow], Any]]


def _refuse(o: ReadOptions, title: str, names: Sequence[str], hint: str = "") -> None:
    given = [n for n in names if getattr(o, n) is not None]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise InputError(f"{title}: option(s) {flags} do not apply to this source{hint}")


def _read_clotho(root: Path, bad: BadClips, o: ReadOptions) -> tuple[list[ManifestRow], Any]:
    _refuse(
        o,
        "Clotho",
        ["audio_pattern", "audio_root", "csv_dir", "exclude_csv", "freesound_policy", "rejected_json", "clotho_root"],
    )
    rows = clotho.read_clotho(
        root, o.splits, decode_check=o.decode_check, bad=bad, progress=o.progress, workers=o.workers
    )
    return rows, None


def _read_audiocaps(root: Path, bad: BadClips, o: ReadOptions) -> tuple[list[ManifestRow], Any]:
    _refuse(o, "AudioCaps", ["exclude_csv", "freesound_policy", "rejected_json", "clotho_root"])
    rows = audiocaps.read_audiocaps(
        root,
        o.splits,
        audio_pattern=o.audio_pattern,
        audio_root=o.audio_root,
        csv_dir=o.csv_dir,
        decode_check=o.decode_check,
        bad=bad,
        progress=o.progress,
        workers=o.workers,
    )
    return rows, None


def _read_wavcaps(root: Path, bad: BadClips, o: ReadOptions) -> tuple[list[ManifestRow], Any]:
    if o.splits:
        raise InputError("WavCaps has no splits (every clip is 'train'); drop --splits")
    _refuse(o, "WavCaps", ["csv_dir", "rejected_json", "clotho_root"])
    # read_wavcaps checks the policy (an unknown one is a DataError, which is an InputError)
    policy = cast(FreesoundPolicy, o.freesound_policy if o.freesound_policy is not None else DEFAULT_FREESOUND_POLICY)
    return wavcaps.read_wavcaps(
        root,
        o.audio_root,
        exclude_csv=o.exclude_csv,
        freesound_policy=policy,
        duration_range=o.duration_range,
        audio_pattern=o.audio_pattern,
        decode_check=o.decode_check,
        bad=bad,
        progress=o.progress,
        workers=o.workers,
    )


def _read_mixup(root: Path, bad: BadClips, o: ReadOptions) -> tuple[list[ManifestRow], Any]:
    if o.splits:
        raise InputError("Clotho-ChatGPT-Mixup rows are all 'train'; drop --splits")
    _refuse(o, "Clotho-ChatGPT-Mixup", ["audio_pattern", "audio_root", "csv_dir", "exclude_csv", "freesound_policy"])
    if o.clotho_root is None:
        raise InputError("clotho_mixup needs --clotho-root (the Clotho v2.1 folder with the development audio)")
    rows = mixup.read_clotho_mixup(
        root,
        o.clotho_root,
        rejected_json=o.rejected_json,
        seed=o.seed,
        decode_check=o.decode_check,
        bad=bad,
        progress=o.progress,
        workers=o.workers,
    )
    return rows, None


@dataclass(frozen=True)
class SourceSpec:
    """One data source: its canonical name (the manifest's ``source`` value), title, other accepted spellings,
    folder name under a data root (from ``dcase.data.registry``), and reader (None for sources that are not read
    from a dataset layout)."""

    name: str
    title: str
    aliases: tuple[str, ...] = ()
    folder: str | None = None
    reader: Reader | None = None


_READERS: dict[str, Reader] = {
    "clotho": _read_clotho,
    "audiocaps": _read_audiocaps,
    "wavcaps": _read_wavcaps,
    "clotho_mixup": _read_mixup,
}
if tuple(_READERS) != READABLE_SOURCES:  # pragma: no cover - a bug: every readable name needs a reader
    raise RuntimeError(f"readers {tuple(_READERS)} != readable sources {READABLE_SOURCES}")
REGISTRY: Mapping[str, SourceSpec] = MappingProxyType(
    {n: SourceSpec(n, i.title, i.aliases, i.folder, _READERS.get(n)) for n, i in INFO.items()}
)


@dataclass(frozen=True)
class FoundDataset:
    """One dataset found under a data root (``dcase.data.locate.locate_datasets``): what ``build_manifest`` needs.

    ``layout`` is ``"aac-datasets"`` (Labbeti/aac-datasets' on-disk layout), ``"release"`` (the mixup release's
    own file names) or ``"hand"`` (the hand layouts of docs/data.md). ``splits`` are the splits present (WavCaps:
    the WavCaps sources whose JSON is present). ``audio_dirs`` maps each of them to its audio folder; ``files``
    names the CSV/JSON files found (keys such as ``captions:development``, ``json:FreeSound``,
    ``exclusion_csv``, ``mixup_json``, ``rejected_json``); ``build_options`` holds the ``build_manifest`` keyword
    arguments resolved from the layout (e.g. ``exclude_csv``, ``clotho_root``, ``rejected_json``)."""

    source: str
    root: Path
    layout: str
    splits: tuple[str, ...]
    audio_dirs: Mapping[str, Path] = field(default_factory=dict)
    files: Mapping[str, Path] = field(default_factory=dict)
    build_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("audio_dirs", "files", "build_options"):  # own copies: the caller's dicts may change
            object.__setattr__(self, name, dict(getattr(self, name)))

    @property
    def title(self) -> str:
        return REGISTRY[self.source].title

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings), e.g. to record in a run what data was used."""

        def plain(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, tuple | list):
                return [plain(x) for x in v]
            return v

        return {
            "source": self.source,
            "root": str(self.root),
            "layout": self.layout,
            "splits": list(self.splits),
            "audio_dirs": {k: str(v) for k, v in self.audio_dirs.items()},
            "files": {k: str(v) for k, v in self.files.items()},
            "build_options": {k: plain(v) for k, v in self.build_options.items()},
        }


@dataclass
class BuildResult:
    """What ``build_manifest`` produced."""

    frame: pd.DataFrame
    out: Path
    skipped: list[BadClip] = field(default_factory=list)
    report_path: Path | None = None
    filter_report: Any = None  # wavcaps.FilterReport for WavCaps


def build_manifest(
    source: str,
    root: str | Path,
    out: str | Path,
    *,
    splits: Sequence[str] | None = None,
    audio_pattern: str | None = None,
    audio_root: str | Path | None = None,
    csv_dir: str | Path | None = None,
    exclude_csv: str | Path | None = None,
    freesound_policy: str | None = None,
    duration_range: tuple[float, float] | None = wavcaps.DURATION_RANGE,
    rejected_json: str | Path | None = None,
    clotho_root: str | Path | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    decode_check: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    workers: int = 1,
) -> BuildResult:
    """Read one dataset (``source``: any spelling of ``SOURCE_CHOICES``) under ``root`` and write its manifest.

    - clotho: ``root`` = the Clotho v2.1 folder; ``splits`` from development/validation/evaluation/test/retrieval_audio.
    - audiocaps: ``root`` = the AudioCaps folder; ``audio_pattern``/``audio_root``/``csv_dir`` override the layout.
    - wavcaps: ``root`` = the WavCaps folder (or its json_files folder); ``audio_root`` overrides the audio folder;
      ``freesound_policy`` (``listed_ids`` default, ``all``, ``keep``) with ``exclude_csv``; ``duration_range``.
    - clotho_mixup: ``root`` = the release folder or mixup JSON; ``clotho_root`` = the Clotho folder.

    Refuses to overwrite ``out`` unless ``overwrite``. Every clip left out (bad with ``skip_bad``, or unlisted)
    is listed in ``<out>.skipped.csv``. ``workers`` threads probe/decode the audio. Returns a BuildResult.
    """
    name = canonical_source(source)
    out = check_output(out, overwrite)
    opts = ReadOptions(
        splits=list(splits) if splits else None,
        audio_pattern=audio_pattern,
        audio_root=Path(audio_root) if audio_root is not None else None,
        csv_dir=Path(csv_dir) if csv_dir is not None else None,
        exclude_csv=Path(exclude_csv) if exclude_csv is not None else None,
        freesound_policy=freesound_policy,
        duration_range=duration_range,
        rejected_json=Path(rejected_json) if rejected_json is not None else None,
        clotho_root=Path(clotho_root) if clotho_root is not None else None,
        seed=seed,
        decode_check=decode_check,
        progress=progress,
        workers=workers,
    )
    reader = REGISTRY[name].reader
    assert reader is not None  # canonical_source only returns readable sources
    bad = BadClips(skip_bad)
    rows, filter_report = reader(Path(root), bad, opts)
    if not rows:
        raise DataError(f"{root}: no usable clips for source {name!r} ({len(bad)} left out)")
    report = None
    if bad.items:
        report = bad.write_csv(report_path_for(out))
        log.warning("%d clip(s) left out; see %s", len(bad), report)
    else:
        report_path_for(out).unlink(missing_ok=True)  # a stale report from an overwritten run would mislead
    df = write_manifest(rows, out)
    log.info("wrote %s: %d clips", out, len(df))
    return BuildResult(frame=df, out=out, skipped=list(bad.items), report_path=report, filter_report=filter_report)


_BUILD_KEYS = frozenset(f.name for f in fields(ReadOptions)) | {"skip_bad", "overwrite"}


def build_manifest_from(found: FoundDataset, out: str | Path, **options: Any) -> BuildResult:
    """``build_manifest`` for a dataset found by ``locate_datasets``: its source, root and resolved layout options,
    with ``options`` (any ``build_manifest`` keyword) taking precedence."""
    unknown = sorted(set(options) - _BUILD_KEYS)
    if unknown:
        raise TypeError(f"build_manifest_from: unknown option(s) {unknown}")
    kwargs = {**found.build_options, **options}
    return build_manifest(found.source, found.root, out, **kwargs)


__all__ = [
    "READABLE_SOURCES",
    "REGISTRY",
    "SOURCES",
    "SOURCE_CHOICES",
    "BuildResult",
    "FoundDataset",
    "ReadOptions",
    "SourceSpec",
    "build_manifest",
    "build_manifest_from",
    "canonical_source",
]
