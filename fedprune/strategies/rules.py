"""Per-entry aggregation rules: how the values that clients sent for one tensor are combined.

A rule takes the previous global tensor, each client's full-size values, each client's
mask of the entries it sent (None: all of them) and the clients' weights, and returns the
new tensor. An entry that no client sent keeps its previous value. Pure torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Rule = Callable[[torch.Tensor, Sequence[torch.Tensor], Sequence[torch.Tensor | None], Sequence[float]],
                torch.Tensor]


def masked_mean(previous: torch.Tensor, values: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None],
                weights: Sequence[float]) -> torch.Tensor:
    """Per entry, the weighted mean over the clients whose mask keeps it (in float64)."""
    numerator = torch.zeros_like(previous, dtype=torch.float64)
    denominator = torch.zeros_like(previous, dtype=torch.float64)
    for value, mask, weight in zip(values, masks, weights, strict=True):
        kept = torch.ones_like(previous, dtype=torch.float64) if mask is None else mask.to(torch.float64)
        numerator += weight * kept * value.to(torch.float64)
        denominator += weight * kept
    mean = numerator / denominator.clamp_min(1e-300)
    return torch.where(denominator > 0, mean, previous.to(torch.float64)).to(previous.dtype)


#: the config's ``aggregation`` values (one line per rule)
AGGREGATION_RULES: dict[str, Rule] = {
    "mean": masked_mean,
}
