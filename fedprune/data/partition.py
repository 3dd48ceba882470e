"""Split a dataset across clients with Flower Datasets partitioners, then locally."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """One client's local train, test and (possibly empty) validation tensors."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    val_y: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def __post_init__(self) -> None:
        if len(self.val_y) == 0:  # no validation part: empty, shaped like the train part
            self.val_x, self.val_y = self.train_x[:0], self.train_y[:0]


def _tensors(table: datasets.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    table = table.with_format("numpy")
    return torch.from_numpy(table["features"][:]).float(), torch.from_numpy(table["label"][:]).long()


def client_split(
    partitioner: Partitioner, table: datasets.Dataset, client: int, test_fraction: float, seed: int,
    max_train: int = 0, max_test: int = 0, validation_fraction: float = 0.0,
) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset]:
    """Client ``client``'s partition split into local train, test and validation tables (seeded).

    The test part is taken first (``test_fraction`` of the partition), so it does not depend
    on ``validation_fraction``; the validation part is ``validation_fraction`` of what remains
    (empty for 0). ``max_train`` / ``max_test`` > 0 keep a seeded random subset of that size of
    the train / test part (0 keeps the whole part).
    """
    if partitioner.is_dataset_assigned() is False:
        partitioner.dataset = table
    partition = partitioner.load_partition(client)
    if len(partition) < 2:
        raise ValueError(f"num_clients: client {client} received {len(partition)} examples; use fewer clients")
    split = partition.train_test_split(test_size=test_fraction, seed=seed + client)
    train, validation = split["train"], split["train"].select(range(0))
    if validation_fraction > 0 and len(train) >= 2:
        parts = train.train_test_split(test_size=validation_fraction, seed=seed + client + 1)
        train, validation = parts["train"], parts["test"]
    return (_at_most(train, max_train, seed + client), _at_most(split["test"], max_test, seed + client),
            validation)


def _at_most(table: datasets.Dataset, rows: int, seed: int) -> datasets.Dataset:
    return table.shuffle(seed=seed).select(range(rows)) if 0 < rows < len(table) else table


def client_data(
    partitioner: Partitioner, table: datasets.Dataset, client: int, test_fraction: float, seed: int,
    validation_fraction: float = 0.0,
) -> ClientData:
    """Client ``client``'s local train, test and validation tensors (``features`` tables, see
    ``client_split``)."""
    train, test, validation = client_split(partitioner, table, client, test_fraction, seed,
                                           validation_fraction=validation_fraction)
    data = ClientData(*_tensors(train), *_tensors(test))
    if len(validation):
        data.val_x, data.val_y = _tensors(validation)
    return data
