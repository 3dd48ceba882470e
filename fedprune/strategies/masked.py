"""Masked aggregation (Sub-FedAvg / DisPFL style) with sparse payloads both ways."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedprune import wire
from fedprune.pruning.consensus import consensus_mask
from fedprune.pruning.masks import Masks
from fedprune.strategies.personalized import Decoded, PersonalizedStrategy
from fedprune.strategies.rules import Rule, clip_update, masked_mean


class MaskedFedAvg(PersonalizedStrategy):
    """Each entry is combined (``rule``, default the weighted mean) over the clients that
    sent it; entries nobody sent stay put. ``clip_norm`` > 0 first scales every client's
    update down to at most that L2 norm.

    With ``consensus`` (``vote``, ``union``, ``intersection``) the server also merges
    the clients' latest masks into one global mask after every round, zeroes the
    global model outside it, and asks every client to adopt it (its bitmap travels
    to a client once, when the client's mask differs).
    """

    def __init__(self, *args: Any, rule: Rule = masked_mean, clip_norm: float = 0.0, consensus: str = "none",
                 vote_threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rule = rule
        self.clip_norm = clip_norm
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

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "global_mask": self.global_mask}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.global_mask = state["global_mask"]

    def combine(self, decoded: list[Decoded]) -> dict[str, torch.Tensor]:
        if self.clip_norm:
            decoded = [(clip_update(self.global_state, values, sent, self.clip_norm), sent, weight)
                       for values, sent, weight in decoded]
        weights = [weight for _, _, weight in decoded]
        state = {
            name: self.rule(
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
