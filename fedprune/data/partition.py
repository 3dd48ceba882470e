"""Split a dataset across clients with Flower Datasets partitioners, then locally."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import torch
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    PathologicalPartitioner,
)

PARTITIONERS = ("iid", "dirichlet", "pathological", "natural")


def make_partitioner(
    kind: str,
    num_clients: int,
    seed: int,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    clients_per_group: int = 1,
) -> Partitioner:
    """A Flower Datasets partitioner of ``kind`` (one of ``PARTITIONERS``).

    ``iid``, ``dirichlet`` and ``pathological`` split by ``label``; ``natural`` gives
    every value of the ``domain`` column ``clients_per_group`` clients
    (``NaturalIdPartitioner``, see ``fedprune.data.text.GroupPartitioner``).
    """
    if kind == "natural":
        from fedprune.data.text import natural_partitioner

        return natural_partitioner("domain", clients_per_group, seed)
    if kind == "iid":
        return IidPartitioner(num_partitions=num_clients)
    if kind == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=alpha,
            min_partition_size=2,
            self_balancing=True,
            seed=seed,
        )
    if kind == "pathological":
        return PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    raise ValueError(f"partitioner: unknown partitioner {kind!r}; allowed: {', '.join(PARTITIONERS)}")


@dataclass
class ClientData:
    """One client's local train and test tensors."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def _tensors(table: datasets.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    table = table.with_format("numpy")
    return torch.from_numpy(table["features"][:]).float(), torch.from_numpy(table["label"][:]).long()


def client_split(
    partitioner: Partitioner, table: datasets.Dataset, client: int, test_fraction: float, seed: int,
    max_train: int = 0, max_test: int = 0,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Client ``client``'s partition split into local train and test tables (seeded).

    ``max_train`` / ``max_test`` > 0 keep a seeded random subset of that size of the
    train / test part (0 keeps the whole part).
    """
    if partitioner.is_dataset_assigned() is False:
        partitioner.dataset = table
    partition = partitioner.load_partition(client)
    if len(partition) < 2:
        raise ValueError(f"num_clients: client {client} received {len(partition)} examples; use fewer clients")
    split = partition.train_test_split(test_size=test_fraction, seed=seed + client)
    return _at_most(split["train"], max_train, seed + client), _at_most(split["test"], max_test, seed + client)


def _at_most(table: datasets.Dataset, rows: int, seed: int) -> datasets.Dataset:
    return table.shuffle(seed=seed).select(range(rows)) if 0 < rows < len(table) else table


def client_data(
    partitioner: Partitioner, table: datasets.Dataset, client: int, test_fraction: float, seed: int
) -> ClientData:
    """Client ``client``'s local train and test tensors (``features`` tables, see ``client_split``)."""
    train, test = client_split(partitioner, table, client, test_fraction, seed)
    return ClientData(*_tensors(train), *_tensors(test))
