"""The experiment's model and data, built from an ``ExperimentConfig`` (cached per process)."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from fedprune.config import ExperimentConfig
from fedprune.data import ClientData, client_data, load_dataset, make_partitioner
from fedprune.device.budget import DeviceProfile, assign_profiles
from fedprune.methods import METHODS
from fedprune.models import build_model
from fedprune.models.small_dense import shrink_widths
from fedprune.pruning.masks import apply_masks, prunable_names
from fedprune.pruning.squeeze import squeeze


def _build(dataset: str, model: str, widths: list[int]) -> nn.Module:
    """Model kind ``model`` for ``dataset`` with hidden ``widths`` (MLP widths, or CNN channels + hidden)."""
    _, info = load_dataset(dataset)
    if model == "cnn":
        return build_model("cnn", info.input_shape, info.num_classes,
                           cnn_channels=widths[:-1], cnn_hidden=widths[-1])
    return build_model(model, info.input_shape, info.num_classes, mlp_widths=widths)


def _widths(cfg: ExperimentConfig) -> list[int]:
    return [*cfg.cnn_channels, cfg.cnn_hidden] if cfg.model == "cnn" else list(cfg.mlp_widths)


def sparse_kept_parameters(cfg: ExperimentConfig) -> int:
    """Parameters a sparse model keeps at ``final_sparsity``: kept prunable weights + the rest."""
    model = _build(cfg.dataset, cfg.model, _widths(cfg))
    params = dict(model.named_parameters())
    prunable = set(prunable_names(model))
    return sum(round(p.numel() * (1 - cfg.final_sparsity)) if name in prunable else p.numel()
               for name, p in params.items())


@lru_cache(maxsize=16)
def _shrunk(dataset: str, model: str, widths: tuple[int, ...], target: int) -> tuple[int, ...]:
    return tuple(shrink_widths(lambda w: _build(dataset, model, w), widths, target))


def new_model(cfg: ExperimentConfig, method: str | None = None) -> nn.Module:
    """The model ``method`` trains, freshly initialised from the torch RNG.

    ``small-dense`` gets the experiment's model with widths shrunk to the sparse
    models' kept parameter count; every other method the configured model.
    """
    if method is not None and METHODS[method].small_dense:
        widths = _shrunk(cfg.dataset, cfg.model, tuple(_widths(cfg)), sparse_kept_parameters(cfg))
        return _build(cfg.dataset, cfg.model, list(widths))
    return _build(cfg.dataset, cfg.model, _widths(cfg))


def initial_model(cfg: ExperimentConfig, method: str | None = None) -> nn.Module:
    """The shared starting model: the same weights for every method with the same seed."""
    torch.manual_seed(cfg.seed)
    return new_model(cfg, method)


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


def personal_model(cfg: ExperimentConfig, method: str, global_state: dict[str, torch.Tensor],
                   masks: dict[str, torch.Tensor] | None, units: dict[str, torch.Tensor] | None) -> nn.Module:
    """The model a client would run: the global tensors under its mask, squeezed if structured.

    (Personal tensors that never left the client are not known here; they change
    values, not cost.)
    """
    model = new_model(cfg, method)
    model.load_state_dict(global_state)
    if masks:
        apply_masks(model, masks)
    if units:
        model = squeeze(model, units)
    return model.eval()


def client_profile(cfg: ExperimentConfig, partition: int) -> DeviceProfile | None:
    """The device profile of client ``partition`` (None: no budget)."""
    return profiles_of(cfg).get(partition)


def profiles_of(cfg: ExperimentConfig) -> dict[int, DeviceProfile | None]:
    """Client id -> device profile, from ``device_profiles``."""
    profiles = [DeviceProfile.from_mapping(p) for p in cfg.device_profiles]
    return assign_profiles(profiles, cfg.num_clients)


def profile_threads(cfg: ExperimentConfig) -> dict[int, int]:
    """Client id -> the thread count its personal model is timed with (1 without a profile)."""
    return {client: (p.threads if p else 1) for client, p in profiles_of(cfg).items()}


def union_test_set(cfg: ExperimentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The union of all clients' local test parts (for the global model's accuracy)."""
    parts = clients_data(cfg)
    return torch.cat([p.test_x for p in parts]), torch.cat([p.test_y for p in parts])
