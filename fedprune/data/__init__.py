"""Datasets and partitioning (Flower Datasets partitioners)."""

from fedprune.data.datasets import DATASET_NAMES, DatasetInfo, load_dataset
from fedprune.data.partition import PARTITIONERS, ClientData, client_data, make_partitioner

__all__ = [
    "DATASET_NAMES",
    "PARTITIONERS",
    "ClientData",
    "DatasetInfo",
    "client_data",
    "load_dataset",
    "make_partitioner",
]
