"""Cost of the m-LTM loss per training step: Sinkhorn to convergence vs the former 100 iterations, side by side.

Setting (EnCLAP DCASE2024 retrievers, §3.2): a global batch of 128 pairs of L2-normalised 1024-d embeddings, the
diagonal metric of the report's configs (U[1, 2]), epsilon 0.03, max-normalised cost. One "step" = the loss
forward + backward from the embeddings and the metric (what the retriever adds to its encoders' step).

Pairs: ``text = normalise(audio + sigma * g / sqrt(D))``, three regimes by the cosine of a pair (random towers at the
start of training, mid-training, well-separated pairs late in training).

Solvers:
- ``former``: POT's ``ot.sinkhorn(method="sinkhorn_log")``, 100 iterations, autograd through them (the previous
  implementation, ``mltm_iters: 100``);
- ``implicit-100``: our log-domain solver stopped at 100 iterations, implicit gradient;
- ``converged``: the default, our solver until the marginal error < 1e-9 or 1000 iterations, implicit gradient;
- ``official``: ``mltm_gradient: unrolled``, POT's ``ot.sinkhorn`` (Sinkhorn-Knopp as the official code, same
  stopping rule), autograd through the iterations.
Printed per regime: iterations and final marginal error of the default solver, the loss, the relative gradient
error of each solver against a 20,000-iteration reference, milliseconds per step (best of ``--repeats``), and the
iterations and final marginal error of the official solver in the embeddings' dtype (``--dtype``, float32 as on a GPU:
POT's Sinkhorn-Knopp runs in it; our solver converts to float64 whatever the input).

Run: python benchmarks/sinkhorn.py [--batch 128 [256 ...]] [--dim 1024] [--repeats 5] [--threads 1] [--dtype float32]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from dcase.losses import mahalanobis_cost, mltm_loss


def former_loss(audio: torch.Tensor, text: torch.Tensor, metric: torch.Tensor, eps: float) -> torch.Tensor:
    """The previous implementation: POT sinkhorn_log, 100 unrolled iterations."""
    import ot

    cost = mahalanobis_cost(audio, text, metric)
    cost = cost / cost.max()
    n = cost.shape[0]
    w = torch.full((n,), 1.0 / n, dtype=cost.dtype)
    _, log = ot.sinkhorn(w, w, cost, eps, method="sinkhorn_log", numItermax=100, stopThr=1e-9, log=True, warn=False)
    log_pi = log["log_u"][:, None] - cost / eps + log["log_v"][None, :]
    return -log_pi.diagonal().mean()


SOLVERS = {
    "former (POT log, 100 it, unrolled)": lambda a, t, m: former_loss(a, t, m, 0.03),
    "implicit, 100 it": lambda a, t, m: mltm_loss(a, t, m, max_iter=100, tol=0.0),
    "converged (default: 1e-9 / 1000 it)": lambda a, t, m: mltm_loss(a, t, m),
    "official (POT Knopp, unrolled)": lambda a, t, m: mltm_loss(a, t, m, gradient="unrolled"),
}


def pairs(b: int, d: int, sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(b, d, generator=g), dim=1)
    t = F.normalize(a + sigma * torch.randn(b, d, generator=g) / d**0.5, dim=1)
    return a, t


def step(fn, a: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    a, t, m = (x.detach().clone().requires_grad_() for x in (a, t, m))
    loss = fn(a, t, m)
    loss.backward()
    return float(loss.detach()), [a.grad, t.grad, m.grad]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[128], help="one or more batch sizes (a sweep)")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="dtype of the embeddings")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for batch in args.batch:
        run(batch, args.dim, args.repeats, args.threads, getattr(torch, args.dtype))


def run(batch: int, dim: int, repeats: int, threads: int, dtype: torch.dtype) -> None:
    m = (1.0 + torch.rand(dim, generator=torch.Generator().manual_seed(0))).to(dtype)
    print(f"\nm-LTM loss step: batch {batch} x {dim}-d, {dtype}, diagonal metric, eps 0.03, {threads} thread(s)")
    for name, sigma in (("random towers", 10.0), ("mid-training", 1.7), ("well-separated", 1.0)):
        a, t = (x.to(dtype) for x in pairs(batch, dim, sigma, seed=1))
        cos = float((a * t).sum(1).mean())
        _, info = mltm_loss(a.double(), t.double(), m.double(), return_info=True)
        ref_loss, ref = step(
            lambda x, y, z: mltm_loss(x, y, z, max_iter=20000, tol=1e-13), a.double(), t.double(), m.double()
        )
        _, ref_info = mltm_loss(a.double(), t.double(), m.double(), max_iter=20000, tol=1e-13, return_info=True)
        print(
            f"\n{name}: pair cosine {cos:.2f}; default solver: {info.iterations} iterations, marginal error "
            f"{info.marginal_error:.1e} ({'converged' if info.converged else 'NOT converged'}); loss {ref_loss:.4f}; "
            f"reference: {ref_info.iterations} iterations, marginal error {ref_info.marginal_error:.1e}"
        )
        _, off_info = mltm_loss(a, t, m, gradient="unrolled", return_info=True)
        print(
            f"  official solver in {dtype}: {off_info.iterations} iterations, marginal error "
            f"{off_info.marginal_error:.1e} ({'converged' if off_info.converged else 'NOT converged'})"
        )
        times = {}
        for label, fn in SOLVERS.items():
            step(fn, a, t, m)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                loss, grads = step(fn, a, t, m)
                best = min(best, time.perf_counter() - t0)
            times[label] = best
            err = max(float((g.double() - r).norm() / r.norm()) for g, r in zip(grads, ref, strict=True))
            print(f"  {label:38s} {1000 * best:8.1f} ms/step   loss {loss:.4f}   gradient error {100 * err:7.3f} %")
        base = times["former (POT log, 100 it, unrolled)"]
        conv = times["converged (default: 1e-9 / 1000 it)"]
        print(
            f"  extra cost of the default over the former 100 iterations: {1000 * (conv - base):+.1f} ms/step "
            f"({conv / base:.2f}x)"
        )


if __name__ == "__main__":
    main()
