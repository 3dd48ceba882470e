"""What a client keeps between rounds in ``Context.state`` (never sent anywhere)."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedprune.pruning.masks import Masks


def _mask_key(method: str) -> str:
    return f"{method}.personal-mask"


def load_mask(state: RecordDict, method: str) -> Masks | None:
    """The client's personal mask for ``method``, or None before it first prunes."""
    key = _mask_key(method)
    if key not in state:
        return None
    return {name: torch.from_numpy(array.numpy().astype(bool)) for name, array in state[key].items()}


def save_mask(state: RecordDict, method: str, masks: Masks) -> None:
    """Store the personal mask for ``method``."""
    state[_mask_key(method)] = ArrayRecord(
        {name: Array(np.asarray(mask.numpy(), dtype=bool)) for name, mask in masks.items()}
    )
