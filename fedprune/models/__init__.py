"""Models and their families: builders, prunable structure, and the family registry.

``FAMILIES`` holds one adapter per model family (``fedprune.models.family.ModelFamily``);
``family_of(model)`` finds a model's adapter and ``family_named(name)`` the one the
config's ``model`` value builds.
"""

from torch import nn

from fedprune.models.bert import BertFamily
from fedprune.models.cnn import CNN, CNNFamily
from fedprune.models.family import ModelFamily
from fedprune.models.mlp import MLP, MLPFamily
from fedprune.models.structure import UnitGroup, expand_unit_mask, unit_groups

#: one line per model family (the first family that owns a model is its family)
FAMILIES: tuple[ModelFamily, ...] = (MLPFamily(), CNNFamily(), BertFamily())
MODEL_NAMES = tuple(family.name for family in FAMILIES)


def find_family(model: nn.Module) -> ModelFamily | None:
    """The adapter of ``model``'s family, or None if no family knows it."""
    return next((family for family in FAMILIES if family.owns(model)), None)


def family_of(model: nn.Module) -> ModelFamily:
    """The adapter of ``model``'s family; ``TypeError`` if no family knows it."""
    family = find_family(model)
    if family is not None:
        return family
    raise TypeError(f"no model family knows {type(model).__name__}; known: {', '.join(MODEL_NAMES)}")


def family_named(name: str) -> ModelFamily:
    """The family built by the config's ``model = name``."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"model: unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}")


__all__ = ["CNN", "FAMILIES", "MLP", "MODEL_NAMES", "ModelFamily", "UnitGroup", "expand_unit_mask",
           "family_named", "family_of", "find_family", "unit_groups"]
