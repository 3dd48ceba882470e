"""The federation's data: every client's local train/test split, built from an ``ExperimentConfig``.

Cached per process: a Ray worker that serves many clients loads and partitions the
data once. Generated datasets (``synthetic``) make each client's data when it is first
used instead (``fedprune.data.synthetic.SyntheticClients``). Text is tokenized once for
all clients (cached on disk, ``token_cache``) and packed into ``(rows, 2, tokens)``
tensors (``fedprune.models.text.pack_tokens``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import datasets
import torch

from fedprune.config import ExperimentConfig, dataset_args
from fedprune.data.datasets import TEXT, load_dataset
from fedprune.data.partition import ClientData, client_data, client_split, make_partitioner
from fedprune.data.synthetic import SyntheticClients, SyntheticSpec


def _data_key(cfg: ExperimentConfig) -> tuple:
    text = ((cfg.pretrained, cfg.max_length, cfg.max_train_examples, cfg.max_test_examples)
            if load_dataset(*dataset_args(cfg))[1].inputs == TEXT else ())
    return (dataset_args(cfg), cfg.partitioner, cfg.num_clients, cfg.classes_per_client,
            cfg.dirichlet_alpha, cfg.clients_per_domain, cfg.test_fraction, cfg.validation_fraction, cfg.seed, text)


def token_cache() -> Path:
    """Where tokenized texts are cached: ``$FEDPRUNE_CACHE/tokens`` (default ``~/.cache/fedprune``)."""
    return Path(os.environ.get("FEDPRUNE_CACHE", Path.home() / ".cache" / "fedprune")) / "tokens"


@lru_cache(maxsize=8)
def _all_clients(key: tuple) -> tuple[ClientData, ...]:
    data, partitioner, num_clients, classes, alpha, per_domain, test_fraction, validation, seed, text = key
    table, _ = load_dataset(*data)
    splitter = make_partitioner(partitioner, num_clients, seed, alpha=alpha, classes_per_client=classes,
                                clients_per_group=per_domain)
    splitter.dataset = table
    if not text:
        return tuple(client_data(splitter, table, c, test_fraction, seed, validation) for c in range(num_clients))
    pretrained, max_length, max_train, max_test = text
    parts = [part.select_columns(["text", "label"]) for c in range(num_clients)
             for part in client_split(splitter, table, c, test_fraction, seed, max_train, max_test, validation)]
    # One tokenizer call (cached on disk) for every client's texts, then cut back into parts.
    from fedprune.data.text import tokenize
    from fedprune.models.text import load_tokenizer, pack_tokens

    tokens = tokenize(datasets.concatenate_datasets(parts), load_tokenizer(pretrained), max_length,
                      cache_dir=token_cache())
    inputs = pack_tokens(tokens["input_ids"], tokens["attention_mask"])
    sizes = [len(part) for part in parts]
    pieces = list(zip(inputs.split(sizes), tokens["labels"].split(sizes), strict=True))
    return tuple(ClientData(*pieces[3 * c], *pieces[3 * c + 1], *pieces[3 * c + 2]) for c in range(num_clients))


def synthetic_spec(cfg: ExperimentConfig) -> SyntheticSpec:
    """The Synthetic(alpha, beta) generator's parameters in ``cfg``."""
    return SyntheticSpec(cfg.synthetic_alpha, cfg.synthetic_beta, cfg.seed, cfg.synthetic_size_mu,
                         cfg.synthetic_size_sigma, cfg.synthetic_max_size)


@lru_cache(maxsize=4)
def _generated(spec: SyntheticSpec, count: int, test_fraction: float, validation: float) -> SyntheticClients:
    return SyntheticClients(spec, count, test_fraction, validation)


def clients_data(cfg: ExperimentConfig) -> Sequence[ClientData]:
    """Every client's local train/test split, indexed by partition id (text: packed token tensors;
    ``synthetic``: generated when indexed)."""
    if cfg.dataset == "synthetic":
        return _generated(synthetic_spec(cfg), cfg.num_clients, cfg.test_fraction, cfg.validation_fraction)
    return _all_clients(_data_key(cfg))


def train_sizes(cfg: ExperimentConfig) -> dict[int, int]:
    """The size of every client's local train part, by partition id (``synthetic``: without
    generating any client's data)."""
    data = clients_data(cfg)
    if isinstance(data, SyntheticClients):
        return {p: data.train_size(p) for p in range(len(data))}
    return {p: len(part.train_y) for p, part in enumerate(data)}


def new_partitions(cfg: ExperimentConfig) -> list[int]:
    """The partitions held out of training (new clients): the last ``new_clients``, or with
    ``natural`` partitions the clients of ``new_client_domains`` (partitions are group-major:
    the sorted domains' clients in turn)."""
    if cfg.new_client_domains:
        table, _ = load_dataset(*dataset_args(cfg))
        domains = sorted(set(table["domain"]))
        per = cfg.clients_per_domain
        return sorted(domains.index(d) * per + j for d in set(cfg.new_client_domains) for j in range(per))
    return list(range(cfg.num_clients - cfg.new_clients, cfg.num_clients))


#: generated datasets: the global model is scored on the test parts of at most this many clients
UNION_CLIENTS = 1000


def union_test_set(cfg: ExperimentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The union of the training clients' local test parts (for the global model's accuracy;
    new clients are scored on their own). For a generated dataset (``synthetic``), of the
    first ``UNION_CLIENTS`` training clients only: memory stays bounded with any number of
    clients."""
    new = set(new_partitions(cfg))
    data = clients_data(cfg)
    training = [p for p in range(len(data)) if p not in new]
    if isinstance(data, SyntheticClients):
        training = training[:UNION_CLIENTS]
    parts = [data[p] for p in training]
    return torch.cat([p.test_x for p in parts]), torch.cat([p.test_y for p in parts])
