"""Prunable structure: unit groups, what they own, and where their activations live.

A *unit group* is a set of interchangeable units (hidden neurons, conv channels, FFN
neurons, attention heads). Unit ``i`` of a group owns, for every slice
``Slice(param, dim, block)``, the indices ``i*block : (i+1)*block`` along ``dim`` of
``param``. Removing a unit removes all of those entries at once, so a model whose
groups are partly pruned can be *squeezed* into a smaller dense model
(``fedprune.pruning.squeeze``).

Each model family lists its groups (``ModelFamily.unit_groups``: MLP in
``models/mlp.py``, CNN in ``models/cnn.py``, BERT-family encoders in ``models/bert.py``);
``unit_groups(model)`` asks the model's family and checks that every (param, dim) has a
single owner. Groups are listed in forward order (input side first);
``fedprune.pruning.selectors.MISelector`` relies on that: each group's MI target is the
next group in the list (the last one is scored against the labels).

Activations (``ActivationSource``): one value per unit per example, read by a forward
hook and reduced by ``reduce_activation``.

A group of kind ``HIDDEN`` is a residual width shared by the whole model (BERT's hidden
size): it owns slices of the embeddings, every LayerNorm and every projection that reads
or writes the residual stream. Its slices on the embeddings and the pooler are not
``counted``: they do not enter the sparsity denominator, which stays the weights
unstructured pruning may prune.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

UnitMasks = dict[str, torch.Tensor]

#: the kind of a residual-width group (one per model, shared by every layer)
HIDDEN = "hidden"

REDUCTIONS = ("none", "relu", "spatial_mean", "token_mean", "head_norm_token_mean")


@dataclass(frozen=True)
class Slice:
    """Unit ``i`` owns indices ``i*block : (i+1)*block`` along ``dim`` of ``param``;
    ``counted=False``: ``param`` does not count towards the parameter sparsity."""

    param: str
    dim: int
    block: int = 1
    counted: bool = True


@dataclass(frozen=True)
class ActivationSource:
    """Where a group's unit activations are read, and how to reduce them to ``(n, size)``.

    ``hook`` is ``"output"`` (forward hook on ``module``) or ``"input"`` (forward
    pre-hook, first positional input). ``block`` is the head dimension for
    ``head_norm_token_mean``.
    """

    module: str
    hook: str = "output"
    reduce: str = "none"
    block: int = 1


@dataclass(frozen=True)
class UnitGroup:
    """``size`` prunable units owning the entries described by ``slices``."""

    name: str
    size: int
    slices: tuple[Slice, ...]
    kind: str
    source: ActivationSource = field(compare=False)

    def owned(self, param: str) -> list[Slice]:
        """The slices of this group on ``param``."""
        return [piece for piece in self.slices if piece.param == param]


def unit_groups(model: nn.Module) -> list[UnitGroup]:
    """Unit groups of ``model`` in forward order, from its model family."""
    from fedprune.models import family_of  # the registry imports the adapters, which import this module

    groups = family_of(model).unit_groups(model)
    _check_single_owner(groups)
    return groups


def linear_rows(name: str) -> tuple[Slice, Slice]:
    """Rows of ``name.weight`` and entries of ``name.bias`` (a unit's own output)."""
    return Slice(f"{name}.weight", 0), Slice(f"{name}.bias", 0)


def _check_single_owner(groups: list[UnitGroup]) -> None:
    """Each (param, dim) belongs to at most one group (parameter counts rely on it)."""
    seen: dict[tuple[str, int], str] = {}
    for group in groups:
        for piece in group.slices:
            key = (piece.param, piece.dim)
            if key in seen:
                raise ValueError(f"{piece.param} dim {piece.dim} owned by {seen[key]} and {group.name}")
            seen[key] = group.name


def dim_keep(
    model: nn.Module, groups: list[UnitGroup], unit_masks: UnitMasks
) -> dict[str, dict[int, torch.Tensor]]:
    """Param name -> {dim: bool vector of the indices kept along that dim}.

    Only the dims owned by groups in ``unit_masks`` appear: a missing group keeps all its
    units and touches nothing (so an unpruned residual width adds no masks).
    """
    params = dict(model.named_parameters())
    keep: dict[str, dict[int, torch.Tensor]] = {}
    for group in groups:
        mask = unit_masks.get(group.name)
        if mask is None:
            continue
        if mask.shape != (group.size,):
            raise ValueError(f"unit mask {group.name}: shape {tuple(mask.shape)}, want ({group.size},)")
        for piece in group.slices:
            vector = mask.bool().cpu().repeat_interleave(piece.block)
            if vector.numel() != params[piece.param].shape[piece.dim]:
                raise ValueError(f"{group.name}: {piece.param} dim {piece.dim} does not match")
            keep.setdefault(piece.param, {})[piece.dim] = vector
    return keep


def expand_unit_mask(
    model: nn.Module, groups: list[UnitGroup], unit_masks: UnitMasks
) -> dict[str, torch.Tensor]:
    """Parameter-level masks (True = kept) for every parameter a group owns.

    An entry is kept iff, along every owned dim, the unit owning its index is kept.
    Biases (and LayerNorm weights) are included, so the masked model holds exactly the
    squeezed model's values (and zeros elsewhere); a missing group keeps all its units and
    adds no masks of its own.
    """
    params = dict(model.named_parameters())
    masks = {}
    for name, dims in dim_keep(model, groups, unit_masks).items():
        shape = params[name].shape
        mask = torch.ones(shape, dtype=torch.bool)
        for dim, vector in dims.items():
            view = [1] * len(shape)
            view[dim] = shape[dim]
            mask = mask & vector.view(view)
        masks[name] = mask
    return masks


def weight_names(model: nn.Module, groups: list[UnitGroup]) -> list[str]:
    """Weights (>= 2-D parameters) that any group owns a counted slice of: the sparsity denominator."""
    params = dict(model.named_parameters())
    names = dict.fromkeys(piece.param for group in groups for piece in group.slices if piece.counted)
    return [name for name in names if params[name].dim() >= 2]


def reduce_activation(
    source: ActivationSource, value: torch.Tensor, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Reduce a hooked tensor to ``(batch, units)`` as ``source.reduce`` says.

    ``token_mask`` ``(batch, tokens)`` marks non-padding tokens for the token means.
    """
    value = value.detach()
    if source.reduce == "none":
        return value.flatten(1)
    if source.reduce == "relu":
        return torch.relu(value).flatten(1)
    if source.reduce == "spatial_mean":
        return value.mean(dim=(2, 3))
    if source.reduce == "head_norm_token_mean":
        value = value.unflatten(-1, (-1, source.block)).norm(dim=-1)
    if source.reduce in ("token_mean", "head_norm_token_mean"):
        if token_mask is None:
            return value.mean(dim=1)
        weights = token_mask.to(value.dtype).unsqueeze(-1)
        return (value * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"reduce: unknown reduction {source.reduce!r}; allowed: {', '.join(REDUCTIONS)}")
