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
