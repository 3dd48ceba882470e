"""Base strategy of every method: a Flower ``Strategy`` whose round loop is ``Strategy.start``.

What personalized pruning adds to Flower's strategy:

- Sampling: a seeded ``random.Random`` over partition ids (node ids are random in
  Flower's simulation, partition ids are not), so runs are reproducible.
- Payloads: each client gets its own message (``payload``): the dense model at first
  contact, afterwards only the entries it keeps (its last reported mask) and shares.
- Evaluation cadence: ``configure_evaluate`` asks for personal accuracy every
  ``evaluate_every`` rounds and asks every client in the last round; in other rounds it
  sends nothing.
- Every reply is validated once (``fedprune.strategies.replies``, then decoded: shapes,
  finiteness, mask consistency). Only accepted replies reach aggregation, the run's
  records (``journal``) and ``reports``; a rejected one is recorded with its reason and
  its client is resynchronised with a dense payload next time.

Subclasses define ``combine`` (the aggregation rule). ``client_masks`` holds the latest
mask each client reported, ``client_units`` its unit masks, ``post_units`` the unit
masks that post-training clients chose for their personal models (never sent back); all
three keep the masks bit-packed (``PackedMaskStore``: 1 bit per entry).
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from logging import INFO
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedprune import partial, wire
from fedprune.faults import HARMLESS, plan_faults
from fedprune.partial import Sharing
from fedprune.pruning.masks import Masks, PackedMaskStore
from fedprune.strategies.health import RoundHealth
from fedprune.strategies.replies import (
    RejectedReply,
    Safeguards,
    arrays_of,
    check_evaluate_reply,
    check_train_reply,
    check_values,
    code_of,
    wire_of,
)

#: full-size tensors, the entries the client sent, and its weight
Decoded = tuple[dict[str, torch.Tensor], Masks, float]
#: writes one record of the run (``fedprune.server.records.Recorder.write``)
Journal = Callable[..., None]


def _discard(**record: Any) -> None:
    """A journal that keeps nothing."""


class UnitStructure:
    """How a structured client's unit masks map to entry masks (for ``units::`` records).

    ``optional`` groups may be absent from a reply (kept whole: a transformer's residual
    width, pruned only with ``prune_hidden``); every other group must be present."""

    def __init__(self, sizes: dict[str, int], expand: Callable[[Masks], Masks],
                 optional: frozenset[str] = frozenset()) -> None:
        self.sizes = sizes
        self.expand = expand
        self.optional = optional


@dataclass(frozen=True)
class Rejection:
    """A reply the strategy did not use (or a client that did not answer)."""

    partition: int
    exchange: str  # "train" or "evaluate"
    server_round: int
    reason: str
    code: str = "malformed"


@dataclass(frozen=True)
class FaultSettings:
    """Fault injection: this ``fraction`` of the sampled clients misbehaves, kinds in rotation."""

    fraction: float = 0.0
    kinds: Sequence[str] = ()


@dataclass
class ClientReports:
    """What accepted replies said: the latest per client, and the final round's accuracies by
    metric name (``accuracy``, ``val-accuracy``, ``trained-accuracy``, ``trained-val-accuracy``;
    a client whose last reply failed is missing there, never carried over)."""

    sparsity: dict[int, float] = field(default_factory=dict)
    budget_met: dict[int, bool] = field(default_factory=dict)
    accuracy: dict[int, float] = field(default_factory=dict)
    steps: dict[int, float] = field(default_factory=dict)
    final: dict[str, dict[int, float]] = field(default_factory=dict)
    newcomers: dict[int, float] = field(default_factory=dict)
    #: accepted train replies per client (rounds it took part in)
    participation: Counter[int] = field(default_factory=Counter)

    def keep_final(self, partition: int, metrics: dict[str, float], names: tuple[str, ...]) -> None:
        """Remember the final round's ``names`` among ``metrics``."""
        for name in names:
            if name in metrics:
                self.final.setdefault(name, {})[partition] = metrics[name]


class PersonalizedStrategy(Strategy):
    """Flower ``Strategy`` for personally pruned clients (see the module docstring)."""

    def __init__(self, template: dict[str, torch.Tensor], partition_of: dict[int, int], method: str, *,
                 seed: int, num_rounds: int, fraction_train: float = 1.0, fraction_evaluate: float = 1.0,
                 evaluate_every: int = 1, sharing: Sharing | None = None,
                 structure: UnitStructure | None = None, reports_units: bool = False,
                 safeguards: Safeguards | None = None, faults: FaultSettings | None = None,
                 journal: Journal = _discard) -> None:
        self.template = template
        self.partition_of = partition_of
        self.method = method
        self.rng = random.Random(seed)
        self.num_rounds = num_rounds
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.evaluate_every = evaluate_every
        self.sharing = sharing or Sharing(template)
        self.structure = structure
        self.reports_units = reports_units
        self.safeguards = safeguards or Safeguards()
        self.faults = faults or FaultSettings()
        self.journal = journal
        self.seed = seed
        self.health = RoundHealth(method, self.safeguards.min_reply_fraction, self.safeguards.max_failed_rounds)
        # tensors that never travel (frozen on both sides): left out of every payload
        self.frozen: Masks = partial.nothing_of(template, self.sharing.frozen)
        # bit-packed: 1 bit per entry and client (reading unpacks a copy)
        self.client_masks: MutableMapping[int, Masks] = PackedMaskStore()
        self.client_units: MutableMapping[int, Masks] = PackedMaskStore()
        self.post_units: MutableMapping[int, Masks] = PackedMaskStore()
        self.known: set[int] = set()
        self.rejected: list[Rejection] = []
        self.reports = ClientReports()
        self.global_state: dict[str, torch.Tensor] = {}
        self.asked: dict[str, set[int]] = {"train": set(), "evaluate": set(), "onboard": set()}
        self.planned: dict[int, str] = {}  # this round's injected faults
        self.faults_injected: Counter[str] = Counter()
        self.faults_detected: Counter[str] = Counter()

    def summary(self) -> None:
        """Log the strategy's settings (Flower calls this when ``start`` begins)."""
        log(INFO, "\t├── method %s, %d clients, %d rounds", self.method, len(self.partition_of), self.num_rounds)
        log(INFO, "\t├── fraction train %s, fraction evaluate %s, evaluate every %d round(s)",
            self.fraction_train, self.fraction_evaluate, self.evaluate_every)
        log(INFO, "\t└── aggregation %s", type(self).__name__)

    # ---- sampling and payloads ---------------------------------------------------------
    def sample(self, fraction: float) -> list[int]:
        """Node ids of a seeded sample of ``int(fraction * clients)`` clients (at least 1)."""
        partitions = sorted(self.partition_of.values())
        count = max(1, int(len(partitions) * fraction))
        chosen = sorted(self.rng.sample(partitions, count))
        node_of = {p: n for n, p in self.partition_of.items()}
        return [node_of[p] for p in chosen]

    def payload(self, partition: int, server_round: int) -> tuple[ArrayRecord, ConfigRecord]:
        """The model for ``partition`` and its wire description.

        First contact: the dense model (less frozen tensors). Afterwards only the entries
        the client keeps (its last reported mask) and shares this round.
        """
        if partition not in self.known:
            return wire.pack(self.global_state, self.frozen), ConfigRecord({"encoding": "dense", "mask-digest": 0})
        masks = self.client_masks.get(partition)
        sent = self.sent_entries(masks, partition, server_round)
        return wire.pack(self.global_state, sent), ConfigRecord(
            {"encoding": "masked", "mask-digest": wire.mask_digest(masks)})

    def sent_entries(self, masks: Masks | None, partition: int, server_round: int) -> Masks:
        """Entries that travel: kept by ``masks`` and shared by ``partition`` this round."""
        return partial.intersect(masks, self.sharing.shared(partition, server_round))

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                  node_ids: list[int], message_type: str, extra: dict[int, dict] | None = None) -> list[Message]:
        self.global_state = dict(arrays.to_torch_state_dict())
        messages = []
        for node_id in node_ids:
            partition = self.partition_of[node_id]
            model, wire_config = self.payload(partition, server_round)
            content = ConfigRecord({**dict(config), **dict(wire_config), **(extra or {}).get(partition, {}),
                                    "method": self.method, "server-round": server_round})
            messages.append(Message(RecordDict({"arrays": model, "config": content}),
                                    dst_node_id=node_id, message_type=message_type))
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One message per sampled client, each with its own payload (and its injected fault)."""
        nodes = self.sample(self.fraction_train)
        self.asked["train"] = {self.partition_of[n] for n in nodes}
        self.planned = plan_faults(self.seed, self.method, server_round, sorted(self.asked["train"]),
                                   self.faults.fraction, self.faults.kinds) if self.faults.fraction else {}
        for partition, kind in self.planned.items():
            self.faults_injected[kind] += 1
            self.journal(method=self.method, round=server_round, phase="fault", client=partition, kind=kind)
        extra: dict[int, dict] = {partition: {"fault": kind} for partition, kind in self.planned.items()}
        if self.evaluates_in(server_round):  # also measure the personal model right after training
            extra = {p: {**extra.get(p, {}), "measure": True} for p in self.asked["train"]}
        return self._messages(server_round, arrays, config, nodes, MessageType.TRAIN, extra)

    def evaluates_in(self, server_round: int) -> bool:
        """Whether personal (and global) accuracy is measured after ``server_round``."""
        return server_round == self.num_rounds or server_round % self.evaluate_every == 0

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Personal evaluation on a seeded sample in evaluation rounds (every client in the last)."""
        if not self.evaluates_in(server_round):
            self.asked["evaluate"] = set()  # nobody is asked, so nobody is missing
            return []
        fraction = 1.0 if server_round == self.num_rounds else self.fraction_evaluate
        nodes = self.sample(fraction)
        self.asked["evaluate"] = {self.partition_of[n] for n in nodes}
        return self._messages(server_round, arrays, config, nodes, MessageType.EVALUATE)

    # ---- replies ------------------------------------------------------------------------
    def _partition(self, message: Message) -> int:
        return self.partition_of.get(message.metadata.src_node_id, -1)

    def _reject(self, partition: int, exchange: str, server_round: int, error: Exception) -> None:
        rejection = Rejection(partition, exchange, server_round, str(error), code_of(error))
        self.rejected.append(rejection)
        self.known.discard(partition)  # resynchronise with a dense payload next time
        self.journal(method=self.method, round=server_round, phase="rejected", exchange=exchange,
                     client=partition, code=rejection.code, reason=rejection.reason)

    def _unanswered(self, exchange: str, answered: set[int], server_round: int) -> None:
        """Record every client asked in this exchange that did not answer before the timeout."""
        for partition in sorted(self.asked[exchange] - answered):
            self._reject(partition, exchange, server_round,
                         RejectedReply("no reply before the round's timeout", "no-reply"))

    def decode(self, message: Message, partition: int, weight: float) -> Decoded:
        """Full-size tensors, the entries the client sent, and its weight; raises on faults."""
        record = arrays_of(message)
        masks: Masks | None = wire.bitmaps_in(record, self.template)
        units = wire.units_in(record, self.structure.sizes) if self.structure else {}
        if units and self.structure is not None:
            masks = self.structure.expand(units)
        masks = masks or self.client_masks.get(partition)
        info = wire_of(message)
        if wire.mask_digest(masks) != wire.int_of(info, "mask-digest"):
            raise RejectedReply("reply's values follow a mask the server does not hold", "malformed")
        sent = self.sent_entries(masks, partition, wire.int_of(info, "server-round"))
        state = wire.unpack(wire.values_only(record), self.template, sent)
        if masks:
            self.client_masks[partition] = masks
        if units:
            self.client_units[partition] = units
        return state, sent, weight

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and decode every reply, record the accepted ones, aggregate them (``combine``)
        unless the round failed (too few accepted replies, or a non-finite aggregate)."""
        accepted, answered = [], set()
        for message in sorted(replies, key=self._partition):
            partition = self._partition(message)
            answered.add(partition)
            try:
                metrics = check_train_reply(message, partition, server_round,
                                            self.safeguards.max_examples.get(partition))
                decoded = self.decode(message, partition, metrics["num-examples"])
                check_values(decoded[0], decoded[1], self.global_state, self.safeguards.max_abs_value,
                             self.safeguards.max_update_ratio)
            except (RejectedReply, ValueError, KeyError, TypeError) as error:
                self._reject(partition, "train", server_round, error)
                continue
            self.known.add(partition)
            accepted.append((partition, decoded, metrics))
        self._unanswered("train", answered, server_round)
        self._count_detected(server_round, {p for p, _, _ in accepted})
        for partition, _, metrics in accepted:
            self._note_train(partition, server_round, metrics)
        state = self.combine([decoded for _, decoded, _ in accepted]) if accepted else None
        why = "" if state is None or _finite(state) else "the aggregated model is not finite"
        sampled = len(self.asked["train"])
        ok = self.health.judge(sampled, len(accepted), why)
        total = sum(m["num-examples"] for *_, m in accepted)
        loss = sum(m["train-loss"] * m["num-examples"] for *_, m in accepted) / total if total else None
        self.journal(method=self.method, round=server_round, phase="train-summary", sampled=sampled,
                     clients=len(accepted), failed=not ok, reason=why or None, num_examples=total,
                     train_loss_weighted=loss)
        self.health.stop_if_exhausted(server_round, sampled, len(accepted), why)
        if not ok or state is None:
            return None, None
        return ArrayRecord(state), MetricRecord({"train-loss": loss or 0.0, "num-examples": total,
                                                 "clients": len(accepted)})

    def _count_detected(self, server_round: int, accepted: set[int]) -> None:
        """Injected faults whose reply was not accepted were detected (a straggler's valid reply
        is accepted: nothing to detect)."""
        for partition, kind in self.planned.items():
            if partition not in accepted and kind not in HARMLESS:
                self.faults_detected[kind] += 1

    def _note_train(self, partition: int, server_round: int, metrics: dict[str, float]) -> None:
        self.reports.participation[partition] += 1
        self.reports.sparsity[partition] = metrics["sparsity"]
        self.reports.steps[partition] = metrics["sgd-steps"]
        met = None if metrics["budget-met"] < 0 else bool(metrics["budget-met"])
        if met is not None:
            self.reports.budget_met[partition] = met
        if server_round == self.num_rounds:
            self.reports.keep_final(partition, metrics, (wire.TRAINED_ACCURACY, wire.TRAINED_VAL_ACCURACY))
        self.journal(method=self.method, round=server_round, phase="train-metrics", client=partition,
                     train_loss=metrics["train-loss"], sparsity=metrics["sparsity"], budget_met=met,
                     compute_seconds=metrics["compute-seconds"], num_examples=int(metrics["num-examples"]),
                     sgd_steps=int(metrics["sgd-steps"]), trained_accuracy=metrics.get(wire.TRAINED_ACCURACY),
                     trained_val_accuracy=metrics.get(wire.TRAINED_VAL_ACCURACY))

    def _accepted_evaluations(self, server_round: int, replies: Iterable[Message],
                              exchange: str) -> list[tuple[int, dict[str, float]]]:
        """The valid evaluate replies as ``(partition, metrics)``; the others are rejected."""
        accepted, answered = [], set()
        for message in sorted(replies, key=self._partition):
            partition = self._partition(message)
            answered.add(partition)
            try:
                metrics = check_evaluate_reply(message, partition)
                if self.reports_units and exchange == "evaluate":
                    self.note_post_units(partition, arrays_of(message))
            except (RejectedReply, ValueError, KeyError, TypeError) as error:
                self._reject(partition, exchange, server_round, error)
                continue
            accepted.append((partition, metrics))
        self._unanswered(exchange, answered, server_round)
        return accepted

    def configure_onboard(self, server_round: int, arrays: ArrayRecord, newcomers: dict[int, int]) -> list[Message]:
        """After the last round: each new client (node id -> partition, never sampled before) gets
        the final model, to make its own personal model from (``config["onboard"]``)."""
        self.partition_of.update(newcomers)
        self.asked["onboard"] = set(newcomers.values())
        return self._messages(server_round, arrays, ConfigRecord({"onboard": True}), sorted(newcomers),
                              MessageType.EVALUATE)

    def aggregate_onboard(self, server_round: int, replies: Iterable[Message]) -> None:
        """Record each new client's accuracy (``reports.newcomers``, phase ``new-client``)."""
        for partition, metrics in self._accepted_evaluations(server_round, replies, "onboard"):
            self.reports.newcomers[partition] = metrics["accuracy"]
            self.journal(method=self.method, round=server_round, phase="new-client", client=partition,
                         accuracy=metrics["accuracy"], sparsity=metrics["sparsity"],
                         num_examples=int(metrics["num-examples"]))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Validate every evaluate reply, record each client's personal accuracy; return the
        example-weighted mean accuracy (the summary's ``personal_accuracy_mean`` is the plain
        mean over clients instead)."""
        accepted = self._accepted_evaluations(server_round, replies, "evaluate")
        for partition, metrics in accepted:
            if self.reports_units:
                self.reports.sparsity[partition] = metrics["sparsity"]
            self.reports.accuracy[partition] = metrics["accuracy"]
            if server_round == self.num_rounds:
                self.reports.keep_final(partition, metrics, ("accuracy", wire.VAL_ACCURACY))
            self.journal(method=self.method, round=server_round, phase="personal", client=partition,
                         accuracy=metrics["accuracy"], val_accuracy=metrics.get(wire.VAL_ACCURACY),
                         sparsity=metrics["sparsity"], num_examples=int(metrics["num-examples"]))
        if not accepted:
            return None
        total = sum(m["num-examples"] for _, m in accepted)
        weighted = sum(m["accuracy"] * m["num-examples"] for _, m in accepted) / total
        self.journal(method=self.method, round=server_round, phase="evaluate-summary", clients=len(accepted),
                     num_examples=total, accuracy_weighted=weighted)
        return MetricRecord({"accuracy": weighted, "num-examples": total, "clients": len(accepted)})

    def note_post_units(self, partition: int, record: ArrayRecord) -> None:
        """Keep the unit masks an evaluate reply reports; raises ValueError on a malformed record."""
        if self.structure is None:
            raise ValueError("this strategy has no unit structure")
        units = wire.units_in(record, self.structure.sizes)
        if not set(self.structure.sizes) - self.structure.optional <= set(units):
            raise RejectedReply("unit masks missing for some groups", "missing")
        self.post_units[partition] = units

    def personal_structure(self, partition: int) -> tuple[Masks | None, Masks | None]:
        """The entry masks and unit masks of ``partition``'s personal model (None: dense or unknown)."""
        if partition in self.post_units and self.structure is not None:
            units = self.post_units[partition]
            return self.structure.expand(units), units
        return self.client_masks.get(partition), self.client_units.get(partition)

    def combine(self, decoded: list[Decoded]) -> dict[str, torch.Tensor]:
        """The new global tensors from decoded replies (subclasses define the rule)."""
        raise NotImplementedError

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the strategy learned so far, in plain types and tensors (``torch.save``
        with ``weights_only`` loads it): the sampling RNG, what it holds per client, the
        reports, rejections, fault counts and round health. ``load_state_dict`` restores it."""
        return {
            "rng": self.rng.getstate(),
            "client_masks": dict(self.client_masks), "client_units": dict(self.client_units),
            "post_units": dict(self.post_units),
            "known": sorted(self.known), "asked": {k: sorted(v) for k, v in self.asked.items()},
            "planned": dict(self.planned),
            "rejected": [dataclasses.astuple(r) for r in self.rejected],
            # not dataclasses.asdict: it rebuilds a Counter from (key, count) pairs, counting the pairs
            "reports": {f.name: dict(getattr(self.reports, f.name)) for f in dataclasses.fields(self.reports)},
            "health": {"failing": self.health.failing, "failed_rounds": self.health.failed_rounds},
            "faults_injected": dict(self.faults_injected), "faults_detected": dict(self.faults_detected),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a ``state_dict`` of a strategy built with the same settings)."""
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        for store, key in ((self.client_masks, "client_masks"), (self.client_units, "client_units"),
                           (self.post_units, "post_units")):
            store.clear()
            store.update(state[key])
        self.known = set(state["known"])
        self.asked = {k: set(v) for k, v in state["asked"].items()}
        self.planned = dict(state["planned"])
        self.rejected = [Rejection(*r) for r in state["rejected"]]
        self.reports = ClientReports(**state["reports"])
        self.reports.participation = Counter(self.reports.participation)
        self.health.failing, self.health.failed_rounds = state["health"]["failing"], state["health"]["failed_rounds"]
        self.faults_injected = Counter(state["faults_injected"])
        self.faults_detected = Counter(state["faults_detected"])


def _finite(state: dict[str, torch.Tensor]) -> bool:
    """Whether every floating-point tensor of ``state`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())
