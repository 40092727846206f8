"""``dcase data download``: fetch the datasets into the data-root layout that ``dcase.data.locate`` reads.

Clotho, AudioCaps and WavCaps come through aac-datasets (Labbeti), the optional extra ``pip install
'dcase[download]'``, which writes its own layout under the data root (``CLOTHO_v2.1/``, ``AUDIOCAPS/``,
``WavCaps/``). aac-datasets is imported only here, inside ``download_datasets``: version 0.7.0 imports torchaudio,
whose PyPI build needs CUDA libraries and does not import on a CPU-only machine, so no other command may depend
on it. Two files aac-datasets does not fetch come directly from their releases: the DCASE2024 list of excluded
Freesound ids (one CSV, standard library) and the Clotho-ChatGPT-Mixup release (a Hugging Face dataset, through
``huggingface_hub``, which transformers already installs).

Every failure (no extra, no network, a missing tool such as ffmpeg/yt-dlp for AudioCaps) is collected; the
command then fails with one ``DownloadError`` that says, per dataset, what to download by hand and where to put
it (``MANUAL``).
"""

from __future__ import annotations

import logging
import subprocess
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcase.data.locate import EXCLUSION_CSV
from dcase.data.sources import REGISTRY
from dcase.errors import DcaseError, InputError
from dcase.io import atomic_path

log = logging.getLogger(__name__)

AAC_DATASETS_REQUIREMENT = "aac-datasets==0.7.0"
EXTRA_HINT = "pip install 'dcase[download]'"
EXCLUSION_CSV_URL = "https://dcase.community/documents/challenge2024/dcase2024_task6_excluded_freesound_ids.csv"
MIXUP_REPO = "slseanwu/clotho-chatgpt-mixup-50K"
EXCLUSION = "exclusion_csv"
DOWNLOADABLE = ("clotho", "audiocaps", "wavcaps", "clotho_mixup", EXCLUSION)

# aac-datasets subset names
CLOTHO_SUBSETS = ("dev", "val", "eval", "dcase_aac_test", "dcase_t2a_audio", "dcase_t2a_captions")
AUDIOCAPS_SUBSETS = ("train", "val", "test")
WAVCAPS_SUBSETS = ("audioset", "bbc", "soundbible", "freesound_no_clotho_v2")
AUDIOCAPS_SAMPLE_RATE = 32000

MANUAL = {
    "clotho": "D/CLOTHO_v2.1/: Clotho v2.1 from https://zenodo.org/records/4783391 (clotho_audio_{development,"
    "validation,evaluation}.7z and their CSVs), the test audio from https://zenodo.org/records/3865658 and the "
    "Task 8 retrieval audio and captions from https://zenodo.org/records/6590983; unpack the audio into "
    "clotho_audio_files/<split>/ (retrieval audio into clotho_audio_files/test_retrieval_audio/) and put the CSVs "
    "in clotho_csv_files/",
    "audiocaps": "D/AUDIOCAPS/: the captions train.csv, val.csv, test.csv from https://github.com/cdjkim/audiocaps "
    "(dataset/) into csv_files_v1/, and the audio, which each team fetches from YouTube (yt-dlp and ffmpeg), as "
    "audio_32000Hz/<split>/{youtube_id}_{start_time}.flac",
    "wavcaps": "D/WavCaps/: json_files/ and the zipped audio of https://huggingface.co/datasets/cvssp/WavCaps, the "
    "audio unpacked into Audio/<Source>/<id>.flac (Source: AudioSet_SL, BBC_Sound_Effects, FreeSound, SoundBible)",
    "clotho_mixup": "D/Clotho-ChatGPT-Mixup/: clotho_development_chatgpt_mixups.json and "
    "clotho_development_chatgpt_mixups_err.json from https://huggingface.co/datasets/slseanwu/clotho-chatgpt-mixup-50K",
    EXCLUSION: f"D/{EXCLUSION_CSV}: from {EXCLUSION_CSV_URL}",
}


class DownloadError(DcaseError):
    """A download could not be made (no extra, no network, a missing tool). The message says what to fetch by
    hand and where to put it."""


@dataclass(frozen=True)
class DownloadPlan:
    """What ``download_datasets`` fetches; the aac-datasets subset names per dataset."""

    datasets: tuple[str, ...] = DOWNLOADABLE
    clotho_subsets: tuple[str, ...] = CLOTHO_SUBSETS
    audiocaps_subsets: tuple[str, ...] = AUDIOCAPS_SUBSETS
    wavcaps_subsets: tuple[str, ...] = WAVCAPS_SUBSETS
    audiocaps_sample_rate: int = AUDIOCAPS_SAMPLE_RATE
    workers: int = 1
    force: bool = False
    verbose: int = 1


def canonical_download(name: str) -> str:
    """A ``DOWNLOADABLE`` name from any accepted spelling (source aliases such as ``clotho-mixup`` included)."""
    key = name.strip().replace("-", "_")
    if key in DOWNLOADABLE:
        return key
    raise InputError(f"unknown dataset {name!r} to download; expected some of {list(DOWNLOADABLE)}")


def manual_instructions(data_root: Path, names: Sequence[str]) -> str:
    """What to download by hand and where to put it, one line per dataset (``D`` = ``data_root``)."""
    lines = [f"  - {MANUAL[n].replace('D/', f'{data_root}/', 1)}" for n in names]
    return "download by hand and arrange as follows (docs/data.md, 'The data root'):\n" + "\n".join(lines)


def _aac_functions() -> dict[str, Callable[..., Any]]:
    """aac-datasets' download functions, imported here and only here (see the module docstring)."""
    try:
        from aac_datasets.datasets.functional.audiocaps import download_audiocaps_datasets
        from aac_datasets.datasets.functional.clotho import download_clotho_datasets
        from aac_datasets.datasets.functional.wavcaps import download_wavcaps_datasets
    except ImportError as e:
        raise DownloadError(
            f"aac-datasets is not installed ({e}); install the optional extra: {EXTRA_HINT} "
            f"({AAC_DATASETS_REQUIREMENT})"
        ) from e
    except OSError as e:  # torchaudio's CUDA build fails to load its libraries on a CPU-only machine
        raise DownloadError(
            f"aac-datasets is installed but cannot be imported ({e}); it imports torchaudio, whose PyPI build needs "
            "CUDA libraries: install a CPU build of torchaudio that matches torch, or download by hand"
        ) from e
    return {
        "clotho": download_clotho_datasets,
        "audiocaps": download_audiocaps_datasets,
        "wavcaps": download_wavcaps_datasets,
    }


def _fetch_url(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` atomically."""
    with urllib.request.urlopen(url, timeout=timeout) as r, atomic_path(dest) as tmp:  # noqa: S310 - fixed https URL
        tmp.write_bytes(r.read())


def _hf_snapshot(repo_id: str, local_dir: Path) -> None:
    """Download a Hugging Face dataset repository into ``local_dir``."""
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo_id, repo_type="dataset", local_dir=str(local_dir))


# failures a download can meet: network (OSError covers urllib/requests/HF offline errors), aac-datasets' own
# RuntimeErrors (checksums, missing files), external tools (zip, ffmpeg, yt-dlp), and bad argument values
_DOWNLOAD_FAILURES = (OSError, RuntimeError, ValueError, subprocess.SubprocessError)


def download_datasets(data_root: str | Path, plan: DownloadPlan | None = None) -> list[str]:
    """Download ``plan.datasets`` under ``data_root`` (created if needed); returns one line per dataset done.

    Raises DownloadError listing every dataset that failed, with the manual instructions for those."""
    plan = plan or DownloadPlan()
    root = Path(data_root).expanduser()
    names = list(dict.fromkeys(canonical_download(n) for n in plan.datasets))
    if not names:
        raise InputError("nothing to download: --datasets is empty")
    root.mkdir(parents=True, exist_ok=True)
    done: list[str] = []
    failed: dict[str, str] = {}
    aac_names = [n for n in names if n in ("clotho", "audiocaps", "wavcaps")]
    functions: dict[str, Callable[..., Any]] = {}
    if aac_names:
        try:
            functions = _aac_functions()
        except DownloadError as e:
            failed.update({n: str(e) for n in aac_names})
    for name in names:
        if name in failed:
            continue
        target = root / (EXCLUSION_CSV if name == EXCLUSION else str(REGISTRY[name].folder))
        try:
            if name == "clotho":
                functions["clotho"](
                    root=str(root),
                    subsets=list(plan.clotho_subsets),
                    force=plan.force,
                    verbose=plan.verbose,
                    version="v2.1",
                )
            elif name == "audiocaps":
                functions["audiocaps"](
                    root=str(root),
                    subsets=list(plan.audiocaps_subsets),
                    force=plan.force,
                    verbose=plan.verbose,
                    audio_format="flac",
                    sr=plan.audiocaps_sample_rate,
                    max_workers=plan.workers,
                )
            elif name == "wavcaps":
                functions["wavcaps"](
                    root=str(root), subsets=list(plan.wavcaps_subsets), force=plan.force, verbose=plan.verbose
                )
            elif name == "clotho_mixup":
                _hf_snapshot(MIXUP_REPO, target)
            elif not target.is_file() or plan.force:
                _fetch_url(EXCLUSION_CSV_URL, target)
        except _DOWNLOAD_FAILURES as e:
            log.warning("download of %s failed: %s", name, e)
            failed[name] = f"{type(e).__name__}: {e}"
            continue
        done.append(f"{name}: {target}")
        log.info("downloaded %s into %s", name, target)
    if failed:
        reasons = "\n".join(f"  {n}: {why}" for n, why in failed.items())
        ok = f"downloaded: {', '.join(done)}\n" if done else ""
        raise DownloadError(
            f"could not download {list(failed)} into {root}:\n{reasons}\n{ok}{manual_instructions(root, list(failed))}"
        )
    return done


__all__ = [
    "AAC_DATASETS_REQUIREMENT",
    "DOWNLOADABLE",
    "MANUAL",
    "DownloadError",
    "DownloadPlan",
    "download_datasets",
    "manual_instructions",
]
