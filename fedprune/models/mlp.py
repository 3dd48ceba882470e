"""Multi-layer perceptron with configurable hidden widths, and its family adapter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedprune.models.family import ModelFamily, state_names
from fedprune.models.structure import ActivationSource, Slice, UnitGroup, linear_rows

if TYPE_CHECKING:
    from fedprune.config import ExperimentConfig
    from fedprune.data.datasets import DatasetInfo


class MLP(nn.Module):
    """``Linear -> ReLU`` blocks (``body``) followed by a linear ``head``.

    Inputs of any shape ``(N, ...)`` are flattened to ``(N, in_features)``.
    """

    def __init__(self, in_features: int, num_classes: int, widths: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_features
        for width in widths:
            layers += [nn.Linear(previous, width), nn.ReLU()]
            previous = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


class MLPFamily(ModelFamily):
    """One unit group per hidden layer ``k``: ``body.{2k}`` rows + bias and the next Linear's
    columns; a unit's activation is the output of the ReLU after its Linear."""

    name = "mlp"

    def owns(self, model: nn.Module) -> bool:
        return isinstance(model, MLP)

    def build(self, cfg: ExperimentConfig, info: DatasetInfo, widths: list[int] | None = None) -> nn.Module:
        return MLP(math.prod(info.input_shape), info.num_classes, cfg.mlp_widths if widths is None else widths)

    def widths(self, cfg: ExperimentConfig) -> list[int]:
        return list(cfg.mlp_widths)

    def unit_groups(self, model: nn.Module) -> list[UnitGroup]:
        assert isinstance(model, MLP)
        linears = [(i, layer) for i, layer in enumerate(model.body) if isinstance(layer, nn.Linear)]
        consumers = [f"body.{i}" for i, _ in linears[1:]] + ["head"]
        return [
            UnitGroup(
                name=f"body.{i}",
                size=layer.out_features,
                slices=(*linear_rows(f"body.{i}"), Slice(f"{nxt}.weight", 1)),
                kind="mlp_hidden",
                source=ActivationSource(f"body.{i + 1}"),
            )
            for (i, layer), nxt in zip(linears, consumers, strict=True)
        ]

    def head_names(self, model: nn.Module) -> list[str]:
        return state_names(model, "head")
