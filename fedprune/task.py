"""The experiment's model and data, built from an ``ExperimentConfig`` (cached per process)."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from fedprune.config import ExperimentConfig
from fedprune.data import ClientData, client_data, load_dataset, make_partitioner
from fedprune.models import build_model


def new_model(cfg: ExperimentConfig) -> nn.Module:
    """The experiment's model, freshly initialised from the torch RNG."""
    _, info = load_dataset(cfg.dataset)
    return build_model(
        cfg.model,
        info.input_shape,
        info.num_classes,
        mlp_widths=cfg.mlp_widths,
        cnn_channels=cfg.cnn_channels,
        cnn_hidden=cfg.cnn_hidden,
    )


def initial_model(cfg: ExperimentConfig) -> nn.Module:
    """The shared starting model: the same weights for every method with the same seed."""
    torch.manual_seed(cfg.seed)
    return new_model(cfg)


def _data_key(cfg: ExperimentConfig) -> tuple:
    return (cfg.dataset, cfg.partitioner, cfg.num_clients, cfg.classes_per_client,
            cfg.dirichlet_alpha, cfg.test_fraction, cfg.seed)


@lru_cache(maxsize=8)
def _all_clients(key: tuple) -> tuple[ClientData, ...]:
    dataset, partitioner, num_clients, classes, alpha, test_fraction, seed = key
    table, _ = load_dataset(dataset)
    splitter = make_partitioner(partitioner, num_clients, seed, alpha=alpha, classes_per_client=classes)
    splitter.dataset = table
    return tuple(client_data(splitter, table, c, test_fraction, seed) for c in range(num_clients))


def clients_data(cfg: ExperimentConfig) -> tuple[ClientData, ...]:
    """Every client's local train/test split, indexed by partition id."""
    return _all_clients(_data_key(cfg))


def union_test_set(cfg: ExperimentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The union of all clients' local test parts (for the global model's accuracy)."""
    parts = clients_data(cfg)
    return torch.cat([p.test_x for p in parts]), torch.cat([p.test_y for p in parts])
