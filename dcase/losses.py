"""Training losses: m-LTM (retriever) and MCM + caption cross entropy (captioner, see the end of the file).

m-LTM, the mini-batch Learning-to-Match loss of Luong et al., "Revisiting deep audio-text retrieval through
the lens of transportation" (ICLR 2024), used by the EnCLAP DCASE2024 report (§3.2) to train its retrievers:

- ground cost: the Mahalanobis distance ``C_ij = sqrt((a_i - t_j)^T M (a_i - t_j))`` between the L2-normalised
  audio and text embeddings of a batch. Two metrics (``mahalanobis_cost``): ``full``, a learned PSD matrix
  ``M = L L^T`` (the paper's formulation; ``L`` starts at the identity, so every update keeps ``M`` PSD without
  projection), or ``diagonal``, ``M = diag(m)`` (what the official code computes: its einsum reads only the
  diagonal of its matrix parameter, started in U[1, 2]);
- the cost is divided by its maximum over the batch (as the official implementation does), so ``epsilon`` is
  relative to the cost range;
- the plan ``pi`` is the entropic OT plan between uniform marginals, solved by log-domain Sinkhorn iterations
  until the marginal error falls below ``tol`` (default 1e-9, the official stopping threshold) or ``max_iter``
  (default 1000, the official number) iterations; or the entropic *partial* plan transporting mass ``m < 1``
  (the paper's variant for noisy pairs, POT's solver);
- loss ``= -sum_ij (I_ij / B) log pi_ij`` = KL(pi_hat || pi) up to a constant, with the identity plan
  ``pi_hat = I / B`` as the ground-truth matching.

Gradients of the balanced plan are implicit by default (``_LogPlan``): the iterations run in float64 without
autograd, and the backward pass differentiates the fixed point (the optimality conditions of the entropic dual) with
one linear solve of size B. At convergence this is the limit of the unrolled gradient that the official code
backpropagates through its iterations, at O(B^2) memory instead of O(iterations x B^2). ``gradient="unrolled"``
runs the official solver itself (POT's ``ot.sinkhorn``, autograd through the iterations). docs/fidelity.md lists
the differences from the paper and the official code.

Several processes: ``gather_pairs`` gathers the embeddings of every process, so the loss is ONE transport
problem over the global batch (see its docstring for how the DDP gradient average stays exact).

A symmetric InfoNCE (CLIP) loss is provided for comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "GRADIENT_MODES",
    "METRICS",
    "SinkhornInfo",
    "caption_loss",
    "gather_pairs",
    "info_nce_loss",
    "mahalanobis_cost",
    "mcm_codebook_weights",
    "mcm_loss",
    "mltm_loss",
    "ot_log_plan",
    "sinkhorn_potentials",
]

SINKHORN_MAX_ITER = 1000  # official m-LTM code: POT's ot.sinkhorn defaults
SINKHORN_TOL = 1e-9
SINKHORN_CHECK_EVERY = 10  # marginal error checked every 10 iterations, as POT does
GRADIENT_MODES = ("implicit", "unrolled")
METRICS = ("full", "diagonal")


# ------------------------------------------------------------------------------------------------- m-LTM
def mahalanobis_cost(audio: torch.Tensor, text: torch.Tensor, metric: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mahalanobis distances: audio [Na, D], text [Nt, D] -> [Na, Nt].

    ``metric`` [D, D] is ``L`` of the full metric ``M = L L^T``: ``C_ij = ||L^T (a_i - t_j)||``, computed as
    ``sqrt(|a'|^2 + |t'|^2 - 2 a'.t')`` with ``a' = a L``. ``metric`` [D] is the diagonal ``m`` of ``M = diag(m)``:
    ``C_ij = sqrt(sum_k m_k (a_ik - t_jk)^2)`` (the official code's einsum ``ijk,ikj,kk->ij``). The squared
    distance is clamped at ``eps`` before the square root, so the gradient stays finite for identical pairs (and
    for a diagonal that training pushed below zero, which the official code leaves unconstrained).
    """
    if metric.ndim == 1:
        am = audio * metric
        sq = (am * audio).sum(-1, keepdim=True) + (text * text * metric).sum(-1)[None, :] - 2.0 * am @ text.T
    else:
        pa = audio @ metric
        pt = text @ metric
        sq = (pa * pa).sum(-1, keepdim=True) + (pt * pt).sum(-1)[None, :] - 2.0 * pa @ pt.T
    return sq.clamp_min(eps).sqrt()


@dataclass
class SinkhornInfo:
    """How a Sinkhorn solve ended: iterations run, final marginal error (L2 norm of ``pi 1 - a``; for partial OT
    the L2 norm of the constraint violations), and whether it reached the tolerance."""

    iterations: int
    marginal_error: float
    converged: bool


@torch.no_grad()
def sinkhorn_potentials(
    cost: torch.Tensor,
    epsilon: float,
    max_iter: int = SINKHORN_MAX_ITER,
    tol: float = SINKHORN_TOL,
    check_every: int = SINKHORN_CHECK_EVERY,
) -> tuple[torch.Tensor, torch.Tensor, SinkhornInfo]:
    """Balanced entropic OT between uniform marginals, log-domain Sinkhorn in float64 (no autograd).

    cost [N, M] -> (alpha [N], beta [M], info), with ``log pi_ij = alpha_i + beta_j - C_ij / epsilon``. Each
    iteration makes the rows, then the columns exact; every ``check_every`` iterations (and at the last) the row
    marginal error ``||pi 1 - a||_2`` is compared with ``tol`` (POT's criterion, on the other marginal).
    """
    if max_iter < 1:
        raise ValueError(f"Sinkhorn needs max_iter >= 1, got {max_iter}")
    logk = cost.detach().double() / -epsilon
    n, m = logk.shape
    log_a = torch.full((n,), -math.log(n), dtype=logk.dtype, device=logk.device)
    log_b = torch.full((m,), -math.log(m), dtype=logk.dtype, device=logk.device)
    row_lse = torch.logsumexp(logk, dim=1)  # beta = 0
    err, it = float("inf"), 0
    for it in range(1, max_iter + 1):
        alpha = log_a - row_lse
        beta = log_b - torch.logsumexp(logk + alpha[:, None], dim=0)
        # the rows' log-sum-exp under the new beta: the marginal check's and the next iteration's alpha update's
        row_lse = torch.logsumexp(logk + beta[None, :], dim=1)
        if it % check_every == 0 or it == max_iter:
            rows = (alpha + row_lse).exp()
            err = float(torch.linalg.vector_norm(rows - log_a.exp()))
            if not math.isfinite(err) or err < tol:
                break
    return alpha, beta, SinkhornInfo(it, err, err < tol)


class _LogPlan(torch.autograd.Function):
    """``log pi = alpha 1^T + 1 beta^T - C / eps`` with implicit gradients w.r.t. the cost.

    The potentials solve ``pi 1 = a``, ``pi^T 1 = b``. For an upstream gradient ``G = dl/dlog pi`` [N, M], with
    ``r = G 1`` and ``c = G^T 1``, the implicit function theorem gives

        dl/dC = (P * (x 1^T + 1 y^T) - G) / eps,   [[diag(P 1), P], [P^T, diag(P^T 1)]] [x; y] = [r; c],

    a singular but consistent system (null vector (1, -1), which leaves ``x_i + y_j`` unchanged); it is solved by
    eliminating ``x`` and fixing the gauge of ``y`` with a rank-one term. float64 throughout.
    """

    @staticmethod
    def forward(ctx: Any, cost: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, epsilon: float) -> torch.Tensor:
        log_pi = alpha[:, None] + beta[None, :] - cost.detach().double() / epsilon
        ctx.save_for_backward(log_pi.exp())
        ctx.epsilon = epsilon
        return log_pi.to(cost.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (P,) = ctx.saved_tensors
        G = grad.double()
        r, c = G.sum(1), G.sum(0)
        a, b = P.sum(1), P.sum(0)
        Pa = P / a[:, None]
        m = P.shape[1]
        S = torch.diag(b) - P.T @ Pa + torch.full((m, m), 1.0 / m**2, dtype=P.dtype, device=P.device)
        y = torch.linalg.solve(S, c - Pa.T @ r)
        x = (r - P @ y) / a
        dC = (P * (x[:, None] + y[None, :]) - G) / ctx.epsilon
        return dC.to(grad.dtype), None, None, None


def _partial_info(plan: torch.Tensor, mass: float, errs: list, max_iter: int, tol: float) -> SinkhornInfo:
    n, m = plan.shape
    over = torch.cat([(plan.sum(1) - 1.0 / n).clamp_min(0), (plan.sum(0) - 1.0 / m).clamp_min(0)])
    viol = float(torch.sqrt((over**2).sum() + (plan.sum() - mass) ** 2))
    last = float(errs[-1].detach()) if errs else float("inf")
    converged = last <= tol
    return SinkhornInfo(10 * (len(errs) - 1) + 1 if converged else max_iter, viol, converged)


def ot_log_plan(
    cost: torch.Tensor,
    epsilon: float = 0.03,
    mass: float = 1.0,
    max_iter: int = SINKHORN_MAX_ITER,
    tol: float = SINKHORN_TOL,
    gradient: str = "implicit",
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SinkhornInfo]:
    """Log of the entropic OT plan between uniform marginals: cost [Na, Nt] -> log pi [Na, Nt] (and the
    ``SinkhornInfo`` with ``return_info``).

    ``mass == 1``, ``gradient="implicit"``: balanced entropic OT (``sinkhorn_potentials``, implicit gradients
    through ``_LogPlan``); the log plan is exact from the dual potentials (no underflow).
    ``mass == 1``, ``gradient="unrolled"``: the official code's solver, ``ot.sinkhorn`` (POT, linear-domain
    Sinkhorn-Knopp in the cost's dtype, the same stopping rule), differentiated through its iterations by autograd;
    its plan is clamped at the dtype's smallest normal number before the log.
    ``mass < 1``: entropic partial OT transporting ``mass`` (``ot.partial.entropic_partial_wasserstein``,
    log-domain Bregman projections, gradients unrolled through POT's torch backend; it stops when the plan changes
    by less than ``tol`` between checks); its plan is in the linear domain, so the log is taken after clamping at
    the dtype's smallest normal number.
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"transported mass must be in (0, 1], got {mass}")
    if gradient not in GRADIENT_MODES:
        raise ValueError(f"Sinkhorn gradient must be one of {GRADIENT_MODES}, got {gradient!r}")
    if mass >= 1.0 and gradient == "implicit":
        alpha, beta, info = sinkhorn_potentials(cost, epsilon, max_iter, tol)
        log_pi = _LogPlan.apply(cost, alpha, beta, epsilon)
        return (log_pi, info) if return_info else log_pi
    import ot

    na, nt = cost.shape
    a = torch.full((na,), 1.0 / na, dtype=cost.dtype, device=cost.device)
    b = torch.full((nt,), 1.0 / nt, dtype=cost.dtype, device=cost.device)
    tiny = torch.finfo(cost.dtype).tiny
    if mass >= 1.0:
        plan, log = ot.sinkhorn(a, b, cost, epsilon, numItermax=max_iter, stopThr=tol, log=True, warn=False)
        errs = log["err"]
        err = float(errs[-1].detach()) if errs else float("inf")
        log_pi = plan.clamp_min(tiny).log()
        info = SinkhornInfo(int(log["niter"]) + 1, err, err < tol)
        return (log_pi, info) if return_info else log_pi
    m = torch.tensor(mass, dtype=cost.dtype, device=cost.device)
    plan, log = ot.partial.entropic_partial_wasserstein(
        a, b, cost, epsilon, m=m, method="sinkhorn_log", numItermax=max_iter, stopThr=tol, log=True
    )
    log_pi = plan.clamp_min(tiny).log()
    if not return_info:
        return log_pi
    return log_pi, _partial_info(plan.detach(), mass, log.get("err", []), max_iter, tol)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def gather_pairs(audio: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paired embeddings of every process, in rank order: audio [B_r, D], text [B_r, D] -> [sum_r B_r, D] each.

    Without an initialised process group (or with one process) the inputs are returned unchanged. Otherwise the
    copies from other processes are constants and this process's rows keep their autograd graph, as in CLIP-style
    training, and every process then computes the same global loss ``l``. Its gradient w.r.t. this process's rows
    is only this process's share of the gradient of ``l``, and DDP averages gradients over the ``N`` processes, so
    this process's rows carry their gradient multiplied by ``N``: the average of the ``N`` shares times ``N`` is the
    sum of the shares, i.e. the single-process gradient on the concatenated batch. Parameters that enter the loss
    directly (the metric ``M``, the InfoNCE temperature) see the whole global batch on every process and get the
    full gradient on each, which the average leaves unchanged. Batches of different sizes are padded for the
    collective and trimmed after it. The result is in at least float32.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return audio, text
    world, rank = dist.get_world_size(), dist.get_rank()
    d = audio.shape[1]
    both = torch.cat([audio, text], dim=1)  # one collective for both; bf16/fp16 gathered as float32 (gloo, the loss)
    both = both.to(torch.promote_types(both.dtype, torch.float32))
    size = torch.tensor([both.shape[0]], device=both.device)
    gathered = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(gathered, size)
    sizes = [int(s) for s in gathered]
    padded = F.pad(both.detach(), (0, 0, 0, max(sizes) - both.shape[0]))
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    parts = [p[:s] for p, s in zip(parts, sizes, strict=True)]
    parts[rank] = _ScaleGrad.apply(both, float(world))
    full = torch.cat(parts)
    return full[:, :d], full[:, d:]


def mltm_loss(
    audio: torch.Tensor,
    text: torch.Tensor,
    metric: torch.Tensor,
    epsilon: float = 0.03,
    mass: float = 1.0,
    max_iter: int = SINKHORN_MAX_ITER,
    tol: float = SINKHORN_TOL,
    gradient: str = "implicit",
    normalize_cost: bool = True,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SinkhornInfo]:
    """m-LTM loss for a batch of matching pairs: audio [B, D], text [B, D] (L2-normalised), metric ``L`` [D, D]
    (full, ``M = L L^T``) or ``m`` [D] (diagonal, ``M = diag(m)``) -> scalar (and ``SinkhornInfo``).

    ``-sum_ij (I_ij / B) log pi_ij`` with ``pi`` the entropic (partial if ``mass < 1``) OT plan of the
    max-normalised Mahalanobis cost (Luong et al., ICLR 2024, §3). Minimum ``log B`` for balanced OT. Sinkhorn
    stops at marginal error ``tol`` or after ``max_iter`` iterations; ``gradient`` see ``ot_log_plan``.
    """
    if audio.shape != text.shape:
        raise ValueError(f"m-LTM needs paired batches, got audio {tuple(audio.shape)} and text {tuple(text.shape)}")
    # the cost in at least float32 even under bf16/fp16 autocast (cost / epsilon spans ~33 nats); Sinkhorn in float64
    dtype = torch.promote_types(audio.dtype, torch.float32)
    with torch.autocast(device_type=audio.device.type, enabled=False):
        # rows are texts and columns audio, as in the official code (it matters only before convergence)
        cost = mahalanobis_cost(text.to(dtype), audio.to(dtype), metric.to(dtype))
        if normalize_cost:
            cost = cost / cost.max()
        log_pi, info = ot_log_plan(
            cost, epsilon=epsilon, mass=mass, max_iter=max_iter, tol=tol, gradient=gradient, return_info=True
        )
    loss = -log_pi.diagonal().mean()
    return (loss, info) if return_info else loss


# ----------------------------------------------------------------------------------------------- InfoNCE
def info_nce_loss(audio: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): audio [B, D], text [B, D] (L2-normalised), scale = 1 / temperature -> scalar."""
    logits = logit_scale * audio @ text.T
    target = torch.arange(audio.shape[0], device=audio.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


# --------------------------------------------------------------------------------------------------- MCM
MCM_DECAY = 0.5  # codebook i (1-based) is weighted by MCM_DECAY ** i (EnCLAP, eq. 5)
IGNORE_INDEX = -100  # label id ignored by the caption loss (padding)


def mcm_codebook_weights(n_codebooks: int, device: torch.device | None = None) -> torch.Tensor:
    """Weights ``(1/2)^i`` for codebooks ``i = 1..N`` (earlier RVQ codebooks matter more): -> [N]."""
    return MCM_DECAY ** torch.arange(1, n_codebooks + 1, dtype=torch.float32, device=device)


def mcm_loss(logits: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked codec modelling loss ``L_mcm = sum_i (1/2)^i CE_i`` (EnCLAP, eq. 5).

    ``logits[i]`` [M_i, K] are head ``i``'s scores at the masked positions of codebook ``i`` in the batch,
    ``targets[i]`` [M_i] the original codes there (positions with ``IGNORE_INDEX`` are skipped, so scores of
    every position with unmasked ones ignored give the same loss); ``CE_i`` is their mean cross entropy
    (0 when there are none). Returns (loss scalar, per-codebook CE [N], detached).
    """
    if len(logits) != len(targets):
        raise ValueError(f"mcm_loss: {len(logits)} logit tensors for {len(targets)} target tensors")
    device = logits[0].device
    weights = mcm_codebook_weights(len(logits), device)
    ce = [
        F.cross_entropy(lg.float(), t, ignore_index=IGNORE_INDEX, reduction="sum")
        / (t != IGNORE_INDEX).sum().clamp(min=1)
        for lg, t in zip(logits, targets, strict=True)
    ]
    per_codebook = torch.stack(ce)
    return (weights * per_codebook).sum(), per_codebook.detach()


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Caption cross entropy (EnCLAP eq. 4), averaged over the non-padding tokens of the batch.

    logits [B, T, V]; labels [B, T] with ``IGNORE_INDEX`` at padding. Label smoothing applies here only.
    """
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )
