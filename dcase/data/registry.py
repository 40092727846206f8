"""The data sources' names, defined once: canonical names (the manifest's ``source`` values), CLI aliases, folder
names under a data root, and the WavCaps FreeSound policy names.

This module imports nothing heavy (no pandas, no audio library), for two reasons: the manifest schema validates
``source`` against ``SOURCES`` and every reader imports the manifest, so the names cannot live in a module that
imports the readers; and the command line reads them at start-up. ``dcase.data.sources`` attaches a reader to
each readable name (and re-exports these names); every other list derives from ``SOURCE_INFO``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dcase.errors import InputError


@dataclass(frozen=True)
class SourceInfo:
    """One data source: canonical name, title, other accepted spellings, folder name under a data root (aac-datasets'
    names where it has one), and whether ``build_manifest`` reads it from a dataset layout."""

    name: str
    title: str
    aliases: tuple[str, ...] = ()
    folder: str | None = None
    readable: bool = True


SOURCE_INFO: tuple[SourceInfo, ...] = (
    SourceInfo("clotho", "Clotho v2.1", folder="CLOTHO_v2.1"),
    SourceInfo("audiocaps", "AudioCaps", folder="AUDIOCAPS"),
    SourceInfo("wavcaps", "WavCaps", folder="WavCaps"),
    SourceInfo("clotho_mixup", "Clotho-ChatGPT-Mixup", aliases=("clotho-mixup",), folder="Clotho-ChatGPT-Mixup"),
    SourceInfo("synth", "synthetic demo corpus", readable=False),  # written in Clotho layout, read back as clotho
)
INFO = {s.name: s for s in SOURCE_INFO}
SOURCES: tuple[str, ...] = tuple(INFO)
"""Every canonical source name: the values allowed in a manifest's ``source`` column."""
READABLE_SOURCES: tuple[str, ...] = tuple(s.name for s in SOURCE_INFO if s.readable)
EVALUATION_SPLITS: dict[str, tuple[str, ...]] = {"clotho": ("evaluation", "test", "retrieval_audio", "analysis")}
"""DCASE2024 evaluation data, never trained on (unless explicitly allowed): Clotho evaluation (DCASE development-
testing), the Task 6 test audio, the Task 8 retrieval audio and the analysis set. Other datasets' test splits are not
DCASE evaluation data."""


def is_evaluation_split(source: str, split: str) -> bool:
    """True for a split that is DCASE2024 evaluation data (``EVALUATION_SPLITS``)."""
    return split in EVALUATION_SPLITS.get(source, ())


"""Sources that ``build_manifest`` reads from a dataset layout, in registry order."""
SOURCE_CHOICES: tuple[str, ...] = tuple(n for s in SOURCE_INFO if s.readable for n in (s.name, *s.aliases))
"""Every accepted spelling of a readable source (canonical names and aliases)."""
_BY_SPELLING = {n: s.name for s in SOURCE_INFO if s.readable for n in (s.name, *s.aliases)}

FreesoundPolicy = Literal["listed_ids", "all", "keep"]
FREESOUND_POLICIES: tuple[FreesoundPolicy, ...] = ("listed_ids", "all", "keep")
"""WavCaps FreeSound policies: drop the ids on the DCASE list | drop the whole FreeSound source | keep it."""
DEFAULT_FREESOUND_POLICY: FreesoundPolicy = "listed_ids"


def canonical_source(name: str) -> str:
    """The canonical name of a readable source given by any accepted spelling (``clotho-mixup`` ->
    ``clotho_mixup``). InputError listing the choices for an unknown name."""
    try:
        return _BY_SPELLING[name]
    except KeyError:
        raise InputError(f"unknown data source {name!r}; expected one of {list(SOURCE_CHOICES)}") from None
