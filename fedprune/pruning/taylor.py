"""First-order Taylor importance (Molchanov et al., CVPR 2019, "Importance Estimation for
Neural Network Pruning"), unstructured, on the cubic schedule.

Removing weight w changes the loss by about |w * dL/dw| (the first-order Taylor term).
After every backward pass of local training each prunable weight's score grows by
|w * dL/dw|; at a pruning step each matrix keeps its top scores among the entries it still
keeps. Scores restart every step (the paper sums them over the minibatches since the last
pruning), unless ``taylor_decay`` > 0 carries the old scores, scaled by it, into the next.
"""

from __future__ import annotations

import torch
from torch import nn

from fedprune.options import FRACTION_CLOSED_OPEN, option
from fedprune.pruning.magnitude import keep_top
from fedprune.pruning.masks import Masks, full_masks, prunable_names
from fedprune.pruning.pruner import BackwardHook, PruneData, Pruner, Tensors


class TaylorPruner(Pruner):
    """Keeps, per matrix, the weights with the largest accumulated |w * dL/dw|."""

    options = (option("taylor_decay", 0.0, "weight of the previous rounds' Taylor scores in the next round's "
                      "(0: scores restart every round, as in Molchanov et al. 2019)",
                      bounds=FRACTION_CLOSED_OPEN),)

    def observe(self, model: nn.Module, state: Tensors | None) -> BackwardHook:
        params = dict(model.named_parameters())
        self.params = {name: params[name] for name in prunable_names(model)}
        decay = self.settings["taylor_decay"]
        self.scores = {name: state[name] * decay if state and name in state
                       else torch.zeros_like(param, dtype=torch.float32) for name, param in self.params.items()}
        return self.accumulate

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add |w * dL/dw| of the current backward pass to every score."""
        for name, param in self.params.items():
            if param.grad is not None:
                self.scores[name] += (param.grad * param).abs()

    def state(self) -> Tensors:
        return self.scores if self.settings["taylor_decay"] > 0 else {}

    def prune(self, model: nn.Module, current: Masks | None, sparsity: float, data: PruneData) -> Masks:
        current = current or full_masks(model)
        return {name: keep_top(score.masked_fill(~current[name], -1.0),
                               min(round(score.numel() * (1 - sparsity)), int(current[name].sum())))
                for name, score in self.scores.items()}
