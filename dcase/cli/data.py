"""``dcase data ...``: manifests from official dataset layouts, statistics, the synthetic demo corpus."""

from __future__ import annotations

from pathlib import Path

import typer

from dcase.cli.common import user_errors
from dcase.data.registry import DEFAULT_FREESOUND_POLICY, FREESOUND_POLICIES, SOURCE_CHOICES

app = typer.Typer(no_args_is_help=True)


def _split_list(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [s.strip() for v in values for s in v.split(",") if s.strip()]
    return out or None


@app.command("manifest")
@user_errors
def manifest(
    source: str = typer.Option(..., "--source", help=f"Dataset to read: {', '.join(SOURCE_CHOICES)}."),
    root: Path = typer.Option(
        ...,
        "--root",
        help="Dataset folder, in aac-datasets' layout or a hand layout (docs/data.md). clotho: the CLOTHO_v2.1 "
        "folder; audiocaps: the AUDIOCAPS folder (or one with train/val/test.csv); wavcaps: the WavCaps folder (or "
        "its json_files folder); clotho_mixup: the Clotho-ChatGPT-Mixup release folder (or the mixup JSON).",
    ),
    out: Path = typer.Option(..., "--out", help="Manifest to write (.parquet)."),
    splits: list[str] = typer.Option(
        None,
        "--splits",
        help="Splits to read (repeat or comma-separate). clotho: development, validation, evaluation, test, "
        "retrieval_audio (default: every split present); audiocaps: train, val, test.",
    ),
    audio_pattern: str = typer.Option(
        None,
        "--audio-pattern",
        help="audiocaps: audio file name; default '{youtube_id}_{start_time}.flac' in aac-datasets' audio_32000Hz/ "
        "folder, else '{youtube_id}.wav' ('Y{youtube_id}.wav' is tried too; fields {youtube_id} {start_time} "
        "{audiocap_id} {split}). wavcaps: path under --audio-root, e.g. '{source}/{id}.flac' (default: "
        "<Source>/<id>.flac or .wav).",
    ),
    audio_root: Path = typer.Option(
        None,
        "--audio-root",
        help="audiocaps: audio folder (may contain {split}; default <root>/audio_32000Hz/<split>/, "
        "<root>/audio/<split>/ or <root>/<split>/). wavcaps: folder holding <Source>/<id>.flac (default: "
        "<root>/Audio/ or <root>/audio/).",
    ),
    csv_dir: Path = typer.Option(
        None, "--csv-dir", help="audiocaps: folder of train/val/test.csv (e.g. <root>/csv_files_v2 for AudioCaps v2)."
    ),
    exclude_csv: Path = typer.Option(
        None,
        "--exclude-csv",
        help="wavcaps: the DCASE CSV of excluded Freesound ids (dcase2024_task6_excluded_freesound_ids.csv; column "
        "fsd_id/id/sound_id), applied to the FreeSound source.",
    ),
    freesound_policy: str = typer.Option(
        None,
        "--freesound-policy",
        help=f"wavcaps: {' | '.join(FREESOUND_POLICIES)} (default {DEFAULT_FREESOUND_POLICY}). listed_ids drops "
        "the FreeSound clips whose id is in --exclude-csv (the DCASE rule); all drops the whole FreeSound source; "
        "keep keeps it (not allowed for DCASE2024 training).",
    ),
    no_duration_filter: bool = typer.Option(
        False, "--no-duration-filter", help="wavcaps: keep every duration (default: only clips of 1 to 30 s)."
    ),
    rejected_json: Path = typer.Option(
        None,
        "--rejected-json",
        help='clotho_mixup: rejection list [{"idx": [pair, caption]}, ...] (default: the release\'s '
        "clotho_development_chatgpt_mixups_err.json when present).",
    ),
    clotho_root: Path = typer.Option(
        None, "--clotho-root", help="clotho_mixup: the Clotho v2.1 folder holding the development audio."
    ),
    seed: int = typer.Option(0, "--seed", help="clotho_mixup: seed of the per-pair mixing ratios in [-5, 5] dB."),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Skip unusable clips (missing/corrupt/NaN audio, empty captions, duplicates, paths outside the "
        "dataset folder) and list them in <out>.skipped.csv instead of stopping at the first.",
    ),
    no_decode_check: bool = typer.Option(
        False,
        "--no-decode-check",
        help="Read durations from headers only; skip decoding every file (for huge corpora).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Threads decoding audio (e.g. 8 for WavCaps on a cluster node)."
    ),
) -> None:
    r"""Build a manifest (one parquet row per clip) from an official dataset layout.

    Clotho naming clash: Clotho's "evaluation" split (1045 clips) is what DCASE calls development-testing;
    the DCASE evaluation data are Clotho "test" (1043 caption-less clips, Task 6) and "retrieval_audio"
    (test_retrieval_audio/, 1000 clips, Task 8).

    Every clip's audio is decoded once to reject corrupt, empty or NaN files (--no-decode-check reads
    headers only). Bad input stops with an error naming the file, row and field, unless --skip-bad. Every clip
    left out (skipped, or an audio file that no CSV lists) is listed in <out>.skipped.csv.

    Examples:

      dcase data manifest --source clotho --root data/CLOTHO_v2.1 --out manifests/clotho.parquet

      dcase data manifest --source clotho --root data/CLOTHO_v2.1 --splits test,retrieval_audio \
          --out manifests/clotho_eval.parquet

      dcase data manifest --source audiocaps --root data/AUDIOCAPS --out manifests/audiocaps.parquet

      dcase data manifest --source wavcaps --root data/WavCaps \
          --exclude-csv data/dcase2024_task6_excluded_freesound_ids.csv --out manifests/wavcaps.parquet --skip-bad

      dcase data manifest --source clotho_mixup --root data/Clotho-ChatGPT-Mixup --clotho-root data/CLOTHO_v2.1 \
          --out manifests/clotho_mixup.parquet
    """
    from dcase.data.sources import build_manifest
    from dcase.data.wavcaps import DURATION_RANGE

    res = build_manifest(
        source,
        root,
        out,
        splits=_split_list(splits),
        audio_pattern=audio_pattern,
        audio_root=audio_root,
        csv_dir=csv_dir,
        exclude_csv=exclude_csv,
        freesound_policy=freesound_policy,
        duration_range=None if no_duration_filter else DURATION_RANGE,
        rejected_json=rejected_json,
        clotho_root=clotho_root,
        seed=seed,
        skip_bad=skip_bad,
        decode_check=not no_decode_check,
        overwrite=overwrite,
        progress=True,
        workers=workers,
    )
    if res.filter_report is not None:
        for line in res.filter_report.lines():
            typer.echo(f"  {line}")
    counts = res.frame.groupby("split").size().to_dict()
    typer.echo(f"wrote {res.out}: {len(res.frame)} clips {counts}")
    if res.skipped:
        typer.secho(f"left out {len(res.skipped)} clip(s); see {res.report_path}", fg=typer.colors.YELLOW)


def _path_options(values: list[str] | None) -> dict[str, Path]:
    from dcase.errors import InputError

    out: dict[str, Path] = {}
    for v in values or []:
        key, sep, value = v.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InputError(f"--path expects KEY=PATH (e.g. wavcaps=/data/WavCaps), got {v!r}")
        out[key.strip()] = Path(value.strip())
    return out


@app.command("locate")
@user_errors
def locate(
    data_root: Path = typer.Option(
        None,
        "--data-root",
        help="Folder holding CLOTHO_v2.1/, AUDIOCAPS/, WavCaps/, Clotho-ChatGPT-Mixup/ and "
        "dcase2024_task6_excluded_freesound_ids.csv.",
    ),
    path: list[str] = typer.Option(
        None,
        "--path",
        help="KEY=PATH, repeatable: a dataset's location instead of (or over) the data root. Keys: clotho, "
        "audiocaps, wavcaps, clotho_mixup, wavcaps_exclusion_csv, clotho_mixup_rejected.",
    ),
) -> None:
    """Show which datasets are found (and in which layout) without reading any audio.

    Absent datasets are warnings; datasets that are there but unusable are problems (exit status 2).

    Example:

      dcase data locate --data-root data

      dcase data locate --path clotho=/corpora/CLOTHO_v2.1 --path wavcaps=/corpora/WavCaps
    """
    from dcase.data.locate import locate_datasets

    found = locate_datasets(data_root, _path_options(path))
    for line in found.lines():
        typer.echo(line)
    if found.problems:
        raise typer.Exit(2)


@app.command("download")
@user_errors
def download(
    data_root: Path = typer.Option(..., "--data-root", help="Folder to download into (created if needed)."),
    datasets: list[str] = typer.Option(
        None,
        "--datasets",
        help="What to download (repeat or comma-separate): clotho, audiocaps, wavcaps, clotho_mixup, exclusion_csv "
        "(default: all).",
    ),
    clotho_subsets: list[str] = typer.Option(
        None,
        "--clotho-subsets",
        help="aac-datasets Clotho subsets (default: dev, val, eval, dcase_aac_test, "
        "dcase_t2a_audio, dcase_t2a_captions).",
    ),
    audiocaps_subsets: list[str] = typer.Option(
        None, "--audiocaps-subsets", help="aac-datasets AudioCaps subsets (default: train, val, test)."
    ),
    wavcaps_subsets: list[str] = typer.Option(
        None,
        "--wavcaps-subsets",
        help="aac-datasets WavCaps subsets (default: audioset, bbc, soundbible, freesound_no_clotho_v2; leave "
        "out freesound_no_clotho_v2 to skip the FreeSound audio, e.g. with --freesound-policy all).",
    ),
    audiocaps_sample_rate: int = typer.Option(
        32000, "--audiocaps-sample-rate", min=8000, help="Sample rate of the AudioCaps FLAC files."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel AudioCaps downloads."),
    force: bool = typer.Option(False, "--force", help="Download again files that are already there."),
) -> None:
    """Download Clotho, AudioCaps and WavCaps (through aac-datasets), Clotho-ChatGPT-Mixup and the DCASE list of
    excluded Freesound ids into the data-root layout that `dcase data locate` and the pipeline read.

    Needs the optional extra: pip install 'dcase[download]' (aac-datasets; AudioCaps also needs ffmpeg and
    yt-dlp). Offline or without the extra, it fails with what to download by hand and where to put it.

    Example:

      dcase data download --data-root data --datasets clotho,clotho_mixup,exclusion_csv
    """
    from dcase.data import download as dl
    from dcase.data.locate import locate_datasets

    plan = dl.DownloadPlan(
        datasets=tuple(_split_list(datasets) or dl.DOWNLOADABLE),
        clotho_subsets=tuple(_split_list(clotho_subsets) or dl.CLOTHO_SUBSETS),
        audiocaps_subsets=tuple(_split_list(audiocaps_subsets) or dl.AUDIOCAPS_SUBSETS),
        wavcaps_subsets=tuple(_split_list(wavcaps_subsets) or dl.WAVCAPS_SUBSETS),
        audiocaps_sample_rate=audiocaps_sample_rate,
        workers=workers,
        force=force,
    )
    for line in dl.download_datasets(data_root, plan):
        typer.echo(f"downloaded {line}")
    for line in locate_datasets(data_root).lines():
        typer.echo(line)


@app.command("stats")
@user_errors
def stats(
    files: list[Path] = typer.Argument(..., help="Manifest parquet files."),
) -> None:
    """Clips, captions and hours per source and split of one or more manifests.

    Example:

      dcase data stats manifests/clotho.parquet manifests/audiocaps.parquet
    """
    from rich.console import Console, JustifyMethod
    from rich.table import Table

    from dcase.data.manifest import frame_rows, read_manifest
    from dcase.data.manifest import stats as manifest_stats

    table = Table(title="manifest statistics")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("file", "left"),
        ("source", "left"),
        ("split", "left"),
        ("clips", "right"),
        ("captions", "right"),
        ("hours", "right"),
    )
    for col, justify in columns:
        table.add_column(col, justify=justify)
    total = [0, 0, 0.0]
    for f in files:
        st = manifest_stats(read_manifest(f))
        for r in frame_rows(st):
            table.add_row(f.name, r.source, r.split, str(r.clips), str(r.captions), f"{r.hours:.3f}")
            total[0] += int(r.clips)
            total[1] += int(r.captions)
            total[2] += float(r.hours)
    table.add_row("total", "", "", str(total[0]), str(total[1]), f"{total[2]:.3f}", style="bold")
    Console(width=120).print(table)


@app.command("synth")
@user_errors
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the corpus into (Clotho v2.1 layout)."),
    clips: int = typer.Option(
        400, "--clips", help="Captioned clips, split 70/15/15 into development/validation/evaluation."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed; the same seed gives byte-identical files."),
    test_clips: int = typer.Option(None, "--test-clips", help="Caption-less test clips (default max(2, clips/20))."),
    retrieval_clips: int = typer.Option(
        None, "--retrieval-clips", help="Task 8 retrieval clips + queries (default max(2, clips/20))."
    ),
    no_mixup: bool = typer.Option(False, "--no-mixup", help="Do not write clotho_chatgpt_mixup.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
) -> None:
    """Write a synthetic demo corpus in the exact Clotho v2.1 layout (with Task 8 files and a mixup JSON).

    Clips are 2-6 s of procedurally composed events (tones, chirps, noise, clicks, beeps; hum or rain) with 5
    paraphrased captions each. Read it back with `dcase data manifest --source clotho`.

    Example:

      dcase data synth --out data/synth --clips 400 --seed 0

      dcase data manifest --source clotho --root data/synth --out data/synth/clotho.parquet
    """
    from dcase.data.synth import make_synth_corpus

    path = make_synth_corpus(
        out,
        clips,
        seed,
        n_test=test_clips,
        n_retrieval=retrieval_clips,
        mixup=not no_mixup,
        overwrite=overwrite,
        progress=True,
    )
    typer.echo(f"wrote synthetic Clotho-layout corpus to {path}")
