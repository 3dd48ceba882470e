"""``local``: every client trains alone; the server only keeps time."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedprune.strategies.personalized import Decoded, PersonalizedStrategy


class LocalOnly(PersonalizedStrategy):
    """Messages carry no model (``encoding = none``) and the global model never changes.

    The server loop delivers these messages in-process (``LocalGrid``): nothing
    crosses a network, so a local run's bytes are 0.
    """

    def payload(self, partition: int, server_round: int) -> tuple[ArrayRecord, ConfigRecord]:
        return ArrayRecord(), ConfigRecord({"encoding": "none", "mask-digest": 0})

    def decode(self, message) -> Decoded:
        return {}, {}, float(message.content["metrics"]["num-examples"])

    def combine(self, decoded: list[Decoded]) -> dict[str, torch.Tensor]:
        return dict(self.global_state)
