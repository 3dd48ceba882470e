"""Prunable structure of each model family: unit groups and where their activations live.

A *unit group* is a set of interchangeable units (hidden neurons, conv channels, FFN
neurons, attention heads). Unit ``i`` of a group owns, for every slice
``Slice(param, dim, block)``, the indices ``i*block : (i+1)*block`` along ``dim`` of
``param``. Removing a unit removes all of those entries at once, so a model whose
groups are partly pruned can be *squeezed* into a smaller dense model
(``fedprune.pruning.squeeze``).

Families (dispatch on the model's structure in ``unit_groups``):

* ``MLP``: one group per hidden layer ``k`` (``body.{2k}`` rows + bias, next Linear's columns).
* ``CNN``: one group per conv layer (out-channel rows + bias, next conv's in-channels, or
  for the last conv the ``H*W`` block of ``fc.weight`` columns), plus one group for the
  ``fc`` hidden units (``fc`` rows + bias, ``head`` columns).
* BERT-family encoders (``BertModel``, ``BertForSequenceClassification`` and look-alikes
  with ``encoder.layer[i].attention.self.query`` ...): per layer a ``heads`` group
  (query/key/value rows + bias in blocks of ``head_dim``, ``attention.output.dense``
  columns in blocks of ``head_dim``) and an ``ffn`` group (``intermediate.dense`` rows +
  bias, ``output.dense`` columns). The residual (hidden-size) width is *not* a group:
  embeddings, LayerNorms, pooler and classifier stay dense.

Groups are listed in forward order (input side first); ``fedprune.pruning.structured``
relies on that: each group's MI target is the next group in the list (the last one is
scored against the labels).

Activations (``activation_sources``): one value per unit per example.

* MLP hidden unit: output of the ReLU after ``body.{2k}``.
* CNN channel: output of the ReLU after the conv, mean over the spatial positions.
* CNN ``fc`` unit: ``relu(fc(x))`` (the model applies ReLU functionally).
* BERT FFN neuron: output of ``intermediate`` (after the activation function).
* BERT head: input of ``attention.output.dense`` (the per-head context vectors),
  reshaped to ``(batch, tokens, heads, head_dim)`` and reduced per head by the L2 norm
  over ``head_dim``.
* BERT token positions: the mean over the non-padding tokens (``attention_mask == 1``;
  every token when no mask is given). The mean uses the whole sequence, not just
  ``[CLS]``, because lower layers carry most of their signal outside ``[CLS]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fedprune.models.cnn import CNN
from fedprune.models.mlp import MLP

UnitMasks = dict[str, torch.Tensor]

REDUCTIONS = ("none", "relu", "spatial_mean", "token_mean", "head_norm_token_mean")


@dataclass(frozen=True)
class Slice:
    """Unit ``i`` owns indices ``i*block : (i+1)*block`` along ``dim`` of ``param``."""

    param: str
    dim: int
    block: int = 1


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
    """Unit groups of ``model`` in forward order (MLP, CNN or a BERT-family encoder)."""
    if isinstance(model, MLP):
        groups = _mlp_groups(model)
    elif isinstance(model, CNN):
        groups = _cnn_groups(model)
    elif _bert_layers(model) is not None:
        groups = _bert_groups(model)
    else:
        raise TypeError(f"unit_groups: no structure known for {type(model).__name__}")
    _check_single_owner(groups)
    return groups


def activation_sources(groups: list[UnitGroup]) -> dict[str, ActivationSource]:
    """Group name -> the module output its unit activations are read from."""
    return {group.name: group.source for group in groups}


def _linear(name: str) -> tuple[Slice, Slice]:
    """Rows of ``name.weight`` and entries of ``name.bias``."""
    return Slice(f"{name}.weight", 0), Slice(f"{name}.bias", 0)


def _mlp_groups(model: MLP) -> list[UnitGroup]:
    linears = [i for i, layer in enumerate(model.body) if isinstance(layer, nn.Linear)]
    consumers = [f"body.{i}" for i in linears[1:]] + ["head"]
    return [
        UnitGroup(
            name=f"body.{i}",
            size=model.body[i].out_features,
            slices=(*_linear(f"body.{i}"), Slice(f"{nxt}.weight", 1)),
            kind="mlp_hidden",
            source=ActivationSource(f"body.{i + 1}"),
        )
        for i, nxt in zip(linears, consumers)
    ]


def _cnn_groups(model: CNN) -> list[UnitGroup]:
    convs = [i for i, layer in enumerate(model.features) if isinstance(layer, nn.Conv2d)]
    _, height, width = model.feature_map
    groups = []
    for pos, i in enumerate(convs):
        if pos + 1 < len(convs):
            consumer = Slice(f"features.{convs[pos + 1]}.weight", 1)
        else:
            consumer = Slice("fc.weight", 1, height * width)
        groups.append(
            UnitGroup(
                name=f"features.{i}",
                size=model.features[i].out_channels,
                slices=(*_linear(f"features.{i}"), consumer),
                kind="conv_channel",
                source=ActivationSource(f"features.{i + 1}", reduce="spatial_mean"),
            )
        )
    groups.append(
        UnitGroup(
            name="fc",
            size=model.fc.out_features,
            slices=(*_linear("fc"), Slice("head.weight", 1)),
            kind="fc_hidden",
            source=ActivationSource("fc", reduce="relu"),
        )
    )
    return groups


def _bert_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(prefix, layers)`` of the first BERT-style encoder inside ``model``, else None."""
    for name, module in model.named_modules():
        layers = getattr(getattr(module, "encoder", None), "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and _is_bert_layer(layers[0]):
            prefix = f"{name}.encoder.layer" if name else "encoder.layer"
            return prefix, layers
    return None


def _is_bert_layer(layer: nn.Module) -> bool:
    attention = getattr(layer, "attention", None)
    return (
        hasattr(getattr(attention, "self", None), "query")
        and hasattr(getattr(attention, "output", None), "dense")
        and hasattr(getattr(layer, "intermediate", None), "dense")
        and hasattr(getattr(layer, "output", None), "dense")
    )


def _bert_groups(model: nn.Module) -> list[UnitGroup]:
    prefix, layers = _bert_layers(model)
    groups = []
    for index, layer in enumerate(layers):
        base = f"{prefix}.{index}"
        attention = layer.attention.self
        head_dim = attention.attention_head_size
        qkv = [f"{base}.attention.self.{part}" for part in ("query", "key", "value")]
        groups.append(
            UnitGroup(
                name=f"{base}.heads",
                size=attention.query.out_features // head_dim,
                slices=tuple(
                    Slice(f"{proj}.{kind}", 0, head_dim) for proj in qkv for kind in ("weight", "bias")
                )
                + (Slice(f"{base}.attention.output.dense.weight", 1, head_dim),),
                kind="heads",
                source=ActivationSource(
                    f"{base}.attention.output.dense", "input", "head_norm_token_mean", head_dim
                ),
            )
        )
        groups.append(
            UnitGroup(
                name=f"{base}.ffn",
                size=layer.intermediate.dense.out_features,
                slices=(
                    *_linear(f"{base}.intermediate.dense"),
                    Slice(f"{base}.output.dense.weight", 1),
                ),
                kind="ffn",
                source=ActivationSource(f"{base}.intermediate", reduce="token_mean"),
            )
        )
    return groups


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

    Only owned dims appear; a missing group in ``unit_masks`` keeps all its units.
    """
    params = dict(model.named_parameters())
    keep: dict[str, dict[int, torch.Tensor]] = {}
    for group in groups:
        mask = unit_masks.get(group.name)
        if mask is None:
            mask = torch.ones(group.size, dtype=torch.bool)
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
    Biases are included, so the masked model holds exactly the squeezed model's values
    (and zeros elsewhere); a missing group keeps all its units.
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
    """Weights (>= 2-D parameters) that any group owns a slice of: the sparsity denominator."""
    params = dict(model.named_parameters())
    names = dict.fromkeys(piece.param for group in groups for piece in group.slices)
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
