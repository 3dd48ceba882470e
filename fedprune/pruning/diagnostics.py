"""How personal the masks are: overlap between clients, and with the initial model's own
magnitude mask. Pure torch.

A mask computed after a handful of optimizer steps is close to the initial weights'
magnitude mask, and then it is nearly the same on every client. Both numbers are taken
over weight matrices (tensors of two or more dimensions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedprune.pruning.magnitude import keep_top
from fedprune.pruning.masks import Masks


def _weights(masks: Masks) -> dict[str, torch.Tensor]:
    return {name: mask.bool() for name, mask in masks.items() if mask.dim() >= 2}


def jaccard(first: Masks, second: Masks) -> float:
    """|A and B| / |A or B| over the weight entries both mask sets cover (1 when both keep nothing)."""
    a, b = _weights(first), _weights(second)
    names = sorted(set(a) & set(b))
    both = sum(int((a[n] & b[n]).sum()) for n in names)
    either = sum(int((a[n] | b[n]).sum()) for n in names)
    return both / either if either else 1.0


def mean_pairwise_jaccard(masks: Sequence[Masks], max_clients: int = 32) -> float | None:
    """Mean Jaccard overlap over every pair of the first ``max_clients`` mask sets (None for
    fewer than two). Two independent random masks that each keep a fraction k overlap by
    about k / (2 - k): 0.11 at k = 0.2."""
    chosen = list(masks)[:max_clients]
    pairs = [(i, j) for i in range(len(chosen)) for j in range(i + 1, len(chosen))]
    if not pairs:
        return None
    return sum(jaccard(chosen[i], chosen[j]) for i, j in pairs) / len(pairs)


def magnitude_overlap(masks: Masks, reference: Mapping[str, torch.Tensor]) -> float | None:
    """Fraction of the kept weight entries that the magnitude mask of ``reference`` (the initial
    weights), keeping as many entries per tensor, also keeps. 1: the mask is the initial
    model's magnitude mask; a random mask gives about the kept fraction."""
    kept = agree = 0
    for name, mask in _weights(masks).items():
        count = int(mask.sum())
        if count == 0 or name not in reference:
            continue
        top = keep_top(reference[name].detach().abs().float(), count)
        agree += int((top & mask).sum())
        kept += count
    return agree / kept if kept else None
