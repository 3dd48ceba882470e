"""Datasets as ``datasets.Dataset`` with ``features`` and ``label`` columns."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import datasets
import numpy as np

DATASET_NAMES = ("digits",)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    input_shape: tuple[int, ...]
    num_classes: int


@lru_cache(maxsize=4)
def load_dataset(name: str) -> tuple[datasets.Dataset, DatasetInfo]:
    """Load dataset ``name`` (one of ``DATASET_NAMES``) with columns ``features``, ``label``."""
    if name == "digits":
        return _digits()
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
