"""``dcase pipeline plan|run``: the whole DCASE2024 recipe as one declared sequence of steps."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from dcase.cli.common import user_errors

if TYPE_CHECKING:
    from dcase.stages.pipeline import Pipeline, PipelineOptions

app = typer.Typer(no_args_is_help=True)

PROFILE_OPTION = typer.Option("dcase2024", "--profile", "-p", help="dcase2024 | tiny | full-random, or a YAML file.")
DATA_ROOT_OPTION = typer.Option(
    None,
    "--data-root",
    "-d",
    help="Folder holding CLOTHO_v2.1/, AUDIOCAPS/, WavCaps/, Clotho-ChatGPT-Mixup/ and "
    "dcase2024_task6_excluded_freesound_ids.csv (aac-datasets' folder names; see docs/data.md).",
)
OUT_OPTION = typer.Option(Path("runs/dcase2024"), "--out", "-o", help="Run root: every output of every step.")
SET_OPTION = typer.Option(
    None, "--set", "-s", help="Profile override, repeatable: --set captioner.seeds=[0,1] --set train.max_steps=10"
)
TEAM_OPTION = typer.Option(
    None,
    "--team",
    help="YAML with your identity (lastname, institute, authors, technical_report): fills the meta "
    "YAMLs and the package.",
)
DATASET_OPTIONS = {
    "clotho": typer.Option(None, "--clotho", help="Clotho v2.1 folder (instead of <data-root>/CLOTHO_v2.1)."),
    "audiocaps": typer.Option(None, "--audiocaps", help="AudioCaps folder (instead of <data-root>/AUDIOCAPS)."),
    "wavcaps": typer.Option(None, "--wavcaps", help="WavCaps folder (instead of <data-root>/WavCaps)."),
    "clotho_mixup": typer.Option(None, "--clotho-mixup", help="Clotho-ChatGPT-Mixup release folder or JSON."),
}
ONLY_OPTION = typer.Option(None, "--only", help="Only this step or group (repeatable).")
FROM_OPTION = typer.Option(None, "--from", help="Start at this step or group.")
UNTIL_OPTION = typer.Option(None, "--until", help="Stop after this step or group.")


def _options(
    out: Path,
    data_root: Path | None,
    clotho: Path | None,
    audiocaps: Path | None,
    wavcaps: Path | None,
    clotho_mixup: Path | None,
    only: list[str] | None,
    start: str | None,
    until: str | None,
    allow_leak: bool,
) -> PipelineOptions:
    from dcase.stages.pipeline import PipelineOptions

    paths = {
        k: v
        for k, v in (("clotho", clotho), ("audiocaps", audiocaps), ("wavcaps", wavcaps), ("clotho_mixup", clotho_mixup))
        if v is not None
    }
    return PipelineOptions(
        out=out,
        data_root=data_root,
        dataset_paths=paths,
        only=list(only or []),
        start=start,
        until=until,
        allow_leak=allow_leak,
    )


def _load(profile: str, overrides: list[str] | None, team: Path | None, options: PipelineOptions) -> Pipeline:
    from dcase.stages.pipeline import build_pipeline
    from dcase.stages.profiles import load_profile

    return build_pipeline(load_profile(profile, list(overrides or []), team=team), options)


@app.command("plan")
@user_errors
def plan(
    profile: str = PROFILE_OPTION,
    data_root: Path = DATA_ROOT_OPTION,
    out: Path = OUT_OPTION,
    overrides: list[str] = SET_OPTION,
    team: Path = TEAM_OPTION,
    clotho: Path = DATASET_OPTIONS["clotho"],
    audiocaps: Path = DATASET_OPTIONS["audiocaps"],
    wavcaps: Path = DATASET_OPTIONS["wavcaps"],
    clotho_mixup: Path = DATASET_OPTIONS["clotho_mixup"],
    only: list[str] = ONLY_OPTION,
    start: str = FROM_OPTION,
    until: str = UNTIL_OPTION,
    check: bool = typer.Option(False, "--check", help="Also run the preflight checks (no model is loaded)."),
    allow_leak: bool = typer.Option(False, "--allow-leak", help="See `dcase pipeline run --help`."),
) -> None:
    """Print every step of the recipe with its inputs, outputs and status (done, partial, todo, changed, blocked).

    Examples:

      dcase pipeline plan --profile dcase2024 --data-root /data --out runs/dcase2024

      dcase pipeline plan --profile tiny --data-root demo_out/data --out demo_out/run --check
    """
    from dcase.stages.pipeline import plan_lines

    pipe = _load(
        profile,
        overrides,
        team,
        _options(out, data_root, clotho, audiocaps, wavcaps, clotho_mixup, only, start, until, allow_leak),
    )
    for line in plan_lines(pipe):
        typer.echo(line)
    if check:
        from dcase.stages.preflight import preflight

        preflight(pipe)
        typer.secho("preflight: ok", fg=typer.colors.GREEN)


@app.command("run")
@user_errors
def run(
    profile: str = PROFILE_OPTION,
    data_root: Path = DATA_ROOT_OPTION,
    out: Path = OUT_OPTION,
    overrides: list[str] = SET_OPTION,
    team: Path = TEAM_OPTION,
    clotho: Path = DATASET_OPTIONS["clotho"],
    audiocaps: Path = DATASET_OPTIONS["audiocaps"],
    wavcaps: Path = DATASET_OPTIONS["wavcaps"],
    clotho_mixup: Path = DATASET_OPTIONS["clotho_mixup"],
    only: list[str] = ONLY_OPTION,
    start: str = FROM_OPTION,
    until: str = UNTIL_OPTION,
    allow_leak: bool = typer.Option(
        False,
        "--allow-leak",
        help="Run although a training step reads evaluation/test audio (recorded in the run and in the meta YAMLs).",
    ),
) -> None:
    """Check everything first (datasets, weights, sizes, leaks: all problems at once), then run the steps that are
    not done. Rerunning the same command resumes; done steps are skipped.

    Examples:

      dcase pipeline run --profile dcase2024 --data-root /data --out runs/dcase2024 --team team.yaml

      dcase pipeline run --profile tiny --data-root demo_out/data --out demo_out/run --until devtest

      torchrun --nproc_per_node 4 -m dcase.cli pipeline run --profile dcase2024 --data-root /data --out runs/x

    Groups, in order: manifests, retrievers, features, pretrain, finetune, soups, rerank, devtest, systems, package.
    """
    from dcase.cli.common import is_main_process
    from dcase.stages.pipeline import plan_lines, run_pipeline, write_run_record
    from dcase.stages.preflight import preflight

    pipe = _load(
        profile,
        overrides,
        team,
        _options(out, data_root, clotho, audiocaps, wavcaps, clotho_mixup, only, start, until, allow_leak),
    )
    for w in pipe.warnings if is_main_process() else ():
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    notes = preflight(pipe)
    write_run_record(pipe, notes)
    final = run_pipeline(pipe)
    if not is_main_process():  # under a launcher, one summary
        return
    for line in plan_lines(pipe):
        typer.echo(line)
    pending = [st.step.name for st in final if st.state != "done"]
    if pending:
        typer.secho(f"not done: {pending}", fg=typer.colors.YELLOW)
    else:
        typer.secho(f"done: {len(final)} steps under {pipe.layout.root}", fg=typer.colors.GREEN)
