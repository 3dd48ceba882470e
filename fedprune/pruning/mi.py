"""Mutual-information estimators (in nats) behind one interface; pure torch.

``MIEstimator.mi(x, y)`` estimates I(X; Y) for ``x`` of shape ``(n,)``/``(n, dx)`` and a
target ``y``; ``scores(units, target)`` scores every column of ``units`` ``(n, k)`` against
the same target in one vectorised pass (``scores(u, t)[j] == mi(u[:, j], t)``).

A target is either continuous, ``(n,)``/``(n, dy)`` float, or discrete class labels,
``(n,)`` of an integer or bool dtype. Estimators compute in float64.

* ``GaussianMI``: I = 0.5 (logdet Rx + logdet Ry - logdet Rxy) on the correlation
  matrix, shrunk towards the identity (``R_s = (1 - lam) R + lam I``; ``lam`` fixed or
  Ledoit-Wolf) so it stays finite for collinear or dead (constant) columns.
  Labels become a one-hot code without its last column, which makes the estimate the
  homoscedastic (pooled within-class covariance, LDA) Gaussian MI:
  0.5 log(det Sigma_total / det Sigma_within) for one unit.
* ``BinnedMI``: plug-in estimate on equal-frequency (quantile) bins per variable, with the
  Miller-Madow bias correction by default. Labels are their own bins; a multi-dimensional
  variable is first projected onto its top principal component (of the standardised data).
* ``greedy_order``: redundancy-aware forward selection by the Gaussian conditional MI
  I(x; Y | Z) = I(x; [Y, Z]) - I(x; Z), Z = the units already chosen.
"""

from __future__ import annotations

import math

import torch

_EPS = 1e-12


def is_labels(target: torch.Tensor) -> bool:
    """True for a 1-D integer/bool tensor (class labels)."""
    return target.dim() == 1 and not torch.is_floating_point(target)


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    """``(n,)`` or ``(n, ...)`` float tensor as ``(n, d)`` float64."""
    x = x.detach().to(torch.float64)
    return x.reshape(x.shape[0], -1)


def one_hot_code(labels: torch.Tensor) -> torch.Tensor:
    """``(n, C-1)`` float64 one-hot code of the labels present (last class dropped)."""
    _, inverse = torch.unique(labels, return_inverse=True)
    code = torch.nn.functional.one_hot(inverse).to(torch.float64)
    return code[:, :-1]


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance columns (population std); constant columns become 0.

    A target with no columns (one-hot code of a single class) stays empty: it carries
    no information, so every MI against it is 0.
    """
    if x.numel() == 0:
        return x
    x = x - x.mean(dim=0)
    std = x.pow(2).mean(dim=0).sqrt()
    scale = torch.where(std > 1e-12 * (1 + x.abs().max()), 1.0 / std, torch.zeros_like(std))
    return x * scale


def ledoit_wolf(z: torch.Tensor) -> float:
    """Ledoit-Wolf shrinkage intensity of the correlation matrix of standardised ``z``.

    Target: the identity; only off-diagonal terms count (the diagonal is exactly 1).
    Cost O(n d^2).
    """
    n = z.shape[0]
    corr = z.T @ z / n
    off = corr - torch.diag(torch.diagonal(corr))
    delta = float(off.pow(2).sum())
    if delta <= 0:  # one column, or already uncorrelated: nothing to shrink
        return 0.0
    fourth = float((z.pow(2).sum(dim=1).pow(2) - z.pow(4).sum(dim=1)).sum())
    beta = (fourth - n * delta) / n**2
    return min(max(beta / delta, 0.0), 1.0)


class MIEstimator:
    """Interface: ``mi(x, target) -> float`` and ``scores(units, target) -> (k,)`` tensor."""

    name = "base"

    def mi(self, x: torch.Tensor, target: torch.Tensor) -> float:
        """I(X; target) in nats for ``x`` ``(n,)`` or ``(n, dx)``."""
        raise NotImplementedError

    def scores(self, units: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """I(unit_j; target) for every column ``j`` of ``units`` ``(n, k)``."""
        raise NotImplementedError


class GaussianMI(MIEstimator):
    """Gaussian (log-det) MI on a shrunk correlation matrix.

    ``shrinkage``: a fixed ``lam`` in [0, 1], or ``"auto"`` for Ledoit-Wolf (on the joint
    ``[x, y]`` in ``mi``; on the target block in ``scores``, whose cross terms are then
    shrunk by the same factor). ``lam`` is floored at ``min_shrinkage``.

    Cost: ``mi`` O(n d^2 + d^3), d = dx + dy; ``scores`` O(n dy^2 + dy^3 + n k dy).
    """

    name = "gaussian"

    def __init__(self, shrinkage: float | str = "auto", min_shrinkage: float = 1e-6) -> None:
        if shrinkage != "auto" and not 0.0 <= float(shrinkage) <= 1.0:
            raise ValueError(f"shrinkage must be 'auto' or in [0, 1], got {shrinkage!r}")
        self.shrinkage = shrinkage
        self.min_shrinkage = min_shrinkage

    def _lam(self, z: torch.Tensor) -> float:
        lam = ledoit_wolf(z) if self.shrinkage == "auto" else float(self.shrinkage)
        return max(lam, self.min_shrinkage)

    def target_matrix(self, target: torch.Tensor) -> torch.Tensor:
        """Standardised ``(n, dy)`` target (one-hot code for labels)."""
        return standardize(one_hot_code(target) if is_labels(target) else _as_2d(target))

    def mi(self, x: torch.Tensor, target: torch.Tensor) -> float:
        zx, zy = standardize(_as_2d(x)), self.target_matrix(target)
        z = torch.cat([zx, zy], dim=1)
        corr = z.T @ z / z.shape[0]
        lam = self._lam(z)
        shrunk = (1 - lam) * corr + lam * torch.eye(corr.shape[0], dtype=corr.dtype)
        dx = zx.shape[1]
        logdet = torch.linalg.slogdet
        value = 0.5 * (logdet(shrunk[:dx, :dx])[1] + logdet(shrunk[dx:, dx:])[1] - logdet(shrunk)[1])
        return max(float(value), 0.0)

    def scores(self, units: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        zx, zy = standardize(_as_2d(units)), self.target_matrix(target)
        n = zx.shape[0]
        lam = self._lam(zy)
        ryy = (1 - lam) * (zy.T @ zy / n) + lam * torch.eye(zy.shape[1], dtype=zy.dtype)
        rxy = (1 - lam) * (zx.T @ zy / n)
        rxx = (1 - lam) * zx.pow(2).mean(dim=0) + lam
        chol = torch.linalg.cholesky(ryy)
        explained = torch.linalg.solve_triangular(chol, rxy.T, upper=False).pow(2).sum(dim=0)
        ratio = (1 - explained / rxx).clamp_min(_EPS)
        return (-0.5 * torch.log(ratio)).clamp_min(0.0).to(torch.float32)


def top_component(x: torch.Tensor) -> torch.Tensor:
    """``(n,)`` projection of standardised ``x`` onto its top principal component."""
    z = standardize(_as_2d(x))
    if z.shape[1] == 1:
        return z[:, 0]
    _, _, vh = torch.linalg.svd(z, full_matrices=False)
    return z @ vh[0]


def quantile_codes(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``(n, k)`` long bin codes of each column of ``x`` ``(n, k)`` in equal-frequency bins.

    Ties share a bin (duplicate edges leave bins empty), so a column with 60 % zeros puts
    all its zeros in one bin. Cost O(n k log n).
    """
    n = x.shape[0]
    ordered = x.sort(dim=0).values
    cut = (torch.arange(1, bins) * n) // bins
    edges = ordered[cut.clamp(max=n - 1)].T.contiguous()
    return torch.searchsorted(edges, x.T.contiguous()).T


class BinnedMI(MIEstimator):
    """Plug-in MI on equal-frequency bins (``bins`` per continuous variable).

    Labels keep their classes as bins; multi-dimensional variables are reduced to their
    top principal component. ``miller_madow`` removes the plug-in bias
    ((Bxy-1) - (Bx-1) - (By-1)) / (2n) (B = non-empty bins), so independent variables
    score about 0 (slightly negative values are possible).

    Cost: ``scores`` O(n k log n + k Bx By) (+ O(n dy^2) for a multi-dim target);
    ``mi`` the same with k = 1 plus the PCA of x.
    """

    name = "binned"

    def __init__(self, bins: int = 8, miller_madow: bool = True) -> None:
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = bins
        self.miller_madow = miller_madow

    def _target_codes(self, target: torch.Tensor) -> tuple[torch.Tensor, int]:
        if is_labels(target):
            _, codes = torch.unique(target, return_inverse=True)
            return codes, int(codes.max()) + 1
        return quantile_codes(top_component(target).unsqueeze(1), self.bins)[:, 0], self.bins

    def mi(self, x: torch.Tensor, target: torch.Tensor) -> float:
        x = _as_2d(x)
        column = x if x.shape[1] == 1 else top_component(x).unsqueeze(1)
        return float(self.scores(column, target)[0])

    def scores(self, units: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        units = _as_2d(units)
        n, k = units.shape
        codes = quantile_codes(units, self.bins)
        tcodes, tbins = self._target_codes(target)
        cells = self.bins * tbins
        index = torch.arange(k).unsqueeze(0) * cells + codes * tbins + tcodes.unsqueeze(1)
        joint = torch.bincount(index.reshape(-1), minlength=k * cells).reshape(k, self.bins, tbins)
        p = joint.to(torch.float64) / n
        px, py = p.sum(dim=2, keepdim=True), p.sum(dim=1, keepdim=True)
        terms = torch.where(p > 0, p * torch.log(p / (px * py).clamp_min(_EPS)), torch.zeros_like(p))
        value = terms.sum(dim=(1, 2))
        if self.miller_madow:
            used_x = (px > 0).sum(dim=(1, 2))
            used_y = (py > 0).sum(dim=(1, 2))
            used_xy = (p > 0).sum(dim=(1, 2))
            value = value + (used_x + used_y - used_xy - 1).to(torch.float64) / (2 * n)
        return value.to(torch.float32)


def _orthonormal_basis(y: torch.Tensor, rtol: float = 1e-8) -> torch.Tensor:
    """``(n, r)`` orthonormal basis of the column space of ``y`` (numerical rank r)."""
    if y.shape[1] == 0:
        return y
    u, s, _ = torch.linalg.svd(y, full_matrices=False)
    return u[:, s > rtol * max(float(s[0]), _EPS)]


class _Span:
    """A growing orthonormal basis (preallocated) and every column's R^2 on it."""

    def __init__(self, start: torch.Tensor, capacity: int, x: torch.Tensor, norms: torch.Tensor) -> None:
        self.x, self.norms = x, norms
        self.buffer = x.new_zeros(max(capacity, start.shape[1]), x.shape[0])  # rows = vectors
        self.buffer[: start.shape[1]] = start.T
        self.size = start.shape[1]
        self.r2 = (start.T @ x).pow(2).sum(dim=0) / norms

    @property
    def full(self) -> bool:
        """True once the basis spans every direction the rows allow."""
        return self.size >= self.x.shape[0]

    def add(self, new: torch.Tensor) -> None:
        """Gram-Schmidt ``new`` in (twice, for stability) unless it is already spanned."""
        if self.size >= self.buffer.shape[0]:
            return
        basis = self.buffer[: self.size]
        direction = new
        for _ in range(2):
            direction = direction - (basis @ direction) @ basis
        length = float(direction.norm())
        if length <= 1e-8 * max(float(new.norm()), _EPS):
            return
        direction = direction / length
        self.buffer[self.size] = direction
        self.size += 1
        self.r2 = (self.r2 + (direction @ self.x).pow(2) / self.norms).clamp(max=1.0)


def greedy_order(
    units: torch.Tensor, target: torch.Tensor, picks: int | None = None, floor: float = 1e-9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward selection by Gaussian conditional MI; returns ``(order, gains)``.

    Step t picks the unit maximising I(x; Y | Z) = I(x; [Y, Z]) - I(x; Z) with Z = the
    t units picked so far, where I(x; S) = -0.5 log(1 - R^2(x | S)) and R^2 is the
    in-sample (OLS) squared multiple correlation: projections onto orthonormal bases of
    span(Y, Z) and span(Z), grown by one Gram-Schmidt vector per pick. No shrinkage;
    rank-deficient targets are handled by the numerical-rank basis and 1 - R^2 is
    floored at ``floor`` (a copy of a picked unit then gains ~0). ``gains[t]`` is the
    conditional MI of the t-th pick (the first equals the unconditional Gaussian MI).
    Once span(Y, Z) fills all n row directions (n too small for the units), R^2 is 1
    for everything: the remaining units follow by their last gains, with gain 0.

    Cost O(n dy^2 + n k dy + m n (k + dy + m)) for m = ``picks`` (default all k) picks.
    """
    x = standardize(_as_2d(units))
    y = GaussianMI().target_matrix(target)
    n, k = x.shape
    picks = k if picks is None else min(picks, k)
    norms = x.pow(2).sum(dim=0).clamp_min(_EPS)
    start = _orthonormal_basis(y)
    with_target = _Span(start, min(n, start.shape[1] + picks), x, norms)
    alone = _Span(x[:, :0], min(n, picks), x, norms)
    available = torch.ones(k, dtype=torch.bool)
    gain = torch.zeros(k, dtype=x.dtype)
    picked: list[int] = []
    picked_gains: list[float] = []
    while len(picked) < picks and not with_target.full:
        residual_z = torch.log((1 - alone.r2).clamp_min(floor))
        gain = 0.5 * (residual_z - torch.log((1 - with_target.r2).clamp_min(floor)))
        gain = gain.masked_fill(~available, -math.inf)
        best = int(torch.argmax(gain))
        picked.append(best)
        picked_gains.append(max(float(gain[best]), 0.0))
        available[best] = False
        with_target.add(x[:, best])
        alone.add(x[:, best])
    rest = available.nonzero().flatten()
    rest = rest[torch.argsort(gain[rest], descending=True, stable=True)][: picks - len(picked)]
    order = torch.tensor(picked + rest.tolist(), dtype=torch.long)
    gains = torch.tensor(picked_gains + [0.0] * len(rest), dtype=torch.float32)
    return order, gains


ESTIMATORS = {"gaussian": GaussianMI, "binned": BinnedMI}


def make_estimator(name: str | MIEstimator) -> MIEstimator:
    """An estimator instance from its name (``gaussian``, ``binned``) or as given."""
    if isinstance(name, MIEstimator):
        return name
    if name not in ESTIMATORS:
        raise ValueError(f"estimator: unknown {name!r}; allowed: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]()
