"""Masked aggregation (Sub-FedAvg / DisPFL style) with sparse payloads both ways."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedprune import wire
from fedprune.pruning.masks import Masks
from fedprune.strategies.personalized import PersonalizedStrategy


def masked_mean(previous: torch.Tensor, values: list[torch.Tensor], masks: list[torch.Tensor | None],
                weights: list[float]) -> torch.Tensor:
    """Per entry, the weighted mean over the clients whose mask keeps it.

    ``None`` masks keep everything. An entry that no client keeps keeps its
    ``previous`` value.
    """
    numerator = torch.zeros_like(previous, dtype=torch.float64)
    denominator = torch.zeros_like(previous, dtype=torch.float64)
    for value, mask, weight in zip(values, masks, weights, strict=True):
        kept = torch.ones_like(previous, dtype=torch.float64) if mask is None else mask.to(torch.float64)
        numerator += weight * kept * value.to(torch.float64)
        denominator += weight * kept
    mean = numerator / denominator.clamp_min(1e-300)
    return torch.where(denominator > 0, mean, previous.to(torch.float64)).to(previous.dtype)


class MaskedFedAvg(PersonalizedStrategy):
    """Each entry is averaged over the clients that keep it; nobody's entries stay put.

    Downlink: a client whose mask the server holds gets only the values at its
    kept entries (it already has the mask); otherwise the dense model.
    """

    def payload(self, node_id: int) -> tuple[ArrayRecord, ConfigRecord]:
        masks = self.client_masks.get(self.partition_of[node_id])
        if masks is None:
            return super().payload(node_id)
        return wire.pack(self.global_state, masks, False), ConfigRecord(
            {"encoding": "masked", "mask-digest": wire.mask_digest(masks)})

    def combine(self, decoded: list[tuple[dict[str, torch.Tensor], Masks | None, float]]
                ) -> dict[str, torch.Tensor]:
        weights = [weight for _, _, weight in decoded]
        return {
            name: masked_mean(
                self.global_state[name],
                [state[name] for state, _, _ in decoded],
                [(masks or {}).get(name) for _, masks, _ in decoded],
                weights,
            )
            for name in self.template
        }
