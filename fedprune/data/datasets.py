"""Datasets as ``datasets.Dataset``: ``features`` + ``label`` (digits) or ``text`` + ``label``.

* ``digits``: scikit-learn's 8x8 digits (embedded, the default);
* ``text``: a local CSV/TSV/JSONL/Parquet file, a GLUE-style split folder (its ``train``
  file) or a Hugging Face hub name, at ``path`` (``fedprune.data.text``);
* ``amazon``: a folder of per-domain review folders (its ``train.tsv`` files), with a
  ``domain`` column for natural partitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import datasets
import numpy as np

DATASET_NAMES = ("digits", "text", "amazon")
TEXT_DATASETS = ("text", "amazon")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset (``input_shape`` is () for text)."""

    input_shape: tuple[int, ...]
    num_classes: int


@lru_cache(maxsize=4)
def load_dataset(name: str, path: str = "", text_column: str = "", label_column: str = "label",
                 data_config: str = "", domains: tuple[str, ...] = ()) -> tuple[datasets.Dataset, DatasetInfo]:
    """Load dataset ``name`` (one of ``DATASET_NAMES``); the other arguments are for text.

    Raises ``ValueError`` (``TextDataError`` for text sources) with a one-line message.
    """
    if name == "digits":
        return _digits()
    if name in TEXT_DATASETS:
        from fedprune.data.text import TextDataError, load_amazon_domains, load_text_table, num_classes

        if not path:
            raise TextDataError(f"data_path: dataset {name!r} needs data_path (a file, folder or hub name)")
        if name == "amazon":
            table = load_amazon_domains(path, "train", list(domains) or None)
        else:
            table = load_text_table(path, text_column or None, label_column, "train", data_config or None)
        return table, DatasetInfo(input_shape=(), num_classes=max(num_classes(table), 2))
    raise ValueError(f"dataset: unknown dataset {name!r}; allowed: {', '.join(DATASET_NAMES)}")


def _digits() -> tuple[datasets.Dataset, DatasetInfo]:
    """scikit-learn's 1,797 8x8 digit images, pixels scaled to [0, 1], flat rows of 64."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    features = (raw.data / 16.0).astype(np.float32)
    table = datasets.Dataset.from_dict(
        {"features": features.tolist(), "label": raw.target.astype(np.int64).tolist()}
    )
    return table, DatasetInfo(input_shape=(1, 8, 8), num_classes=10)
