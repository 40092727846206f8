"""Bad input, hostile files and interrupted writes (issue 13): every case is a named one-line error with exit
status 2 (or a correct result), nothing is overwritten without --overwrite, and nothing is left half-written.

One parametrised test per class of the issue: tracebacks that must be named errors, outputs that must not be
overwritten, silent wrong results, valid input that must be accepted, unclear errors. (Confinement of dataset
paths is tested in tests/test_data_*.py.)"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

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
