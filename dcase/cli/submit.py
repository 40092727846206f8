"""``dcase submit ...``: validate Task 6 / Task 8 submission files and lay out the submission package."""

from __future__ import annotations

from pathlib import Path

import typer

from dcase.cli.common import user_errors
from dcase.errors import InputError

app = typer.Typer(no_args_is_help=True)
validate_app = typer.Typer(no_args_is_help=True, help="Check a submission CSV against the official format.")
app.add_typer(validate_app, name="validate")


@validate_app.command("task6")
@user_errors
def validate6(
    file: Path = typer.Argument(..., help="Task 6 CSV (file_name,caption_predicted)."),
    audio_dir: Path = typer.Option(None, "--audio-dir", help="Evaluation audio folder: one row per file."),
) -> None:
    """Validate a Task 6 CSV: header, quoting, empty captions, duplicates, clip set.

    Example: dcase submit validate task6 Kim_SNU_task6_1.output.csv --audio-dir clotho/evaluation
    """
    from dcase.submission.formats import validate_task6

    df = validate_task6(file, audio_dir)
    typer.secho(f"ok: {file} ({len(df)} clips)", fg=typer.colors.GREEN)


@validate_app.command("task8")
@user_errors
def validate8(
    file: Path = typer.Argument(..., help="Task 8 CSV (caption,fname_1..fname_10)."),
    references: Path = typer.Option(None, "--references", help="Query captions CSV: row count and order."),
    audio_dir: Path = typer.Option(None, "--audio-dir", help="Audio folder every file name must exist in."),
) -> None:
    """Validate a Task 8 CSV: header, 10 distinct names per row, names exist, one row per query in order.

    Example: dcase submit validate task8 Kim_SNU_task8_1.output.csv --references retrieval_captions.csv
    """
    from dcase.submission.formats import validate_task8

    df = validate_task8(file, references, audio_dir)
    typer.secho(f"ok: {file} ({len(df)} queries)", fg=typer.colors.GREEN)


def _pairs(values: list[str] | None, flag: str) -> list[tuple[str, str]]:
    out = []
    for v in values or []:
        csv_path, sep, meta = v.rpartition(":")
        if not sep or not csv_path or not meta:
            raise InputError(f"{flag} expects CSV:META (e.g. out.csv:meta.yaml), got {v!r}")
        out.append((csv_path, meta))
    return out


@app.command("package")
@user_errors
def package(
    task6: list[str] = typer.Option(None, "--task6", help="CSV:META.yaml of a Task 6 system (repeat, <= 4)."),
    task8: list[str] = typer.Option(None, "--task8", help="CSV:META.yaml of a Task 8 system (repeat, <= 4)."),
    out: Path = typer.Option(..., "--out", help="Package folder (task6/<Label>/..., task8/<Label>/...)."),
    audio_dir6: Path = typer.Option(None, "--task6-audio-dir", help="Task 6 evaluation audio folder."),
    audio_dir8: Path = typer.Option(None, "--task8-audio-dir", help="Task 8 audio folder."),
    references8: Path = typer.Option(None, "--task8-references", help="Task 8 query captions CSV."),
    report: Path = typer.Option(None, "--technical-report", help="Technical report PDF to include."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing package folder and zip."),
) -> None:
    r"""Validate every system, then write the package folder (task<k>/<Label>/<Label>.output.csv + .meta.yaml, and
    the technical report as task<k>/<Lastname>_<Institute>_task<k>.technical_report.pdf) and <out>.zip, the file to
    upload. Refuses template placeholders in identity fields, a misnamed report, and an existing --out.

    Example:

      dcase submit package --task6 Kim_SNU_task6_1.output.csv:Kim_SNU_task6_1.meta.yaml \
          --task8 Kim_SNU_task8_1.output.csv:Kim_SNU_task8_1.meta.yaml \
          --technical-report Kim_SNU_task6.technical_report.pdf --out Kim_SNU
    """
    from dcase.submission.package import package_submission

    res = package_submission(
        out,
        _pairs(task6, "--task6"),
        _pairs(task8, "--task8"),
        overwrite=overwrite,
        audio_dir6=audio_dir6,
        audio_dir8=audio_dir8,
        references8=references8,
        technical_report=report,
    )
    typer.echo(f"{res.folder}: {', '.join(res.systems)}")
    typer.echo(f"{res.zip}: the file to upload")
    if not res.technical_report:
        typer.secho(
            "warning: no technical report in the package (--technical-report): DCASE needs one",
            fg=typer.colors.YELLOW,
            err=True,
        )


@app.command("task6")
@user_errors
def task6(
    recipe: Path = typer.Option(..., "--recipe", help="System recipe, e.g. submissions/task6_1.yaml."),
    audio_dir: Path = typer.Option(..., "--audio-dir", help="Evaluation audio folder (one caption per file)."),
    out: Path = typer.Option(..., "--out", "-o", help="Task 6 CSV to write (file_name,caption_predicted)."),
    meta_out: Path = typer.Option(None, "--meta-out", help="DCASE meta YAML to write from the recipe's meta."),
    root: Path = typer.Option(None, "--root", help="Checkpoint root (overrides the recipe's root)."),
    work_dir: Path = typer.Option(None, "--work-dir", help="Manifest, feature stores, soups, candidates [<out>_work]."),
    overrides: list[str] = typer.Option(
        None, "--set", "-s", help="Recipe override: --set generation.sampling.batch_clips=4"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing --out / --meta-out."),
) -> None:
    """Caption every clip of an audio folder with a recipe's system and write the validated Task 6 CSV + meta.

    Example: dcase submit task6 --recipe submissions/task6_1.yaml --audio-dir clotho/evaluation
    --root /data/checkpoints --out Kim_SNU_task6_1.output.csv --meta-out Kim_SNU_task6_1.meta.yaml

    Steps (all resumable, kept in --work-dir): a manifest of the folder; DAC codes (dcase extract codec) and clip
    embeddings (dcase extract embed, with the recipe's clip_embedder) when missing; the recipe's soups (dcase soup);
    candidates (dcase generate); the CSV, validated against the folder. Checkpoints come from the recipe (paths
    under its root): train them first with dcase captioner finetune / dcase retriever train.
    """
    from dcase.submission.meta import placeholder_fields
    from dcase.submission.recipes import load_task6_recipe, run_task6_recipe

    rec = load_task6_recipe(recipe, list(overrides or []))
    csv_path, meta_path = run_task6_recipe(rec, audio_dir, out, meta_out, work_dir, root, overwrite)
    bad = placeholder_fields(rec.meta)
    if bad:
        typer.secho(
            f"warning: {recipe}: meta fields {bad} are template placeholders; edit them before packaging",
            fg=typer.colors.YELLOW,
            err=True,
        )
    typer.secho(f"ok: {csv_path}" + (f", {meta_path}" if meta_path else ""), fg=typer.colors.GREEN)


@app.command("task8")
@user_errors
def task8(
    recipe: Path = typer.Option(..., "--recipe", help="System recipe, e.g. submissions/task8_1.yaml."),
    audio_dir: Path = typer.Option(..., "--audio-dir", help="Audio collection folder (test_retrieval_audio/)."),
    captions: Path = typer.Option(..., "--captions", help="Query captions CSV (retrieval_captions.csv)."),
    out: Path = typer.Option(..., "--out", "-o", help="Task 8 CSV to write (caption,fname_1..fname_10)."),
    meta_out: Path = typer.Option(None, "--meta-out", help="DCASE meta YAML to write from the recipe's meta."),
    root: Path = typer.Option(None, "--root", help="Checkpoint root (overrides the recipe's root)."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Persist/reuse audio embeddings + faiss indexes."),
    overrides: list[str] = typer.Option(None, "--set", "-s", help="Recipe override: --set mode=sinkhorn"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing --out / --meta-out."),
) -> None:
    """Rank the audio collection for every query with a recipe's retriever(s) and write the validated Task 8 CSV.

    Example: dcase submit task8 --recipe submissions/task8_1.yaml --audio-dir test_retrieval_audio
    --captions retrieval_captions.csv --root /data/checkpoints --out Kim_SNU_task8_1.output.csv
    --meta-out Kim_SNU_task8_1.meta.yaml

    One row per query in input order, 10 distinct file names each; several retrievers are ensembled (mean of
    per-query z-scored similarities). Checkpoints: dcase retriever train (see configs/dcase2024/retriever_*.yaml).
    """
    from dcase.env import resolve_device
    from dcase.submission.meta import placeholder_fields
    from dcase.submission.recipes import load_task8_recipe, run_task8_recipe

    rec = load_task8_recipe(recipe, list(overrides or []))
    device = resolve_device(None)
    csv_path, meta_path = run_task8_recipe(rec, audio_dir, captions, out, meta_out, root, cache_dir, overwrite, device)
    bad = placeholder_fields(rec.meta) if rec.meta else []
    if bad:
        typer.secho(
            f"warning: {recipe}: meta fields {bad} are template placeholders; edit them before packaging",
            fg=typer.colors.YELLOW,
            err=True,
        )
    typer.secho(f"ok: {csv_path}" + (f", {meta_path}" if meta_path else ""), fg=typer.colors.GREEN)
