"""The methods a run can compare: each one a composition of parts, registered once by name.

A ``Method`` says

- ``pruner``: how a client prunes its personal mask during training (a class from
  ``fedprune.pruning``), or None for a dense method. Pruned methods are aggregated per
  entry over the clients that keep it; dense ones with Flower's FedAvg mean;
- ``personal``: how a client makes the personal model it evaluates from the model it
  holds: as received, fine-tuned, or post-training pruned and refit (``PersonalModel``);
- ``federated``: whether it federates at all (``local`` trains alone; nothing crosses a
  network);
- ``trains_like``: the method whose training stream (seeds, data order) it repeats, so
  that with one config its global models are those of the other and the comparison is
  paired;
- ``model``: ``full`` (the configured model) or ``small-dense`` (its widths shrunk to
  the sparse models' kept parameter count).

Adding a method is one line in ``METHODS``; a new pruning method is one file in
``fedprune/pruning/`` plus that line (docs/architecture.md). Every method with a pruner also
gets a ``local-`` twin that prunes without federating (``local-gmp``, ``local-mi`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedprune.models.small_dense import MODEL_VARIANTS
from fedprune.options import Option
from fedprune.pruning.magnitude import GlobalMagnitudePruner, MagnitudePruner
from fedprune.pruning.movement import MovementPruner
from fedprune.pruning.pruner import Pruner
from fedprune.pruning.random_masks import RandomPruner
from fedprune.pruning.soft_movement import SoftMovementPruner
from fedprune.pruning.taylor import TaylorPruner
from fedprune.pruning.units import L1StructuredPruner, MIPruner, MIRefitPruner, RandomStructuredPruner, StructuredPruner


@dataclass(frozen=True)
class PersonalModel:
    """How a client makes its personal model at evaluation from the model it holds.

    ``prune``: post-training structured pruning at ``final_sparsity`` on the client's
    data, squeezed and refit (``fedprune.pruning.units.post_prune``); the client then
    reports its unit masks. ``finetune``: ``finetune_epochs`` of local training at
    ``finetune_learning_rate`` (after the pruning, if any).
    """

    finetune: bool = False
    prune: type[StructuredPruner] | None = None

    @property
    def options(self) -> tuple[Option, ...]:
        """The settings its post-training pruner reads (its schedule's options do not apply)."""
        if self.prune is None:
            return ()
        return tuple(opt for opt in self.prune.options if opt.name not in self.prune.schedule_options)

    @property
    def reports_units(self) -> bool:
        """True if evaluate replies carry the unit masks of the personal model."""
        return self.prune is not None


AS_RECEIVED = PersonalModel()
FINE_TUNED = PersonalModel(finetune=True)
MI_PRUNED_AND_REFIT = PersonalModel(finetune=True, prune=MIPruner)


@dataclass(frozen=True)
class Method:
    """One federated method (see the module docstring)."""

    name: str
    summary: str
    pruner: type[Pruner] | None = None
    personal: PersonalModel = AS_RECEIVED
    federated: bool = True
    trains_like: str = ""
    model: str = "full"

    def __post_init__(self) -> None:
        if self.model not in MODEL_VARIANTS:
            raise ValueError(f"{self.name}: model {self.model!r}; allowed: {', '.join(MODEL_VARIANTS)}")

    @property
    def stream(self) -> str:
        """The name local training seeds are drawn under (``trains_like`` or its own)."""
        return self.trains_like or self.name

    @property
    def structured(self) -> bool:
        """True if its pruner removes whole units (unit masks on the wire, squeezed training)."""
        return self.pruner is not None and self.pruner.granularity == "structured"

    @property
    def options(self) -> tuple[Option, ...]:
        """The settings its parts read."""
        own = self.pruner.options if self.pruner is not None else ()
        return (*own, *self.personal.options)


def _registry(*methods: Method) -> dict[str, Method]:
    """Name -> method, and for every method with a pruner its ``local-`` twin: the same pruner,
    no federation, ``local``'s training stream (pruning without federation, to tell the cost
    of sparsity from the cost of federation)."""
    twins = [Method(f"local-{m.name}", f"{m.summary}; each client alone, nothing is sent", pruner=m.pruner,
                    federated=False, trains_like="local") for m in methods if m.pruner is not None]
    return {method.name: method for method in (*methods, *twins)}


METHODS: dict[str, Method] = _registry(
    Method("fedavg", "dense FedAvg (McMahan et al. 2017); no pruning"),
    Method("fedavg-ft", "FedAvg; each personal model is the global model fine-tuned locally for "
                        "finetune_epochs before evaluation", personal=FINE_TUNED, trains_like="fedavg"),
    Method("local", "each client trains alone on its own data; nothing is sent", federated=False),
    Method("gmp", "gradual magnitude pruning per client, each layer to s_t (Zhu & Gupta 2017)",
           pruner=MagnitudePruner),
    Method("gmp-global", "gradual magnitude pruning with one threshold over all layers",
           pruner=GlobalMagnitudePruner),
    Method("movement", "movement pruning: top-v of accumulated -grad*w scores per matrix (Sanh et al. 2020)",
           pruner=MovementPruner),
    Method("soft-movement", "soft movement pruning: learned scores, one sigmoid threshold over all matrices "
                            "moved to the schedule's sparsity, L1 penalty on the scores (Sanh et al. 2020)",
           pruner=SoftMovementPruner),
    Method("random", "a random unstructured mask per client at final_sparsity, fixed", pruner=RandomPruner),
    Method("taylor", "first-order Taylor importance |w * dL/dw| accumulated over the local epochs, per matrix "
                     "(Molchanov et al. 2019)", pruner=TaylorPruner),
    Method("mi", "layer-wise mutual-information pruning of whole units, top-down from the labels, squeezed "
                 "into a smaller dense model (Fan et al. 2021)", pruner=MIPruner),
    Method("mi-refit", "mi, each pruning step followed by a least-squares refit of the layers that read the "
                       "newly pruned units, towards the client's model before the step", pruner=MIRefitPruner,
           trains_like="mi"),
    Method("mi-post", "dense FedAvg training; each client prunes the global model with layer-wise MI on its "
                      "own data, squeezes it, refits the layers that read pruned units (least squares "
                      "towards the dense model) and fine-tunes it for finetune_epochs",
           personal=MI_PRUNED_AND_REFIT, trains_like="fedavg"),
    Method("l1-structured", "whole units with the largest L1 weight norm, squeezed", pruner=L1StructuredPruner),
    Method("random-structured", "random whole units, squeezed", pruner=RandomStructuredPruner),
    Method("small-dense", "a dense model shrunk to the sparse models' kept parameter count, trained with "
                          "FedAvg", model="small-dense"),
)


def method_options() -> dict[str, Option]:
    """Every option any registered method reads, by name (each name declared once)."""
    found: dict[str, Option] = {}
    for method in METHODS.values():
        for opt in method.options:
            if found.setdefault(opt.name, opt) != opt:
                raise ValueError(f"option {opt.name!r} is declared twice with different meanings")
    return found


def option_owners() -> dict[str, list[str]]:
    """Option name -> the methods that read it (for the configuration reference)."""
    owners: dict[str, list[str]] = {}
    for method in METHODS.values():
        for opt in method.options:
            owners.setdefault(opt.name, []).append(method.name)
    return owners
