"""One global mask from many personal masks: vote, union or intersection."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedprune.pruning.masks import Masks

RULES = ("vote", "union", "intersection")


def consensus_mask(masks: Sequence[Masks], rule: str, threshold: float = 0.5) -> Masks:
    """Combine client masks entry by entry.

    ``vote``: keep an entry where at least ``threshold`` of the masks keep it;
    ``union``: where any keeps it; ``intersection``: where all keep it.
    """
    if rule not in RULES:
        raise ValueError(f"global_mask: unknown rule {rule!r}; allowed: {', '.join(RULES)}")
    if not masks:
        return {}
    result = {}
    for name in masks[0]:
        stacked = torch.stack([m[name] for m in masks]).float()
        if rule == "union":
            result[name] = stacked.amax(0) > 0
        elif rule == "intersection":
            result[name] = stacked.amin(0) > 0
        else:
            result[name] = stacked.mean(0) >= threshold - 1e-12
    return result
