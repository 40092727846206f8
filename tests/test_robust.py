"""Bad input, hostile files and interrupted writes (issue 13): every case is a named one-line error with exit
status 2 (or a correct result), nothing is overwritten without --overwrite, and nothing is left half-written.

One parametrised test per class of the issue: tracebacks that must be named errors, outputs that must not be
overwritten, silent wrong results, valid input that must be accepted, unclear errors. (Confinement of dataset
paths is tested in tests/test_data_*.py.)"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dcase.cli import app

runner = CliRunner()


class Evil:
    """A Python object inside a checkpoint: torch.load(weights_only=True) must refuse to unpickle it."""

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.getcwd, ())


def user_error(args: list[str], *must_name: str) -> str:
    """Run the CLI; assert exit status 2, exactly one 'error:' line and no traceback; return that line."""
    r = runner.invoke(app, [str(a) for a in args])
    text = r.output + (r.stderr if r.stderr_bytes is not None and r.stderr not in r.output else "")
    assert r.exit_code == 2, f"exit {r.exit_code}: {text}\n{r.exception!r}"
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, text
    for name in must_name:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): what 'nothing was touched' compares."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------- fixtures
def _tiny_dac_folder(path: Path) -> Path:
    from transformers import DacModel

    from dcase.features.codec import dac_config

    torch.manual_seed(0)
    DacModel(dac_config("tiny")).save_pretrained(str(path))
    return path


def _tiny_bert_folder(path: Path) -> Path:
    from _retriever_util import build_tiny_bert

    return build_tiny_bert(path, hidden=16, layers=1)


def _task6_files(tmp: Path) -> tuple[Path, Path]:
    refs = tmp / "refs.csv"
    refs.write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
        "a.wav,a dog barks,a dog is barking,dogs bark,a barking dog,the dog barks\n"
        "b.wav,rain falls,rain is falling,it rains,heavy rain,light rain falls\n",
        encoding="utf-8",
    )
    preds = tmp / "preds.csv"
    preds.write_text("file_name,caption_predicted\na.wav,a dog barks\nb.wav,rain falls on a roof\n", encoding="utf-8")
    return preds, refs


def _task8_files(tmp: Path) -> tuple[Path, Path, list[str]]:
    names = [f"c{i}.wav" for i in range(12)]
    refs = tmp / "gt.csv"
    refs.write_text("caption,file_name\na dog barks,c0.wav\nrain falls,c5.wav\n", encoding="utf-8")
    preds = tmp / "t8.csv"
    header = "caption," + ",".join(f"fname_{i}" for i in range(1, 11))
    preds.write_text(
        header + "\na dog barks," + ",".join(names[:10]) + "\nrain falls," + ",".join(names[2:12]) + "\n",
        encoding="utf-8",
    )
    return preds, refs, names


# ------------------------------------------------------------------------- class 1: tracebacks -> errors
def _pickle_dac(tmp: Path) -> tuple[list, tuple]:
    pth = tmp / "weights.pth"
    torch.save({"state_dict": {}, "metadata": Evil()}, pth)
    return ["extract", "convert-dac", pth, tmp / "dac"], (pth, "pickle checkpoints are not loaded", "convert with")


def _garbage_dac(tmp: Path) -> tuple[list, tuple]:
    pth = tmp / "weights.pth"
    pth.write_bytes(b"<html>a download error page, not a checkpoint</html>")
    return ["extract", "convert-dac", pth, tmp / "dac"], (pth, "not a PyTorch checkpoint, or damaged")


def _pickle_cnext(tmp: Path) -> tuple[list, tuple]:
    pth = tmp / "cnext.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": Evil()}, pth)
    args = ["extract", "embed", "-m", tmp / "none.parquet", "-r", pth, "-o", tmp / "emb"]
    return args, (pth, "pickle checkpoints are not loaded", "convert with")


def _codec_folder_with_pickle(tmp: Path) -> tuple[list, tuple]:
    folder = _tiny_dac_folder(tmp / "dac")
    (folder / "model.safetensors").unlink()
    torch.save({"x": Evil()}, folder / "pytorch_model.bin")
    args = ["extract", "codec", "-m", tmp / "none.parquet", "-o", tmp / "codes", "--codec", folder]
    return args, (folder, "pickle checkpoints are not loaded")


def _codec_folder_with_bert(tmp: Path) -> tuple[list, tuple]:
    folder = _tiny_bert_folder(tmp / "bert")
    args = ["extract", "codec", "-m", tmp / "none.parquet", "-o", tmp / "codes", "--codec", folder]
    return args, (folder, "not a DAC codec", "'bert'")


def _fense_checker_pickle(tmp: Path) -> tuple[list, tuple]:
    preds, refs = _task6_files(tmp)
    ckpt = tmp / "checker.ckpt"
    torch.save({"model_type": "bert", "num_classes": 6, "state_dict": {}, "x": Evil()}, ckpt)
    args = ["score", "captions", preds, "--references", refs, "--metrics", "fer", "--fense-checker", ckpt]
    return args, (ckpt, "pickle checkpoints are not loaded")


def _fense_checker_missing(tmp: Path) -> tuple[list, tuple]:
    preds, refs = _task6_files(tmp)
    ckpt = tmp / "nonexistent.ckpt"
    return ["score", "captions", preds, "--references", refs, "--fense-checker", ckpt], (ckpt, "does not exist")


def _text_encoder_pickle(tmp: Path) -> tuple[list, tuple]:
    folder = _tiny_bert_folder(tmp / "text")
    (folder / "model.safetensors").unlink()
    torch.save({"x": Evil()}, folder / "pytorch_model.bin")
    args = ["retriever", "train", "--set", f"model.text.name_or_path={folder}", "--set", f"train.output_dir={tmp}/r"]
    return args, (folder, "pickle checkpoints are not loaded")


def _truncated_safetensors(tmp: Path) -> tuple[list, tuple]:
    from dcase.models.cnext import CNext, CNextConfig

    folder = CNext(CNextConfig.tiny()).save_pretrained(tmp / "cnext")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    args = ["extract", "embed", "-m", tmp / "none.parquet", "-r", folder, "-o", tmp / "emb"]
    return args, (weights, "truncated or corrupt")


def _config_names_itself(tmp: Path) -> tuple[list, tuple]:
    cfg = tmp / "self.yaml"
    cfg.write_text("_base_: self.yaml\ntrain:\n  max_steps: 3\n", encoding="utf-8")
    return ["retriever", "train", "--config", cfg], (cfg, "_base_ cycle")


def _out_is_a_folder(tmp: Path) -> tuple[list, tuple]:
    preds, refs = _task6_files(tmp)
    (tmp / "scores").mkdir()
    args = ["score", "captions", preds, "--references", refs, "--metrics", "bleu_1", "--out", tmp / "scores"]
    return args, (tmp / "scores", "is a folder")


def _out_under_a_file(tmp: Path) -> tuple[list, tuple]:
    preds, refs = _task6_files(tmp)
    args = ["score", "captions", preds, "--references", refs, "--metrics", "bleu_1", "--out", refs / "s.json"]
    return args, (refs, "is a file, not a folder")


@pytest.mark.parametrize(
    "case",
    [
        _pickle_dac,
        _garbage_dac,
        _pickle_cnext,
        _codec_folder_with_pickle,
        _codec_folder_with_bert,
        _fense_checker_pickle,
        _fense_checker_missing,
        _text_encoder_pickle,
        _truncated_safetensors,
        _config_names_itself,
        _out_is_a_folder,
        _out_under_a_file,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_named_error_instead_of_traceback(tmp_path: Path, case: Callable) -> None:
    args, names = case(tmp_path)
    before = snapshot(tmp_path)
    user_error(args, *names)
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before  # nothing was changed or removed
    assert not [k for k in after if k.endswith((".tmp", ".old"))]  # nothing half-written is left


def test_shape_mismatch_on_resume_is_a_checkpoint_error(tmp_path: Path) -> None:
    """The training state of a model of another size is refused by name (not a RuntimeError from torch)."""
    from safetensors.torch import save_model

    from dcase.checkpoint import load_safetensors_into
    from dcase.errors import CheckpointError

    save_model(torch.nn.Linear(4, 3), str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors: weights do not fit the model.*size mismatch"):
        load_safetensors_into(torch.nn.Linear(4, 5), tmp_path / "model.safetensors")


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Plain exceptions are bugs: the boundary lets them through (exit 1, with the exception attached)."""
    import dcase.evaluation.captions as captions

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("an internal bug")

    monkeypatch.setattr(captions, "score_caption_files", broken)
    preds, refs = _task6_files(tmp_path)
    r = runner.invoke(app, ["score", "captions", str(preds), "--references", str(refs)])
    assert r.exit_code == 1 and isinstance(r.exception, ValueError)


# -------------------------------------------------------------------- class 2: nothing overwritten
def _existing(tmp: Path, name: str = "existing.json") -> Path:
    path = tmp / name
    path.write_text('{"keep": "me"}\n', encoding="utf-8")
    return path


def _score_captions_out(tmp: Path) -> tuple[list, Path]:
    preds, refs = _task6_files(tmp)
    out = _existing(tmp)
    return ["score", "captions", preds, "--references", refs, "--metrics", "bleu_1", "--out", out], out


def _score_retrieval_out(tmp: Path) -> tuple[list, Path]:
    preds, refs, _ = _task8_files(tmp)
    out = _existing(tmp)
    return ["score", "retrieval", preds, "--references", refs, "--out", out], out


def _retriever_eval_out(tmp: Path) -> tuple[list, Path]:
    out = _existing(tmp)  # refused before any model is loaded: the checkpoint need not exist
    return ["retriever", "eval", "-r", tmp / "ret", "--manifest", tmp / "m.parquet", "--out", out], out


def _captioner_caption_out(tmp: Path) -> tuple[list, Path]:
    out = _existing(tmp, "caps.csv")
    args = ["captioner", "caption", tmp / "ckpt", "--manifest", tmp / "m.parquet", "--codec-store", tmp / "dac"]
    return [*args, "--embed-store", tmp / "emb", "--out", out], out


def _convert_dac_out(tmp: Path) -> tuple[list, Path]:
    out = tmp / "dac"
    out.mkdir()
    (out / "config.json").write_text("{}", encoding="utf-8")
    pth = tmp / "w.pth"
    torch.save({"state_dict": {}, "metadata": {}}, pth)
    return ["extract", "convert-dac", pth, out], out


def _package_report(tmp: Path) -> tuple[list, Path]:
    from test_submission import _meta

    from dcase.submission.formats import write_task6
    from dcase.submission.meta import write_meta

    t6 = write_task6([("a.wav", "a dog barks")], tmp / "t6.csv")
    meta = write_meta(_meta(6, 1), tmp / "m6.yaml")
    report = tmp / "Kim_SNU_task6.technical_report.pdf"
    report.write_bytes(b"%PDF-1.4 new report")
    pkg = tmp / "pkg"
    old = pkg / "task6" / "Kim_SNU_task6.technical_report.pdf"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"%PDF-1.4 the report already submitted")
    return ["submit", "package", "--task6", f"{t6}:{meta}", "--out", pkg, "--technical-report", report], pkg


@pytest.mark.parametrize(
    "case",
    [
        _score_captions_out,
        _score_retrieval_out,
        _retriever_eval_out,
        _captioner_caption_out,
        _convert_dac_out,
        _package_report,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_existing_outputs_are_not_overwritten(tmp_path: Path, case: Callable) -> None:
    args, out = case(tmp_path)
    before = snapshot(tmp_path)
    user_error(args, out, "--overwrite")
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_and_keeps_the_file_mode(tmp_path: Path) -> None:
    preds, refs = _task6_files(tmp_path)
    out = _existing(tmp_path)
    os.chmod(out, 0o644)
    args = ["score", "captions", preds, "--references", refs, "--metrics", "bleu_1", "--out", out, "--overwrite"]
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    from dcase.evaluation.captions import evaluate_captions

    expected = evaluate_captions(["a dog barks", "rain falls on a roof"], _refs_lists(), ["bleu_1"])["bleu_1"]
    assert json.loads(out.read_text())["bleu_1"] == pytest.approx(expected)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def _refs_lists() -> list[list[str]]:
    return [
        ["a dog barks", "a dog is barking", "dogs bark", "a barking dog", "the dog barks"],
        ["rain falls", "rain is falling", "it rains", "heavy rain", "light rain falls"],
    ]


@pytest.mark.parametrize("old_mode", [None, 0o644, 0o600, 0o664])
def test_atomic_writes_keep_normal_permissions(tmp_path: Path, old_mode: int | None) -> None:
    """A new file gets the umask default (not mkstemp's 0600); a replaced file keeps its own mode. Folders too."""
    from dcase.io import atomic_dir, atomic_write_text

    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "f.txt"
        if old_mode is not None:
            path.write_text("old")
            os.chmod(path, old_mode)
        atomic_write_text(path, "new")
        assert path.read_text() == "new"
        assert stat.S_IMODE(path.stat().st_mode) == (0o644 if old_mode is None else old_mode)
        folder = tmp_path / "d"
        if old_mode is not None:
            folder.mkdir()
            os.chmod(folder, old_mode | 0o100)
        with atomic_dir(folder) as tmp:
            (tmp / "x").write_text("1")
        assert stat.S_IMODE(folder.stat().st_mode) == (0o755 if old_mode is None else old_mode | 0o100)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.txt"]
    finally:
        os.umask(old_umask)


def test_failed_package_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing report, a non-PDF report or a failure half-way: the package folder is as it was (here: absent,
    then holding a first system), and no temporary folder is left."""
    from test_submission import _meta

    import dcase.submission.package as package
    from dcase.submission.formats import write_task6, write_task8
    from dcase.submission.meta import write_meta

    t6 = write_task6([("a.wav", "a dog barks")], tmp_path / "t6.csv")
    t8 = write_task8([("a query", [f"c{i}.wav" for i in range(10)])], tmp_path / "t8.csv")
    m6, m8 = write_meta(_meta(6, 1), tmp_path / "m6.yaml"), write_meta(_meta(8, 1), tmp_path / "m8.yaml")
    pkg = tmp_path / "pkg"
    user_error(["submit", "package", "--task6", f"{t6}:{m6}", "--out", pkg, "--technical-report", tmp_path / "no.pdf"])
    (tmp_path / "Kim_SNU_task6.technical_report.pdf").write_text("not a pdf")
    bad_report = tmp_path / "Kim_SNU_task6.technical_report.pdf"
    user_error(["submit", "package", "--task6", f"{t6}:{m6}", "--out", pkg, "--technical-report", bad_report])
    assert not pkg.exists() and not pkg.with_name("pkg.zip").exists()
    assert runner.invoke(app, ["submit", "package", "--task6", f"{t6}:{m6}", "--out", str(pkg)]).exit_code == 0
    before, zip_before = snapshot(pkg), pkg.with_name("pkg.zip").read_bytes()

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(package, "write_meta", broken)
    with pytest.raises(OSError, match="No space"):
        package.package_submission(pkg, task6=[(t6, m6)], task8=[(t8, m8)], overwrite=True)
    assert snapshot(pkg) == before and pkg.with_name("pkg.zip").read_bytes() == zip_before
    assert sorted(p.name for p in pkg.parent.iterdir() if p.name.startswith(".")) == []
    monkeypatch.undo()
    package.package_submission(pkg, task6=[(t6, m6)], task8=[(t8, m8)], overwrite=True)  # replaced as a whole
    assert {k: v for k, v in snapshot(pkg).items() if k.startswith("task6/")} == before
    assert "task8/Kim_SNU_task8_1/Kim_SNU_task8_1.output.csv" in snapshot(pkg)
    assert (pkg / "task8" / "Kim_SNU_task8_1" / "Kim_SNU_task8_1.output.csv").read_bytes() == t8.read_bytes()


# ------------------------------------------------------------------ class 3: silent wrong results
def _negative_max_steps(tmp: Path) -> tuple[list, tuple]:
    return ["retriever", "train", "--set", "train.max_steps=-5"], ("train.max_steps", "-5", "minimum 1")


def _zero_batch_size(tmp: Path) -> tuple[list, tuple]:
    return ["captioner", "pretrain", "--set", "train.batch_size=0"], ("train.batch_size", "minimum 1")


def _probability_above_one(tmp: Path) -> tuple[list, tuple]:
    return ["captioner", "pretrain", "--set", "model.mcm_rate=1.5"], ("model.mcm_rate", "1.5", "maximum 1.0")


def _wrong_type(tmp: Path) -> tuple[list, tuple]:
    return ["retriever", "train", "--set", "train.lr=fast"], ("train.lr", "'fast'", "expected a number")


def _unknown_choice(tmp: Path) -> tuple[list, tuple]:
    return ["generate", "--set", "generation.mode=topk"], ("generation.mode", "'topk'", "not one of")


def _missing_input_path(tmp: Path) -> tuple[list, tuple]:
    args = ["retriever", "train", "--config", "configs/demo/retriever_tiny.yaml"]
    args += ["--set", f"data.train_manifests=[{tmp}/absent.parquet]", "--set", f"train.output_dir={tmp}/run"]
    return args, ("data.train_manifests", "absent.parquet", "does not exist")


def _task8_empty_slot(tmp: Path) -> tuple[list, tuple]:
    preds, refs, names = _task8_files(tmp)
    header = "caption," + ",".join(f"fname_{i}" for i in range(1, 11))
    preds.write_text(f"{header}\na dog barks,{','.join(names[:9])},\nrain falls,{','.join(names[2:12])}\n")
    return ["score", "retrieval", preds, "--references", refs], (preds, "row 1: empty file name")


def _task8_clip_repeated(tmp: Path) -> tuple[list, tuple]:
    preds, refs, _ = _task8_files(tmp)
    header = "caption," + ",".join(f"fname_{i}" for i in range(1, 11))
    preds.write_text(f"{header}\na dog barks,{','.join(['c0.wav'] * 10)}\nrain falls,{','.join(['c5.wav'] * 10)}\n")
    return ["score", "retrieval", preds, "--references", refs], (preds, "row 1: duplicate file names ['c0.wav']")


def _task6_empty_caption(tmp: Path) -> tuple[list, tuple]:
    preds, refs = _task6_files(tmp)
    preds.write_text('file_name,caption_predicted\na.wav,a dog barks\nb.wav,"  "\n', encoding="utf-8")
    return ["score", "captions", preds, "--references", refs, "--metrics", "bleu_1"], (preds, "row 2 (b.wav)")


def _query_with_unquoted_comma(tmp: Path) -> tuple[list, tuple]:
    preds, refs, _ = _task8_files(tmp)
    refs.write_text("caption,file_name\na dog barks, loudly,c0.wav\nrain falls,c5.wav\n", encoding="utf-8")
    return ["score", "retrieval", preds, "--references", refs], (refs, "row 1", "3 fields")


def _retrieval_captions_unquoted_comma(tmp: Path) -> tuple[list, tuple]:
    preds, _, _ = _task8_files(tmp)
    queries = tmp / "retrieval_captions.csv"
    queries.write_text("caption\na dog barks, loudly\nrain falls\n", encoding="utf-8")
    return ["submit", "validate", "task8", preds, "--references", queries], (queries, "row 1", "2 fields")


@pytest.mark.parametrize(
    "case",
    [
        _negative_max_steps,
        _zero_batch_size,
        _probability_above_one,
        _wrong_type,
        _unknown_choice,
        _missing_input_path,
        _task8_empty_slot,
        _task8_clip_repeated,
        _task6_empty_caption,
        _query_with_unquoted_comma,
        _retrieval_captions_unquoted_comma,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_refused_instead_of_a_silent_wrong_result(tmp_path: Path, case: Callable, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # configs/ paths are relative to the repository
    args, names = case(tmp_path)
    before = snapshot(tmp_path)
    user_error(args, *names)
    assert snapshot(tmp_path) == before


def test_resume_with_a_changed_config_is_refused_and_safe_changes_are_exact(tmp_path: Path) -> None:
    """seed and lr changed: refused with both keys named and config.yaml untouched. max_steps raised: allowed,
    and the result is bit-identical to an uninterrupted run of the final length."""
    from safetensors.torch import load_file
    from test_training import ToyTask, _cfg

    from dcase.training import ResumeError, fit

    run = tmp_path / "run"
    fit(ToyTask(), _cfg(run, max_steps=4), run_config=None)
    recorded = (run / "config.yaml").read_bytes()
    with pytest.raises(ResumeError, match=r"train.lr: the run has 0.05, this command has 0.1.*train.seed") as e:
        fit(ToyTask(), _cfg(run, max_steps=4, seed=1, lr=0.1))
    assert "\n" not in str(e.value) and str(run) in str(e.value)
    assert (run / "config.yaml").read_bytes() == recorded
    fit(ToyTask(), _cfg(run, max_steps=8, log_every=2))  # safe changes
    fit(ToyTask(), _cfg(tmp_path / "ref", max_steps=8))
    a = load_file(str(run / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "ref" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_of_a_stage_names_changed_model_keys(tmp_path: Path) -> None:
    """Through the CLI: a tiny retriever run resumed with another model size and seed is refused (exit 2), with
    the changed keys and without touching the run's records."""
    from test_retriever_train import make_corpus

    manifest = make_corpus(tmp_path / "corpus", per_class_train=2, per_class_test=0)
    base = ["retriever", "train", "--config", "configs/demo/retriever_tiny.yaml"]
    sets = [f"data.train_manifests=[{manifest}]", "data.val_manifest=null", f"train.output_dir={tmp_path}/run"]
    sets += ["train.max_steps=2", "train.batch_size=4", "train.save_every=1", "data.max_seconds=0.5"]
    args = [*base, *[x for s in sets for x in ("--set", s)]]
    cwd = os.getcwd()
    os.chdir(Path(__file__).resolve().parents[1])
    try:
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        before = snapshot(tmp_path / "run")
        user_error([*args, "--set", "model.joint_dim=16", "--set", "train.seed=1"], "model.joint_dim", "train.seed")
        assert snapshot(tmp_path / "run") == before
    finally:
        os.chdir(cwd)


def test_time_based_flush_bounds_the_work_a_kill_loses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard is written every shard_size clips or flush_seconds seconds, whichever comes first."""
    import dcase.features.store as store

    now = [0.0]
    monkeypatch.setattr(store.time, "monotonic", lambda: now[0])
    w = store.ShardWriter(tmp_path, shard_size=100, flush_seconds=60.0)
    for i in range(5):
        w.add(f"c{i}", np.full(3, i, dtype=np.int16))
        now[0] += 20.0  # 20 s per clip: the third clip arrives 40 s after the first, the fourth 60 s after
    shards = sorted((tmp_path / "shards").glob("*.safetensors"))
    assert len(shards) == 1 and sorted(store.scan_shards(tmp_path)) == ["c0", "c1", "c2", "c3"]
    w.flush()
    assert sorted(store.scan_shards(tmp_path)) == [f"c{i}" for i in range(5)]
    with pytest.raises(store.StoreError, match="flush interval"):
        store.ShardWriter(tmp_path, flush_seconds=0)


def _synth_clips(folder: Path, n: int, seconds: float = 0.6, seed: int = 0) -> Path:
    """n noise clips at 24 kHz and their manifest (split development)."""
    import soundfile as sf

    from dcase.data.manifest import ManifestRow, write_manifest

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"clip{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(24000 * seconds))).astype(np.float32), 24000)
        rows.append(ManifestRow(path.name, str(path), "development", "synth", seconds, 24000, ["a noise"]))
    write_manifest(rows, folder / "manifest.parquet")
    return folder / "manifest.parquet"


def test_changed_audio_is_reported_and_re_extracted(tmp_path: Path) -> None:
    """Replacing an audio file after extraction: verify names the clip, the extractor re-encodes it (no stale
    codes), and the result equals a fresh extraction of the new audio."""
    import soundfile as sf

    from dcase.features.store import FeatureStore

    manifest = _synth_clips(tmp_path / "audio", 3)
    out = tmp_path / "dac"
    codec = ["extract", "codec", "-m", manifest, "-o", out, "--codec-config", "tiny", "--shard-size", "2"]
    assert runner.invoke(app, [str(a) for a in codec]).exit_code == 0
    old = FeatureStore.open(out)["clip1.wav"]
    assert runner.invoke(app, ["extract", "verify", str(out), "-m", str(manifest)]).exit_code == 0
    wav = tmp_path / "audio" / "clip1.wav"
    x, sr = sf.read(wav, dtype="float32")
    sf.write(wav, np.sin(np.arange(len(x)) * 0.05).astype(np.float32) * 0.3, sr)  # same length, other content
    user_error(["extract", "verify", out, "-m", manifest], "clip1.wav", "audio changed", str(wav))
    assert runner.invoke(app, [str(a) for a in codec]).exit_code == 0
    new = FeatureStore.open(out)["clip1.wav"]
    assert runner.invoke(app, ["extract", "verify", str(out), "-m", str(manifest)]).exit_code == 0
    fresh_cmd = [*codec[:5], str(tmp_path / "fresh"), *codec[6:]]
    assert runner.invoke(app, [str(a) for a in fresh_cmd]).exit_code == 0
    fresh = FeatureStore.open(tmp_path / "fresh")
    assert not np.array_equal(old, new) and np.array_equal(new, fresh["clip1.wav"])
    store = FeatureStore.open(out)
    assert all(np.array_equal(store[c], fresh[c]) for c in fresh)


# ------------------------------------------------------------ class 4: valid input that must be accepted
def test_utf8_bom_is_accepted_everywhere(tmp_path: Path) -> None:
    preds8, refs8, names = _task8_files(tmp_path)
    queries = tmp_path / "retrieval_captions.csv"
    queries.write_bytes(b"\xef\xbb\xbfcaption\na dog barks\nrain falls\n")
    r = runner.invoke(app, ["submit", "validate", "task8", str(preds8), "--references", str(queries)])
    assert r.exit_code == 0, r.output
    refs8.write_bytes(b"\xef\xbb\xbf" + refs8.read_bytes())
    preds8.write_bytes(b"\xef\xbb\xbf" + preds8.read_bytes())
    r = runner.invoke(app, ["score", "retrieval", str(preds8), "--references", str(refs8)])
    assert r.exit_code == 0, r.output
    scores = json.loads(r.output[r.output.index("{") :])
    assert scores["map_at_10"] == pytest.approx((1.0 + 1 / 4) / 2)  # c0 first; c5 fourth in the second row
    preds6, refs6 = _task6_files(tmp_path)
    preds6.write_bytes(b"\xef\xbb\xbf" + preds6.read_bytes())
    refs6.write_bytes(b"\xef\xbb\xbf" + refs6.read_bytes())
    r = runner.invoke(app, ["score", "captions", str(preds6), "--references", str(refs6), "--metrics", "bleu_1"])
    assert r.exit_code == 0, r.output


def test_a_config_with_a_bom_and_a_base_chain_loads(tmp_path: Path) -> None:
    from dcase.config import load_config
    from dcase.training import TrainConfig

    (tmp_path / "base.yaml").write_text("max_steps: 7\nlr: 0.5\n", encoding="utf-8")
    (tmp_path / "run.yaml").write_bytes(b"\xef\xbb\xbf_base_: base.yaml\nlr: 0.25\n")
    cfg = load_config(TrainConfig, tmp_path / "run.yaml", ["batch_size=3"])
    assert (cfg.max_steps, cfg.lr, cfg.batch_size) == (7, 0.25, 3)


# ------------------------------------------------------------------------ class 5: unclear errors
def _cp1252_predictions(tmp: Path) -> tuple[list, tuple]:
    preds, refs = _task6_files(tmp)
    data = "file_name,caption_predicted\na.wav,a dog barks\nb.wav,rain in a café\n".encode("cp1252")
    preds.write_bytes(data)
    where = f"byte offset {data.index(0xE9)}"
    return ["score", "captions", preds, "--references", refs], (preds, "not valid UTF-8", "line 3", where)


def _cp1252_config(tmp: Path) -> tuple[list, tuple]:
    cfg = tmp / "cfg.yaml"
    data = "train:\n  output_dir: café\n".encode("cp1252")
    cfg.write_bytes(data)
    return ["retriever", "train", "--config", cfg], (cfg, "not valid UTF-8", f"byte offset {data.index(0xE9)}")


def _corrupt_store_index(tmp: Path) -> tuple[list, tuple]:
    manifest = _synth_clips(tmp / "audio", 1)
    args = ["extract", "codec", "-m", str(manifest), "-o", str(tmp / "dac"), "--codec-config", "tiny"]
    assert runner.invoke(app, args).exit_code == 0
    index = tmp / "dac" / "index.json"
    index.write_text(index.read_text()[:20], encoding="utf-8")
    return ["extract", "verify", tmp / "dac", "-m", manifest], (index, "not valid JSON", "rerun the extraction")


def _corrupt_training_state(tmp: Path) -> tuple[list, tuple]:
    from test_retriever_train import make_corpus

    state = tmp / "run" / "state"
    state.mkdir(parents=True)
    (state / "trainer.json").write_text('{"progress": ', encoding="utf-8")
    manifest = make_corpus(tmp / "corpus", per_class_train=1, per_class_test=0)
    args = ["retriever", "train", "--config", Path(__file__).resolve().parents[1] / "configs/demo/retriever_tiny.yaml"]
    args += ["--set", f"data.train_manifests=[{manifest}]", "--set", "data.val_manifest=null"]
    return [*args, "--set", f"train.output_dir={tmp}/run"], (state / "trainer.json", "not valid JSON")


@pytest.mark.parametrize(
    "case",
    [_cp1252_predictions, _cp1252_config, _corrupt_store_index, _corrupt_training_state],
    ids=lambda f: f.__name__.strip("_"),
)
def test_errors_name_the_file_and_the_place(tmp_path: Path, case: Callable) -> None:
    args, names = case(tmp_path)
    before = snapshot(tmp_path)
    user_error(args, *names)
    assert snapshot(tmp_path) == before


def test_half_written_shards_of_killed_writers_are_removed(tmp_path: Path) -> None:
    """A killed writer's .tmp shard is removed on the next run; a live writer's (this process) is kept."""
    import subprocess
    import sys

    from dcase.features.store import _host_tag, remove_stale_tmp

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    shards = tmp_path / "shards"
    shards.mkdir()
    host = _host_tag()
    gone = shards / f".part-r000-20240101000000-{host}-{dead.stdout.strip()}-0a1b2c3d-00000.safetensors.x1.tmp"
    live = shards / f".part-r000-20240101000000-{host}-{os.getpid()}-0a1b2c3d-00000.safetensors.x2.tmp"
    other = shards / f".part-r000-20240101000000-otherhost{host[:4]}-{dead.stdout.strip()}-0a-00000.safetensors.x.tmp"
    for f in (gone, live, other):
        f.write_bytes(b"half")
    assert remove_stale_tmp(tmp_path) == [gone]
    assert sorted(p.name for p in shards.iterdir()) == sorted([live.name, other.name])


def test_audio_embedding_cache_follows_changed_audio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached index of a collection is keyed by each file's size and mtime: unchanged audio reuses it without
    embedding anything, replacing a file recomputes it (never stale embeddings), and a damaged cache is rebuilt
    instead of failing."""
    import tempfile

    import soundfile as sf

    import dcase.features.embed as embed_mod
    from dcase.data.manifest import read_manifest
    from dcase.features.embed import audio_index
    from dcase.models.retriever import Retriever, RetrieverConfig

    def dcase_temp() -> set[str]:
        return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("dcase")}

    before = dcase_temp()
    torch.manual_seed(0)
    model = Retriever.build(RetrieverConfig.tiny()).eval()
    Retriever.from_pretrained(model.save_pretrained(tmp_path / "ret"))
    assert dcase_temp() == before  # the tiny text tower is built in memory: no temporary folder left behind
    manifest = _synth_clips(tmp_path / "audio", 3, seconds=0.5)
    rows = list(read_manifest(manifest).itertuples(index=False))
    first = audio_index(model, model, rows, cache_dir=tmp_path / "cache", progress=False)

    def no_embedding(*args: object, **kwargs: object) -> None:
        raise AssertionError("audio embedded again although nothing changed: the cache was not reused")

    with monkeypatch.context() as m:
        m.setattr(embed_mod, "embed_rows", no_embedding)
        reused = audio_index(model, model, rows, cache_dir=tmp_path / "cache", progress=False)
    assert reused.clip_ids == first.clip_ids and np.array_equal(reused.embeddings, first.embeddings)
    wav = tmp_path / "audio" / "clip2.wav"
    x, sr = sf.read(wav, dtype="float32")
    sf.write(wav, (0.5 * np.sin(np.arange(len(x)) * 0.3)).astype(np.float32), sr)
    again = audio_index(model, model, rows, cache_dir=tmp_path / "cache", progress=False)
    fresh = audio_index(model, model, rows, progress=False)
    assert not np.allclose(first.embeddings[2], again.embeddings[2])
    assert np.array_equal(again.embeddings, fresh.embeddings) and np.array_equal(
        first.embeddings[:2], fresh.embeddings[:2]
    )
    for f in (tmp_path / "cache").rglob("embeddings.npy"):
        f.write_bytes(b"damaged")
    rebuilt = audio_index(model, model, rows, cache_dir=tmp_path / "cache", progress=False)
    assert np.array_equal(rebuilt.embeddings, fresh.embeddings)
