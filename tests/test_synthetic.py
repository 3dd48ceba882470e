"""Synthetic(alpha, beta): the generator against its definition, seeding, laziness, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedprune.config import ConfigError, make_config
from fedprune.data.federation import clients_data, train_sizes, union_test_set
from fedprune.data.synthetic import (
    SyntheticClients,
    SyntheticSpec,
    client_size,
    generate_client,
    split_sizes,
)

# one big client: sizes capped at 20,000 (log-normal mu 12 is far above the cap)
BIG = SyntheticSpec(alpha=1.0, beta=1.0, seed=3, size_mu=12.0, size_sigma=0.1, max_size=20_000)


def test_feature_means_near_v_k_and_variances_near_j_to_minus_1_2() -> None:
    client = generate_client(BIG, 5)
    n = len(client.y)
    assert n == 20_000 and client.x.shape == (n, 60)
    variance = np.arange(1, 61) ** -1.2  # Sigma_jj = j^-1.2
    mean = client.x.astype(np.float64).mean(axis=0)
    # the sample mean of feature j has standard deviation sqrt(Sigma_jj / n); 5 of them is ~1e-6 rare
    assert np.all(np.abs(mean - client.feature_mean) < 5 * np.sqrt(variance / n))
    sample_var = client.x.astype(np.float64).var(axis=0, ddof=1)
    # relative standard error of a sample variance: sqrt(2 / (n - 1)) = 1%; allow 5%
    assert np.allclose(sample_var, variance, rtol=0.05)
    assert sample_var[0] == pytest.approx(1.0, rel=0.05) and sample_var[59] == pytest.approx(60 ** -1.2, rel=0.05)


def test_labels_are_the_argmax_of_the_clients_softmax_model() -> None:
    client = generate_client(SyntheticSpec(seed=1), 2)
    logits = torch.from_numpy(client.x).double() @ torch.from_numpy(client.weights).T + torch.from_numpy(client.bias)
    expected = torch.softmax(logits, dim=1).argmax(dim=1).numpy()
    assert np.array_equal(client.y, expected)
    assert client.y.min() >= 0 and client.y.max() < 10


def test_clients_feature_centres_spread_with_beta() -> None:
    """v_k ~ N(B_k, 1), B_k ~ N(0, beta): the mean of v_k over its 60 entries has variance
    beta^2 + 1/60 across clients."""
    for beta in (0.0, 3.0):
        spec = SyntheticSpec(alpha=0.0, beta=beta, seed=7, size_mu=0.0, size_sigma=0.0)
        centres = np.array([generate_client(spec, k).feature_mean.mean() for k in range(400)])
        expected = beta**2 + 1 / 60
        # 400 clients: the sample variance is within ~3 standard errors (sqrt(2/399) = 7%)
        assert centres.var(ddof=1) == pytest.approx(expected, rel=0.25)


def test_models_centre_u_k_has_standard_deviation_alpha() -> None:
    """W_k ~ N(u_k, 1) with u_k ~ N(0, alpha): the mean of W_k's 600 entries estimates u_k."""
    for alpha in (0.0, 2.0):
        spec = SyntheticSpec(alpha=alpha, beta=0.0, seed=11, size_mu=0.0, size_sigma=0.0)
        centres = np.array([generate_client(spec, k).weights.mean() for k in range(400)])
        assert centres.var(ddof=1) == pytest.approx(alpha**2 + 1 / 600, rel=0.25)


def test_label_skew_grows_with_beta() -> None:
    """Clients differ more in labels as beta grows: the features move away from 0, so W_k v_k
    dominates the logits and a client's examples concentrate on one class."""
    def majority_share(beta: float) -> float:
        spec = SyntheticSpec(alpha=1.0, beta=beta, seed=2, size_mu=6.0, size_sigma=0.0)
        shares = [np.bincount(generate_client(spec, k).y, minlength=10).max() / len(generate_client(spec, k).y)
                  for k in range(60)]
        return float(np.mean(shares))

    assert majority_share(0.0) < majority_share(5.0)


def test_sizes_follow_the_capped_lognormal() -> None:
    spec = SyntheticSpec(seed=0, size_mu=4.0, size_sigma=2.0, max_size=1000)
    sizes = np.array([client_size(spec, k) for k in range(3000)])
    assert sizes.min() >= 50 and sizes.max() <= 1000
    # median of 50 + floor(LogNormal(4, 2)) is 50 + floor(e^4) = 104 (the cap is far above it)
    assert np.median(sizes) == pytest.approx(50 + math.floor(math.exp(4)), abs=8)
    assert (sizes == 1000).mean() == pytest.approx(0.076, abs=0.02)  # P(LogNormal(4, 2) >= 950)
    assert all(client_size(spec, k) == len(generate_client(spec, k).y) for k in range(20))


def test_seeded_and_independent_of_the_number_of_clients() -> None:
    spec = SyntheticSpec(alpha=0.5, beta=0.5, seed=4)
    again = generate_client(spec, 9)
    first = generate_client(spec, 9)
    assert np.array_equal(first.x, again.x) and np.array_equal(first.y, again.y)
    other = generate_client(SyntheticSpec(alpha=0.5, beta=0.5, seed=5), 9)
    assert not np.array_equal(first.feature_mean, other.feature_mean)
    small, large = SyntheticClients(spec, 10, 0.2, 0.0), SyntheticClients(spec, 10_000, 0.2, 0.0)
    assert torch.equal(small[9].train_x, large[9].train_x) and torch.equal(small[9].test_y, large[9].test_y)
    assert not torch.equal(large[8].train_x[:5], large[9].train_x[:5])


def test_split_parts_are_disjoint_and_sized() -> None:
    assert split_sizes(100, 0.2, 0.0) == (80, 20, 0)
    assert split_sizes(101, 0.2, 0.1) == (72, 21, 8)  # test ceil(20.2) = 21, validation ceil(8.0) = 8
    spec = SyntheticSpec(seed=0)
    whole = generate_client(spec, 3)
    part = SyntheticClients(spec, 5, 0.2, 0.1)[3]
    train, test, val = split_sizes(len(whole.y), 0.2, 0.1)
    assert (len(part.train_y), len(part.test_y), len(part.val_y)) == (train, test, val)
    joined = torch.cat([part.train_x, part.val_x, part.test_x])
    assert torch.equal(joined, torch.from_numpy(whole.x))
    assert SyntheticClients(spec, 5, 0.2, 0.1).train_size(3) == train


def test_lazy_clients_keep_few_in_memory() -> None:
    clients = SyntheticClients(SyntheticSpec(seed=0), 10_000, 0.2, 0.0, cache=4)
    assert len(clients) == 10_000
    for k in range(0, 10_000, 1000):
        clients[k]
    assert clients._get.cache_info().currsize == 4
    with pytest.raises(IndexError):
        clients[10_000]


def test_config_accepts_ten_thousand_clients_and_rejects_the_cnn() -> None:
    cfg = make_config({"dataset": "synthetic", "num_clients": 10_000, "synthetic_alpha": 0.5,
                       "synthetic_beta": 0.5, "methods": ["gmp"]})
    data = clients_data(cfg)
    assert len(data) == 10_000 and data[9_999].train_x.shape[1] == 60
    sizes = train_sizes(cfg)
    assert len(sizes) == 10_000 and sizes[9_999] == len(data[9_999].train_y)
    x, y = union_test_set(make_config({"dataset": "synthetic", "num_clients": 3}))
    assert x.shape[1] == 60 and len(y) == sum(len(clients_data(make_config({"dataset": "synthetic",
                                                                           "num_clients": 3}))[p].test_y)
                                              for p in range(3))
    with pytest.raises(ConfigError, match="^model: dataset 'synthetic' has flat features"):
        make_config({"dataset": "synthetic", "model": "cnn"})
    with pytest.raises(ConfigError, match="^synthetic_beta"):
        make_config({"dataset": "synthetic", "synthetic_beta": -1.0})
