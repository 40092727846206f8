"""m-LTM loss (dcase.losses) against an independent dense NumPy log-domain Sinkhorn, gradients, PSD metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from dcase.losses import info_nce_loss, mahalanobis_cost, mltm_loss, ot_log_plan, sinkhorn_potentials


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
    got = ot_log_plan(torch.tensor(C), epsilon=eps, max_iter=5000, tol=1e-14).numpy()
    np.testing.assert_allclose(np.exp(got), np.exp(want), atol=1e-9)
    np.testing.assert_allclose(np.exp(got).sum(1), np.full(B, 1 / B), atol=1e-9)
    loss = mltm_loss(torch.tensor(a), torch.tensor(t), torch.tensor(L), epsilon=eps, max_iter=5000, tol=1e-13).item()
    assert loss == pytest.approx(-np.mean(np.diag(want)), abs=1e-6)
    assert loss >= np.log(B) - 1e-9  # pi_ii <= 1/B


def test_partial_plan_matches_numpy_and_moves_mass() -> None:
    rng = np.random.default_rng(2)
    B, eps, mass = 5, 0.05, 0.95
    C = rng.uniform(size=(B, B))
    want = np_partial_log(C, eps, mass)
    got = ot_log_plan(torch.tensor(C), epsilon=eps, mass=mass, max_iter=3000, tol=1e-14).numpy()
    P = np.exp(got)
    np.testing.assert_allclose(P, np.exp(want), atol=1e-8)
    assert P.sum() == pytest.approx(mass, abs=1e-8)
    assert (P.sum(0) <= 1 / B + 1e-8).all() and (P.sum(1) <= 1 / B + 1e-8).all()


def test_gradients_flow_and_match_finite_differences() -> None:
    """The implicit gradient of the converged plan against finite differences (of converged solves)."""
    torch.manual_seed(0)
    B, D = 4, 3
    a = torch.nn.functional.normalize(torch.randn(B, D, dtype=torch.float64), dim=1).requires_grad_()
    t = torch.nn.functional.normalize(torch.randn(B, D, dtype=torch.float64), dim=1).requires_grad_()
    L = (torch.eye(D, dtype=torch.float64) + 0.1 * torch.randn(D, D, dtype=torch.float64)).requires_grad_()
    m = (1.0 + torch.rand(D, dtype=torch.float64)).requires_grad_()

    def f(a, t, metric):
        return mltm_loss(a, t, metric, epsilon=0.3, max_iter=20000, tol=1e-15)

    assert torch.autograd.gradcheck(f, (a, t, L), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(f, (a, t, m), eps=1e-6, atol=1e-6)
    # a general upstream gradient on the whole log plan, not only its diagonal
    w = torch.randn(B, B, dtype=torch.float64)

    def g(c):
        return (ot_log_plan(c, epsilon=0.2, max_iter=20000, tol=1e-15) * w).sum()

    c = torch.rand(B, B, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(g, (c,), eps=1e-6, atol=1e-6)
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
        loss = mltm_loss(a, t, L, epsilon=0.05, max_iter=30)
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


# ---------------------------------------------------------------------------------- the official formula
def official_mltm(audio: torch.Tensor, text: torch.Tensor, M: torch.Tensor, eps: float = 0.03, n_iter: int = 1000):
    """An independent transcription of the official m-LTM loss (``MahalalobisLoss.forward`` of Luong et al.'s code
    with ``ot.sinkhorn``'s defaults), in plain torch; returns (loss, iterations).

    Rows are texts, columns audio: ``d_ijk = a_jk - t_ik``; ``C_ij = sqrt(sum_k d_ijk^2 M_kk)`` (the einsum
    ``ijk,ikj,kk->ij`` reads only the diagonal of ``M``), divided by its maximum. Sinkhorn-Knopp from
    ``u = v = 1 / B``: ``v = b / K^T u``, ``u = a / K v``; at iterations 0, 10, 20, ... it stops when
    ``||v * K^T u - b||_2 < 1e-9``. Loss ``sum_ij -(I_ij / B) log pi_ij``. Gradients: autograd through the loop.
    """
    B = audio.shape[0]
    d = audio[None, :, :] - text[:, None, :]
    C = torch.einsum("ijk,ikj,kk->ij", d, d.transpose(1, 2), M).sqrt()
    C = C / C.max()
    K = torch.exp(-C / eps)
    marg = torch.full((B,), 1.0 / B, dtype=audio.dtype)
    u, v = marg.clone(), marg.clone()
    for it in range(n_iter):
        v = marg / (K.T @ u)
        u = marg / (K @ v)
        if it % 10 == 0 and torch.linalg.vector_norm(v * (K.T @ u) - marg) < 1e-9:
            break
    pi = u[:, None] * K * v[None, :]
    return -(torch.eye(B, dtype=audio.dtype) / B * pi.log()).sum(), it + 1


def _pairs(B: int, D: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    a = torch.nn.functional.normalize(x, dim=1)
    t = torch.nn.functional.normalize(x + noise * torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    return a, t


@pytest.mark.parametrize("B,noise", [(16, 2.0), (48, 1.5)])
def test_diagonal_mltm_equals_official_formula_when_converged(B: int, noise: float) -> None:
    """Done-when of issue 10: loss and gradients equal the official formula to 1e-5 (diagonal metric, converged)."""
    D = 24
    a0, t0 = _pairs(B, D, noise, seed=B)
    M = torch.diag(1.0 + torch.rand(D, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    a, t, M = a0.clone().requires_grad_(), t0.clone().requires_grad_(), M.requires_grad_()
    want, n_official = official_mltm(a, t, M)
    gw = torch.autograd.grad(want, (a, t, M))
    assert n_official < 1000  # the official solver stopped at its 1e-9 threshold: converged
    a2, t2 = a0.clone().requires_grad_(), t0.clone().requires_grad_()
    m = torch.diagonal(M.detach()).clone().requires_grad_()
    got, info = mltm_loss(a2, t2, m, return_info=True)
    gg = torch.autograd.grad(got, (a2, t2, m))
    assert info.converged and info.marginal_error < 1e-9 and info.iterations <= 1000
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    for x, y in zip(gg[:2], gw[:2], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5 * y.abs().max().item())
    torch.testing.assert_close(gg[2], torch.diagonal(gw[2]), rtol=1e-5, atol=1e-5 * gw[2].abs().max().item())
    assert gw[2].abs().sum() - torch.diagonal(gw[2]).abs().sum() == 0  # only diag(M) enters the official cost


def test_unrolled_mode_is_the_official_solver_even_unconverged() -> None:
    """``gradient="unrolled"`` (POT's ot.sinkhorn) reproduces the official loss and gradients iteration for
    iteration, also when 1000 iterations do not reach the threshold (well-separated pairs)."""
    a0, t0 = _pairs(24, 16, 0.6, seed=3)
    m0 = 1.0 + torch.rand(16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, t, M = a0.clone().requires_grad_(), t0.clone().requires_grad_(), torch.diag(m0).requires_grad_()
    want, n_official = official_mltm(a, t, M)
    gw = torch.autograd.grad(want, (a, t))
    assert n_official == 1000  # not converged
    a2, t2 = a0.clone().requires_grad_(), t0.clone().requires_grad_()
    got, info = mltm_loss(a2, t2, m0, gradient="unrolled", return_info=True)
    gg = torch.autograd.grad(got, (a2, t2))
    assert not info.converged and info.iterations == 1000 and info.marginal_error > 1e-9
    assert got.item() == pytest.approx(want.item(), abs=1e-9)
    for x, y in zip(gg, gw, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-9)
    # the implicit default reports the same non-convergence
    _, info2 = mltm_loss(a0, t0, m0, return_info=True)
    assert not info2.converged and info2.iterations == 1000


def test_diagonal_metric_equals_full_metric_with_diagonal_L() -> None:
    a, t = _pairs(6, 5, 1.0, seed=4)
    m = 1.0 + torch.rand(5, dtype=torch.float64)
    want = np.sqrt(((a[:, None, :] - t[None]) ** 2 * m).sum(-1).numpy())
    np.testing.assert_allclose(mahalanobis_cost(a, t, m).numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(mahalanobis_cost(a, t, torch.diag(m.sqrt())).numpy(), want, rtol=1e-10)
    assert mltm_loss(a, t, m).item() == pytest.approx(mltm_loss(a, t, torch.diag(m.sqrt())).item(), abs=1e-12)


def test_sinkhorn_stops_at_tolerance_and_reports() -> None:
    a, t = _pairs(32, 16, 2.0, seed=5)
    C = mahalanobis_cost(a, t, torch.eye(16, dtype=torch.float64))
    C = C / C.max()
    _, _, info = sinkhorn_potentials(C, 0.03, max_iter=1000, tol=1e-9)
    assert info.converged and info.iterations % 10 == 0 and info.marginal_error < 1e-9
    _, _, short = sinkhorn_potentials(C, 0.03, max_iter=7, tol=1e-9)
    assert not short.converged and short.iterations == 7 and short.marginal_error > 1e-9
    # a looser tolerance stops earlier
    _, _, loose = sinkhorn_potentials(C, 0.03, max_iter=1000, tol=1e-4)
    assert loose.iterations < info.iterations


def test_partial_transport_reports_its_solve() -> None:
    a, t = _pairs(8, 4, 1.0, seed=6)
    a.requires_grad_()
    loss, info = mltm_loss(a, t, torch.eye(4, dtype=torch.float64), mass=0.95, epsilon=0.1, return_info=True)
    loss.backward()
    assert info.converged and info.marginal_error < 1e-8 and 1 <= info.iterations <= 1000
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    _, short = mltm_loss(a, t, torch.eye(4, dtype=torch.float64), mass=0.95, epsilon=0.1, max_iter=5, return_info=True)
    assert not short.converged and short.iterations == 5
