"""Base strategy: seeded client sampling by partition, per-client payloads, reply checks."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from logging import WARNING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedprune import partial, wire
from fedprune.pruning.masks import Masks

#: (partition, server_round) -> entries that partition shares that round ({} = everything)
SharedPart = Callable[[int, int], Masks]


def everything_shared(partition: int, server_round: int) -> Masks:
    """No partial updates: every entry is shared."""
    return {}


Decoded = tuple[dict[str, torch.Tensor], Masks, float]


class UnitStructure:
    """How a structured client's unit masks map to entry masks (for ``units::`` records)."""

    def __init__(self, sizes: dict[str, int], expand: Callable[[Masks], Masks]) -> None:
        self.sizes = sizes
        self.expand = expand


class PersonalizedStrategy(FedAvg):
    """FedAvg's round structure with what personalized pruning needs.

    - Sampling: a seeded ``random.Random`` over partition ids (node ids are random
      in Flower's simulation, partition ids are not), so runs are reproducible.
    - Payloads: each client gets its own message (``payload``).
    - Replies are decoded and checked (shapes, finiteness, mask consistency) before
      aggregation; a faulty reply is dropped and logged, never aggregated.
    - ``client_masks`` holds the latest mask each client reported; ``known`` the
      clients that replied at least once.
    """

    def __init__(self, template: dict[str, torch.Tensor], partition_of: dict[int, int],
                 method: str, seed: int, fraction_train: float = 1.0,
                 fraction_evaluate: float = 1.0, shared_part: SharedPart = everything_shared,
                 structure: UnitStructure | None = None, frozen: Iterable[str] = ()) -> None:
        super().__init__(fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
                         min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
        self.template = template
        self.partition_of = partition_of
        self.method = method
        self.rng = random.Random(seed)
        self.shared_part = shared_part
        self.structure = structure
        # tensors that never travel (frozen on both sides): left out of every payload
        self.frozen: Masks = partial.nothing_of(template, frozen)
        self.client_masks: dict[int, Masks] = {}
        self.client_units: dict[int, Masks] = {}
        # unit masks that post-training clients chose for their personal models (never sent to them)
        self.post_units: dict[int, Masks] = {}
        self.known: set[int] = set()
        self.rejected: list[tuple[int, str]] = []
        self.global_state: dict[str, torch.Tensor] = {}

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
        return partial.intersect(masks, self.shared_part(partition, server_round))

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                  node_ids: list[int], message_type: str) -> list[Message]:
        self.global_state = {k: torch.from_numpy(np.asarray(v.numpy()).copy()) for k, v in arrays.items()}
        messages = []
        for node_id in node_ids:
            model, wire_config = self.payload(self.partition_of[node_id], server_round)
            content = ConfigRecord({**dict(config), **dict(wire_config),
                                    "method": self.method, "server-round": server_round})
            messages.append(Message(RecordDict({"arrays": model, "config": content}),
                                    dst_node_id=node_id, message_type=message_type))
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One message per sampled client, each with its own payload."""
        return self._messages(server_round, arrays, config, self.sample(self.fraction_train),
                              MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Personal evaluation on a seeded sample (``config['all-clients']`` asks everyone)."""
        fraction = 1.0 if config.get("all-clients", False) else self.fraction_evaluate
        return self._messages(server_round, arrays, config, self.sample(fraction),
                              MessageType.EVALUATE)

    # ---- replies ------------------------------------------------------------------------
    def decode(self, message: Message) -> Decoded:
        """Full-size tensors, the entries the client sent, and its weight; raises on faults."""
        content = message.content
        weight = float(content["metrics"]["num-examples"])
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"num-examples must be positive, got {weight}")
        partition = self.partition_of[message.metadata.src_node_id]
        record = content["arrays"]
        masks = wire.bitmaps_in(record, self.template)
        units = wire.units_in(record, self.structure.sizes) if self.structure else {}
        if units:
            masks = self.structure.expand(units)
        masks = masks or self.client_masks.get(partition)
        if wire.mask_digest(masks) != int(content["wire"]["mask-digest"]):
            self.known.discard(partition)  # resynchronise with a dense payload next time
            raise ValueError("reply's values follow a mask the server does not hold")
        sent = self.sent_entries(masks, partition, int(content["wire"]["server-round"]))
        state = wire.unpack(wire.values_only(record), self.template, sent)
        if masks:
            self.client_masks[partition] = masks
        if units:
            self.client_units[partition] = units
        return state, sent, weight

    def note_post_units(self, partition: int, record: ArrayRecord) -> None:
        """Keep the unit masks an evaluate reply reports (strategies of post-training methods,
        which have a ``structure``); raises ValueError on a malformed record."""
        units = wire.units_in(record, self.structure.sizes)
        if set(units) != set(self.structure.sizes):
            raise ValueError("evaluate reply: unit masks missing for some groups")
        self.post_units[partition] = units

    def personal_structure(self, partition: int) -> tuple[Masks | None, Masks | None]:
        """The entry masks and unit masks of ``partition``'s personal model (None: dense or unknown)."""
        if partition in self.post_units:
            units = self.post_units[partition]
            return self.structure.expand(units), units
        return self.client_masks.get(partition), self.client_units.get(partition)

    def valid_replies(self, replies: Iterable[Message]) -> list[tuple[int, Decoded, Message]]:
        """Decoded good replies sorted by partition id; faulty ones are logged and dropped."""
        good = []
        for message in replies:
            partition = self.partition_of.get(message.metadata.src_node_id, -1)
            if message.has_error():
                self.rejected.append((partition, message.error.reason))
                self.known.discard(partition)  # resynchronise with a dense payload next time
                continue
            try:
                decoded = self.decode(message)
            except (KeyError, ValueError, TypeError) as error:
                log(WARNING, "dropping reply of client %s: %s", partition, error)
                self.rejected.append((partition, str(error)))
                self.known.discard(partition)  # resynchronise with a dense payload next time
                continue
            self.known.add(partition)
            good.append((partition, decoded, message))
        good.sort(key=lambda item: item[0])
        return good

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the good replies (``combine``) and average their metrics."""
        good = self.valid_replies(replies)
        if not good:
            return None, None
        state = self.combine([decoded for _, decoded, _ in good])
        metrics = self.train_metrics_aggr_fn([msg.content for *_, msg in good], self.weighted_by_key)
        return ArrayRecord({k: Array(v.numpy()) for k, v in state.items()}), metrics

    def combine(self, decoded: list[Decoded]) -> dict[str, torch.Tensor]:
        """The new global tensors from decoded replies (subclasses define the rule)."""
        raise NotImplementedError
