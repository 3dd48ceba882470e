"""The contract of a model family: everything fedprune needs to know about one kind of model.

Squeeze, structured selection, the post-training refit, partial updates, the model
factory and cost measurements ask the model's family (``fedprune.models.family_of``)
instead of matching parameter names. A new kind of model is one adapter (a subclass of
``ModelFamily``, usually in the file that defines the model) plus one line in
``fedprune.models.FAMILIES``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from fedprune.models.structure import UnitGroup, UnitMasks

if TYPE_CHECKING:
    from fedprune.config import ExperimentConfig
    from fedprune.data.datasets import DatasetInfo


class ModelFamily(ABC):
    """Adapter of one model family (MLP, CNN, BERT-family encoders ...)."""

    #: the config's ``model`` value that builds this family
    name: ClassVar[str]
    #: the inputs it reads (``DatasetInfo.inputs``): ``"features"`` (fixed-size tensors) or ``"text"``
    inputs: ClassVar[str] = "features"

    @abstractmethod
    def owns(self, model: nn.Module) -> bool:
        """Whether ``model`` belongs to this family."""

    @abstractmethod
    def build(self, cfg: ExperimentConfig, info: DatasetInfo, widths: list[int] | None = None) -> nn.Module:
        """A freshly initialised model for ``cfg`` (from the torch RNG); ``widths`` replaces
        the configured hidden widths (small-dense)."""

    def widths(self, cfg: ExperimentConfig) -> list[int] | None:
        """The hidden widths small-dense may shrink; None if this family cannot be shrunk."""
        return None

    @abstractmethod
    def unit_groups(self, model: nn.Module) -> list[UnitGroup]:
        """The prunable unit groups in forward order (input side first)."""

    def prunable_names(self, model: nn.Module) -> list[str]:
        """Weights that unstructured pruning may prune: every ``Linear``/``Conv`` weight."""
        return layer_weights(model)

    @abstractmethod
    def head_names(self, model: nn.Module) -> list[str]:
        """State-dict names of the classifier head (personal layers keep them on the client)."""

    def embedding_names(self, model: nn.Module) -> list[str]:
        """State-dict names of the input embeddings (``freeze_embeddings``); none by default."""
        return []

    def token_mask(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor | None:
        """``(batch, tokens)`` 1 for real tokens of packed text inputs; None for other inputs."""
        return None

    def resize(self, model: nn.Module, groups: list[UnitGroup], unit_masks: UnitMasks) -> None:
        """Update the width attributes that ``forward`` reads after ``squeeze`` sliced the layers."""


def layer_weights(model: nn.Module) -> list[str]:
    """Names of the weights of every ``Linear`` and ``Conv`` layer, in module order."""
    return [f"{name}.weight" if name else "weight" for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def state_names(model: nn.Module, module: str) -> list[str]:
    """The state-dict names of submodule ``module`` of ``model``, fully qualified."""
    return [f"{module}.{name}" for name in model.get_submodule(module).state_dict()]
