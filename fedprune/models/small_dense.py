"""Small-dense baseline: shrink a model's widths until it has a target parameter count."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

#: the models a method can train: the configured one, or it shrunk to the sparse models' size
MODEL_VARIANTS = ("full", "small-dense")


def count(model: nn.Module) -> int:
    """Number of parameter entries."""
    return sum(p.numel() for p in model.parameters())


def shrink_widths(build: Callable[[list[int]], nn.Module], widths: Sequence[int], target: int,
                  steps: int = 40) -> list[int]:
    """Widths ``round(w * f)`` (at least 1) whose model has about ``target`` parameters.

    Bisection on the common factor f in (0, 1]; returns the widths whose parameter
    count is closest to ``target``.
    """
    def scaled(factor: float) -> list[int]:
        return [max(1, round(w * factor)) for w in widths]

    low, high = 0.0, 1.0
    best = list(widths)
    for _ in range(steps):
        middle = (low + high) / 2
        candidate = scaled(middle)
        size = count(build(candidate))
        if abs(size - target) < abs(count(build(best)) - target):
            best = candidate
        if size > target:
            high = middle
        else:
            low = middle
    return best
