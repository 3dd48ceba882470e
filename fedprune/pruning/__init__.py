"""Shared pruning methods: pure torch, no Flower import.

Unstructured masks are ``dict[str, torch.BoolTensor]`` keyed by parameter name,
``True`` where an entry is kept. Only the weights of ``Linear`` and ``Conv``
layers are prunable (``prunable_names``); biases and norms stay dense.
"""

from fedprune.pruning.magnitude import magnitude_masks
from fedprune.pruning.masks import (
    apply_masks,
    decode_bitmap,
    encode_bitmap,
    full_masks,
    mask_sparsity,
    prunable_names,
)
from fedprune.pruning.schedule import CubicSchedule, cubic_sparsity

__all__ = [
    "CubicSchedule",
    "apply_masks",
    "cubic_sparsity",
    "decode_bitmap",
    "encode_bitmap",
    "full_masks",
    "magnitude_masks",
    "mask_sparsity",
    "prunable_names",
]

# Structured (whole-unit) pruning: MI estimators, unit selection, squeeze / expand.
from fedprune.pruning.mi import BinnedMI, GaussianMI, MIEstimator, greedy_order, make_estimator
from fedprune.pruning.squeeze import expand, masked, squeeze
from fedprune.pruning.structured import collect_activations, select_units, unit_sparsity

__all__ += [
    "BinnedMI",
    "GaussianMI",
    "MIEstimator",
    "collect_activations",
    "expand",
    "greedy_order",
    "make_estimator",
    "masked",
    "select_units",
    "squeeze",
    "unit_sparsity",
]
