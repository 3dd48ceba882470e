"""``local``: every client trains alone; the server only keeps time."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message

from fedprune import wire
from fedprune.strategies.personalized import Decoded, PersonalizedStrategy
from fedprune.strategies.replies import arrays_of


class LocalOnly(PersonalizedStrategy):
    """Messages carry no model (``encoding = none``) and the global model never changes.

    The messages still go through the grid, so local training runs where the clients
    run; the server counts their bytes as 0, since nothing would cross a network. A client
    that prunes (``local-gmp`` ...) reports its mask when it changes, with no values, so
    that the simulator can time its personal model.
    """

    def payload(self, partition: int, server_round: int) -> tuple[ArrayRecord, ConfigRecord]:
        digest = wire.mask_digest(self.client_masks.get(partition))
        return ArrayRecord(), ConfigRecord({"encoding": "none", "mask-digest": digest})

    def decode(self, message: Message, partition: int, weight: float) -> Decoded:
        record = arrays_of(message)
        masks = wire.bitmaps_in(record, self.template)
        units = wire.units_in(record, self.structure.sizes) if self.structure else {}
        if units and self.structure is not None:
            masks = self.structure.expand(units)
            self.client_units[partition] = units
        if masks:
            self.client_masks[partition] = masks
        return {}, {}, weight

    def combine(self, decoded: list[Decoded]) -> dict[str, torch.Tensor]:
        return dict(self.global_state)
