"""Multi-layer perceptron with configurable hidden widths."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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
