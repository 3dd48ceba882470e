"""Synthetic(alpha, beta) of FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous
Networks", Sec. 5.1 and its data generator): a naturally partitioned federation of any size.

Client k (all draws from a generator seeded by ``(seed, k)`` alone, so a client's data do not
depend on how many clients the federation has, and no client is generated before it is used):

- its size ``n_k = min(max_size, 50 + floor(LogNormal(size_mu, size_sigma)))`` (the authors'
  generator draws ``LogNormal(4, 2) + 50``; the cap keeps the heavy tail trainable);
- its model: ``u_k ~ N(0, alpha)``, ``W_k ~ N(u_k, 1)`` (``classes x dim``), ``b_k ~ N(u_k, 1)``;
- its features: ``B_k ~ N(0, beta)``, ``v_k ~ N(B_k, 1)`` (``dim`` entries),
  ``x ~ N(v_k, Sigma)`` with ``Sigma`` diagonal, ``Sigma_jj = j^-1.2`` (j = 1..dim);
- its labels ``y = argmax(softmax(W_k x + b_k))``.

As in the authors' generator, ``alpha`` and ``beta`` are standard deviations (the paper writes
``N(0, alpha)``; for the usual Synthetic(1, 1) the two readings agree). alpha sets how much the
clients' labelling models differ, beta how much their features do; Synthetic(0, 0) still
differs per client (``u_k = 0`` but ``W_k`` is drawn per client), as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import overload

import numpy as np
import torch

from fedprune.data.partition import ClientData

#: the paper's sizes: 60 features, 10 classes
DIM, CLASSES = 60, 10
MIN_SIZE = 50


@dataclass(frozen=True)
class SyntheticSpec:
    """The generator's parameters (the config's ``synthetic_*`` fields and ``seed``)."""

    alpha: float = 1.0
    beta: float = 1.0
    seed: int = 0
    size_mu: float = 4.0
    size_sigma: float = 2.0
    max_size: int = 1000
    dim: int = DIM
    classes: int = CLASSES


def _generator(spec: SyntheticSpec, client: int) -> np.random.Generator:
    """The generator of ``client``: seeded by ``(seed, client)`` only."""
    return np.random.default_rng(np.random.SeedSequence([spec.seed & 0xFFFFFFFF, client]))


def _size(spec: SyntheticSpec, rng: np.random.Generator) -> int:
    return int(min(spec.max_size, MIN_SIZE + math.floor(rng.lognormal(spec.size_mu, spec.size_sigma))))


def client_size(spec: SyntheticSpec, client: int) -> int:
    """How many examples ``client`` has (its generator's first draw; no data generated)."""
    return _size(spec, _generator(spec, client))


@dataclass(frozen=True)
class SyntheticClient:
    """One client's examples and the parameters they were drawn from (for tests and analysis)."""

    x: np.ndarray  # (n_k, dim) float32
    y: np.ndarray  # (n_k,) int64
    weights: np.ndarray  # W_k, (classes, dim)
    bias: np.ndarray  # b_k, (classes,)
    feature_mean: np.ndarray  # v_k, (dim,)


def generate_client(spec: SyntheticSpec, client: int) -> SyntheticClient:
    """Draw client ``client``'s examples (see the module docstring for the definition)."""
    rng = _generator(spec, client)
    size = _size(spec, rng)
    u = rng.normal(0.0, spec.alpha)
    big_b = rng.normal(0.0, spec.beta)
    weights = rng.normal(u, 1.0, (spec.classes, spec.dim))
    bias = rng.normal(u, 1.0, spec.classes)
    v = rng.normal(big_b, 1.0, spec.dim)
    std = np.arange(1, spec.dim + 1, dtype=np.float64) ** -0.6  # sqrt(j^-1.2)
    x = v + rng.standard_normal((size, spec.dim)) * std
    y = np.argmax(x @ weights.T + bias, axis=1)  # softmax is monotone: argmax of the logits
    return SyntheticClient(x.astype(np.float32), y.astype(np.int64), weights, bias, v)


def split_sizes(size: int, test_fraction: float, validation_fraction: float) -> tuple[int, int, int]:
    """``(train, test, validation)`` counts: the test part is ``ceil(test_fraction * size)``, the
    validation part ``ceil(validation_fraction * rest)`` of the rest (0 for 0), at least one
    train example."""
    test = min(size - 1, max(1, math.ceil(test_fraction * size)))
    rest = size - test
    validation = min(rest - 1, math.ceil(validation_fraction * rest)) if validation_fraction > 0 else 0
    return rest - validation, test, validation


def split_client(spec: SyntheticSpec, client: int, test_fraction: float, validation_fraction: float) -> ClientData:
    """Client ``client``'s examples cut into train, test and validation parts (the examples are
    i.i.d. given the client, so the parts are consecutive rows)."""
    data = generate_client(spec, client)
    train, test, validation = split_sizes(len(data.y), test_fraction, validation_fraction)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    cuts = (train, train + validation)
    return ClientData(x[:train], y[:train], x[cuts[1]:], y[cuts[1]:], x[cuts[0]:cuts[1]], y[cuts[0]:cuts[1]])


class SyntheticClients(Sequence[ClientData]):
    """The first ``count`` clients of ``spec``, generated when indexed (the last ``cache``
    generated clients are kept), so memory grows with the clients in use, not with ``count``."""

    def __init__(self, spec: SyntheticSpec, count: int, test_fraction: float, validation_fraction: float,
                 cache: int = 256) -> None:
        self.spec, self.total = spec, count
        self.fractions = (test_fraction, validation_fraction)
        self._get = lru_cache(maxsize=cache)(self._generate)

    def _generate(self, client: int) -> ClientData:
        return split_client(self.spec, client, *self.fractions)

    def train_size(self, client: int) -> int:
        """The size of ``client``'s train part, without generating its data."""
        return split_sizes(client_size(self.spec, client), *self.fractions)[0]

    def __len__(self) -> int:
        return self.total

    @overload
    def __getitem__(self, index: int) -> ClientData: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ClientData]: ...

    def __getitem__(self, index: int | slice) -> ClientData | Sequence[ClientData]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.total))]
        if not -self.total <= index < self.total:
            raise IndexError(f"client {index} out of range (0..{self.total - 1})")
        return self._get(index % self.total)
