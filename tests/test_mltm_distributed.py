"""m-LTM over the global batch: one 2-process run (torchrun, gloo on CPU) on 2 x 16 pairs equals one process on the
32 concatenated pairs, for the loss value, the DDP-averaged gradients and the updated parameters.

Run as a script by torchrun: ``python -m torch.distributed.run --nproc_per_node 2 THIS_FILE OUT_JSON``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dcase.losses import gather_pairs, info_nce_loss, mltm_loss

B, D_IN, D = 32, 10, 8
VARIANTS = ("full", "diagonal", "infonce")


class PairModel(nn.Module):
    """Two linear towers on fixed inputs, a metric (or a temperature), and the loss computed in ``forward`` over
    the gathered global batch, as ``dcase.models.retriever.Retriever`` does."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.variant = variant
        self.audio = nn.Linear(D_IN, D).double()
        self.text = nn.Linear(D_IN, D).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        if variant == "full":
            self.metric = nn.Parameter(
                torch.eye(D, dtype=torch.float64) + 0.1 * torch.randn(D, D, generator=g).double()
            )
        elif variant == "diagonal":
            self.metric = nn.Parameter(1.0 + torch.rand(D, generator=g, dtype=torch.float64))
        else:
            self.metric = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, xa: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        a = nn.functional.normalize(self.audio(xa), dim=1)
        t = nn.functional.normalize(self.text(xt), dim=1)
        a, t = gather_pairs(a, t)
        if self.variant == "infonce":
            return info_nce_loss(a, t, self.metric.exp())
        return mltm_loss(a, t, self.metric, epsilon=0.1, max_iter=5000, tol=1e-12)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    xa = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    return xa, xa + 0.7 * torch.randn(B, D_IN, generator=g, dtype=torch.float64)


def run(variant: str, rank: int = 0, world: int = 1) -> dict:
    """Two SGD steps on this process's share of the batch: losses, gradients of the first step, final weights."""
    model = PairModel(variant)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    xa, xt = inputs()
    share = B // world
    xa, xt = xa[rank * share : (rank + 1) * share], xt[rank * share : (rank + 1) * share]
    out: dict = {"losses": []}
    for step in range(2):
        loss = model(xa, xt)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            out["grads"] = {k: p.grad.tolist() for k, p in model.named_parameters()}
        opt.step()
        out["losses"].append(loss.item())
    out["weights"] = {k.removeprefix("module."): p.tolist() for k, p in model.named_parameters()}
    return out


def _worker(out_path: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, world
    res = {v: run(v, rank, world) for v in VARIANTS}
    for v in VARIANTS:
        res[v]["grads"] = {k.removeprefix("module."): g for k, g in res[v]["grads"].items()}
    Path(f"{out_path}.{rank}").write_text(json.dumps(res))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_processes_on_2x16_equal_one_process_on_32(tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    res = subprocess.run([*cmd, __file__, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    two = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
    for v in VARIANTS:
        one = run(v)
        # every process computed the same global loss, equal to the single-process loss on 32 pairs
        assert two[0][v]["losses"] == two[1][v]["losses"]
        torch.testing.assert_close(torch.tensor(two[0][v]["losses"]), torch.tensor(one["losses"]), rtol=1e-10, atol=0)
        for k in one["grads"]:
            for r in (0, 1):  # DDP-averaged gradients = the single-process gradient (encoders and metric alike)
                torch.testing.assert_close(
                    torch.tensor(two[r][v]["grads"][k]), torch.tensor(one["grads"][k]), rtol=1e-9, atol=1e-12
                )
                torch.testing.assert_close(
                    torch.tensor(two[r][v]["weights"][k]), torch.tensor(one["weights"][k]), rtol=1e-9, atol=1e-12
                )
    # the objective over 32 pairs differs from two problems over 16 (what a per-process loss would optimise)
    model = PairModel("diagonal")
    xa, xt = inputs()
    halves = 0.5 * (model(xa[:16], xt[:16]) + model(xa[16:], xt[16:]))
    assert abs(halves.item() - model(xa, xt).item()) > 0.1


if __name__ == "__main__":
    _worker(sys.argv[1])
