"""``local``: every client trains alone; the server only keeps time."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message

from fedprune.strategies.personalized import Decoded, PersonalizedStrategy


class LocalOnly(PersonalizedStrategy):
    """Messages carry no model (``encoding = none``) and the global model never changes.

    The messages still go through the grid, so local training runs where the clients
    run; the server counts their bytes as 0, since nothing would cross a network.
    """

    def payload(self, partition: int, server_round: int) -> tuple[ArrayRecord, ConfigRecord]:
        return ArrayRecord(), ConfigRecord({"encoding": "none", "mask-digest": 0})

    def decode(self, message: Message, partition: int, weight: float) -> Decoded:
        return {}, {}, weight

    def combine(self, decoded: list[Decoded]) -> dict[str, torch.Tensor]:
        return dict(self.global_state)
