"""The pruner protocol: one base class, each pruning method a small subclass that computes a mask.

In the spirit of ``torch.nn.utils.prune.BasePruningMethod``: a ``Pruner`` knows

- its ``granularity``: ``unstructured`` (a boolean mask per prunable weight) or
  ``structured`` (a boolean vector per unit group, see ``fedprune.models.structure``);
- the sparsity it targets at a step (``sparsity_at``, from the cubic schedule of Zhu &
  Gupta 2017 unless the pruner says otherwise);
- an optional hook run after every backward pass of local training (``observe``);
- ``prune(model, current, sparsity, data)``: the new mask, nested in ``current``;
- the state it keeps between steps (``state``; restored through ``observe``);
- its own settings (``options``), read and checked from a flat mapping.

A step is a federated round in fedprune; nothing here knows about Flower. A pruner
instance lives for one step of one client: build it, ``observe`` the model before
training, ``prune`` after it, keep ``state()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fedprune.options import Option, check_value
from fedprune.pruning.masks import Masks
from fedprune.pruning.schedule import CubicSchedule
from fedprune.seeds import derive_seed

UNSTRUCTURED = "unstructured"
STRUCTURED = "structured"
GRANULARITIES = (UNSTRUCTURED, STRUCTURED)

Tensors = dict[str, torch.Tensor]
BackwardHook = Callable[[], None]


@dataclass(frozen=True)
class PruneData:
    """What a pruner may use besides the model: the client's training data and its seeds.

    ``base_seed`` is the experiment seed; ``seed_for`` derives a pruner's own seeds from
    it and names such as the client and the step, so that they never collide.
    """

    x: torch.Tensor
    y: torch.Tensor
    client: int = 0
    step: int = 0
    base_seed: int = 0

    def seed_for(self, *parts: object) -> int:
        """A seed for ``parts`` (e.g. ``"select", client, step``)."""
        return derive_seed(self.base_seed, *parts)


def read_options(options: tuple[Option, ...], values: Mapping[str, Any]) -> dict[str, Any]:
    """Each option's value from ``values`` (its default if absent), type- and range-checked.

    Raises ``ValueError`` whose message starts with the option's name.
    """
    result = {}
    for opt in options:
        value = values.get(opt.name, opt.default)
        if opt.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, opt.kind) or (opt.kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{opt.name}: expected {opt.kind.__name__}, got {value!r}")
        check_value(opt.name, value, opt.doc)
        result[opt.name] = value
    return result


class Pruner(ABC):
    """Base class of every pruning method; subclasses compute masks (see module docstring)."""

    granularity: ClassVar[str] = UNSTRUCTURED
    #: the settings this pruner reads (flat config keys; documented in docs/configuration.md)
    options: ClassVar[tuple[Option, ...]] = ()
    #: those of ``options`` that only shape its schedule (unused when it prunes once, after training)
    schedule_options: ClassVar[tuple[str, ...]] = ()
    #: after each pruning step the client refits the layers that read newly pruned units
    #: (structured pruners only; ``fedprune.pruning.units.refit_step``)
    refits: ClassVar[bool] = False

    def __init__(self, schedule: CubicSchedule, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = read_options(type(self).options, settings or {})
        self.check_settings(self.settings)
        self.schedule = schedule

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` (naming the option) for combinations of options that do not work."""

    @property
    def structured(self) -> bool:
        """True if ``prune`` returns unit masks (whole units, squeezable) rather than entry masks."""
        return self.granularity == STRUCTURED

    def sparsity_at(self, step: int) -> float | None:
        """The sparsity to prune to at ``step``, or None where ``step`` is not a pruning step."""
        return self.schedule.sparsity(step) if self.schedule.prunes_at(step) else None

    def due_at(self, step: int, last: int) -> tuple[int, float] | None:
        """Catch-up for clients that do not take part in every step: the latest pruning step in
        ``(last, step]`` and its sparsity (``sparsity_at``), where ``last`` is the client's last
        pruning step (0: none yet); None when no pruning step was missed and none is due now.

        A client taking part in every step prunes exactly at its pruning steps; one that missed
        some (e.g. sampled first after the schedule's end) prunes straight to the target of the
        latest one.
        """
        for candidate in range(step, max(last, 0), -1):
            target = self.sparsity_at(candidate)
            if target is not None:
                return candidate, target
        return None

    def observe(self, model: nn.Module, state: Tensors | None) -> BackwardHook | None:
        """Called with the model about to be trained and the state kept from the last step;
        may return a hook to run after every backward pass."""
        return None

    def state(self) -> Tensors:
        """Tensors to keep until the next step (handed back to ``observe``)."""
        return {}

    @abstractmethod
    def prune(self, model: nn.Module, current: Masks | None, sparsity: float, data: PruneData) -> Masks:
        """The new mask at ``sparsity``, kept entries (or units) a subset of ``current``.

        ``current`` is None before the first pruning step (everything kept).
        """
