"""Soft movement pruning (Sanh, Wolf & Rush 2020, Sec. 3): learned scores, a sigmoid threshold
and an L1 penalty on the scores.

The paper learns a score ``S`` per weight together with the weights: the mask is
``M = 1(sigmoid(S) > tau)`` with one threshold ``tau`` for the whole model (so matrices end at
different sparsities), the straight-through gradient of the scores is
``dL/dS = dL/dW' * W`` (``W' = W * M``), and the loss carries ``lambda * R(S)`` so that the
scores, and with them the kept fraction, shrink. Here:

- ``S`` starts at the constant 0 (the authors' released code: ``mask_init="constant"``,
  ``mask_scale=0``), so ``sigmoid(S) = 0.5`` everywhere at the start;
- after every backward pass the scores take one optimizer step of their own, with the gradient
  ``dL/dW' * W + lambda * sigmoid(S) * (1 - sigmoid(S)) / numel`` and the learning rate
  ``soft_movement_score_lr``: ``adam`` (torch's Adam, as the authors train their scores;
  fresh state every round, like the weights' AdamW in fedprune) or ``sgd`` (plain
  ``S <- S - lr * grad``). The penalty is ``lambda * mean(sigmoid(S))`` **per matrix** (the
  mean over its entries, as in the authors' code; unlike their code it is not also averaged
  over the matrices), whose gradient is the second term. With ``sgd`` the raw ``dL/dW' * W``
  is tiny and the penalty nearly uniform, so the ranking is close to ``movement``'s; Adam
  normalises each score's step;
- the scores persist between rounds (the client's state, like ``movement``'s);
- the mask is fixed between pruning steps (federated rounds) and a pruned entry never
  returns, as for every fedprune method; at a pruning step the model keeps the entries with
  ``sigmoid(S) > tau``, among those it still keeps. Because methods are compared at equal
  sparsity, the threshold is then **chosen per step**: if ``soft_movement_threshold`` keeps
  more or fewer entries than the schedule's sparsity allows, ``tau`` is moved to the value
  that keeps exactly ``round(total * (1 - s))`` of them (one threshold over all prunable
  matrices; entries are ranked by ``S`` itself, which orders them as ``sigmoid(S)`` does
  without float32's rounding of sigmoid near 0.5; ties broken by position), so the measured
  sparsity equals the target. The threshold used (``sigmoid`` of the smallest kept score) is
  kept in the state (``EFFECTIVE_THRESHOLD``), together with the share of the allowed entries
  that the configured threshold alone would have kept (``CONFIGURED_KEEPS``).

The paper adapts ``tau`` during training through the penalty; fedprune's schedule fixes how
many entries survive each step, so the penalty here only shapes which ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedprune.options import FRACTION_OPEN, POSITIVE, at_least, option
from fedprune.pruning.magnitude import keep_top
from fedprune.pruning.masks import Masks, full_masks, prunable_names
from fedprune.pruning.pruner import BackwardHook, PruneData, Pruner, Tensors

#: state key of the threshold on sigmoid(S) that the last pruning step used
EFFECTIVE_THRESHOLD = "soft_movement/effective_threshold"
#: state key of the share of the allowed entries the configured threshold alone would keep
CONFIGURED_KEEPS = "soft_movement/configured_keeps"
REPORT_KEYS = (EFFECTIVE_THRESHOLD, CONFIGURED_KEEPS)
#: the constant the scores start from (sigmoid(0) = 0.5)
INITIAL_SCORE = 0.0
SCORE_OPTIMIZERS = ("adam", "sgd")


class SoftMovementScores:
    """Learned scores of the prunable weights of one model (see the module docstring)."""

    def __init__(self, model: nn.Module, names: list[str], lr: float, l1: float, optimizer: str = "sgd",
                 scores: Tensors | None = None) -> None:
        params = dict(model.named_parameters())
        self.params = {name: params[name] for name in names}
        self.l1 = l1
        stored = scores or {}
        self.scores = {name: stored[name].float().clone() if name in stored
                       else torch.full_like(p, INITIAL_SCORE, dtype=torch.float32)
                       for name, p in self.params.items()}
        scores_list = list(self.scores.values())
        self.optimizer: torch.optim.Optimizer = (torch.optim.Adam(scores_list, lr=lr) if optimizer == "adam"
                                                 else torch.optim.SGD(scores_list, lr=lr))

    @torch.no_grad()
    def update(self) -> None:
        """One optimizer step on every score: gradient ``dL/dW' * W`` plus the L1 penalty's."""
        for name, param in self.params.items():
            score = self.scores[name]
            sig = torch.sigmoid(score)
            grad = sig * (1 - sig) * (self.l1 / score.numel())
            if param.grad is not None:
                grad += param.grad.float() * param.float()
            score.grad = grad
        self.optimizer.step()

    def masks(self, current: Masks, sparsity: float, threshold: float) -> tuple[Masks, float, float]:
        """Masks keeping ``round(total * (1 - sparsity))`` entries within ``current``: those with
        the highest scores over all matrices (one threshold); the threshold on sigmoid(S) that
        this amounts to, and the share of the allowed entries ``threshold`` itself would keep."""
        names = list(self.scores)
        flat = torch.cat([self.scores[n].masked_fill(~current[n], float("-inf")).reshape(-1) for n in names])
        allowed = sum(int(current[n].sum()) for n in names)
        keep = min(round(flat.numel() * (1 - sparsity)), allowed)
        logit = math.log(threshold / (1 - threshold))
        configured = float((flat > logit).sum()) / max(allowed, 1)
        flat_mask = keep_top(flat, keep)
        used = float(torch.sigmoid(flat[flat_mask].min())) if keep > 0 else 1.0
        result, offset = {}, 0
        for name in names:
            size = self.scores[name].numel()
            result[name] = flat_mask[offset:offset + size].reshape(self.scores[name].shape)
            offset += size
        return result, used, configured


class SoftMovementPruner(Pruner):
    """Soft movement pruning: learned scores, one sigmoid threshold per step at the schedule's sparsity."""

    options = (
        option("soft_movement_score_lr", 0.01, "`soft-movement`: learning rate of the step the scores take after "
               "every backward pass (the authors train scores at 1e-2)", bounds=POSITIVE),
        option("soft_movement_optimizer", "adam", "`soft-movement`: the scores' optimizer (fresh every round)",
               choices=SCORE_OPTIMIZERS),
        option("soft_movement_l1", 1.0, "`soft-movement`: lambda of the L1 penalty lambda * mean(sigmoid(S)) on "
               "each matrix's scores", bounds=at_least(0)),
        option("soft_movement_threshold", 0.5, "`soft-movement`: tau of the mask 1(sigmoid(S) > tau); a pruning "
               "step moves it to hit the schedule's sparsity (docs/methods.md)", bounds=FRACTION_OPEN),
    )

    def observe(self, model: nn.Module, state: Tensors | None) -> BackwardHook:
        state = state or {}
        self.scores = SoftMovementScores(model, prunable_names(model), self.settings["soft_movement_score_lr"],
                                         self.settings["soft_movement_l1"], self.settings["soft_movement_optimizer"],
                                         {k: v for k, v in state.items() if k not in REPORT_KEYS})
        self.report = {k: v for k, v in state.items() if k in REPORT_KEYS}
        return self.scores.update

    def state(self) -> Tensors:
        return {**self.scores.scores, **self.report}

    def prune(self, model: nn.Module, current: Masks | None, sparsity: float, data: PruneData) -> Masks:
        masks, used, configured = self.scores.masks(current or full_masks(model), sparsity,
                                                    self.settings["soft_movement_threshold"])
        self.report = {EFFECTIVE_THRESHOLD: torch.tensor(used), CONFIGURED_KEEPS: torch.tensor(configured)}
        return masks
