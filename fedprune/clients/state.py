"""What a client keeps between rounds in ``Context.state`` (never sent anywhere).

Per method: the personal mask, the personal model's own tensors (for personal
layers and random partial updates) and movement scores.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

Tensors = dict[str, torch.Tensor]


class ClientMemory:
    """Typed access to one method's records in a client's ``Context.state``."""

    def __init__(self, state: RecordDict, method: str) -> None:
        self.state = state
        self.method = method

    def _get(self, what: str) -> Tensors | None:
        key = f"{self.method}.{what}"
        if key not in self.state:
            return None
        return {name: torch.from_numpy(np.asarray(a.numpy()).copy()) for name, a in self.state[key].items()}

    def _put(self, what: str, tensors: Tensors) -> None:
        self.state[f"{self.method}.{what}"] = ArrayRecord(
            {name: Array(t.detach().cpu().numpy()) for name, t in tensors.items()})

    def mask(self) -> Tensors | None:
        """The personal mask, or None before the client first prunes."""
        masks = self._get("personal-mask")
        return None if masks is None else {k: v.bool() for k, v in masks.items()}

    def save_mask(self, masks: Tensors) -> None:
        self._put("personal-mask", masks)

    def units(self) -> Tensors | None:
        """The personal unit masks of a structured method."""
        units = self._get("personal-units")
        return None if units is None else {k: v.bool() for k, v in units.items()}

    def save_units(self, units: Tensors) -> None:
        self._put("personal-units", units)

    def model(self) -> Tensors | None:
        """The client's own full-size tensors after its last local training."""
        return self._get("personal-model")

    def save_model(self, tensors: Tensors) -> None:
        self._put("personal-model", tensors)

    def scores(self) -> Tensors | None:
        """Accumulated movement scores."""
        return self._get("movement-scores")

    def save_scores(self, scores: Tensors) -> None:
        self._put("movement-scores", scores)
