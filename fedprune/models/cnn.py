"""Small CNN: 3x3 conv blocks, one hidden linear layer, a linear head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class CNN(nn.Module):
    """``[Conv3x3 -> ReLU -> MaxPool2]`` per channel width, then ``Linear -> ReLU -> head``.

    ``input_shape`` is ``(channels, height, width)``; flat inputs are reshaped to it.
    Pooling is skipped once the feature map is 1 pixel wide.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int],
        hidden: int,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        in_channels, height, width = self.input_shape
        blocks: list[nn.Module] = []
        for out_channels in channels:
            blocks += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU()]
            if min(height, width) >= 2:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.feature_map = (in_channels, height, width)
        self.fc = nn.Linear(in_channels * height * width, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.input_shape)
        x = self.features(x).flatten(1)
        return self.head(torch.relu(self.fc(x)))
