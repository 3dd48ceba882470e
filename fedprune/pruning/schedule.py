"""Cubic sparsity schedule of Zhu & Gupta (2017), "To prune, or not to prune"."""

from __future__ import annotations

from dataclasses import dataclass


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Sparsity at ``step``: ``s_f + (s_i - s_f) * (1 - (t - t0) / (n*dt))**3``.

    ``start`` is t0 and ``end`` is t0 + n*dt. Before ``start`` the sparsity is
    ``initial``; from ``end`` on it is ``final`` (also when ``start == end``).
    """
    if step >= end:
        return final
    if step <= start:
        return initial
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** 3


@dataclass(frozen=True)
class CubicSchedule:
    """When and how far to prune: every ``frequency`` steps from ``start`` to ``end``."""

    initial: float
    final: float
    start: int
    end: int
    frequency: int = 1

    def prunes_at(self, step: int) -> bool:
        """True where ``step`` is a pruning step (t0, t0+dt, ... up to ``end``)."""
        if step < self.start or step > self.end:
            return False
        return (step - self.start) % self.frequency == 0 or step == self.end

    def sparsity(self, step: int) -> float:
        """Target sparsity at ``step``."""
        return cubic_sparsity(step, self.initial, self.final, self.start, self.end)
