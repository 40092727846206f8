"""The pipeline's mechanics: step selection, status (done / changed / partial / blocked), resume records, run-root
references, the leak checks of the preflight, and the shipped profiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dcase.errors import InputError
from dcase.stages.pipeline import GROUPS, RunLayout, Step, best_checkpoint, select_steps, step_status
from dcase.stages.preflight import check_leak_splits, duplicate_audio
from dcase.stages.profiles import list_profiles, load_profile, parse_use, uses_by_source


def _step(name: str, group: str, tmp: Path, inputs=(), settings=None, calls=None) -> Step:
    out = tmp / name / "out.txt"

    def action() -> dict:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(name)
        if calls is not None:
            calls.append(name)
        return {"wrote": str(out)}

    return Step(
        name=name,
        group=group,
        description=name,
        inputs=tuple(inputs),
        outputs=(out,),
        settings=settings or {"x": 1},
        action=action,
    )


def test_select_steps_by_group_name_and_range(tmp_path):
    steps = [
        _step("manifests/clotho", "manifests", tmp_path),
        _step("retrievers/a/pretrain", "retrievers", tmp_path),
        _step("retrievers/a/finetune", "retrievers", tmp_path),
        _step("captioner/pretrain", "pretrain", tmp_path),
        _step("package", "package", tmp_path),
    ]
    names = lambda sel: [s.name for s in sel]  # noqa: E731
    assert names(select_steps(steps, only=["retrievers"])) == ["retrievers/a/pretrain", "retrievers/a/finetune"]
    assert names(select_steps(steps, only=["retrievers/a"])) == ["retrievers/a/pretrain", "retrievers/a/finetune"]
    assert names(select_steps(steps, only=["package", "manifests/clotho"])) == ["manifests/clotho", "package"]
    assert names(select_steps(steps, start="retrievers", until="pretrain")) == names(steps[1:4])
    assert names(select_steps(steps, start="retrievers/a/finetune")) == names(steps[2:])
    assert names(select_steps(steps)) == names(steps)
    with pytest.raises(InputError, match="no step or group 'nope'"):
        select_steps(steps, only=["nope"])
    assert GROUPS.index("manifests") < GROUPS.index("retrievers") < GROUPS.index("package")


def test_status_done_changed_partial_blocked(tmp_path):
    from dcase.stages.pipeline import Pipeline, PipelineOptions, run_pipeline

    layout = RunLayout(tmp_path / "run")
    a = _step("a", "manifests", tmp_path)
    b = _step("b", "retrievers", tmp_path, inputs=[a.outputs[0]])
    assert step_status(a, layout, set()).state == "todo"
    assert step_status(b, layout, set()).state == "blocked"
    assert step_status(b, layout, {a.outputs[0]}).state == "todo"

    calls: list[str] = []
    a = _step("a", "manifests", tmp_path, calls=calls)
    b = _step("b", "retrievers", tmp_path, inputs=[a.outputs[0]], calls=calls)
    pipe = Pipeline(
        profile=load_profile("tiny"), options=PipelineOptions(out=layout.root), layout=layout, found=None, steps=[a, b]
    )
    final = run_pipeline(pipe)
    assert calls == ["a", "b"] and [s.state for s in final] == ["done", "done"]
    rec = json.loads(layout.done_record("a").read_text())
    assert rec["settings_hash"] == a.settings_hash() and rec["record"] == {"wrote": str(a.outputs[0])}
    # rerun: nothing runs again
    run_pipeline(pipe)
    assert calls == ["a", "b"]
    # an output deleted after the record: partial, and rerun redoes only that step
    b.outputs[0].unlink()
    assert step_status(b, layout, set()).state == "partial"
    run_pipeline(pipe)
    assert calls == ["a", "b", "b"]
    # settings changed: "changed", and the run refuses before running anything
    a2 = _step("a", "manifests", tmp_path, settings={"x": 2}, calls=calls)
    st = step_status(a2, layout, set())
    assert st.state == "changed" and "['x']" in st.detail
    pipe.steps = [a2, b]
    with pytest.raises(InputError, match="already done with other settings"):
        run_pipeline(pipe)
    assert calls == ["a", "b", "b"]


def test_run_root_references_resolve_to_best_checkpoints(tmp_path):
    layout = RunLayout(tmp_path)
    run = layout.captioner_finetune(0)
    (run / "checkpoints" / "step-000010").mkdir(parents=True)
    (run / "last").mkdir()
    (run / "best.json").write_text(
        json.dumps({"checkpoints": [{"value": 1.0, "step": 10, "path": str(run / "checkpoints" / "step-000010")}]})
    )
    assert best_checkpoint(run) == run / "checkpoints" / "step-000010"
    assert layout.resolve("captioner/finetune/seed0") == run / "checkpoints" / "step-000010"
    assert layout.resolve("soups/soup") == tmp_path / "soups" / "soup"
    (run / "best.json").write_text(json.dumps({"checkpoints": []}))
    assert best_checkpoint(run) == run / "last"


def test_dataset_uses():
    assert parse_use("clotho:development") == ("clotho", ("development",))
    assert parse_use("clotho-mixup") == ("clotho_mixup", ())
    assert parse_use("audiocaps:train+val") == ("audiocaps", ("train", "val"))
    assert uses_by_source(["clotho:development", "audiocaps:train", "clotho:validation"]) == {
        "clotho": ("development", "validation"),
        "audiocaps": ("train",),
    }
    with pytest.raises(InputError, match="unknown dataset 'esc50'"):
        parse_use("esc50:train")


def test_leak_splits_refused_unless_allowed():
    profile = load_profile("tiny", ["captioner.finetune_data=[clotho:development, clotho:evaluation]"])
    problems: list[str] = []
    assert check_leak_splits(profile, problems, allow_leak=False) == []
    assert len(problems) == 1 and "captioner finetuning reads evaluation data clotho:['evaluation']" in problems[0]
    problems = []
    notes = check_leak_splits(profile, problems, allow_leak=True)
    assert problems == [] and len(notes) == 1


def test_duplicate_audio_by_content(tmp_path):
    rng = np.random.default_rng(0)
    a, b, c = (rng.bytes(1000), rng.bytes(1000), rng.bytes(2000))
    files = {}
    for name, data in (
        ("train/x.wav", a),
        ("train/y.wav", b),
        ("train/z.wav", c),
        ("eval/p.wav", a),
        ("eval/q.wav", rng.bytes(1000)),
    ):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        files[name] = p
    pairs = duplicate_audio(
        [files["train/x.wav"], files["train/y.wav"], files["train/z.wav"]], [files["eval/p.wav"], files["eval/q.wav"]]
    )
    assert pairs == [(files["train/x.wav"], files["eval/p.wav"])]


def test_shipped_profiles_load():
    assert {"dcase2024", "tiny", "full-random"} <= set(list_profiles())
    for name in list_profiles():
        p = load_profile(name)
        assert p.task6 and p.task8 and p.captioner.seeds, name
    report = load_profile("dcase2024")
    assert [r.name for r in report.retrievers] == [
        "bge-base",
        "bert-base",
        "roberta-base",
        "bge-large",
        "bert-large",
        "roberta-large",
    ]
    assert report.captioner.seeds == list(range(7)) and report.clip_embedder == "retrievers/bge-base/pretrain"


def test_preflight_reports_every_problem_at_once(tmp_path):
    """A broken set-up: a training split that is evaluation data, a development file with the content of an
    evaluation file, an existing codec store of another size, and a step whose input store does not exist. The
    preflight lists all four in one error, before any model is loaded; the CLI prints them and exits 2."""
    import shutil

    from _datasets_util import MINI_DEV, MINI_EVAL, make_data_root
    from typer.testing import CliRunner

    from dcase.cli import app
    from dcase.data.locate import locate_datasets
    from dcase.data.sources import build_manifest_from
    from dcase.features.extract import extract_codec
    from dcase.stages.pipeline import PipelineOptions, build_pipeline
    from dcase.stages.preflight import PreflightError, preflight

    data = make_data_root(tmp_path / "data")
    audio = data / "CLOTHO_v2.1" / "clotho_audio_files"
    shutil.copyfile(audio / "evaluation" / MINI_EVAL[0], audio / "development" / MINI_DEV[0])  # same content
    run = tmp_path / "run"
    manifest = run / "manifests" / "clotho.parquet"
    build_manifest_from(locate_datasets(data)["clotho"], manifest)
    extract_codec(manifest, run / "features" / "codec" / "clotho", "tiny", progress=False)  # 4 codebooks x 64
    codec = tmp_path / "codec.json"
    codec.write_text(
        json.dumps(
            {
                "n_codebooks": 2,
                "codebook_size": 32,
                "codebook_dim": 4,
                "hidden_size": 32,
                "encoder_hidden_size": 8,
                "decoder_hidden_size": 16,
            }
        )
    )
    overrides = ["captioner.finetune_data=[clotho:development, clotho:test]", f"codec.model={codec}"]
    pipe = build_pipeline(
        load_profile("tiny", overrides), PipelineOptions(out=run, data_root=data, only=["captioner/pretrain"])
    )
    with pytest.raises(PreflightError) as e:
        preflight(pipe)
    problems = e.value.problems
    assert any("captioner finetuning reads evaluation data clotho:['test']" in p for p in problems), problems
    assert any(f"development/{MINI_DEV[0]} has the same content as evaluation audio" in p for p in problems)
    assert any("the store holds codes with {'n_codebooks': 4, 'codebook_size': 64}" in p for p in problems)
    assert any("step captioner/pretrain needs" in p and "index.json" in p for p in problems)

    res = CliRunner().invoke(
        app,
        [
            "pipeline",
            "run",
            "--profile",
            "tiny",
            "--data-root",
            str(data),
            "--out",
            str(run),
            "--only",
            "captioner/pretrain",
            *sum((["--set", o] for o in overrides), []),
        ],
    )
    assert res.exit_code == 2, res.output
    for needle in (
        "clotho:['test']",
        "has the same content as evaluation audio",
        "the store holds codes with",
        "step captioner/pretrain needs",
    ):
        assert needle in res.output, res.output[-3000:]
    assert not (run / "captioner").exists()  # nothing ran


def test_preflight_lists_a_missing_technical_report_with_the_other_problems(tmp_path):
    """The team's report PDF is checked when the package step is selected; a missing file is one problem of the
    list (it once escaped the list as its own error, hiding the others)."""
    from _datasets_util import make_data_root

    from dcase.stages.pipeline import PipelineOptions, build_pipeline
    from dcase.stages.preflight import PreflightError, preflight

    team = tmp_path / "team.yaml"
    team.write_text(
        "lastname: Kim\ninstitute: SNU\ntechnical_report: Kim_SNU_task6.technical_report.pdf\nauthors:\n"
        "  - {lastname: Kim, firstname: J, email: j@snu.ac.kr, corresponding: true,\n"
        "     affiliation: {abbreviation: SNU, institute: SNU, department: ECE, location: Seoul}}\n",
        encoding="utf-8",
    )
    overrides = ["captioner.finetune_data=[clotho:development, clotho:test]"]
    pipe = build_pipeline(
        load_profile("tiny", overrides, team=team),
        PipelineOptions(out=tmp_path / "run", data_root=make_data_root(tmp_path / "data")),
    )
    with pytest.raises(PreflightError) as e:
        preflight(pipe)
    problems = e.value.problems
    missing = str(tmp_path / "Kim_SNU_task6.technical_report.pdf")
    assert any("technical_report of the team YAML" in p and missing in p and "does not exist" in p for p in problems)
    assert any("captioner finetuning reads evaluation data clotho:['test']" in p for p in problems), problems

    (tmp_path / "Kim_SNU_task6.technical_report.pdf").write_bytes(b"%PDF-1.4\n")
    with pytest.raises(PreflightError) as e:
        preflight(pipe)
    assert not any("technical_report" in p for p in e.value.problems), e.value.problems


@pytest.mark.parametrize("profile", ["tiny", "dcase2024", "full-random"])
def test_shipped_profiles_plan_on_every_dataset(tmp_path, profile):
    """Every profile plans on a data root holding every dataset: step names are unique and none is a folder of
    another (so --only/--from/--until select exactly), every step's inputs are made by an earlier step or by the
    data, and the systems and the package are planned."""
    from _datasets_util import make_data_root

    from dcase.stages.pipeline import PipelineOptions, build_pipeline, statuses

    data = make_data_root(tmp_path / "data")
    pipe = build_pipeline(load_profile(profile), PipelineOptions(out=tmp_path / "run", data_root=data))
    names = [s.name for s in pipe.steps]
    assert len(names) == len(set(names))
    assert not [(a, b) for a in names for b in names if b.startswith(a + "/")]
    assert [s.group for s in pipe.steps] == sorted((s.group for s in pipe.steps), key=GROUPS.index)
    assert {st.state for st in statuses(pipe)} == {"todo"}  # nothing blocked: every input has a maker
    p = load_profile(profile)
    assert [n for n in names if n.startswith("systems/task6")] == [
        f"systems/task6_{i + 1}" for i in range(len(p.task6))
    ]
    assert names[-1] == "package" and not pipe.problems


def test_recipes_are_loaded_once_for_the_plan_and_its_preflight(tmp_path, monkeypatch):
    """The rerank, devtest, systems steps and the preflight share one loading of each recipe."""
    from _datasets_util import make_data_root

    import dcase.stages.systems as systems
    from dcase.stages.pipeline import PipelineOptions, build_pipeline
    from dcase.stages.preflight import check_run

    loaded: list[int] = []
    load_recipe = systems.load_recipe

    def counting(item, task, *args, **kw):
        loaded.append(task)
        return load_recipe(item, task, *args, **kw)

    monkeypatch.setattr(systems, "load_recipe", counting)
    profile = load_profile("tiny")
    pipe = build_pipeline(profile, PipelineOptions(out=tmp_path / "run", data_root=make_data_root(tmp_path / "data")))
    check_run(pipe, [])
    assert sorted(loaded) == sorted([6] * len(profile.task6) + [8] * len(profile.task8))


def test_training_uses_and_dataset_names_of_a_profile():
    from dcase.stages.systems import DATASET_NAMES, EXTERNAL_DATASETS

    p = load_profile("tiny")
    uses = p.training_uses()
    assert uses["captioner finetuning"] == list(p.captioner.finetune_data)
    assert set(p.training_uses("captioner")) == {"captioner pretraining", "captioner finetuning"}
    assert p.training_uses("retriever") and all(k.startswith("retriever ") for k in p.training_uses("retriever"))
    assert {**p.training_uses("captioner"), **p.training_uses("retriever")} == uses
    assert DATASET_NAMES == {
        "clotho": "Clotho v2.1",
        "audiocaps": "AudioCaps",
        "wavcaps": "WavCaps",
        "clotho_mixup": "Clotho-ChatGPT-Mixup",
    }
    assert EXTERNAL_DATASETS["clotho_mixup"][0] == "Clotho-ChatGPT-Mixup"
