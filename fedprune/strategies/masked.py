"""Masked aggregation (Sub-FedAvg / DisPFL style) with sparse payloads both ways."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedprune import wire
from fedprune.pruning.consensus import consensus_mask
from fedprune.pruning.masks import Masks
from fedprune.strategies.personalized import Decoded, PersonalizedStrategy


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
    """Each entry is averaged over the clients that sent it; entries nobody sent stay put.

    With ``consensus`` (``vote``, ``union``, ``intersection``) the server also merges
    the clients' latest masks into one global mask after every round, zeroes the
    global model outside it, and asks every client to adopt it (its bitmap travels
    to a client once, when the client's mask differs).
    """

    def __init__(self, *args, consensus: str = "none", vote_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.consensus = consensus
        self.vote_threshold = vote_threshold
        self.global_mask: Masks | None = None

    def payload(self, partition: int, server_round: int) -> tuple[ArrayRecord, ConfigRecord]:
        if self.global_mask is None or partition not in self.known:
            return super().payload(partition, server_round)
        mask = self.global_mask
        changed = wire.mask_digest(self.client_masks.get(partition)) != wire.mask_digest(mask)
        self.client_masks[partition] = mask
        sent = self.sent_entries(mask, partition, server_round)
        return wire.pack(self.global_state, sent, mask if changed else None), ConfigRecord(
            {"encoding": "masked", "mask-digest": wire.mask_digest(mask)})

    def combine(self, decoded: list[Decoded]) -> dict[str, torch.Tensor]:
        weights = [weight for _, _, weight in decoded]
        state = {
            name: masked_mean(
                self.global_state[name],
                [values[name] for values, _, _ in decoded],
                [sent.get(name) for _, sent, _ in decoded],
                weights,
            )
            for name in self.template
        }
        if self.consensus != "none" and self.client_masks:
            reported = [self.client_masks[p] for p in sorted(self.client_masks)]
            self.global_mask = consensus_mask(reported, self.consensus, self.vote_threshold)
            for name, mask in self.global_mask.items():
                state[name] = state[name] * mask
        return state
