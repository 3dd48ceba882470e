"""Cubic sparsity schedule of Zhu & Gupta (2017), "To prune, or not to prune", over rounds.

The formula is torch's own (``torch.ao.pruning.scheduler.CubicSL.sparsity_compute_fn``);
``CubicSchedule`` adds which steps prune (every ``frequency`` steps from ``start`` to
``end``), since in a federation the schedule is read per client and round rather than
stepped alongside a ``torch.ao`` sparsifier.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.ao.pruning.scheduler.cubic_scheduler import CubicSL


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Sparsity at ``step``: ``s_f + (s_i - s_f) * (1 - (t - t0) / (n*dt))**3``.

    ``start`` is t0 and ``end`` is t0 + n*dt. Before ``start`` the sparsity is
    ``initial``; from ``end`` on it is ``final`` (also when ``start == end``).
    """
    if step >= end:
        return final
    if step <= start:
        return initial
    return float(CubicSL.sparsity_compute_fn(s_0=initial, s_f=final, t=step, t_0=start, dt=1, n=end - start))


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
