"""``dcase data ...``: manifests from official dataset layouts, statistics, the synthetic demo corpus."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from dcase.cli.common import user_errors

app = typer.Typer(no_args_is_help=True)


class Source(StrEnum):
    clotho = "clotho"
    audiocaps = "audiocaps"
    wavcaps = "wavcaps"
    clotho_mixup = "clotho-mixup"


def _split_list(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [s.strip() for v in values for s in v.split(",") if s.strip()]
    return out or None


@app.command("manifest")
@user_errors
def manifest(
    source: Source = typer.Option(..., "--source", help="Dataset layout to read."),
    root: Path = typer.Option(
        ...,
        "--root",
        help="Dataset folder. clotho: the Clotho v2.1 folder; audiocaps: the folder with train/val/test.csv; "
        "wavcaps: the json_files folder; clotho-mixup: the mixup JSON (or a folder holding one).",
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
        help="audiocaps: audio file name, default '{youtube_id}.wav' ('Y{youtube_id}.wav' is tried too; fields "
        "{youtube_id} {start_time} {audiocap_id} {split}). wavcaps: path under --audio-root, e.g. "
        "'{source}/{id}.flac' (default: <Source>/<id>.flac or .wav).",
    ),
    audio_root: Path = typer.Option(
        None,
        "--audio-root",
        help="audiocaps: audio folder (may contain {split}; default <root>/audio/<split>/ or <root>/<split>/). "
        "wavcaps: folder holding <Source>/<id>.flac (default: --root).",
    ),
    exclude_csv: Path = typer.Option(
        None, "--exclude-csv", help="wavcaps: the DCASE CSV of excluded Freesound ids (column fsd_id/id/sound_id)."
    ),
    no_challenge_filters: bool = typer.Option(
        False,
        "--no-challenge-filters",
        help="wavcaps: keep the FreeSound source and every duration (an --exclude-csv is still applied).",
    ),
    rejected_json: Path = typer.Option(
        None, "--rejected-json", help='clotho-mixup: rejection list [{"idx": [pair, caption]}, ...].'
    ),
    clotho_root: Path = typer.Option(
        None, "--clotho-root", help="clotho-mixup: the Clotho v2.1 folder holding the development audio."
    ),
    seed: int = typer.Option(0, "--seed", help="clotho-mixup: seed of the per-pair mixing ratios in [-5, 5] dB."),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Skip unusable clips (missing/corrupt/NaN audio, empty captions, duplicates) and list them in "
        "<out>.skipped.csv instead of stopping at the first.",
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
    headers only). Bad input stops with an error naming the file, row and field, unless --skip-bad.

    Examples:

      dcase data manifest --source clotho --root data/CLOTHO_v2.1 --out manifests/clotho.parquet

      dcase data manifest --source clotho --root data/CLOTHO_v2.1 --splits test,retrieval_audio \
          --out manifests/clotho_eval.parquet

      dcase data manifest --source audiocaps --root data/audiocaps --audio-pattern 'Y{youtube_id}.wav' \
          --out manifests/audiocaps.parquet

      dcase data manifest --source wavcaps --root data/WavCaps/json_files --audio-root data/WavCaps/audio \
          --exclude-csv data/dcase2024_task6_excluded_freesound_ids.csv --out manifests/wavcaps.parquet --skip-bad

      dcase data manifest --source clotho-mixup --root data/mixup/mixed_data.json \
          --rejected-json data/mixup/rejected.json --clotho-root data/CLOTHO_v2.1 --out manifests/mixup.parquet
    """
    from dcase.data.build import build_manifest

    res = build_manifest(
        source.value,
        root,
        out,
        splits=_split_list(splits),
        audio_pattern=audio_pattern,
        audio_root=audio_root,
        exclude_csv=exclude_csv,
        challenge_filters=not no_challenge_filters,
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
        typer.secho(f"skipped {len(res.skipped)} bad clip(s); see {res.report_path}", fg=typer.colors.YELLOW)


@app.command("stats")
@user_errors
def stats(
    files: list[Path] = typer.Argument(..., help="Manifest parquet files."),
) -> None:
    """Clips, captions and hours per source and split of one or more manifests.

    Example:

      dcase data stats manifests/clotho.parquet manifests/audiocaps.parquet
    """
    from rich.console import Console
    from rich.table import Table

    from dcase.data.manifest import read_manifest
    from dcase.data.manifest import stats as manifest_stats

    table = Table(title="manifest statistics")
    for col, justify in (
        ("file", "left"),
        ("source", "left"),
        ("split", "left"),
        ("clips", "right"),
        ("captions", "right"),
        ("hours", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    total = [0, 0, 0.0]
    for f in files:
        st = manifest_stats(read_manifest(f))
        for r in st.itertuples(index=False):
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
