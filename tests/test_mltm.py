"""m-LTM loss (dcase.losses) against an independent dense NumPy log-domain Sinkhorn, gradients, PSD metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from dcase.losses import info_nce_loss, mahalanobis_cost, mltm_loss, ot_log_plan


def np_sinkhorn_log(C: np.ndarray, eps: float, n_iter: int = 5000) -> np.ndarray:
    """Balanced entropic OT between uniform marginals, log domain: returns log pi."""
    n, m = C.shape
    la, lb = np.full(n, -np.log(n)), np.full(m, -np.log(m))
    f, g = np.zeros(n), np.zeros(m)
    for _ in range(n_iter):
        f = eps * (la - logsumexp((g[None, :] - C) / eps, axis=1))
        g = eps * (lb - logsumexp((f[:, None] - C) / eps, axis=0))
    return (f[:, None] + g[None, :] - C) / eps


def np_partial_log(C: np.ndarray, eps: float, mass: float, n_iter: int = 3000) -> np.ndarray:
    """Entropic partial OT (Benamou et al. 2015, Prop. 5): KL projections with Dykstra corrections,
    in the log domain: constraints rows <= a, columns <= b, total mass = ``mass``. Returns log pi."""
    n, m = C.shape
    la, lb = np.full(n, -np.log(n)), np.full(m, -np.log(m))
    lk = -C / eps
    lk = lk + np.log(mass) - logsumexp(lk)
    q = [np.zeros_like(C) for _ in range(3)]
    for _ in range(n_iter):
        prev = lk
        y = lk + q[0]
        lk = y + np.minimum(la - logsumexp(y, axis=1), 0.0)[:, None]
        q[0] = y - lk
        y = lk + q[1]
        lk = y + np.minimum(lb - logsumexp(y, axis=0), 0.0)[None, :]
        q[1] = y - lk
        y = lk + q[2]
        lk = y + np.log(mass) - logsumexp(y)
        q[2] = y - lk
        if np.abs(lk - prev).max() < 1e-13:
            break
    return lk


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_mahalanobis_cost_matches_definition() -> None:
    rng = np.random.default_rng(0)
    a, t, L = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.normal(size=(3, 3))
    M = L @ L.T
    want = np.array([[np.sqrt((ai - tj) @ M @ (ai - tj)) for tj in t] for ai in a])
    got = mahalanobis_cost(torch.tensor(a), torch.tensor(t), torch.tensor(L)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_balanced_plan_and_loss_match_numpy() -> None:
    rng = np.random.default_rng(1)
    B, D, eps = 6, 4, 0.03
    a, t = _unit(rng.normal(size=(B, D))), _unit(rng.normal(size=(B, D)))
    L = np.eye(D) + 0.3 * rng.normal(size=(D, D))
    C = np.sqrt(np.maximum(((a[:, None, :] - t[None]) @ (L @ L.T) * (a[:, None, :] - t[None])).sum(-1), 0))
    C = C / C.max()
    want = np_sinkhorn_log(C, eps)
    got = ot_log_plan(torch.tensor(C), epsilon=eps, num_iter=5000, stop_thr=1e-14).numpy()
    np.testing.assert_allclose(np.exp(got), np.exp(want), atol=1e-9)
    np.testing.assert_allclose(np.exp(got).sum(1), np.full(B, 1 / B), atol=1e-9)
    loss = mltm_loss(torch.tensor(a), torch.tensor(t), torch.tensor(L), epsilon=eps, num_iter=5000).item()
    assert loss == pytest.approx(-np.mean(np.diag(want)), abs=1e-6)
    assert loss >= np.log(B) - 1e-9  # pi_ii <= 1/B


def test_partial_plan_matches_numpy_and_moves_mass() -> None:
    rng = np.random.default_rng(2)
    B, eps, mass = 5, 0.05, 0.95
    C = rng.uniform(size=(B, B))
    want = np_partial_log(C, eps, mass)
    got = ot_log_plan(torch.tensor(C), epsilon=eps, mass=mass, num_iter=3000, stop_thr=1e-14).numpy()
    P = np.exp(got)
    np.testing.assert_allclose(P, np.exp(want), atol=1e-8)
    assert P.sum() == pytest.approx(mass, abs=1e-8)
    assert (P.sum(0) <= 1 / B + 1e-8).all() and (P.sum(1) <= 1 / B + 1e-8).all()


def test_gradients_flow_and_match_finite_differences() -> None:
    torch.manual_seed(0)
    B, D = 3, 2
    a = torch.nn.functional.normalize(torch.randn(B, D, dtype=torch.float64), dim=1).requires_grad_()
    t = torch.nn.functional.normalize(torch.randn(B, D, dtype=torch.float64), dim=1).requires_grad_()
    L = (torch.eye(D, dtype=torch.float64) + 0.1 * torch.randn(D, D, dtype=torch.float64)).requires_grad_()

    def f(a, t, L):  # fixed iteration count (stop_thr 0) -> a smooth function of the inputs
        cost = mahalanobis_cost(a, t, L)
        return -ot_log_plan(cost / cost.max(), epsilon=0.3, num_iter=30, stop_thr=0.0).diagonal().mean()

    assert torch.autograd.gradcheck(f, (a, t, L), eps=1e-6, atol=1e-5)
    loss = mltm_loss(a, t, L, epsilon=0.03)
    loss.backward()
    for x in (a, t, L):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_metric_stays_psd_and_loss_decreases() -> None:
    torch.manual_seed(0)
    B, D = 16, 8
    a = torch.nn.functional.normalize(torch.randn(B, D), dim=1)
    t = torch.nn.functional.normalize(a + 0.8 * torch.randn(B, D), dim=1)
    L = torch.nn.Parameter(torch.eye(D))
    opt = torch.optim.Adam([L], lr=0.1)
    losses = []
    for _ in range(12):
        loss = mltm_loss(a, t, L, epsilon=0.05, num_iter=30)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    M = (L @ L.T).detach().double()
    assert torch.linalg.eigvalsh(M).min() >= -1e-6
    assert not torch.allclose(L.detach(), torch.eye(D))  # it was trained
    assert losses[-1] < losses[0] - 0.05


def test_info_nce_matches_manual() -> None:
    rng = np.random.default_rng(3)
    a, t = _unit(rng.normal(size=(4, 3))), _unit(rng.normal(size=(4, 3)))
    s = 10.0 * a @ t.T
    ce_rows = -np.mean(np.diag(s) - logsumexp(s, axis=1))
    ce_cols = -np.mean(np.diag(s) - logsumexp(s, axis=0))
    got = info_nce_loss(torch.tensor(a), torch.tensor(t), 10.0).item()
    assert got == pytest.approx(0.5 * (ce_rows + ce_cols), rel=1e-10)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="paired"):
        mltm_loss(torch.zeros(3, 2), torch.zeros(4, 2), torch.eye(2))
    with pytest.raises(ValueError, match="mass"):
        ot_log_plan(torch.rand(3, 3), mass=1.5)
