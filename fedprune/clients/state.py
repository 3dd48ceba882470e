"""What a client keeps between rounds in ``Context.state`` (never sent anywhere).

Per method: the personal mask (or unit masks; bit-packed, 1 bit per entry), the personal model's own tensors (for
personal layers and random partial updates), the pruner's state (movement scores ...) and
the last pruning step the client took (for catch-up under partial participation).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedprune import wire
from fedprune.pruning.masks import pack_masks, unpack_masks

Tensors = dict[str, torch.Tensor]
#: a packed mask is stored as NAME::bits (numpy.packbits, 1 bit per entry) and NAME::shape
BITS, SHAPE = "::bits", "::shape"


class ClientMemory:
    """Typed access to one method's records in a client's ``Context.state``."""

    def __init__(self, state: RecordDict, method: str) -> None:
        self.state = state
        self.method = method

    def _get(self, what: str) -> Tensors | None:
        record = self.state.array_records.get(f"{self.method}.{what}")
        return None if record is None else dict(record.to_torch_state_dict())

    def _put(self, what: str, tensors: Tensors) -> None:
        self.state[f"{self.method}.{what}"] = ArrayRecord(tensors)

    def _get_packed(self, what: str) -> Tensors | None:
        record = self.state.array_records.get(f"{self.method}.{what}")
        if record is None:
            return None
        names = [key[: -len(BITS)] for key in record if key.endswith(BITS)]
        return unpack_masks({name: (tuple(int(d) for d in record[name + SHAPE].numpy()),
                                    record[name + BITS].numpy()) for name in names})

    def _put_packed(self, what: str, masks: Tensors) -> None:
        record = ArrayRecord()
        for name, (shape, bits) in pack_masks(masks).items():
            record[name + BITS] = Array(bits)
            record[name + SHAPE] = Array(np.asarray(shape, dtype=np.int64))
        self.state[f"{self.method}.{what}"] = record

    def mask(self) -> Tensors | None:
        """The personal mask, or None before the client first prunes (kept bit-packed)."""
        return self._get_packed("personal-mask")

    def save_mask(self, masks: Tensors) -> None:
        self._put_packed("personal-mask", masks)

    def units(self) -> Tensors | None:
        """The personal unit masks of a structured method (kept bit-packed)."""
        return self._get_packed("personal-units")

    def save_units(self, units: Tensors) -> None:
        self._put_packed("personal-units", units)

    def model(self) -> Tensors | None:
        """The client's own full-size tensors after its last local training."""
        return self._get("personal-model")

    def save_model(self, tensors: Tensors) -> None:
        self._put("personal-model", tensors)

    def pruner_state(self) -> Tensors | None:
        """What the pruner kept from its last step (``Pruner.state``), or None."""
        return self._get("pruner-state")

    def save_pruner_state(self, tensors: Tensors) -> None:
        if tensors:
            self._put("pruner-state", tensors)

    def pruned_step(self) -> int:
        """The last pruning step (round) this client took, 0 before its first."""
        record = self.state.metric_records.get(f"{self.method}.pruned-step")
        return 0 if record is None else wire.int_of(record, "step")

    def save_pruned_step(self, step: int) -> None:
        self.state[f"{self.method}.pruned-step"] = MetricRecord({"step": step})
