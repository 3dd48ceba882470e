"""Movement pruning (Sanh, Wolf & Rush 2020): keep the weights moving away from zero.

Scores accumulate ``S <- S - dL/dW * W`` after every backward pass. The mask is the
top-v scores per matrix (straight-through: the gradient used is that of the masked
weight, applied to the scores as if the mask were the identity). Here the mask is
recomputed at the schedule's pruning steps (federated rounds) rather than at every
step, and, as for every method in fedprune, a pruned entry does not come back.
"""

from __future__ import annotations

import torch
from torch import nn

from fedprune.pruning.magnitude import keep_top
from fedprune.pruning.masks import Masks, full_masks, prunable_names
from fedprune.pruning.pruner import BackwardHook, PruneData, Pruner, Tensors


class MovementScores:
    """Accumulated movement scores of the prunable weights of one model."""

    def __init__(self, model: nn.Module, names: list[str], scores: Masks | None = None) -> None:
        params = dict(model.named_parameters())
        self.params = {name: params[name] for name in names}
        self.scores = scores or {name: torch.zeros_like(p, dtype=torch.float32) for name, p in self.params.items()}

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add ``-grad * weight`` of the current backward pass to every score."""
        for name, param in self.params.items():
            if param.grad is not None:
                self.scores[name] -= param.grad * param

    def masks(self, current: Masks, sparsity: float) -> Masks:
        """Top-v masks per matrix, v = round(numel * (1 - sparsity)), within ``current``."""
        result = {}
        for name, score in self.scores.items():
            allowed = current[name]
            ranked = score.masked_fill(~allowed, float("-inf"))
            keep = min(round(score.numel() * (1 - sparsity)), int(allowed.sum()))
            result[name] = keep_top(ranked, keep)
        return result


class MovementPruner(Pruner):
    """Movement pruning: scores accumulate over every step and persist between steps."""

    def observe(self, model: nn.Module, state: Tensors | None) -> BackwardHook:
        self.scores = MovementScores(model, prunable_names(model), state or None)
        return self.scores.accumulate

    def state(self) -> Tensors:
        return self.scores.scores

    def prune(self, model: nn.Module, current: Masks | None, sparsity: float, data: PruneData) -> Masks:
        return self.scores.masks(current or full_masks(model), sparsity)
