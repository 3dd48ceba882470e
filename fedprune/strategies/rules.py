"""Per-entry aggregation rules: how the values that clients sent for one tensor are combined.

A rule takes the previous global tensor, each client's full-size values, each client's
mask of the entries it sent (None: all of them) and the clients' weights, and returns the
new tensor. Every rule works per entry over the clients that sent it; an entry that no
client sent keeps its previous value. Pure torch.

* ``mean``: the example-weighted mean (FedAvg; Sub-FedAvg for masks).
* ``median``: the coordinate-wise median (Yin et al. 2018), unweighted: a client cannot buy
  influence by claiming many examples. With an even count, the mean of the two middle values.
* ``trimmed-mean``: the coordinate-wise trimmed mean (Yin et al. 2018), unweighted: of the k
  clients that sent an entry, the floor(trim * k) smallest and largest values are dropped.

``clip_update`` bounds one client's update before any rule (norm clipping).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Rule = Callable[[torch.Tensor, Sequence[torch.Tensor], Sequence[torch.Tensor | None], Sequence[float]],
                torch.Tensor]

#: torch.quantile refuses inputs above 2**24 elements: larger tensors go in column chunks
_QUANTILE_LIMIT = 2**24


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


def _stacked(previous: torch.Tensor, values: Sequence[torch.Tensor],
             masks: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clients, entries)`` float64 values and the bool matrix of who sent which entry."""
    data = torch.stack([v.reshape(-1).to(torch.float64) for v in values])
    sent = torch.stack([torch.ones(previous.numel(), dtype=torch.bool) if m is None else m.reshape(-1).bool()
                        for m in masks])
    return data, sent


def masked_median(previous: torch.Tensor, values: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None],
                  weights: Sequence[float]) -> torch.Tensor:
    """Per entry, the median over the clients that sent it (weights are ignored)."""
    if not values:
        return previous.clone()
    data, sent = _stacked(previous, values, masks)
    data = data.masked_fill(~sent, float("nan"))
    step = max(1, _QUANTILE_LIMIT // data.shape[0])
    median = torch.cat([torch.nanquantile(data[:, i : i + step], 0.5, dim=0)
                        for i in range(0, data.shape[1], step)])
    result = torch.where(sent.any(dim=0), median, previous.reshape(-1).to(torch.float64))
    return result.reshape(previous.shape).to(previous.dtype)


def masked_trimmed_mean(previous: torch.Tensor, values: Sequence[torch.Tensor],
                        masks: Sequence[torch.Tensor | None], weights: Sequence[float],
                        trim: float = 0.1) -> torch.Tensor:
    """Per entry, the mean of the senders' values without the floor(trim * k) smallest and
    largest of them (k: the clients that sent the entry; weights are ignored)."""
    if not values:
        return previous.clone()
    data, sent = _stacked(previous, values, masks)
    ordered = data.masked_fill(~sent, float("inf")).sort(dim=0).values  # senders first, in order
    count = sent.sum(dim=0)
    cut = torch.floor(trim * count.to(torch.float64)).to(torch.long)
    position = torch.arange(data.shape[0]).unsqueeze(1)
    keep = (position >= cut) & (position < count - cut)
    total = torch.where(keep, ordered, torch.zeros_like(ordered)).sum(dim=0)
    kept = keep.sum(dim=0)
    mean = total / kept.clamp_min(1)
    result = torch.where(kept > 0, mean, previous.reshape(-1).to(torch.float64))
    return result.reshape(previous.shape).to(previous.dtype)


def trimmed_mean_rule(trim: float) -> Rule:
    """``masked_trimmed_mean`` with its trim fraction fixed."""
    def rule(previous: torch.Tensor, values: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None],
             weights: Sequence[float]) -> torch.Tensor:
        return masked_trimmed_mean(previous, values, masks, weights, trim)
    return rule


def clip_update(global_state: dict[str, torch.Tensor], values: dict[str, torch.Tensor],
                sent: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """``values`` with its update (values - global, over the entries it sent) scaled down to an
    L2 norm of at most ``max_norm`` (unchanged if it is smaller)."""
    deltas = {name: (value.to(torch.float64) - global_state[name].to(torch.float64))
              * (sent[name] if name in sent else 1.0) for name, value in values.items()}
    norm = math.sqrt(sum(float((d * d).sum()) for d in deltas.values()))
    if norm <= max_norm:
        return values
    scale = max_norm / norm  # entries not sent get the global value: no rule reads them
    return {name: (global_state[name].to(torch.float64) + scale * deltas[name]).to(value.dtype)
            for name, value in values.items()}


@dataclass(frozen=True)
class RuleSettings:
    """The config's settings a rule may read (``trim_fraction``)."""

    trim: float = 0.1


#: the config's ``aggregation`` values, one line per rule: name -> settings -> rule
AGGREGATION_RULES: dict[str, Callable[[RuleSettings], Rule]] = {
    "mean": lambda settings: masked_mean,
    "median": lambda settings: masked_median,
    "trimmed-mean": lambda settings: trimmed_mean_rule(settings.trim),
}
