"""Squeeze a structurally pruned model into a smaller dense one, and expand it back.

``squeeze(model, unit_masks)`` keeps, in every Linear/Conv2d/Embedding/LayerNorm that a
unit group owns a slice of, only the kept rows/columns/channels; its outputs equal those
of ``masked(model, unit_masks)`` (the original with every owned entry of a pruned unit,
biases included, set to zero). ``expand`` maps the squeezed tensors back to full-size
coordinates. Every group must keep at least one unit (BERT cannot reshape zero heads).

The masked twin and LayerNorm: a LayerNorm over the kept dims of a pruned residual width
is not a LayerNorm over all dims with zeros in the pruned ones (the mean and variance
divide by a different count). ``masked`` therefore replaces every LayerNorm whose dims
are partly pruned by a ``KeptLayerNorm``: the same parameters, normalising over the kept
dims only and writing 0 to the pruned ones. The squeezed model's plain ``nn.LayerNorm``
of the kept width then computes exactly what the masked twin computes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedprune.models import family_of
from fedprune.models.structure import UnitGroup, dim_keep, expand_unit_mask, unit_groups
from fedprune.pruning.masks import apply_masks

FILLS = ("zeros", "template")


class KeptLayerNorm(nn.LayerNorm):
    """A full-width LayerNorm that normalises over the ``kept`` dims only (0 elsewhere).

    Same parameters (and state-dict keys) as the LayerNorm it replaces; ``kept`` is a
    non-persistent buffer. Equals ``nn.LayerNorm(kept.sum())`` on the kept dims.
    """

    kept: torch.Tensor

    def __init__(self, norm: nn.LayerNorm, kept: torch.Tensor) -> None:
        like = next(norm.parameters(), kept)  # a LayerNorm without affine parameters has none
        super().__init__(norm.normalized_shape, norm.eps, norm.elementwise_affine, norm.bias is not None,
                         device=like.device, dtype=like.dtype if like.is_floating_point() else None)
        self.load_state_dict(norm.state_dict())
        self.register_buffer("kept", kept.nonzero().flatten().to(like.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = self.kept
        weight = None if self.weight is None else self.weight.index_select(0, index)
        bias = None if self.bias is None else self.bias.index_select(0, index)
        normed = nn.functional.layer_norm(x.index_select(-1, index), (len(index),), weight, bias, self.eps)
        return x.new_zeros(x.shape).index_copy(-1, index, normed)


def masked(
    model: nn.Module, unit_masks: dict[str, torch.Tensor], groups: list[UnitGroup] | None = None
) -> nn.Module:
    """A copy of ``model`` with the pruned units' entries (weights and biases) zeroed, and
    its partly pruned LayerNorms normalising over their kept dims (``KeptLayerNorm``)."""
    groups = unit_groups(model) if groups is None else groups
    copied = copy.deepcopy(model)
    apply_masks(copied, expand_unit_mask(model, groups, unit_masks))
    keep = dim_keep(model, groups, unit_masks)
    for name, layer in list(copied.named_modules()):
        kept = keep.get(f"{name}.weight", {}).get(0)
        if isinstance(layer, nn.LayerNorm) and kept is not None and not bool(kept.all()):
            copied.set_submodule(name, KeptLayerNorm(layer, kept))
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


def _slice_other(layer: nn.Embedding | nn.LayerNorm, keep: dict[int, torch.Tensor]) -> nn.Module:
    """A copy of an Embedding (columns ``keep[1]``) or a 1-D LayerNorm (dims ``keep[0]``)."""
    new = copy.deepcopy(layer)
    with torch.no_grad():
        if isinstance(layer, nn.Embedding) and isinstance(new, nn.Embedding):
            cols = keep[1].nonzero().flatten().to(layer.weight.device)
            new.weight = nn.Parameter(layer.weight.detach().index_select(1, cols).clone())
            new.embedding_dim = len(cols)
        elif isinstance(new, nn.LayerNorm) and len(new.normalized_shape) == 1:
            dims = keep[0].nonzero().flatten().to(layer.weight.device)
            for name in ("weight", "bias"):
                if getattr(layer, name) is not None:
                    setattr(new, name, nn.Parameter(getattr(layer, name).detach().index_select(0, dims).clone()))
            new.normalized_shape = (len(dims),)
        else:
            raise TypeError(f"squeeze: cannot slice {type(layer).__name__}")
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
        if f"{name}.weight" not in keep:
            continue
        if isinstance(layer, nn.Linear | nn.Conv2d):
            small.set_submodule(name, _slice_layer(layer, keep[f"{name}.weight"]))
        elif isinstance(layer, nn.Embedding | nn.LayerNorm):
            small.set_submodule(name, _slice_other(layer, keep[f"{name}.weight"]))
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
