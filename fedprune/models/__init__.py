"""Model builders. MLP and CNN expose ``head`` (their classifier); transformers (``text.py``) a ``classifier``."""

from fedprune.models.builders import MODEL_NAMES, build_model
from fedprune.models.cnn import CNN
from fedprune.models.mlp import MLP

__all__ = ["CNN", "MLP", "MODEL_NAMES", "build_model"]

# Prunable structure (unit groups) of each model family.
from fedprune.models.structure import UnitGroup, expand_unit_mask, unit_groups

__all__ += ["UnitGroup", "expand_unit_mask", "unit_groups"]
