"""Exact theory of the linear-mixture toy (Huang et al., Sec. 3 and App. C), in plain numpy.

Everything here is a closed form of the task priors ``pi`` (shape ``(K,)``) and spectra ``lam``
(shape ``(K, d)``, row ``k`` holding ``lambda_{k,1} >= lambda_{k,2} >= ...``, zeros for missing
directions). Task blocks sit on coordinates ``[k*d, (k+1)*d)`` of ``R^D``, so every task covariance
``C_k`` is diagonal and is stored as its diagonal ``cov[k]`` (shape ``(K, D)``).

Conventions the paper leaves open, fixed here:

* **Ties in utility** (e.g. ``beta = alpha = 2`` gives ``u_{1,2} = u_{2,1}``) are broken towards the
  more frequent task, then the leading direction: the optimum is not unique there, the order is.
* **Critical width** ``N*_k(m)``: the 1-based rank of feature ``(k, m)`` in that order, i.e. the
  smallest width whose optimal subspace holds ``m`` directions of task ``k``.
* **Frequent set F**: the smallest set of top-prior tasks whose prior mass is ``>= mass`` (the
  paper's words), or the ``count`` most frequent tasks when a count is given.
* **Prop. 6** ``N_r^crit = min{N >= 1 : mu^F_N <= pi_r lambda_r}`` with ``mu^F`` the eigenvalues of
  ``M_F`` in decreasing order, padded with zeros.
"""

from __future__ import annotations

import numpy as np


def zipf_priors(num_tasks: int, beta: float) -> np.ndarray:
    """Task frequencies ``pi_k ∝ k^-beta`` (k = 1..K), summing to one."""
    raw = np.arange(1, num_tasks + 1, dtype=float) ** -beta
    return raw / raw.sum()


def power_spectra(num_tasks: int, block: int, alpha: float) -> np.ndarray:
    """Spectra ``lambda_{k,j} = j^-alpha`` for every task (shape ``(K, block)``, ``lambda_{k,1} = 1``)."""
    return np.tile(np.arange(1, block + 1, dtype=float) ** -alpha, (num_tasks, 1))


def rank1_spectra(num_tasks: int, block: int) -> np.ndarray:
    """Rank-1 tasks: one direction of eigenvalue 1 per task (the Prop. 6 test)."""
    lam = np.zeros((num_tasks, block))
    lam[:, 0] = 1.0
    return lam


def diagonal_covariances(lam: np.ndarray, dim: int) -> np.ndarray:
    """The diagonals of ``C_k = B_k Lambda_k B_k^T`` with block ``k`` on coordinates ``[k*d, (k+1)*d)``."""
    num_tasks, block = lam.shape
    if num_tasks * block > dim:
        raise ValueError(f"{num_tasks} blocks of {block} do not fit in D = {dim}")
    cov = np.zeros((num_tasks, dim))
    for k in range(num_tasks):
        cov[k, k * block : (k + 1) * block] = lam[k]
    return cov


def feature_order(pi: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Features ``(k, j)`` (0-based) of positive utility ``u = pi_k lambda_{k,j}``, best first (Thm. 3).

    Ties go to the smaller task index, then the smaller direction index (a stable sort of the
    row-major list).
    """
    util = pi[:, None] * lam
    flat = util.ravel()
    order = np.argsort(-flat, kind="stable")
    order = order[flat[order] > 0]
    return np.stack(np.unravel_index(order, lam.shape), axis=1)


def optimal_counts(pi: np.ndarray, lam: np.ndarray, width: int) -> np.ndarray:
    """``n_k(N)``: how many directions of each task the optimal width-``N`` subspace keeps."""
    kept = feature_order(pi, lam)[:width, 0]
    return np.bincount(kept, minlength=len(pi))


def predicted_loss(pi: np.ndarray, lam: np.ndarray, width: int) -> np.ndarray:
    """``l*_k(N) = sum_{j > n_k(N)} lambda_{k,j}``: each task's loss at the width-``N`` optimum."""
    counts = optimal_counts(pi, lam, width)
    return np.array([lam[k, counts[k] :].sum() for k in range(len(pi))])


def predicted_normalised_loss(pi: np.ndarray, lam: np.ndarray, width: int) -> np.ndarray:
    """``l*_k(N) / Tr C_k``: the optimum's loss over the mean predictor's (the heatmap's unit)."""
    return predicted_loss(pi, lam, width) / lam.sum(axis=1)


def critical_widths(pi: np.ndarray, lam: np.ndarray, features: int = 3) -> np.ndarray:
    """``N*_k(m)`` for ``m = 1..features`` (shape ``(K, features)``); NaN where task ``k`` has no
    ``m``-th direction."""
    out = np.full((len(pi), features), np.nan)
    for rank, (k, j) in enumerate(feature_order(pi, lam), start=1):
        if j < features:
            out[k, j] = rank
    return out


def frequent_set(pi: np.ndarray, mass: float = 0.8, count: int = 0) -> np.ndarray:
    """Indices of F: the ``count`` most frequent tasks, or (``count == 0``) the smallest top-prior set
    whose mass is ``>= mass``. A tiny tolerance keeps ``mass = 1`` from missing by rounding."""
    order = np.argsort(-pi, kind="stable")
    if count:
        return np.sort(order[:count])
    size = int(np.searchsorted(np.cumsum(pi[order]), mass - 1e-12)) + 1
    return np.sort(order[: min(size, len(pi))])


def mixture_eigenvalues(pi: np.ndarray, lam: np.ndarray, tasks: np.ndarray | None = None) -> np.ndarray:
    """Eigenvalues of ``M_F = sum_{k in F} pi_k C_k`` in decreasing order (all tasks when ``tasks`` is None)."""
    chosen = np.arange(len(pi)) if tasks is None else np.asarray(tasks)
    return np.sort((pi[chosen, None] * lam[chosen]).ravel())[::-1]


def prop6_critical_width(competitor_eigs: np.ndarray, rare_utility: float) -> int:
    """``N_r^crit = min{N : mu^F_N <= pi_r lambda_r}`` (Prop. 6), ``mu^F`` padded with zeros."""
    return int(np.count_nonzero(np.asarray(competitor_eigs) > rare_utility)) + 1


def frequent_residual_at_optimum(competitor_eigs: np.ndarray, width: int) -> float:
    """``delta*_F`` at width ``N`` when one slot holds the rare feature: ``sum_{i >= N} mu^F_i``.

    At ``N = N_r^crit`` this is the kink of Fig. 3: the frequent set leaves room for the rare
    feature once its residual falls to this value.
    """
    return float(np.sum(np.asarray(competitor_eigs)[max(width - 1, 0) :]))


def one_neuron_decay(eta: float, gap: int | np.ndarray, lam_common: float = 1.0) -> np.ndarray:
    """App. C.4: rare-task alignment after ``G`` common-task steps, ``theta_G/theta_0 = (1 - 2 eta lam)^G``.

    The paper's ``e^{-2 eta G}`` is this product's small-step limit (``lam = 1``); see
    :func:`one_neuron_decay_exponential`.
    """
    return (1.0 - 2.0 * eta * lam_common) ** np.asarray(gap, dtype=float)


def one_neuron_decay_exponential(eta: float, gap: int | np.ndarray, lam_common: float = 1.0) -> np.ndarray:
    """``e^{-2 eta lam G}``, the continuous-time form of :func:`one_neuron_decay`."""
    return np.exp(-2.0 * eta * lam_common * np.asarray(gap, dtype=float))


# ------------------------------------------------------------------ metrics of a subspace U (D x N)


def orthonormal_basis(weight: np.ndarray) -> np.ndarray:
    """An orthonormal basis ``U`` (``D x N``) of the row space of a bottleneck ``W`` (``N x D``)."""
    q, _ = np.linalg.qr(weight.T)
    return q


def captured_signal(basis: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``s_k = Tr(P_U C_k) / Tr C_k`` for diagonal ``C_k`` (rows of ``cov``); ``P_U = U U^T``."""
    leverage = np.sum(basis**2, axis=1)  # diag(P_U)
    return cov @ leverage / cov.sum(axis=1)


def corrected_signal(signal: np.ndarray, width: int, dim: int) -> np.ndarray:
    """``s~_k = (s_k - N/D) / (1 - N/D)``: 0 for a random N-dim subspace, 1 for full capture."""
    chance = width / dim
    return (signal - chance) / (1.0 - chance)


def frequent_residual(basis: np.ndarray, pi: np.ndarray, cov: np.ndarray, tasks: np.ndarray) -> float:
    """``delta_F = Tr((I - P_U) M_F) = sum_{k in F} pi_k (1 - s_k) ||a_k||^2`` with ``||a_k||^2 = Tr C_k``."""
    leverage = np.sum(basis**2, axis=1)
    m_f = pi[tasks] @ cov[tasks]
    return float(m_f @ (1.0 - leverage))


def riemannian_gradient(basis: np.ndarray, cov_diag: np.ndarray) -> np.ndarray:
    """``G(U) = 2 (I - P_U) C U`` for a diagonal ``C`` (its diagonal ``cov_diag``)."""
    cu = cov_diag[:, None] * basis
    return 2.0 * (cu - basis @ (basis.T @ cu))


def thm4_bound(pi: np.ndarray, cov: np.ndarray, tasks: np.ndarray, residual: float) -> float:
    """Thm. 4: ``||G_F(U)||_F <= 2 sqrt(lambda_1(M_F) delta_F(U))``."""
    top = float(np.max(pi[tasks] @ cov[tasks]))
    return 2.0 * float(np.sqrt(top * max(residual, 0.0)))


def gradient_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine between two gradients (NaN when either vanishes)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(np.sum(a * b) / (na * nb)) if na > 0 and nb > 0 else float("nan")
