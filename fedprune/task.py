"""The experiment's model and data, built from an ``ExperimentConfig`` (cached per process)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import datasets
import torch
from torch import nn

from fedprune.config import ExperimentConfig, dataset_args
from fedprune.data import ClientData, client_data, load_dataset, make_partitioner
from fedprune.data.partition import client_split
from fedprune.device.budget import DeviceProfile, assign_profiles
from fedprune.methods import METHODS
from fedprune.models import build_model
from fedprune.models.small_dense import shrink_widths
from fedprune.models.text import load_pretrained, load_tokenizer, pack_tokens, random_tokens, vocab_size
from fedprune.partial import is_embedding
from fedprune.pruning.masks import apply_masks, prunable_names
from fedprune.pruning.squeeze import squeeze


def _build(data: tuple, model: str, widths: list[int]) -> nn.Module:
    """MLP or CNN for the dataset of ``data`` (``dataset_args``) with hidden ``widths``."""
    _, info = load_dataset(*data)
    if model == "cnn":
        return build_model("cnn", info.input_shape, info.num_classes,
                           cnn_channels=widths[:-1], cnn_hidden=widths[-1])
    return build_model(model, info.input_shape, info.num_classes, mlp_widths=widths)


def _widths(cfg: ExperimentConfig) -> list[int]:
    return [*cfg.cnn_channels, cfg.cnn_hidden] if cfg.model == "cnn" else list(cfg.mlp_widths)


def sparse_kept_parameters(cfg: ExperimentConfig) -> int:
    """Parameters a sparse model keeps at ``final_sparsity``: kept prunable weights + the rest."""
    model = new_model(cfg)
    params = dict(model.named_parameters())
    prunable = set(prunable_names(model))
    return sum(round(p.numel() * (1 - cfg.final_sparsity)) if name in prunable else p.numel()
               for name, p in params.items())


@lru_cache(maxsize=16)
def _shrunk(data: tuple, model: str, widths: tuple[int, ...], target: int) -> tuple[int, ...]:
    return tuple(shrink_widths(lambda w: _build(data, model, w), widths, target))


def new_model(cfg: ExperimentConfig, method: str | None = None) -> nn.Module:
    """The model ``method`` trains, freshly initialised from the torch RNG.

    ``small-dense`` gets the experiment's model with widths shrunk to the sparse
    models' kept parameter count; every other method the configured model.
    Transformers are the pretrained model (``pretrained``) with a new classifier
    seeded by ``seed``.
    """
    data = dataset_args(cfg)
    if cfg.model == "transformer":
        return load_pretrained(cfg.pretrained, load_dataset(*data)[1].num_classes, cfg.seed)
    if method is not None and METHODS[method].small_dense:
        widths = _shrunk(data, cfg.model, tuple(_widths(cfg)), sparse_kept_parameters(cfg))
        return _build(data, cfg.model, list(widths))
    return _build(data, cfg.model, _widths(cfg))


def frozen_names(cfg: ExperimentConfig, names: list[str]) -> list[str]:
    """The tensors among ``names`` that never train nor travel (``freeze_embeddings``)."""
    return [name for name in names if is_embedding(name)] if cfg.freeze_embeddings else []


def cost_inputs(cfg: ExperimentConfig, model: nn.Module, batch: int) -> torch.Tensor:
    """A seeded input batch for timing and FLOP counts: random pixels, or random tokens
    (``latency_tokens`` long, no padding) for transformers."""
    if cfg.model == "transformer":
        return random_tokens(batch, cfg.latency_tokens, vocab_size(model))
    _, info = load_dataset(*dataset_args(cfg))
    return torch.randn(batch, *info.input_shape, generator=torch.Generator().manual_seed(0))


def initial_model(cfg: ExperimentConfig, method: str | None = None) -> nn.Module:
    """The shared starting model: the same weights for every method with the same seed."""
    torch.manual_seed(cfg.seed)
    return new_model(cfg, method)


def _data_key(cfg: ExperimentConfig) -> tuple:
    text = ((cfg.pretrained, cfg.max_length, cfg.max_train_examples, cfg.max_test_examples)
            if cfg.model == "transformer" else ())
    return (dataset_args(cfg), cfg.partitioner, cfg.num_clients, cfg.classes_per_client,
            cfg.dirichlet_alpha, cfg.clients_per_domain, cfg.test_fraction, cfg.seed, text)


def token_cache() -> Path:
    """Where tokenized texts are cached: ``$FEDPRUNE_CACHE/tokens`` (default ``~/.cache/fedprune``)."""
    return Path(os.environ.get("FEDPRUNE_CACHE", Path.home() / ".cache" / "fedprune")) / "tokens"


@lru_cache(maxsize=8)
def _all_clients(key: tuple) -> tuple[ClientData, ...]:
    data, partitioner, num_clients, classes, alpha, per_domain, test_fraction, seed, text = key
    table, _ = load_dataset(*data)
    splitter = make_partitioner(partitioner, num_clients, seed, alpha=alpha, classes_per_client=classes,
                                clients_per_group=per_domain)
    splitter.dataset = table
    if not text:
        return tuple(client_data(splitter, table, c, test_fraction, seed) for c in range(num_clients))
    pretrained, max_length, max_train, max_test = text
    parts = [part.select_columns(["text", "label"]) for c in range(num_clients)
             for part in client_split(splitter, table, c, test_fraction, seed, max_train, max_test)]
    # One tokenizer call (cached on disk) for every client's texts, then cut back into parts.
    from fedprune.data.text import tokenize

    tokens = tokenize(datasets.concatenate_datasets(parts), load_tokenizer(pretrained), max_length,
                      cache_dir=token_cache())
    inputs = pack_tokens(tokens["input_ids"], tokens["attention_mask"])
    sizes = [len(part) for part in parts]
    pieces = list(zip(inputs.split(sizes), tokens["labels"].split(sizes)))
    return tuple(ClientData(*pieces[2 * c], *pieces[2 * c + 1]) for c in range(num_clients))


def clients_data(cfg: ExperimentConfig) -> tuple[ClientData, ...]:
    """Every client's local train/test split, indexed by partition id (text: packed token tensors)."""
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
