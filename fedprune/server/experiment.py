"""One method's run: its strategy on Flower's ``Strategy.start``, then its summary row and costs.

The round loop is Flower's (``Strategy.start``: configure_train -> send -> aggregate_train
-> configure_evaluate -> send -> aggregate_evaluate -> evaluate_fn). fedprune plugs in
through Flower's own extension points: the strategy (``fedprune.strategies``) decides
payloads, cadence and validation and writes the client records; ``CountingGrid`` counts
bytes; ``RoundEnd``, the ``evaluate_fn``, measures the global model in evaluation rounds
and prints the progress line of every round.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from torch import nn

from fedprune import wire
from fedprune.config import ExperimentConfig
from fedprune.data.federation import new_partitions, train_sizes, union_test_set
from fedprune.device.profiles import profile_threads
from fedprune.methods import METHODS, Method
from fedprune.models.factory import initial_model, new_model, sharing
from fedprune.models.structure import HIDDEN, expand_unit_mask, unit_groups
from fedprune.pruning.diagnostics import magnitude_overlap, mean_pairwise_jaccard
from fedprune.server.checkpoint import Checkpoint, Checkpointer
from fedprune.server.costs import mean_costs, personal_costs
from fedprune.server.grid import CountingGrid
from fedprune.server.records import Recorder
from fedprune.strategies import AGGREGATION_RULES, DenseFedAvg, LocalOnly, MaskedFedAvg, PersonalizedStrategy
from fedprune.strategies.offset import RoundOffset
from fedprune.strategies.personalized import FaultSettings, Journal, UnitStructure
from fedprune.strategies.replies import Safeguards
from fedprune.strategies.rules import RuleSettings
from fedprune.training import accuracy

#: how long the server waits for every node to report its partition at start-up
SETUP_TIMEOUT_S = 600.0
MB = 1e6


def discover_partitions(grid: Grid, journal: Journal, expected: int, wait_s: float = 120.0) -> dict[int, int]:
    """Wait for ``expected`` nodes, then ask each for its partition id (one small query each);
    ``journal`` records the queries' bytes."""
    deadline = time.monotonic() + wait_s
    while len(nodes := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(nodes)} nodes connected after {wait_s:.0f}s, config asks for {expected}")
        time.sleep(0.2)
    queries = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = list(grid.send_and_receive(queries, timeout=SETUP_TIMEOUT_S))
    mapping = {}
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed to report its partition: "
                               f"{reply.error.reason}")
        mapping[reply.metadata.src_node_id] = wire.int_of(reply.content.metric_records["info"], "partition-id")
    # Record the query's bytes once the partition of every node is known.
    down = {query.metadata.dst_node_id: wire.message_bytes(query) for query in queries}
    for reply in sorted(replies, key=lambda m: mapping[m.metadata.src_node_id]):
        node = reply.metadata.src_node_id
        journal(method=None, round=0, phase="setup", client=mapping[node], bytes_down=down[node],
                       bytes_up=wire.message_bytes(reply))
    return mapping


def make_strategy(cfg: ExperimentConfig, name: str, model: nn.Module, partition_of: dict[int, int],
                  journal: Journal | None = None) -> PersonalizedStrategy:
    """The strategy of method ``name`` for the initial ``model``.

    A method that does not federate gets ``LocalOnly``; a dense method without partial
    updates Flower's FedAvg mean (``DenseFedAvg``); every other one the per-entry rule of
    ``aggregation`` over the clients that sent each entry (``MaskedFedAvg``), with one
    global mask (``global_mask``) for unstructured pruners.
    """
    method = METHODS[name]
    template = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shares = sharing(cfg, model)
    common: dict = dict(seed=cfg.seed, num_rounds=cfg.rounds, fraction_train=cfg.fraction_train,
                        fraction_evaluate=cfg.fraction_evaluate, evaluate_every=cfg.evaluate_every,
                        sharing=shares, reports_units=method.personal.reports_units,
                        safeguards=safeguards(cfg), faults=FaultSettings(cfg.fault_fraction, tuple(cfg.fault_kinds)))
    if journal is not None:
        common["journal"] = journal
    if method.structured or method.personal.reports_units:
        groups = unit_groups(model)
        common["structure"] = UnitStructure({g.name: g.size for g in groups},
                                            lambda units: expand_unit_mask(model, groups, units),
                                            frozenset(g.name for g in groups if g.kind == HIDDEN))
    if not method.federated:
        return LocalOnly(template, partition_of, name, **common)
    if method.pruner is None and not shares.partial and cfg.aggregation == "mean" and not cfg.clip_update_norm:
        return DenseFedAvg(template, partition_of, name, **common)
    # One global mask is for unstructured masks (a union of squeezed models is not squeezed).
    consensus = cfg.global_mask if method.pruner is not None and not method.structured else "none"
    rule = AGGREGATION_RULES[cfg.aggregation](RuleSettings(cfg.trim_fraction))
    return MaskedFedAvg(template, partition_of, name, rule=rule, clip_norm=cfg.clip_update_norm,
                        consensus=consensus, vote_threshold=cfg.vote_threshold, **common)


def safeguards(cfg: ExperimentConfig) -> Safeguards:
    """What the server accepts from replies of ``cfg``'s clients: at most ``max_examples``
    examples (0: each client's own train part), bounded values, and the round-health rule."""
    sizes = {p: cfg.max_examples or size for p, size in train_sizes(cfg).items()}
    return Safeguards(sizes, cfg.max_abs_value, cfg.max_update_ratio, cfg.min_reply_fraction,
                      cfg.max_failed_rounds)


def global_accuracy(cfg: ExperimentConfig, method: Method, arrays: ArrayRecord) -> float:
    """The global model's accuracy on the union of all clients' test parts."""
    model = new_model(cfg, method.model)
    model.load_state_dict(arrays.to_torch_state_dict())
    x, y = union_test_set(cfg)
    return accuracy(model, x, y)


def has_global_model(cfg: ExperimentConfig, method: Method) -> bool:
    """Whether the aggregated model is a model someone would run: the method federates and no
    client keeps part of it to itself. With personal masks (unless every client adopts one
    global mask, ``global_mask``), personal layers or random personal entries, entries that
    no client shares hold stale values."""
    personal_masks = method.pruner is not None and (method.structured or cfg.global_mask == "none")
    personal_parts = cfg.personal_layers != "none" or cfg.personal_fraction > 0
    return method.federated and not personal_masks and not personal_parts


class RoundEnd:
    """``evaluate_fn`` of ``Strategy.start``: called after every round (and once before the
    first, which it ignores). In evaluation rounds it measures the global model (where there
    is one, ``has_global_model``) and the masks' diagnostics, and records them; every round it
    prints one progress line."""

    def __init__(self, cfg: ExperimentConfig, method: Method, strategy: PersonalizedStrategy,
                 grid: CountingGrid, journal: Journal, progress: Callable[[str], None],
                 checkpointer: Checkpointer | None = None) -> None:
        self.cfg, self.method, self.strategy, self.grid = cfg, method, strategy, grid
        self.journal, self.progress, self.checkpointer = journal, progress, checkpointer
        self.global_accuracy: float | None = None
        self.diagnostics: dict[str, float | None] = {}
        self.round_started = time.perf_counter()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            self.round_started = time.perf_counter()
            return None
        result = None
        if self.strategy.evaluates_in(server_round):
            if has_global_model(self.cfg, self.method):
                self.global_accuracy = global_accuracy(self.cfg, self.method, arrays)
                result = MetricRecord({"global-accuracy": self.global_accuracy})
            self.journal(method=self.method.name, round=server_round, phase="global",
                         global_accuracy=self.global_accuracy)
            self.diagnostics = mask_diagnostics(self.strategy)
            self.journal(method=self.method.name, round=server_round, phase="diagnostics", **self.diagnostics)
        accuracies = self.strategy.reports.accuracy.values()
        mean_acc = statistics.fmean(accuracies) if accuracies else float("nan")
        rejected = [r for r in self.strategy.rejected if r.server_round == server_round]
        problems = "; ".join(f"client {r.partition} ({r.exchange}): {r.reason}" for r in rejected)
        self.progress(f"[{self.method.name}] round {server_round}/{self.cfg.rounds}  "
                      f"{time.perf_counter() - self.round_started:5.2f}s  personal acc {mean_acc:.3f}  "
                      f"up {self.grid.bytes_up / MB:.3f} MB  down {self.grid.bytes_down / MB:.3f} MB"
                      + (f"  rejected {len(rejected)}: {problems}" if rejected else ""))
        if self.checkpointer is not None:
            self.checkpointer.round_done(self.method.name, server_round, dict(arrays.to_torch_state_dict()),
                                         self.strategy.state_dict(), self.grid.bytes_up, self.grid.bytes_down,
                                         self.global_accuracy, self.diagnostics)
        self.round_started = time.perf_counter()
        return result

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue after ``checkpoint``'s round: the strategy's state, the bytes counted so
        far, the latest global accuracy and diagnostics."""
        self.strategy.load_state_dict(checkpoint.strategy)
        self.grid.bytes_up, self.grid.bytes_down = checkpoint.bytes_up, checkpoint.bytes_down
        self.global_accuracy, self.diagnostics = checkpoint.global_accuracy, dict(checkpoint.diagnostics)


def mask_diagnostics(strategy: PersonalizedStrategy) -> dict[str, float | None]:
    """How personal the clients' latest masks are (``fedprune.pruning.diagnostics``; for
    post-training methods the masks of their personal models), and how many optimizer steps a
    client took in its latest round."""
    known = sorted(set(strategy.client_masks) | set(strategy.post_units))
    masks = [m for m in (strategy.personal_structure(p)[0] for p in known) if m is not None]
    overlaps = [o for o in (magnitude_overlap(m, strategy.template) for m in masks) if o is not None]
    steps = strategy.reports.steps.values()
    return {"mask_jaccard": mean_pairwise_jaccard(masks),
            "initial_magnitude_overlap": statistics.fmean(overlaps) if overlaps else None,
            "masked_clients": len(masks),
            "sgd_steps_mean": statistics.fmean(steps) if steps else None}


def run_method(cfg: ExperimentConfig, name: str, grid: Grid, recorder: Recorder, partition_of: dict[int, int],
               progress: Callable[[str], None], checkpointer: Checkpointer | None = None,
               resumed: Checkpoint | None = None) -> dict:
    """Run ``cfg.rounds`` rounds of method ``name`` on ``grid``; return its summary row.

    With ``checkpointer``, the run is checkpointed after every round; with ``resumed`` (a
    checkpoint of this method), the method continues after the checkpoint's round.
    """
    started = time.perf_counter()
    method = METHODS[name]
    model = initial_model(cfg, method.model)
    initial = ArrayRecord(model.state_dict())
    new = set(new_partitions(cfg))
    training = {node: p for node, p in partition_of.items() if p not in new}
    strategy = make_strategy(cfg, name, model, training, recorder.write)
    counting = CountingGrid(grid, recorder.write, partition_of, counted=method.federated, progress=progress)
    round_end = RoundEnd(cfg, method, strategy, counting, recorder.write, progress, checkpointer)
    if checkpointer is not None:
        checkpointer.start_method(resumed)
    done = 0
    if resumed is not None:
        round_end.restore(resumed)
        initial, done = ArrayRecord(resumed.arrays), resumed.round
    final_arrays = initial
    if done < cfg.rounds:
        shifted = RoundOffset(strategy, done)
        result = shifted.start(counting, initial, cfg.rounds - done, timeout=cfg.round_timeout,
                               evaluate_fn=shifted.evaluate_fn(round_end))
        final_arrays = result.arrays if len(result.arrays) else initial
    final = dict(final_arrays.to_torch_state_dict())
    if new:
        newcomers = {node: p for node, p in partition_of.items() if p in new}
        replies = counting.send_and_receive(strategy.configure_onboard(cfg.rounds, final_arrays, newcomers),
                                            timeout=cfg.round_timeout)
        strategy.aggregate_onboard(cfg.rounds, replies)
    seconds = checkpointer.seconds if checkpointer is not None else time.perf_counter() - started
    row = summary_row(cfg, name, strategy, counting, round_end.global_accuracy, seconds)
    row.update({key: round_end.diagnostics.get(key) for key in ("mask_jaccard", "initial_magnitude_overlap")})
    save_personal_models(recorder.out_dir / "models" / f"{name}.pt", final, strategy)
    structures = {p: strategy.personal_structure(p) for p in sorted(training.values())}
    costs = personal_costs(cfg, method.model, final, {p: masks for p, (masks, _) in structures.items()},
                           {p: units for p, (_, units) in structures.items()}, profile_threads(cfg))
    for partition, cost in costs.items():
        recorder.write(method=name, round=cfg.rounds, phase="device", client=partition, **cost)
    row.update(mean_costs(costs))
    return row


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


def summary_row(cfg: ExperimentConfig, name: str, strategy: PersonalizedStrategy, grid: CountingGrid,
                global_acc: float | None, seconds: float) -> dict:
    """The summary.json object of one method (accepted replies only, final-round values).

    Two personal accuracies, both on each client's own test part: ``personal_accuracy_*``
    scores the personal model as the client holds it when the round's model arrives (after
    what the method does at evaluation), ``personal_accuracy_trained_*`` its model right
    after its local training in the final round. ``evaluated_clients`` and
    ``trained_clients`` count the clients behind each; ``*_val_*`` are the same on the
    validation parts (None without them). ``participation_min/mean/max``: over the training
    clients, how many rounds each took part in (its accepted train replies).
    """
    reports = strategy.reports
    new = set(new_partitions(cfg))
    rounds_in = [reports.participation[p] for p in sorted(set(strategy.partition_of.values()) - new)]

    def stat(metric: str, how: Callable[[list[float]], float]) -> float | None:
        values = list(reports.final.get(metric, {}).values())
        return how(values) if values else None

    return {
        "method": name,
        "rounds": cfg.rounds,
        "clients": cfg.num_clients,
        "personal_accuracy_mean": stat("accuracy", statistics.fmean),
        "personal_accuracy_min": stat("accuracy", min),
        "evaluated_clients": len(reports.final.get("accuracy", {})),
        "personal_accuracy_trained_mean": stat(wire.TRAINED_ACCURACY, statistics.fmean),
        "personal_accuracy_trained_min": stat(wire.TRAINED_ACCURACY, min),
        "trained_clients": len(reports.final.get(wire.TRAINED_ACCURACY, {})),
        "personal_val_accuracy_mean": stat(wire.VAL_ACCURACY, statistics.fmean),
        "personal_val_accuracy_trained_mean": stat(wire.TRAINED_VAL_ACCURACY, statistics.fmean),
        "sgd_steps_mean": statistics.fmean(reports.steps.values()) if reports.steps else None,
        "new_clients": len(new),
        # rounds each training client took part in (accepted train replies; 0: never sampled)
        "participation_min": min(rounds_in, default=0),
        "participation_mean": statistics.fmean(rounds_in) if rounds_in else 0.0,
        "participation_max": max(rounds_in, default=0),
        "new_client_accuracy_mean": statistics.fmean(reports.newcomers.values()) if reports.newcomers else None,
        "new_client_accuracy_min": min(reports.newcomers.values()) if reports.newcomers else None,
        "global_accuracy": global_acc,
        "bytes_up": grid.bytes_up,
        "bytes_down": grid.bytes_down,
        "sparsity": statistics.fmean(reports.sparsity.values()) if reports.sparsity else 0.0,
        "seconds": seconds,
        "rejected_replies": len(strategy.rejected),
        "rejected_by_reason": dict(sorted(Counter(r.code for r in strategy.rejected).items())),
        "failed_rounds": strategy.health.failed_rounds,
        "faults_injected": dict(sorted(strategy.faults_injected.items())),
        "faults_detected": dict(sorted(strategy.faults_detected.items())),
        # every client with a device profile met its budget at its last report (None: no profiles)
        "budget_met": all(reports.budget_met.values()) if reports.budget_met else None,
    }
