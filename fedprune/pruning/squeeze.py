"""Squeeze a structurally pruned model into a smaller dense one, and expand it back.

``squeeze(model, unit_masks)`` keeps, in every Linear/Conv2d that a unit group owns a
slice of, only the kept rows/columns/channels; its outputs equal those of
``masked(model, unit_masks)`` (the original with every owned entry of a pruned unit,
biases included, set to zero). ``expand`` maps the squeezed tensors back to full-size
coordinates. Every group must keep at least one unit (BERT cannot reshape zero heads).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedprune.models import family_of
from fedprune.models.structure import UnitGroup, dim_keep, expand_unit_mask, unit_groups
from fedprune.pruning.masks import apply_masks

FILLS = ("zeros", "template")


def masked(
    model: nn.Module, unit_masks: dict[str, torch.Tensor], groups: list[UnitGroup] | None = None
) -> nn.Module:
    """A copy of ``model`` with the pruned units' entries (weights and biases) zeroed."""
    groups = unit_groups(model) if groups is None else groups
    copied = copy.deepcopy(model)
    apply_masks(copied, expand_unit_mask(model, groups, unit_masks))
    return copied


def _slice_layer(layer: nn.Linear | nn.Conv2d, keep: dict[int, torch.Tensor]) -> nn.Module:
    """A new Linear/Conv2d keeping the True indices of ``keep[0]`` (out) and ``keep[1]`` (in)."""
    weight = layer.weight.detach()
    rows = keep[0].nonzero().flatten() if 0 in keep else torch.arange(weight.shape[0])
    cols = keep[1].nonzero().flatten() if 1 in keep else torch.arange(weight.shape[1])
    rows, cols = rows.to(weight.device), cols.to(weight.device)
    new: nn.Linear | nn.Conv2d
    if isinstance(layer, nn.Linear):
        new = nn.Linear(len(cols), len(rows), bias=layer.bias is not None, device=weight.device, dtype=weight.dtype)
    elif isinstance(layer, nn.Conv2d) and layer.groups == 1:
        new = copy.deepcopy(layer)  # same kernel, stride, padding, dilation; weights replaced below
        new.in_channels, new.out_channels = len(cols), len(rows)
    else:
        raise TypeError(f"squeeze: cannot slice {type(layer).__name__}")
    with torch.no_grad():
        new.weight = nn.Parameter(weight.index_select(0, rows).index_select(1, cols).clone())
        if layer.bias is not None:
            new.bias = nn.Parameter(layer.bias.detach().index_select(0, rows).clone())
    return new


def squeeze(
    model: nn.Module, unit_masks: dict[str, torch.Tensor], groups: list[UnitGroup] | None = None
) -> nn.Module:
    """A new, smaller dense model computing what ``masked(model, unit_masks)`` computes.

    The original is not modified; width attributes that ``forward`` reads are updated by
    the model's family (``ModelFamily.resize``: CNN feature map, BERT head counts; the
    shared BERT ``config`` object is left as is).
    """
    groups = unit_groups(model) if groups is None else groups
    for group in groups:
        mask = unit_masks.get(group.name)
        if mask is not None and not bool(mask.any()):
            raise ValueError(f"squeeze: group {group.name} keeps no unit")
    keep = dim_keep(model, groups, unit_masks)
    small = copy.deepcopy(model)
    for name, layer in list(small.named_modules()):
        if isinstance(layer, nn.Linear | nn.Conv2d) and f"{name}.weight" in keep:
            small.set_submodule(name, _slice_layer(layer, keep[f"{name}.weight"]))
    family_of(model).resize(small, groups, unit_masks)
    return small


def expand(
    squeezed: nn.Module | dict[str, torch.Tensor],
    template: nn.Module,
    unit_masks: dict[str, torch.Tensor],
    groups: list[UnitGroup] | None = None,
    fill: str = "zeros",
) -> dict[str, torch.Tensor]:
    """Full-size state dict (the template's keys) holding the squeezed tensors.

    Kept entries get the squeezed values exactly; pruned entries get 0 (``fill="zeros"``)
    or the template's current value (``fill="template"``). Tensors no group owns are
    copied from ``squeezed`` as they are.
    """
    if fill not in FILLS:
        raise ValueError(f"fill: unknown {fill!r}; allowed: {', '.join(FILLS)}")
    groups = unit_groups(template) if groups is None else groups
    state = squeezed.state_dict() if isinstance(squeezed, nn.Module) else squeezed
    masks = expand_unit_mask(template, groups, unit_masks)
    full = {}
    for name, reference in template.state_dict().items():
        small = state[name].detach()
        if name not in masks:
            if small.shape != reference.shape:
                raise ValueError(f"expand: {name} has shape {tuple(small.shape)}, want {tuple(reference.shape)}")
            full[name] = small.clone()
            continue
        mask = masks[name].to(reference.device)
        if small.numel() != int(mask.sum()):
            kept = int(mask.sum())
            raise ValueError(f"expand: {name} has {small.numel()} entries, the mask keeps {kept}")
        big = torch.zeros_like(reference) if fill == "zeros" else reference.detach().clone()
        big[mask] = small.reshape(-1).to(big)
        full[name] = big
    return full
