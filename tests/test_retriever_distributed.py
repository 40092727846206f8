"""``dcase retriever train`` under ``python -m torch.distributed.run --nproc_per_node 2`` (gloo on CPU), through the
real CLI: it finishes, writes one set of outputs (the same files as a one-process run, plus the second process's
RNG state), and logs 2 processes from rank 0 only (the other rank logs warnings and errors only)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp: Path, manifest: Path, text: Path, out: Path, batch: int) -> Path:
    cfg = {
        "model": {
            "audio": {
                "n_fft": 256,
                "hop_length": 80,
                "n_mels": 32,
                "depths": [1, 1, 1, 1],
                "dims": [16, 16, 32, 64],
                "stem_kernel": [4, 4],
                "stem_time_padding": 2,
                "num_classes": 0,
            },
            "text": {"name_or_path": str(text), "pooling": "mean", "max_length": 32},
            "joint_dim": 32,
            "loss": "mltm",
            "mltm_metric": "diagonal",
            "mltm_epsilon": 0.05,
        },
        "data": {
            "train_manifests": [str(manifest)],
            "train_splits": ["development"],
            "val_manifest": str(manifest),
            "val_split": "validation",
            "max_seconds": 0.5,
            "cache_audio": True,
        },
        "train": {
            "output_dir": str(out),
            "seed": 3,
            "max_steps": 4,
            "batch_size": batch,
            "lr": 3.0e-3,
            "warmup_steps": 1,
            "eval_every": 4,
            "save_every": 2,
            "log_every": 1,
            "keep_best": 1,
            "metric_for_best": "map_at_10",
            "greater_is_better": True,
            "bucket_size": 0,
        },
    }
    path = tmp / f"{out.name}.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@pytest.mark.distributed
def test_two_process_cli_training_writes_one_run_and_logs_once(tmp_path: Path) -> None:
    sys.path.insert(0, str(TESTS))
    from _retriever_util import build_tiny_bert
    from test_retriever_train import make_corpus

    manifest = make_corpus(tmp_path / "corpus", per_class_train=4, per_class_test=1)
    text = build_tiny_bert(tmp_path / "tiny-bert")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(TESTS.parent)}
    runs = {}
    for nproc, batch in ((2, 8), (1, 16)):  # the same global batch of 16
        out = tmp_path / f"run{nproc}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        cmd += ["--master_port", str(_free_port()), "-m", "dcase.cli", "retriever", "train"]
        cmd += ["--config", str(_config(tmp_path, manifest, text, out, batch))]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-4000:]
        runs[nproc] = (out, res.stdout + res.stderr)
    out, log = runs[2]
    # one set of outputs: one checkpoint dir, one log, one config; per-rank files only in the resume state
    assert json.loads((out / "run.json").read_text())["num_processes"] == 2
    assert "training on 2 processes" in log and "global batch 16" in log
    assert log.count("training on 2 processes") == 1  # info lines come from rank 0 only
    assert log.count("best checkpoint:") == 1
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(n for n in names if n.startswith("state/rng_")) == [
        "state/rng_0.json",
        "state/rng_0.safetensors",
        "state/rng_1.json",
        "state/rng_1.safetensors",
    ]
    one_names = sorted(p.relative_to(runs[1][0]).as_posix() for p in runs[1][0].rglob("*") if p.is_file())
    assert [n for n in names if not n.startswith("state/rng_1")] == one_names
    recs = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "lr" in r] == [1, 2, 3, 4]
    assert all(r["sinkhorn_iters"] >= 1 for r in recs if "lr" in r)
    # (the two runs see the same 16 items per update, but the losses differ: CNext's input BatchNorm normalises
    # over each process's 8 items; the m-LTM objective itself is tested equal in test_mltm_distributed.py)
