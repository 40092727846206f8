"""Training curves: ``train_log.jsonl`` -> series (resume duplicates resolved) -> ``curves.png``; every ``fit`` writes
its curves and sends its records to Accelerate's trackers (``report_to``); ``dcase plot``."""

from __future__ import annotations

import json
import logging

import pytest
from accelerate.tracking import GeneralTracker, register_tracker_class
from test_training import ToyTask
from typer.testing import CliRunner

from dcase.config import ConfigError
from dcase.curves import plot_curves, read_train_log
from dcase.errors import InputError, MissingInputError
from dcase.training import TrainConfig, fit, resolve_trackers


class Recorder(GeneralTracker):
    """An in-memory Accelerate tracker (registered by name, as users register theirs)."""

    name = "recorder"
    requires_logging_directory = False
    runs: list[Recorder] = []

    def __init__(self, run_name: str, **kwargs) -> None:
        super().__init__()
        self.run_name, self.config, self.logs, self.finished = run_name, None, [], False
        Recorder.runs.append(self)

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict) -> None:
        self.config = dict(values)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.logs.append((step, dict(values)))

    def finish(self) -> None:
        self.finished = True


register_tracker_class(Recorder)


def _write_log(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_read_train_log_resolves_resumed_steps(tmp_path):
    _write_log(
        tmp_path / "train_log.jsonl",
        [
            {"step": 2, "epoch": 0, "lr": 1e-4, "samples_per_s": 10.0, "loss": 3.0, "converged": True},
            {"step": 4, "epoch": 0, "lr": 2e-4, "samples_per_s": 11.0, "loss": 2.5},
            {"step": 4, "eval/cider_d": 0.1, "eval/loss": 2.7},
            {"step": 4, "epoch": 0, "lr": 2e-4, "samples_per_s": 12.0, "loss": 2.4},  # redone after a resume
            {"step": 6, "epoch": 1, "lr": 1.5e-4, "samples_per_s": 12.5, "loss": float("nan")},
            {"step": 6, "eval/cider_d": 0.2, "eval/loss": 2.2},
        ],
    )
    s = read_train_log(tmp_path)
    assert s["train"]["loss"] == [(2, 3.0), (4, 2.4)]  # NaN dropped, last record of step 4 kept
    assert s["train"]["samples_per_s"] == [(2, 10.0), (4, 12.0), (6, 12.5)]
    assert s["train"]["lr"] == [(2, 1e-4), (4, 2e-4), (6, 1.5e-4)]
    assert "converged" not in s["train"] and "epoch" not in s["train"]  # booleans and epochs are not curves
    assert s["eval"] == {"cider_d": [(4, 0.1), (6, 0.2)], "loss": [(4, 2.7), (6, 2.2)]}
    png = plot_curves(tmp_path)
    import matplotlib.image

    img = matplotlib.image.imread(png)
    # 4 panels (loss + validation loss, lr, samples/s, validation cider_d) on a 3-column grid of 2 rows
    assert png == tmp_path / "curves.png" and img.shape[:2] == (600, 1260)


def test_read_train_log_errors(tmp_path):
    with pytest.raises(MissingInputError, match="no training log"):
        read_train_log(tmp_path)
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "loss": 1.0}\nnot json\n')
    with pytest.raises(InputError, match=r"train_log.jsonl:2"):
        read_train_log(tmp_path)
    _write_log(tmp_path / "train_log.jsonl", [{"step": 1, "note": "text only"}])
    with pytest.raises(InputError, match="no numeric records"):
        plot_curves(tmp_path)


def test_resolve_trackers(monkeypatch, caplog):
    import accelerate.tracking as tracking
    from accelerate.utils import LoggerType

    assert resolve_trackers("none") == [] and resolve_trackers("") == []
    assert resolve_trackers("recorder") == ["recorder"]  # a registered custom tracker
    monkeypatch.setattr(tracking, "_available_trackers", [])
    with caplog.at_level(logging.INFO, logger="dcase.training"):
        assert resolve_trackers("auto") == []
    assert sum("no experiment tracker" in r.message for r in caplog.records) == 1
    with pytest.raises(ConfigError, match="not installed"):
        resolve_trackers("tensorboard,recorder")
    with pytest.raises(ConfigError, match="unknown tracker"):
        resolve_trackers("tensorbored")
    monkeypatch.setattr(tracking, "_available_trackers", [LoggerType.TENSORBOARD])
    assert resolve_trackers("auto") == ["tensorboard"]
    assert resolve_trackers("all") == ["tensorboard"]
    assert resolve_trackers(" TensorBoard , recorder") == ["tensorboard", "recorder"]


def test_fit_reports_to_trackers_and_draws_curves(tmp_path):
    Recorder.runs.clear()
    cfg = TrainConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=6,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        log_every=2,
        eval_every=3,
        save_every=0,
        report_to="recorder",
    )
    fit(ToyTask(), cfg)
    (rec,) = Recorder.runs
    assert rec.run_name == "dcase" and rec.finished
    assert rec.config["lr"] == 1e-2 and rec.config["max_steps"] == 6 and rec.config["betas"] == "(0.9, 0.999)"
    logged = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    expected = [(r["step"], {k: float(v) for k, v in r.items() if k != "step"}) for r in logged]
    assert rec.logs == expected  # every record of train_log.jsonl, at its step
    assert [s for s, v in rec.logs if "loss" in v] == [2, 4, 6]
    assert [s for s, v in rec.logs if "eval/loss" in v] == [3, 6]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


def test_fit_without_trackers_and_dcase_plot(tmp_path):
    from dcase.cli import app

    cfg = TrainConfig(
        output_dir=str(tmp_path / "run"), max_steps=4, batch_size=4, log_every=1, eval_every=2, report_to="none"
    )
    fit(ToyTask(), cfg)
    curves = tmp_path / "run" / "curves.png"
    assert curves.is_file() and not (tmp_path / "run" / "trackers").exists()
    curves.unlink()
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "run"), "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (tmp_path / "c.png").stat().st_size > 1000 and not curves.exists()
    res = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert res.exit_code == 2 and "no training log" in res.output


def test_report_to_option_sets_the_train_config():
    from dcase.cli.captioner import with_report_to
    from dcase.config import load_config
    from dcase.stages.captioner import load_stage_config
    from dcase.stages.retriever import RetrieverStageConfig

    assert load_stage_config(None, with_report_to([], "wandb,mlflow")).train.report_to == "wandb,mlflow"
    assert load_stage_config(None, with_report_to(["train.max_steps=3"], None)).train.report_to == "auto"
    assert load_config(RetrieverStageConfig, None, with_report_to([], "none")).train.report_to == "none"
