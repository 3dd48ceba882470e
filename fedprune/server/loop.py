"""The round loop of one method: train, aggregate, evaluate, record, report progress."""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedprune import wire
from fedprune.clients.local import accuracy
from fedprune.config import ExperimentConfig
from fedprune.methods import METHODS
from fedprune.server.costs import mean_costs, personal_costs
from fedprune.server.records import MethodTally, Recorder
from fedprune.clients.app import handle_evaluate, handle_train, shared_part
from fedprune.models.structure import expand_unit_mask, unit_groups
from fedprune.strategies import DenseFedAvg, LocalOnly, MaskedFedAvg, PersonalizedStrategy, UnitStructure
from fedprune.task import frozen_names, initial_model, new_model, profile_threads, union_test_set

TIMEOUT_S = 3600.0
MB = 1e6


class LocalGrid:
    """Hands messages to clients in this process: for ``local``, where nothing is sent."""

    crosses_network = False

    def __init__(self, cfg: ExperimentConfig, partition_of: dict[int, int]) -> None:
        self.cfg = cfg
        self.contexts = {
            node: Context(run_id=0, node_id=node, state=RecordDict(), run_config={},
                          node_config={"partition-id": partition, "num-partitions": len(partition_of)})
            for node, partition in partition_of.items()
        }

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], timeout: float) -> list[Message]:
        handler = {MessageType.TRAIN: handle_train, MessageType.EVALUATE: handle_evaluate}
        return [handler[m.metadata.message_type](m, self.contexts[m.metadata.dst_node_id], self.cfg)
                for m in messages]


class CountingGrid:
    """Sends through a Flower ``Grid`` and records every message's bytes both ways."""

    def __init__(self, grid: Grid, recorder: Recorder, partition_of: dict[int, int]) -> None:
        self.grid = grid
        self.recorder = recorder
        self.partition_of = partition_of

    def exchange(self, messages: Iterable[Message], tally: MethodTally | None, phase: str,
                 server_round: int) -> list[Message]:
        """Send ``messages``, wait for replies, record down/up bytes per client."""
        messages = list(messages)
        size = wire.message_bytes if getattr(self.grid, "crosses_network", True) else (lambda _: 0)
        down = {m.metadata.dst_node_id: size(m) for m in messages}
        replies = list(self.grid.send_and_receive(messages, timeout=TIMEOUT_S))
        up = {r.metadata.src_node_id: size(r) for r in replies}
        for node, size in sorted(down.items(), key=lambda item: self.partition_of.get(item[0], -1)):
            self.recorder.write(method=tally.method if tally else None, round=server_round,
                                phase=phase, client=self.partition_of.get(node),
                                bytes_down=size, bytes_up=up.get(node, 0))
        if tally is not None:
            tally.bytes_down += sum(down.values())
            tally.bytes_up += sum(up.values())
        return replies


def by_partition(replies: list[Message]) -> list[Message]:
    """Replies in partition order (error replies last), so records are written reproducibly."""
    def key(reply: Message) -> tuple[int, int]:
        if reply.has_error():
            return (1, 0)
        return (0, int(reply.content["metrics"]["partition-id"]))
    return sorted(replies, key=key)


def discover_partitions(grid: Grid, recorder: Recorder, expected: int, wait_s: float = 120.0) -> dict[int, int]:
    """Wait for ``expected`` nodes, then ask each for its partition id (one small query each)."""
    deadline = time.monotonic() + wait_s
    while len(nodes := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(nodes)} nodes connected after {wait_s:.0f}s, config asks for {expected}")
        time.sleep(0.2)
    queries = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = grid.send_and_receive(queries, timeout=TIMEOUT_S)
    mapping = {}
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed to report its partition: "
                               f"{reply.error.reason}")
        mapping[reply.metadata.src_node_id] = int(reply.content["info"]["partition-id"])
    # Record the query's bytes once the partition of every node is known.
    for query, reply in zip(sorted(queries, key=lambda m: m.metadata.dst_node_id),
                            sorted(replies, key=lambda m: m.metadata.src_node_id)):
        recorder.write(method=None, round=0, phase="setup", client=mapping[reply.metadata.src_node_id],
                       bytes_down=wire.message_bytes(query), bytes_up=wire.message_bytes(reply))
    return mapping


def make_strategy(cfg: ExperimentConfig, method: str, template: dict[str, torch.Tensor],
                  partition_of: dict[int, int]) -> PersonalizedStrategy:
    """The strategy ``method`` aggregates with.

    Dense methods use Flower's FedAvg mean unless part of the model is personal;
    then, as for pruned methods, each entry is averaged over the clients that sent it.
    """
    partial_updates = cfg.personal_layers != "none" or cfg.personal_fraction > 0 or cfg.freeze_embeddings
    shared = functools.partial(shared_part, cfg, template)
    common = dict(seed=cfg.seed, fraction_train=cfg.fraction_train,
                  fraction_evaluate=cfg.fraction_evaluate, shared_part=shared,
                  frozen=frozen_names(cfg, list(template)))
    if not METHODS[method].federated:
        return LocalOnly(template, partition_of, method, **common)
    if METHODS[method].pruning == "structured" or METHODS[method].post_training:
        model = new_model(cfg, method)
        groups = unit_groups(model)
        common["structure"] = UnitStructure({g.name: g.size for g in groups},
                                            lambda units: expand_unit_mask(model, groups, units))
    if METHODS[method].pruning == "structured":
        return MaskedFedAvg(template, partition_of, method, **common)
    if METHODS[method].aggregation == "dense" and not partial_updates:
        return DenseFedAvg(template, partition_of, method, **common)
    # One global mask is for unstructured masks (a union of squeezed models is not squeezed).
    consensus = cfg.global_mask if METHODS[method].aggregation == "masked" else "none"
    return MaskedFedAvg(template, partition_of, method, consensus=consensus,
                        vote_threshold=cfg.vote_threshold, **common)


def global_accuracy(cfg: ExperimentConfig, method: str, arrays: ArrayRecord) -> float:
    """The global model's accuracy on the union of all clients' test parts."""
    model = new_model(cfg, method)
    model.load_state_dict({k: torch.from_numpy(v.numpy().copy()) for k, v in arrays.items()})
    x, y = union_test_set(cfg)
    return accuracy(model, x, y)


def run_method(cfg: ExperimentConfig, method: str, grid: CountingGrid, recorder: Recorder,
               progress: Callable[[str], None]) -> dict:
    """Run ``cfg.rounds`` rounds of ``method``; return its summary row."""
    started = time.perf_counter()
    model = initial_model(cfg, method)
    template = {k: v.detach().clone() for k, v in model.state_dict().items()}
    arrays = ArrayRecord({k: Array(v.numpy()) for k, v in template.items()})
    strategy = make_strategy(cfg, method, template, grid.partition_of)
    if not METHODS[method].federated:
        grid = CountingGrid(LocalGrid(cfg, grid.partition_of), recorder, grid.partition_of)
    tally = MethodTally(method)
    for server_round in range(1, cfg.rounds + 1):
        round_start = time.perf_counter()
        replies = grid.exchange(strategy.configure_train(server_round, arrays, ConfigRecord(), grid.grid),
                                tally, "train", server_round)
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        record_train_metrics(replies, tally, recorder, server_round)
        last = server_round == cfg.rounds
        if last or server_round % cfg.evaluate_every == 0:
            evaluate_personal(strategy, grid, tally, recorder, arrays, server_round, all_clients=last)
            tally.global_accuracy = global_accuracy(cfg, method, arrays) if METHODS[method].federated else None
            recorder.write(method=method, round=server_round, phase="global",
                           global_accuracy=tally.global_accuracy)
        mean_acc = statistics.fmean(tally.personal_accuracy.values()) if tally.personal_accuracy else math.nan
        progress(f"[{method}] round {server_round}/{cfg.rounds}  {time.perf_counter() - round_start:5.2f}s  "
                 f"personal acc {mean_acc:.3f}  up {tally.bytes_up / MB:.3f} MB  "
                 f"down {tally.bytes_down / MB:.3f} MB")
    row = summary_row(cfg, tally, time.perf_counter() - started, strategy)
    final = {k: torch.from_numpy(v.numpy().copy()) for k, v in arrays.items()}
    partitions = sorted(grid.partition_of.values())
    save_personal_models(recorder.out_dir / "models" / f"{method}.pt", final, strategy)
    structures = {p: strategy.personal_structure(p) for p in partitions}
    costs = personal_costs(cfg, method, final, {p: masks for p, (masks, _) in structures.items()},
                           {p: units for p, (_, units) in structures.items()}, profile_threads(cfg))
    for partition, cost in costs.items():
        recorder.write(method=method, round=cfg.rounds, phase="device", client=partition, **cost)
    row.update(mean_costs(costs))
    return row


def record_train_metrics(replies: list[Message], tally: MethodTally, recorder: Recorder,
                         server_round: int) -> None:
    """Write each good reply's training metrics and keep its sparsity and budget in ``tally``."""
    for reply in by_partition(replies):
        if reply.has_error():
            continue
        metrics = reply.content["metrics"]
        partition = int(metrics["partition-id"])
        tally.sparsity[partition] = float(metrics["sparsity"])
        met = None if metrics["budget-met"] < 0 else bool(metrics["budget-met"])
        if met is not None:
            tally.budget_met[partition] = met
        recorder.write(method=tally.method, round=server_round, phase="train-metrics", client=partition,
                       train_loss=metrics["train-loss"], sparsity=metrics["sparsity"], budget_met=met,
                       compute_seconds=metrics["compute-seconds"], num_examples=metrics["num-examples"])


def save_personal_models(path: Path, global_state: dict[str, torch.Tensor],
                         strategy: PersonalizedStrategy) -> None:
    """What the server knows of every personal model: the global tensors and each client's
    mask (and unit masks; for post-training methods the ones reported at evaluation, whose
    refit values stay on the client); ``fedprune device`` rebuilds the personal models from
    it (structure, hence cost, is exact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clients = sorted(set(strategy.client_masks) | set(strategy.post_units))
    structures = {p: strategy.personal_structure(p) for p in clients}
    torch.save({"global": global_state, "masks": {p: m for p, (m, _) in structures.items() if m is not None},
                "units": {p: u for p, (_, u) in structures.items() if u is not None}}, path)


def evaluate_personal(strategy: PersonalizedStrategy, grid: CountingGrid, tally: MethodTally,
                      recorder: Recorder, arrays: ArrayRecord, server_round: int, all_clients: bool) -> None:
    """Ask (a sample of) the clients for their personal model's accuracy."""
    config = ConfigRecord({"all-clients": all_clients})
    replies = grid.exchange(strategy.configure_evaluate(server_round, arrays, config, grid.grid),
                            tally, "evaluate", server_round)
    for reply in by_partition(replies):
        if reply.has_error():
            continue
        metrics: MetricRecord = reply.content["metrics"]
        partition = int(metrics["partition-id"])
        if METHODS[tally.method].post_training:
            try:
                strategy.note_post_units(partition, reply.content["arrays"])
            except (KeyError, ValueError) as error:
                strategy.rejected.append((partition, f"round {server_round} evaluate: {error}"))
                continue
            tally.sparsity[partition] = float(metrics["sparsity"])
        tally.personal_accuracy[partition] = float(metrics["accuracy"])
        recorder.write(method=tally.method, round=server_round, phase="personal", client=partition,
                       accuracy=metrics["accuracy"], sparsity=metrics["sparsity"],
                       num_examples=metrics["num-examples"])


def summary_row(cfg: ExperimentConfig, tally: MethodTally, seconds: float,
                strategy: PersonalizedStrategy) -> dict:
    """The summary.json object of one method."""
    accuracies = list(tally.personal_accuracy.values())
    return {
        "method": tally.method,
        "rounds": cfg.rounds,
        "clients": cfg.num_clients,
        "personal_accuracy_mean": statistics.fmean(accuracies) if accuracies else None,
        "personal_accuracy_min": min(accuracies) if accuracies else None,
        "global_accuracy": tally.global_accuracy,
        "bytes_up": tally.bytes_up,
        "bytes_down": tally.bytes_down,
        "sparsity": statistics.fmean(tally.sparsity.values()) if tally.sparsity else 0.0,
        "seconds": seconds,
        "rejected_replies": len(strategy.rejected),
        # every client with a device profile met its budget at its last report (None: no profiles)
        "budget_met": all(tally.budget_met.values()) if tally.budget_met else None,
    }
