"""Small CNN: 3x3 conv blocks, one hidden linear layer, a linear head; and its family adapter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedprune.models.family import ModelFamily, state_names
from fedprune.models.structure import ActivationSource, Slice, UnitGroup, UnitMasks, linear_rows

if TYPE_CHECKING:
    from fedprune.config import ExperimentConfig
    from fedprune.data.datasets import DatasetInfo


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


class CNNFamily(ModelFamily):
    """One unit group per conv layer (out-channel rows + bias, the next conv's in-channels,
    or for the last conv the ``H*W`` block of ``fc.weight`` columns) and one for the ``fc``
    hidden units (``fc`` rows + bias, ``head`` columns). A channel's activation is the
    spatial mean after its ReLU; an ``fc`` unit's is ``relu(fc(x))``."""

    name = "cnn"

    def owns(self, model: nn.Module) -> bool:
        return isinstance(model, CNN)

    def build(self, cfg: ExperimentConfig, info: DatasetInfo, widths: list[int] | None = None) -> nn.Module:
        widths = self.widths(cfg) if widths is None else widths
        return CNN(info.input_shape, info.num_classes, widths[:-1], widths[-1])

    def widths(self, cfg: ExperimentConfig) -> list[int]:
        """The conv channels, then the hidden linear width."""
        return [*cfg.cnn_channels, cfg.cnn_hidden]

    def unit_groups(self, model: nn.Module) -> list[UnitGroup]:
        assert isinstance(model, CNN)
        convs = [(i, layer) for i, layer in enumerate(model.features) if isinstance(layer, nn.Conv2d)]
        _, height, width = model.feature_map
        groups = []
        for pos, (i, conv) in enumerate(convs):
            if pos + 1 < len(convs):
                consumer = Slice(f"features.{convs[pos + 1][0]}.weight", 1)
            else:
                consumer = Slice("fc.weight", 1, height * width)
            groups.append(UnitGroup(
                name=f"features.{i}",
                size=conv.out_channels,
                slices=(*linear_rows(f"features.{i}"), consumer),
                kind="conv_channel",
                source=ActivationSource(f"features.{i + 1}", reduce="spatial_mean"),
            ))
        groups.append(UnitGroup(
            name="fc",
            size=model.fc.out_features,
            slices=(*linear_rows("fc"), Slice("head.weight", 1)),
            kind="fc_hidden",
            source=ActivationSource("fc", reduce="relu"),
        ))
        return groups

    def head_names(self, model: nn.Module) -> list[str]:
        return state_names(model, "head")

    def resize(self, model: nn.Module, groups: list[UnitGroup], unit_masks: UnitMasks) -> None:
        """The flattened feature map's channel count follows the last conv group."""
        assert isinstance(model, CNN)
        last = [group for group in groups if group.kind == "conv_channel"][-1]
        mask = unit_masks.get(last.name)
        channels = last.size if mask is None else int(mask.sum())
        model.feature_map = (channels, *model.feature_map[1:])
