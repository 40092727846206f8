"""kill -9 at random points (issue 13): captioner training, retriever training and codec extraction are run as
`python -m dcase.cli ...` subprocesses, killed with SIGKILL at three seeded random points each, and rerun; the
final weights / store of the resumed run must be bit-identical to an uninterrupted run of the same seed.

Kill points are counted in progress units of the killed run (logged optimiser updates, written shards) and
followed by a seeded random delay, so a kill can land anywhere: inside an update, while a state or shard is being
written, between the renames of a state swap. Every run uses one thread, as the in-process reference does
(tests/conftest.py)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dcase.cli import app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    path = [str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def kill_points(seed: int, most: int) -> list[tuple[int, float]]:
    """Three kills, each after 1..``most`` new progress units of its run and a delay of 0-100 ms (seeded)."""
    rng = random.Random(seed)
    return [(rng.randint(1, most), rng.uniform(0.0, 0.1)) for _ in range(3)]


def run_with_kills(
    args: list[str], progress: Callable[[], int], points: list[tuple[int, float]], log: Path, timeout: float = 120
) -> None:
    """For each (units, delay): start the command, SIGKILL it once ``progress()`` has grown by ``units`` during
    this run (plus the delay); then run it to completion. Every kill must land before the command finishes.
    ``progress`` is a counter that only grows (logged updates, shard files)."""
    cmd = [sys.executable, "-m", "dcase.cli", *map(str, args)]
    with open(log, "ab") as err:
        for units, delay in points:
            base = progress()
            proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
            t0 = time.monotonic()
            while proc.poll() is None and progress() - base < units:
                if time.monotonic() - t0 > timeout:
                    proc.kill()
                    pytest.fail(f"no progress by {units} within {timeout} s; see {log}")
                time.sleep(0.005)
            time.sleep(delay)
            assert proc.poll() is None, f"the run finished before its kill; see {log}"
            proc.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
        done = subprocess.run(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, timeout=timeout)
    assert done.returncode == 0, log.read_text()[-3000:]


def logged_updates(run: Path) -> Callable[[], int]:
    """How many optimiser updates ``run/train_log.jsonl`` records (replayed ones too: the counter only grows)."""

    def count() -> int:
        try:
            return (run / "train_log.jsonl").read_text().count('"lr":')
        except FileNotFoundError:
            return 0

    return count


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _sets(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def killed_training_matches_reference(args: Callable[[Path], list[str]], tmp: Path, seed: int) -> None:
    """Train ``args(tmp/"ref")`` uninterrupted in-process, then ``args(tmp/"res")`` as a subprocess killed at three
    points of ``seed`` and resumed; the final weights must be bit-identical and no temporary file may be left."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        r = runner.invoke(app, args(tmp / "ref"))
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    res = tmp / "res"
    run_with_kills(args(res), logged_updates(res), kill_points(seed, 4), tmp / "log.txt")
    assert_same_weights(tmp / "ref" / "last", res / "last")
    assert not list(res.glob("*.tmp")) and not (res / "state.tmp").exists()


def test_captioner_training_killed_three_times_resumes_bit_identically(tmp_path: Path) -> None:
    from test_captioner import DIM, N_CB, K, _corpus

    manifest, dac, emb = _corpus(tmp_path, frames=(30, 90))

    def args(out: Path) -> list[str]:
        return [
            "captioner",
            "pretrain",
            "--config",
            "configs/demo/captioner_pretrain.yaml",
            *_sets(
                [
                    f"data.train_manifests=[{manifest}]",
                    f"data.codec_stores=[{dac}]",
                    f"data.embed_stores=[{emb}]",
                    "data.val_manifest=null",
                    f"train.output_dir={out}",
                    "train.batch_size=4",
                    "train.max_steps=40",
                    "train.max_epochs=null",  # the demo cap of 2 epochs = 10 updates here: too few for 3 kills
                    "train.save_every=2",
                    "train.eval_every=0",
                    "train.log_every=1",
                    f"model.n_codebooks={N_CB}",
                    f"model.codebook_size={K}",
                    f"model.clip_dim={DIM}",
                    "model.d_model=32",
                    "model.encoder_layers=1",
                    "model.decoder_layers=1",
                    "model.encoder_ffn_dim=64",
                    "model.decoder_ffn_dim=64",
                    "model.max_codec_positions=50",
                    "model.vocab_size=280",
                ]
            ),
        ]

    killed_training_matches_reference(args, tmp_path, seed=11)


def test_retriever_training_killed_three_times_resumes_bit_identically(tmp_path: Path) -> None:
    from test_retriever_train import make_corpus

    manifest = make_corpus(tmp_path / "corpus", per_class_train=3, per_class_test=0)

    def args(out: Path) -> list[str]:
        return [
            "retriever",
            "train",
            "--config",
            "configs/demo/retriever_tiny.yaml",
            *_sets(
                [
                    f"data.train_manifests=[{manifest}]",
                    "data.val_manifest=null",
                    "data.max_seconds=0.5",
                    f"train.output_dir={out}",
                    "train.batch_size=4",
                    "train.max_steps=14",
                    "train.warmup_steps=2",
                    "train.save_every=2",
                    "train.eval_every=0",
                    "train.log_every=1",
                ]
            ),
        ]

    killed_training_matches_reference(args, tmp_path, seed=12)


def test_codec_extraction_killed_three_times_resumes_bit_identically(tmp_path: Path) -> None:
    from test_robust import _synth_clips

    from dcase.features.store import FeatureStore

    manifest = _synth_clips(tmp_path / "audio", 24, seconds=2.0)

    def args(out: Path) -> list[str]:
        return [
            "extract",
            "codec",
            "-m",
            str(manifest),
            "-o",
            str(out),
            "--codec-config",
            "tiny",
            "--batch-size",
            "1",
            "--shard-size",
            "1",
        ]

    assert runner.invoke(app, args(tmp_path / "ref")).exit_code == 0
    res = tmp_path / "res"

    def shards() -> int:
        return len(list((res / "shards").glob("*.safetensors"))) if (res / "shards").is_dir() else 0

    run_with_kills(args(res), shards, kill_points(13, 6), tmp_path / "log.txt")
    ref, got = FeatureStore.open(tmp_path / "ref"), FeatureStore.open(res)
    assert sorted(ref) == sorted(got) and len(got) == 24
    assert all(np.array_equal(ref[c], got[c]) and ref[c].dtype == got[c].dtype for c in ref)
    assert runner.invoke(app, ["extract", "verify", str(res), "-m", str(manifest)]).exit_code == 0
    assert not list((res / "shards").glob("*.tmp"))
