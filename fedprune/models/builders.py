"""Build a model by name from the experiment's model settings."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fedprune.models.cnn import CNN
from fedprune.models.mlp import MLP

MODEL_NAMES = ("mlp", "cnn", "transformer")  # transformer: fedprune.models.text


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    mlp_widths: Sequence[int] = (128, 64),
    cnn_channels: Sequence[int] = (16, 32),
    cnn_hidden: int = 64,
) -> nn.Module:
    """Return a freshly initialised model ``name`` (one of ``MODEL_NAMES``)."""
    if name == "mlp":
        in_features = 1
        for size in input_shape:
            in_features *= size
        return MLP(in_features, num_classes, mlp_widths)
    if name == "cnn":
        return CNN(input_shape, num_classes, cnn_channels, cnn_hidden)
    raise ValueError(f"model: unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}")
