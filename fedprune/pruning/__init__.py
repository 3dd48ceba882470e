"""Shared pruning methods: pure torch, no Flower import.

A pruning method is a ``Pruner`` (``fedprune.pruning.pruner``): it targets a sparsity per
step on a schedule, may observe local training, and computes a new mask nested in the
current one. Unstructured masks are ``dict[str, torch.BoolTensor]`` keyed by parameter
name, ``True`` where an entry is kept; structured masks are one boolean vector per unit
group (``fedprune.models.structure``) and squeeze a model into a smaller dense one.
"""

from fedprune.pruning.magnitude import GlobalMagnitudePruner, MagnitudePruner, magnitude_masks
from fedprune.pruning.masks import (
    apply_masks,
    decode_bitmap,
    encode_bitmap,
    full_masks,
    mask_sparsity,
    prunable_names,
)
from fedprune.pruning.mi import BinnedMI, GaussianMI, MIEstimator, greedy_order, make_estimator
from fedprune.pruning.movement import MovementPruner
from fedprune.pruning.pruner import STRUCTURED, UNSTRUCTURED, PruneData, Pruner
from fedprune.pruning.random_masks import RandomPruner
from fedprune.pruning.schedule import CubicSchedule, cubic_sparsity
from fedprune.pruning.selectors import L1Selector, MISelector, RandomSelector, UnitSelector
from fedprune.pruning.squeeze import expand, masked, squeeze
from fedprune.pruning.structured import collect_activations, select_units, unit_sparsity
from fedprune.pruning.units import (
    L1StructuredPruner,
    MIPruner,
    RandomStructuredPruner,
    StructuredPruner,
    post_prune,
)

__all__ = [
    "STRUCTURED",
    "UNSTRUCTURED",
    "BinnedMI",
    "CubicSchedule",
    "GaussianMI",
    "GlobalMagnitudePruner",
    "L1Selector",
    "L1StructuredPruner",
    "MIEstimator",
    "MIPruner",
    "MISelector",
    "MagnitudePruner",
    "MovementPruner",
    "PruneData",
    "Pruner",
    "RandomPruner",
    "RandomSelector",
    "RandomStructuredPruner",
    "StructuredPruner",
    "UnitSelector",
    "apply_masks",
    "collect_activations",
    "cubic_sparsity",
    "decode_bitmap",
    "encode_bitmap",
    "expand",
    "full_masks",
    "greedy_order",
    "magnitude_masks",
    "make_estimator",
    "mask_sparsity",
    "masked",
    "post_prune",
    "prunable_names",
    "select_units",
    "squeeze",
    "unit_sparsity",
]
