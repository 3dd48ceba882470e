"""Datasets as ``datasets.Dataset``: ``features`` + ``label`` columns, or ``text`` + ``label``.

One loader per dataset, registered in ``LOADERS`` (the config's ``dataset`` values):

* ``digits``: scikit-learn's 8x8 digits (embedded, the default);
* ``text``: a local CSV/TSV/JSONL/Parquet file, a GLUE-style split folder (its ``train``
  file) or a Hugging Face hub name, at ``path`` (``fedprune.data.text``);
* ``amazon``: a folder of per-domain review folders (its ``train.tsv`` files), with a
  ``domain`` column for natural partitions;
* ``synthetic``: Synthetic(alpha, beta) of FedProx, generated per client
  (``fedprune.data.synthetic``; the table is empty, ``DatasetInfo.generated`` is set).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import datasets
import numpy as np

FEATURES, TEXT = "features", "text"


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: ``inputs`` is ``features`` (fixed-size
    tensors of ``input_shape``) or ``text`` (strings; ``input_shape`` is ()). ``generated``:
    the clients' data are generated per client (naturally partitioned, any number of
    clients); the loader's table is then empty."""

    input_shape: tuple[int, ...]
    num_classes: int
    inputs: str = FEATURES
    generated: bool = False


@dataclass(frozen=True)
class DataSource:
    """The config's data settings a loader may read (hashable, for caching)."""

    path: str = ""
    text_column: str = ""
    label_column: str = "label"
    config: str = ""
    domains: tuple[str, ...] = ()


Loader = Callable[[DataSource], tuple[datasets.Dataset, DatasetInfo]]


def digits(source: DataSource) -> tuple[datasets.Dataset, DatasetInfo]:
    """scikit-learn's 1,797 8x8 digit images, pixels scaled to [0, 1], flat rows of 64."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    features = (raw.data / 16.0).astype(np.float32)
    table = datasets.Dataset.from_dict(
        {"features": features.tolist(), "label": raw.target.astype(np.int64).tolist()}
    )
    return table, DatasetInfo(input_shape=(1, 8, 8), num_classes=10)


def synthetic(source: DataSource) -> tuple[datasets.Dataset, DatasetInfo]:
    """Synthetic(alpha, beta): no table, each client's data are generated when it is used
    (``fedprune.data.federation.clients_data``); 60 features, 10 classes."""
    from fedprune.data.synthetic import CLASSES, DIM

    table = datasets.Dataset.from_dict({"features": [], "label": []})
    return table, DatasetInfo(input_shape=(DIM,), num_classes=CLASSES, generated=True)


def text_table(source: DataSource) -> tuple[datasets.Dataset, DatasetInfo]:
    """A text table (file, GLUE-style folder or hub name) at ``source.path``."""
    from fedprune.data.text import load_text_table

    table = load_text_table(_need_path(source, "text"), source.text_column or None, source.label_column,
                            "train", source.config or None)
    return table, _text_info(table, source.path)


def amazon_domains(source: DataSource) -> tuple[datasets.Dataset, DatasetInfo]:
    """The ``train.tsv`` of every domain folder under ``source.path`` (or of ``source.domains``)."""
    from fedprune.data.text import load_amazon_domains

    table = load_amazon_domains(_need_path(source, "amazon"), "train", list(source.domains) or None)
    return table, _text_info(table, source.path)


def _need_path(source: DataSource, name: str) -> str:
    from fedprune.data.text import TextDataError

    if not source.path:
        raise TextDataError(f"data_path: dataset {name!r} needs data_path (a file, folder or hub name)")
    return source.path


def _text_info(table: datasets.Dataset, path: str) -> DatasetInfo:
    """Text inputs with K classes; the labels must be exactly 0..K-1, K >= 2."""
    from fedprune.data.text import TextDataError

    labels = sorted(set(table["label"]))
    if len(labels) < 2:
        raise TextDataError(f"data_path: {path}: every label is {labels[0] if labels else None}; "
                            "a classifier needs at least 2 classes")
    if labels[-1] != len(labels) - 1:
        raise TextDataError(f"data_path: {path}: labels must be the integers 0..K-1; found {len(labels)} "
                            f"distinct labels, the largest {labels[-1]}")
    return DatasetInfo(input_shape=(), num_classes=len(labels), inputs=TEXT)


#: the config's ``dataset`` values, one line per dataset
LOADERS: dict[str, Loader] = {
    "digits": digits,
    "text": text_table,
    "amazon": amazon_domains,
    "synthetic": synthetic,
}
DATASET_NAMES = tuple(LOADERS)


@lru_cache(maxsize=4)
def load_dataset(name: str, path: str = "", text_column: str = "", label_column: str = "label",
                 data_config: str = "", domains: tuple[str, ...] = ()) -> tuple[datasets.Dataset, DatasetInfo]:
    """Load dataset ``name`` (one of ``DATASET_NAMES``; cached per process); the other arguments
    are its ``DataSource``. Raises ``ValueError`` (``TextDataError`` for text sources) with a
    one-line message."""
    if name not in LOADERS:
        raise ValueError(f"dataset: unknown dataset {name!r}; allowed: {', '.join(DATASET_NAMES)}")
    return LOADERS[name](DataSource(path, text_column, label_column, data_config, domains))
