"""Structured personal pruning on a client: select units on local data, train the squeezed model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedprune.config import ExperimentConfig
from fedprune.models.structure import expand_unit_mask, unit_groups, weight_names
from fedprune.pruning.masks import Masks
from fedprune.pruning.reconstruct import reconstruct
from fedprune.pruning.squeeze import expand, squeeze
from fedprune.pruning.structured import select_units

UnitMasks = dict[str, torch.Tensor]


def _kept_weights(model: nn.Module, masks: Masks, names: list[str]) -> int:
    params = dict(model.named_parameters())
    return sum(int(masks[n].sum()) if n in masks else params[n].numel() for n in names)


def select_personal_units(model: nn.Module, selector: str, target: float, current: UnitMasks | None,
                          x: torch.Tensor, y: torch.Tensor, cfg: ExperimentConfig, seed: int) -> UnitMasks:
    """Unit masks at parameter sparsity ``target``, nested inside ``current``.

    Selection runs on the squeezed current model (only units still kept compete), at
    the sparsity that brings the full model to ``target``; the result is mapped back
    to full-size unit indices.
    """
    groups = unit_groups(model)
    names = weight_names(model, groups)
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in names)
    small = squeeze(model, current, groups) if current else model
    kept_now = _kept_weights(model, expand_unit_mask(model, groups, current), names) if current else total
    relative = max(0.0, 1.0 - (1.0 - target) * total / kept_now)
    chosen = select_units(small, selector, relative, x, y, estimator=cfg.mi_estimator, greedy=cfg.mi_greedy,
                          allocation=cfg.mi_allocation, seed=seed, max_rows=cfg.mi_max_rows)
    if not current:
        return chosen
    result = {}
    for name, inner in chosen.items():
        full = current[name].clone()
        full[current[name].nonzero().squeeze(1)] = inner
        result[name] = full
    return result


def param_masks(model: nn.Module, units: UnitMasks) -> Masks:
    """Entry-level masks (weights and biases) of the unit masks."""
    return expand_unit_mask(model, unit_groups(model), units)


def train_squeezed(model: nn.Module, units: UnitMasks, train: Callable[[nn.Module], float]) -> float:
    """Train the squeezed personal model with ``train`` and write it back into ``model``."""
    small = squeeze(model, units)
    loss = train(small)
    model.load_state_dict(expand(small, model, units))
    return loss


#: at most this many local examples calibrate the post-training refit (one forward pass)
CALIBRATION_ROWS = 512


def post_training_model(model: nn.Module, selector: str, sparsity: float, x: torch.Tensor, y: torch.Tensor,
                        cfg: ExperimentConfig, seed: int) -> tuple[nn.Module, UnitMasks]:
    """Prune the trained dense ``model`` after training: units at ``sparsity`` chosen on
    ``(x, y)``, squeezed, and the layers reading pruned units refit towards ``model``
    (``fedprune.pruning.reconstruct``) on the first ``CALIBRATION_ROWS`` of ``x``.
    Returns the squeezed personal model and its unit masks; ``model`` is unchanged."""
    units = select_personal_units(model, selector, sparsity, None, x, y, cfg, seed)
    small = squeeze(model, units)
    reconstruct(small, model, units, x[:CALIBRATION_ROWS])
    return small, units
