"""Training losses: m-LTM (retriever) and MCM + caption cross entropy (captioner, see the end of the file).

m-LTM, the mini-batch Learning-to-Match loss of Luong et al., "Revisiting deep audio-text retrieval through
the lens of transportation" (ICLR 2024), used by the EnCLAP DCASE2024 report (§3.2) to train its retrievers:

- ground cost: the Mahalanobis distance ``C_ij = sqrt((a_i - t_j)^T M (a_i - t_j))`` between the L2-normalised
  audio and text embeddings of a batch, with a learned PSD matrix ``M = L L^T`` (``L`` starts at the identity,
  so every update keeps ``M`` PSD without projection);
- the cost is divided by its maximum over the batch (as the official implementation does), so ``epsilon`` is
  relative to the cost range;
- the plan ``pi`` is the entropic OT plan between uniform marginals (log-domain Sinkhorn of POT, torch
  backend, differentiable by unrolling), or the entropic *partial* plan transporting mass ``m < 1``
  (the paper's variant for noisy pairs);
- loss ``= -sum_ij (I_ij / B) log pi_ij`` = KL(pi_hat || pi) up to a constant, with the identity plan
  ``pi_hat = I / B`` as the ground-truth matching.

A symmetric InfoNCE (CLIP) loss is provided for comparison.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "caption_loss",
    "info_nce_loss",
    "mahalanobis_cost",
    "mcm_codebook_weights",
    "mcm_loss",
    "mltm_loss",
    "ot_log_plan",
]


# ------------------------------------------------------------------------------------------------- m-LTM
def mahalanobis_cost(audio: torch.Tensor, text: torch.Tensor, L: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mahalanobis distances with ``M = L L^T``: audio [Na, D], text [Nt, D], L [D, D] -> [Na, Nt].

    ``C_ij = ||L^T (a_i - t_j)||``; computed as ``sqrt(|a'|^2 + |t'|^2 - 2 a'.t')`` with ``a' = a L``, clamped
    at ``eps`` before the square root so the gradient stays finite for identical pairs.
    """
    pa = audio @ L
    pt = text @ L
    sq = (pa * pa).sum(-1, keepdim=True) + (pt * pt).sum(-1)[None, :] - 2.0 * pa @ pt.T
    return sq.clamp_min(eps).sqrt()


def ot_log_plan(
    cost: torch.Tensor, epsilon: float = 0.03, mass: float = 1.0, num_iter: int = 100, stop_thr: float = 1e-9
) -> torch.Tensor:
    """Log of the entropic OT plan between uniform marginals: cost [Na, Nt] -> log pi [Na, Nt].

    ``mass == 1``: balanced entropic OT, ``ot.sinkhorn(..., method="sinkhorn_log")``; the log plan is rebuilt
    exactly from the returned dual potentials, ``log pi_ij = log u_i - C_ij / eps + log v_j`` (no underflow).
    ``mass < 1``: entropic partial OT transporting ``mass`` (``ot.partial.entropic_partial_wasserstein``,
    log-domain Bregman projections); its plan is returned in the linear domain, so the log is taken after
    clamping at the dtype's smallest normal number.
    Gradients flow through the unrolled iterations (POT's torch backend).
    """
    import ot

    na, nt = cost.shape
    a = torch.full((na,), 1.0 / na, dtype=cost.dtype, device=cost.device)
    b = torch.full((nt,), 1.0 / nt, dtype=cost.dtype, device=cost.device)
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"transported mass must be in (0, 1], got {mass}")
    if mass >= 1.0:
        _, log = ot.sinkhorn(
            a, b, cost, epsilon, method="sinkhorn_log", numItermax=num_iter, stopThr=stop_thr, log=True, warn=False
        )
        return log["log_u"][:, None] - cost / epsilon + log["log_v"][None, :]
    m = torch.tensor(mass, dtype=cost.dtype, device=cost.device)
    plan = ot.partial.entropic_partial_wasserstein(
        a, b, cost, epsilon, m=m, method="sinkhorn_log", numItermax=num_iter, stopThr=stop_thr
    )
    return plan.clamp_min(torch.finfo(cost.dtype).tiny).log()


def mltm_loss(
    audio: torch.Tensor,
    text: torch.Tensor,
    L: torch.Tensor,
    epsilon: float = 0.03,
    mass: float = 1.0,
    num_iter: int = 100,
    normalize_cost: bool = True,
) -> torch.Tensor:
    """m-LTM loss for a batch of matching pairs: audio [B, D], text [B, D] (L2-normalised), L [D, D] -> scalar.

    ``-sum_ij (I_ij / B) log pi_ij`` with ``pi`` the entropic (partial if ``mass < 1``) OT plan of the
    max-normalised Mahalanobis cost (Luong et al., ICLR 2024, §3). Minimum ``log B`` for balanced OT.
    """
    if audio.shape != text.shape:
        raise ValueError(f"m-LTM needs paired batches, got audio {tuple(audio.shape)} and text {tuple(text.shape)}")
    # Sinkhorn in at least float32 even under bf16/fp16 autocast (cost / epsilon spans ~33 nats)
    dtype = torch.promote_types(audio.dtype, torch.float32)
    with torch.autocast(device_type=audio.device.type, enabled=False):
        cost = mahalanobis_cost(audio.to(dtype), text.to(dtype), L.to(dtype))
        if normalize_cost:
            cost = cost / cost.max()
        log_pi = ot_log_plan(cost, epsilon=epsilon, mass=mass, num_iter=num_iter)
    return -log_pi.diagonal().mean()


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
