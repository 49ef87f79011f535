"""Representation probes (Huang et al. 2026, Sec. 4.3), as pure numpy functions.

* :func:`linear_probe_r2`: is a scalar (T_CMP's ``val(TOK)``) linearly decodable from features (a
  layer's residual stream)? Centre, project onto the top principal components, least squares with a
  small ridge, R² on held-out folds. Folds split *groups* (table tokens), so the probe is scored on
  tokens it never saw: it must generalise along a value direction, not memorise token identities.
* :func:`fourier_mode_count`: how many Fourier modes carry the class means of a layer (T_ADD: the
  residual at an operand, averaged per operand value mod P)? P_k is the share of the class means'
  variance at frequency k (k and P−k together); a mode counts when P_k > 2·P_null, P_null = 2/(P−1).

Both are deterministic: the only randomness (fold assignment, shuffled controls) comes from ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROBE_COMPONENTS = 50
"""Principal components the linear probe regresses on (the paper: the top 50 PCs)."""

PROBE_FOLDS = 5
"""Cross-validation folds of the linear probe (over groups: table tokens)."""

PROBE_RIDGE = 0.1
"""Ridge penalty of the linear probe, relative to the mean variance of the kept components: small
enough to leave a real feature's fit intact, large enough that near-degenerate components of a
few-token fit cannot blow up."""


def _fold_of_groups(groups: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, int]:
    """Fold index per sample (groups kept whole), and the number of folds used."""
    unique, inverse = np.unique(groups, return_inverse=True)
    k = min(folds, len(unique))
    order = np.random.default_rng(seed).permutation(len(unique))
    group_fold = np.empty(len(unique), dtype=np.int64)
    group_fold[order] = np.arange(len(unique)) % k
    return group_fold[inverse], k


def _fit_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_components: int, ridge: float
) -> np.ndarray:
    """Held-out predictions of a ridge fit on the top ``n_components`` PCs of ``x_train``."""
    mean_x, mean_y = x_train.mean(axis=0), y_train.mean()
    xc = x_train - mean_x
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    # Keep only components with real variance: the centred matrix has rank <= n_train - 1, and the
    # directions past it are round-off that least squares would amplify.
    tol = s[0] * max(xc.shape) * np.finfo(np.float64).eps if len(s) else 0.0
    k = int(min(n_components, np.sum(s > tol)))
    if k == 0:
        return np.full(len(x_test), mean_y)
    s, vt = s[:k], vt[:k]
    z = xc @ vt.T  # [n_train, k], column i has squared norm s_i^2
    lam = ridge * float(np.mean(s**2))
    w = (z.T @ (y_train - mean_y)) / (s**2 + lam)
    return (x_test - mean_x) @ vt.T @ w + mean_y


def linear_probe_r2(
    features: np.ndarray,
    target: np.ndarray,
    groups: np.ndarray | None = None,
    n_components: int = PROBE_COMPONENTS,
    folds: int = PROBE_FOLDS,
    ridge: float = PROBE_RIDGE,
    seed: int = 0,
) -> float:
    """Cross-validated R² of a linear probe from ``features`` [n, d] to ``target`` [n].

    Per fold: centre the training features, keep their top ``n_components`` principal components
    (fewer when d, the training rank or the training groups minus one are fewer), solve ridge least squares on them (penalty
    ``ridge`` × the mean kept component variance), predict the held-out fold. ``groups`` [n] (e.g.
    the table token of each sample) are never split across folds; None puts every sample in its
    own group. R² = 1 − SSE/SST over all out-of-fold predictions, SST around the mean target: 0 is
    predicting the mean, below 0 worse than that (what a target unrelated to the features gives).
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"features [n, d] and target [n] expected, got {x.shape} and {y.shape}")
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    if len(g) != len(y):
        raise ValueError(f"groups: {len(g)} entries for {len(y)} samples")
    if len(np.unique(g)) < 2:
        raise ValueError("groups: at least two groups are needed to hold one out")
    sst = float(np.sum((y - y.mean()) ** 2))
    if sst == 0.0:
        raise ValueError("target: constant, so R² is undefined")
    fold, k = _fold_of_groups(g, folds, seed)
    pred = np.empty_like(y)
    for f in range(k):
        test = fold == f
        # The target takes one value per group, so components past (training groups - 1) can only
        # fit the noise within the groups seen: with few groups they would interpolate them exactly.
        kept = min(n_components, len(np.unique(g[~test])) - 1)
        pred[test] = _fit_predict(x[~test], y[~test], x[test], kept, ridge)
    return 1.0 - float(np.sum((y - pred) ** 2)) / sst


def shuffled_target(target: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The control target: the groups' values dealt out again at random (each group keeps one value,
    so for T_CMP it is another random bijection of the table onto the same values)."""
    y = np.asarray(target, dtype=np.float64)
    unique, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    values = y[first]
    return values[rng.permutation(len(unique))][inverse]


def control_r2(
    features: np.ndarray,
    target: np.ndarray,
    groups: np.ndarray,
    repeats: int = 5,
    n_components: int = PROBE_COMPONENTS,
    folds: int = PROBE_FOLDS,
    ridge: float = PROBE_RIDGE,
    seed: int = 0,
) -> float:
    """Mean :func:`linear_probe_r2` over ``repeats`` shuffled targets (:func:`shuffled_target`): what
    the probe scores when there is no value direction to find (near or below 0)."""
    rng = np.random.default_rng([seed, 0xC0])
    scores = [
        linear_probe_r2(
            features, shuffled_target(target, groups, rng), groups, n_components, folds, ridge, seed
        )
        for _ in range(repeats)
    ]
    return float(np.mean(scores))


@dataclass
class FourierModes:
    """The Fourier spectrum of class means over P classes and the modes above threshold."""

    fractions: list[float]
    """P_k for k = 1 … floor(P/2): share of the class means' variance at frequency k (k and P−k
    counted together); they sum to 1."""
    modes: list[int]
    """The frequencies k whose P_k exceeds :attr:`threshold`."""
    p_null: float
    """2/(P−1): the share of one mode if the variance were spread evenly over all frequencies."""
    threshold: float
    """2·P_null: a mode counts above this."""

    @property
    def count(self) -> int:
        return len(self.modes)


def fourier_mode_count(class_means: np.ndarray) -> FourierModes:
    """Fourier modes of ``class_means`` [P, d], row a the mean feature of class a (a = 0 … P−1).

    The means are centred over the classes, transformed along the class axis (DFT), and the power
    at each frequency summed over the d feature dimensions. A mode counts when its share P_k of the
    total exceeds 2·P_null with P_null = 2/(P−1) (Huang et al.). Means that do not vary at all have
    no spectrum: all fractions 0, no mode.
    """
    m = np.asarray(class_means, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 3:
        raise ValueError(f"class_means: expected [P, d] with P >= 3 classes, got shape {m.shape}")
    p = m.shape[0]
    m = m - m.mean(axis=0)
    power = np.sum(np.abs(np.fft.fft(m, axis=0)) ** 2, axis=1)  # [P]; power[0] = 0 after centring
    total = float(power[1:].sum())
    half = p // 2
    # Frequency k and P-k are one real mode (a cos/sin pair); at even P, k = P/2 has no partner.
    paired = np.array([power[k] + (power[p - k] if p - k != k else 0.0) for k in range(1, half + 1)])
    fractions = paired / total if total > 0 else np.zeros(half)
    p_null = 2.0 / (p - 1)
    threshold = 2.0 * p_null
    modes = [k for k in range(1, half + 1) if fractions[k - 1] > threshold]
    return FourierModes([float(f) for f in fractions], modes, p_null, threshold)


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """Mean of ``features`` [n, d] per label in 0 … num_classes−1, and the labels with no sample
    (their rows are NaN)."""
    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    sums = np.zeros((num_classes, x.shape[1]))
    np.add.at(sums, labels, x)
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    return means, [int(c) for c in np.flatnonzero(counts == 0)]
