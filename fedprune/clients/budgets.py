"""A client's personal model against its device budget (``fedprune.device.budget``)."""

from __future__ import annotations

import torch
from torch import nn

from fedprune.device import flops_per_example, parameter_bytes, sparse_bytes
from fedprune.device.budget import DeviceProfile, first_sparsity, within_budget
from fedprune.pruning.masks import Masks
from fedprune.pruning.squeeze import squeeze

BATCH = 32


def _flops(model: nn.Module, inputs: torch.Tensor) -> float:
    return flops_per_example(model, inputs, len(inputs))


def first_guess(profile: DeviceProfile, model: nn.Module, inputs: torch.Tensor) -> float:
    """The budget's share of the dense model's cost, as a first target sparsity."""
    return first_sparsity(profile, _flops(model, inputs), parameter_bytes(model))


def can_fit(profile: DeviceProfile, structured: bool, model: nn.Module, inputs: torch.Tensor) -> bool:
    """False where pruning cannot help: unstructured masks leave FLOPs at the dense count."""
    if structured or profile.max_flops is None:
        return True
    return _flops(model, inputs) <= profile.max_flops


def personal_fits(profile: DeviceProfile, model: nn.Module, masks: Masks | None, units: Masks | None,
                  inputs: torch.Tensor) -> bool:
    """Whether the personal model fits: squeezed (structured) or sparse storage (unstructured)."""
    if units:
        small = squeeze(model, units)
        return within_budget(profile, _flops(small, inputs), parameter_bytes(small))
    stored = sparse_bytes(model, masks) if masks else parameter_bytes(model)
    return within_budget(profile, _flops(model, inputs), stored)
