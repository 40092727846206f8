"""dcase.training: schedule, length-bucketed sampler, fit (logs, best-k), exact resume, 2-process DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_model

from dcase.training import BucketBatchSampler, TrainConfig, fit, inverse_sqrt_lambda

TESTS = Path(__file__).resolve().parent


class ToyTask:
    """Regression y = w.x with a dropout MLP; the loss also draws torch noise, so resume must restore RNG."""

    def __init__(self, n: int = 37, dropout: float = 0.1, noise: float = 0.01, crash_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, generator=g)
        self.lengths = [int(v) for v in torch.randint(1, 50, (n,), generator=g)]
        self.dropout, self.noise, self.crash_at, self.calls = dropout, noise, crash_at, 0

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.Dropout(self.dropout), torch.nn.ReLU(), torch.nn.Linear(16, 1)
        )

    def train_dataset(self):
        return [(self.x[i], self.y[i], i) for i in range(len(self.y))]

    def collate(self, items):
        return {
            "x": torch.stack([a for a, _, _ in items]),
            "y": torch.stack([b for _, b, _ in items]),
            "idx": torch.tensor([i for _, _, i in items]),
        }

    def item_lengths(self):
        return self.lengths

    def loss(self, model, batch):
        self.calls += 1
        if self.crash_at is not None and self.calls > self.crash_at:
            raise KeyboardInterrupt("simulated kill")
        pred = model(batch["x"]).squeeze(-1)
        loss = ((pred - batch["y"] - self.noise * torch.randn_like(pred)) ** 2).mean()
        return loss, {"mse": float(loss.detach())}

    def evaluate(self, model, accelerator):
        with torch.no_grad():
            return {"loss": float(((model(self.x).squeeze(-1) - self.y) ** 2).mean())}

    def save_model(self, model, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        save_model(model, str(path / "model.safetensors"))


def test_inverse_sqrt_schedule_exact_values():
    f = inverse_sqrt_lambda(4)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(math.sqrt(4 / 5)) and f(15) == pytest.approx(0.5)
    g = inverse_sqrt_lambda(0)  # no warm-up: starts at the peak, timescale 10000
    assert g(0) == 1.0 and g(30_000) == pytest.approx(0.5)
    assert inverse_sqrt_lambda(0, timescale=1)(3) == pytest.approx(0.5)
    values = [f(s) for s in range(4, 100)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_bucket_sampler_deterministic_sharded_bucketed():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, 203).tolist()
    shards = [BucketBatchSampler(203, 4, lengths, seed=5, num_replicas=2, rank=r, bucket_size=10) for r in (0, 1)]
    for s in shards:
        s.set_epoch(3)
    b0, b1 = list(shards[0]), list(shards[1])
    assert len(b0) == len(b1) == len(shards[0]) == math.ceil(203 / 8)
    assert all(len(b) == 4 for b in b0 + b1)
    seen = {i for b in b0 + b1 for i in b}
    assert seen == set(range(203))  # every item, the tail wraps around
    again = BucketBatchSampler(203, 4, lengths, seed=5, num_replicas=2, rank=0, bucket_size=10)
    again.set_epoch(3)
    assert list(again) == b0
    again.set_epoch(4)
    assert list(again) != b0  # new order each epoch
    again.set_epoch(3, start_batch=7)
    assert list(again) == b0[7:]
    # bucketing: the length spread inside a global batch is much smaller than with random batches
    spread = np.mean([np.ptp([lengths[i] for i in a + b]) for a, b in zip(b0, b1, strict=True)])
    plain = BucketBatchSampler(203, 4, None, seed=5, num_replicas=2, rank=0)
    plain_b = BucketBatchSampler(203, 4, None, seed=5, num_replicas=2, rank=1)
    spread_plain = np.mean([np.ptp([lengths[i] for i in a + b]) for a, b in zip(plain, plain_b, strict=True)])
    assert spread < 0.3 * spread_plain


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(out),
        seed=3,
        max_steps=8,
        batch_size=4,
        grad_accum=2,
        lr=0.05,
        warmup_steps=2,
        eval_every=2,
        save_every=3,
        keep_best=2,
        log_every=1,
        bucket_size=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_fit_logs_schedule_and_keeps_best(tmp_path):
    best = fit(ToyTask(), _cfg(tmp_path / "run"))
    run = tmp_path / "run"
    recs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in recs if "lr" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    f = inverse_sqrt_lambda(2)
    assert [r["lr"] for r in train] == pytest.approx([0.05 * f(s) for s in range(8)])
    assert all(r["samples_per_s"] > 0 and "mse" in r for r in train)
    evals = [r for r in recs if "eval/loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 6, 8]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(kept) == 2
    ranking = json.loads((run / "best.json").read_text())["checkpoints"]
    losses = sorted(r["eval/loss"] for r in evals)[:2]
    assert [c["value"] for c in ranking] == pytest.approx(losses)
    assert best == Path(ranking[0]["path"]) and (best / "model.safetensors").exists()
    assert (run / "last" / "model.safetensors").exists() and (run / "config.yaml").exists()
    assert json.loads((run / "run.json").read_text())["seed"] == 3
    assert evals[-1]["eval/loss"] < 0.8 * ToyTask().evaluate(ToyTask().build_model(), None)["loss"]


def test_bf16_autocast_runs_on_cpu(tmp_path):
    fit(ToyTask(), _cfg(tmp_path / "bf16", max_steps=2, eval_every=0, mixed_precision="bf16"))
    info = json.loads((tmp_path / "bf16" / "run.json").read_text())
    assert info["mixed_precision"] == "bf16"
    recs = [json.loads(x) for x in (tmp_path / "bf16" / "train_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in recs if "loss" in r)
    with pytest.raises(ValueError, match="mixed_precision"):
        fit(ToyTask(), _cfg(tmp_path / "bad", mixed_precision="fp8"))


def test_resume_after_kill_is_bit_exact(tmp_path):
    ref = fit(ToyTask(), _cfg(tmp_path / "ref", max_steps=11))
    with pytest.raises(KeyboardInterrupt):  # killed during update 8 (state saved at update 6)
        fit(ToyTask(crash_at=15), _cfg(tmp_path / "res", max_steps=11))
    trainer = json.loads((tmp_path / "res" / "state" / "trainer.json").read_text())
    p = trainer["progress"]
    assert (p["step"], p["epoch"], p["batch_in_epoch"]) == (6, 1, 2)  # 10 batches/epoch: mid second epoch
    fit(ToyTask(), _cfg(tmp_path / "res", max_steps=11))
    a = load_file(str(tmp_path / "ref" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "res" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x) for x in (tmp_path / "ref" / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "res" / "train_log.jsonl").read_text().splitlines()]
    final_a = [r["loss"] for r in la if "lr" in r and r["step"] > 6]
    final_b = [r["loss"] for r in lb if "lr" in r and r["step"] > 6][-5:]
    assert final_a == final_b
    assert ref.parent.name == "checkpoints"


DDP_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_training import ToyTask
from dcase.training import TrainConfig, fit
cfg = TrainConfig(**json.loads(sys.argv[1]))
fit(ToyTask(dropout=0.0, noise=0.0), cfg)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_process_ddp_matches_one_process(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT.format(tests=str(TESTS)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    logs = {}
    for nproc, bs in ((1, 8), (2, 4)):  # same global batch (8 x grad_accum 2)
        out = tmp_path / f"p{nproc}"
        cfg = dict(
            output_dir=str(out),
            seed=1,
            max_steps=6,
            batch_size=bs,
            grad_accum=2,
            lr=0.05,
            warmup_steps=2,
            eval_every=0,
            save_every=0,
            log_every=1,
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(nproc),
                "--master_port",
                str(_free_port()),
                str(script),
                json.dumps(cfg),
            ],
            env=env,
            cwd=tmp_path,
            timeout=180,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        logs[nproc] = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        assert json.loads((out / "run.json").read_text())["num_processes"] == nproc
    l1 = [r["loss"] for r in logs[1] if "lr" in r]
    l2 = [r["loss"] for r in logs[2] if "lr" in r]
    assert len(l1) == len(l2) == 6
    # same global batches, mean losses averaged over processes: equal up to float32 reduction order
    np.testing.assert_allclose(l2, l1, rtol=1e-4, atol=1e-6)
    w1 = load_file(str(tmp_path / "p1" / "last" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "p2" / "last" / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)


def test_sampler_fills_every_process_even_when_the_data_is_smaller_than_a_batch():
    """3 items, 2 processes x batch 4: both processes get 4 indices (the permutation repeated cyclically), never an
    empty batch; every item appears."""
    from dcase.training import BucketBatchSampler

    got = []
    for rank in (0, 1):
        s = BucketBatchSampler(3, 4, seed=0, num_replicas=2, rank=rank)
        batches = list(s)
        assert len(batches) == 1 and len(batches[0]) == 4
        got += batches[0]
    assert sorted(set(got)) == [0, 1, 2] and len(got) == 8
