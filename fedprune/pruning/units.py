"""Structured pruners: whole units chosen by a unit selector, squeezed into smaller dense models.

``StructuredPruner`` is one pruner parametrised by its selector; ``MIPruner`` (layer-wise
mutual information, Fan et al. 2021), ``L1StructuredPruner`` and ``RandomStructuredPruner``
are its small subclasses. Their masks are unit masks (group name -> bool vector);
``fedprune.models.structure.expand_unit_mask`` turns them into entry masks and
``fedprune.pruning.squeeze.squeeze`` into a smaller dense model.

``post_prune`` is the post-training variant (``mi-post``): prune a trained dense model
once, squeeze it, and refit the layers that read pruned units (``reconstruct``).

Residual width (``prune_hidden``): a transformer's hidden dims form one global group
(kind ``HIDDEN``). Left out of selection by default; with ``prune_hidden`` it keeps
``round(width * (1 - s) ** hidden_keep_exponent)`` dims at target sparsity ``s`` (a fixed
count, ``select_units(fixed=...)``), and ``mi_allocation`` spreads the rest of the budget
over heads and FFN neurons. Every encoder weight reads or writes the residual once, so
their kept fraction is about ``(1 - s) ** (1 - hidden_keep_exponent)``: with the default
0.33 the width is pruned less than heads and FFN (0.9: 47% of the width, about 21% of the
heads and neurons).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fedprune.models.structure import HIDDEN, UnitGroup, expand_unit_mask, unit_groups, weight_names
from fedprune.options import FRACTION_OPEN, Option, at_least, option
from fedprune.pruning.masks import Masks
from fedprune.pruning.pruner import STRUCTURED, PruneData, Pruner
from fedprune.pruning.reconstruct import reconstruct
from fedprune.pruning.schedule import CubicSchedule
from fedprune.pruning.selectors import L1Selector, MISelector, RandomSelector, UnitSelector
from fedprune.pruning.squeeze import expand, squeeze
from fedprune.pruning.structured import ALLOCATIONS, select_units

STRUCTURED_OPTIONS: tuple[Option, ...] = (
    option("structured_schedule", "gradual",
           "`gradual`: the cubic schedule, each new unit set nested in the last; `once`: dense "
           "warm-up rounds, then straight to `final_sparsity` at the end of round `prune_start_round`",
           choices=("gradual", "once")),
    option("mi_allocation", "uniform",
           "how kept units are spread over layers (every structured pruner): `uniform`, every layer "
           "keeps the same fraction; `global`, rank all units by score normalised within their layer; "
           "`kind`, `global` decides how much of each kind of unit (heads, FFN neurons, an MLP's hidden "
           "neurons) is kept, every layer keeps that fraction", choices=ALLOCATIONS),
    option("prune_hidden", False,
           "structured pruners also prune a transformer's residual (hidden) width: one set of kept "
           "hidden dims shared by the embeddings, every LayerNorm, the attention and FFN projections and "
           "the pooler input (the sparsity still counts the encoder's Linear weights only)"),
    option("hidden_keep_exponent", 0.33,
           "with `prune_hidden`, the width keeps round(width * (1 - s) ^ e) dims at target sparsity s, "
           "and heads and FFN neurons share the rest of the budget (about (1 - s) ^ (1 - e) of them each); "
           "0.5 prunes width and units alike, smaller values spare the width", bounds=FRACTION_OPEN),
)
MI_OPTIONS: tuple[Option, ...] = (
    option("mi_estimator", "gaussian", "MI estimator: `gaussian` (log-det of shrunk covariances) or "
           "`binned` (equal-frequency plug-in)", choices=("gaussian", "binned")),
    option("mi_greedy", False, "redundancy-aware greedy selection by conditional MI given the units "
           "already chosen (Gaussian only)"),
    option("mi_max_rows", 2048, "at most this many local training examples feed the activation "
           "statistics", bounds=at_least(2)),
)

#: at most this many local examples calibrate the post-training refit (one forward pass)
CALIBRATION_ROWS = 512


def _kept_weights(model: nn.Module, masks: Masks, names: list[str]) -> int:
    params = dict(model.named_parameters())
    return sum(int(masks[n].sum()) if n in masks else params[n].numel() for n in names)


class StructuredPruner(Pruner):
    """Whole units ranked by ``make_selector()``; each new unit set nested in the last."""

    granularity = STRUCTURED
    options = STRUCTURED_OPTIONS
    schedule_options = ("structured_schedule",)

    def __init__(self, schedule: CubicSchedule, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(schedule, settings)
        if self.settings["structured_schedule"] == "once":  # dense warm-up, then one jump
            final, start = schedule.final, schedule.start
            self.schedule = CubicSchedule(final, final, start, start)

    def make_selector(self) -> UnitSelector:
        """The selector that ranks units (subclasses choose)."""
        raise NotImplementedError

    def groups(self, model: nn.Module) -> list[UnitGroup]:
        """The groups this pruner selects in: every group, the residual width only with ``prune_hidden``."""
        groups = unit_groups(model)
        if not self.settings["prune_hidden"]:
            return [group for group in groups if group.kind != HIDDEN]
        if not any(group.kind == HIDDEN for group in groups):
            raise ValueError(f"prune_hidden: {type(model).__name__} has no residual width (transformers only)")
        return groups

    def width_counts(self, groups: list[UnitGroup], current: Masks | None, sparsity: float) -> dict[str, int]:
        """Kept dims of each residual-width group at ``sparsity`` (never more than ``current`` keeps)."""
        fixed = {}
        for group in groups:
            if group.kind == HIDDEN:
                wanted = max(1, round(group.size * (1.0 - sparsity) ** self.settings["hidden_keep_exponent"]))
                now = int(current[group.name].sum()) if current and group.name in current else group.size
                fixed[group.name] = min(wanted, now)
        return fixed

    def prune(self, model: nn.Module, current: Masks | None, sparsity: float, data: PruneData) -> Masks:
        """Unit masks at parameter sparsity ``sparsity``, nested inside ``current``.

        Selection runs on the model squeezed to ``current`` (only units still kept compete),
        at the sparsity that brings the full model to ``sparsity``; the result is mapped
        back to full-size unit indices.
        """
        groups = self.groups(model)
        names = weight_names(model, groups)
        params = dict(model.named_parameters())
        total = sum(params[n].numel() for n in names)
        small = squeeze(model, current, groups) if current else model
        kept_now = _kept_weights(model, expand_unit_mask(model, groups, current), names) if current else total
        relative = max(0.0, 1.0 - (1.0 - sparsity) * total / kept_now)
        chosen = select_units(small, self.make_selector(), relative, data.x, data.y,
                              allocation=self.settings["mi_allocation"],
                              seed=data.seed_for("select", data.client, data.step),
                              groups=self.groups(small) if current else groups,
                              fixed=self.width_counts(groups, current, sparsity))
        if not current:
            return chosen
        sizes = {group.name: group.size for group in groups}
        result = {}
        for name, inner in chosen.items():
            before = current[name] if name in current else torch.ones(sizes[name], dtype=torch.bool)
            full = before.clone()
            full[before.nonzero().squeeze(1)] = inner
            result[name] = full
        return result


class MIPruner(StructuredPruner):
    """Layer-wise mutual-information unit selection, top-down from the labels."""

    options = STRUCTURED_OPTIONS + MI_OPTIONS

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        if settings["mi_greedy"] and settings["mi_estimator"] != "gaussian":
            raise ValueError('mi_greedy: greedy selection uses Gaussian conditional MI; '
                             'set mi_estimator = "gaussian"')

    def make_selector(self) -> UnitSelector:
        return MISelector(self.settings["mi_estimator"], self.settings["mi_greedy"],
                          self.settings["mi_max_rows"])


class MIRefitPruner(MIPruner):
    """``MIPruner`` whose every pruning step is followed by the least-squares refit of the
    layers reading the newly pruned units, towards the model before the step."""

    refits = True


class L1StructuredPruner(StructuredPruner):
    """Units with the largest L1 weight norm."""

    def make_selector(self) -> UnitSelector:
        return L1Selector()


class RandomStructuredPruner(StructuredPruner):
    """Random units (seeded per client and step)."""

    def make_selector(self) -> UnitSelector:
        return RandomSelector()


def post_prune(model: nn.Module, pruner: StructuredPruner, sparsity: float,
               data: PruneData) -> tuple[nn.Module, Masks]:
    """Prune the trained dense ``model`` once: units at ``sparsity`` chosen on ``data``,
    squeezed, and the layers reading pruned units refit towards ``model``
    (``fedprune.pruning.reconstruct``) on the first ``CALIBRATION_ROWS`` of ``data.x``.
    Returns the squeezed model and its unit masks; ``model`` is unchanged."""
    units = pruner.prune(model, None, sparsity, data)
    return refit_squeezed(model, units, data.x), units


def refit_squeezed(model: nn.Module, units: Masks, x: torch.Tensor) -> nn.Module:
    """``model`` squeezed to ``units``, the layers reading pruned units refit towards ``model``
    on the first ``CALIBRATION_ROWS`` of ``x``; ``model`` is unchanged."""
    small = squeeze(model, units)
    reconstruct(small, model, units, x[:CALIBRATION_ROWS])
    return small


@torch.no_grad()
def refit_step(model: nn.Module, units: Masks, x: torch.Tensor) -> None:
    """Refit ``model`` in place after a pruning step to ``units``: the model as it was (its
    earlier pruned entries already 0, so it computes its masked twin) is the teacher; the
    layers reading pruned units of the squeezed model are refit towards it on the first
    ``CALIBRATION_ROWS`` of ``x`` and written back; pruned entries become 0."""
    model.load_state_dict(expand(refit_squeezed(model, units, x), model, units))


def param_masks(model: nn.Module, units: Masks) -> Masks:
    """Entry-level masks (weights and biases) of the unit masks."""
    return expand_unit_mask(model, unit_groups(model), units)

