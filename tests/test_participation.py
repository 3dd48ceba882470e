"""Partial participation: a client that missed pruning rounds catches up to the schedule's
target of the current round; the summary counts each client's rounds."""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord
from test_backbone_client import server_message

from fedprune import wire
from fedprune.clients.app import handle_train
from fedprune.clients.state import ClientMemory
from fedprune.config import make_config
from fedprune.pruning.magnitude import MagnitudePruner
from fedprune.pruning.schedule import CubicSchedule
from fedprune.server.experiment import summary_row
from fedprune.server.grid import CountingGrid
from helpers import InProcessGrid, new_context, new_strategy, start_state

# schedule rounds 1..4 towards 0.8: s(t) = 0.8 - 0.8 * (1 - (t - 1) / 3)^3 for 1 < t < 4
S2 = 0.8 - 0.8 * (2 / 3) ** 3  # 0.562963
S3 = 0.8 - 0.8 * (1 / 3) ** 3  # 0.770370
CFG = dict(num_clients=4, rounds=8, mlp_widths=[32], initial_sparsity=0.0, final_sparsity=0.8,
           prune_start_round=1, prune_end_round=4, partitioner="iid", local_epochs=1, methods=["gmp"])


def test_due_at_hand_worked() -> None:
    pruner = MagnitudePruner(CubicSchedule(0.0, 0.8, 1, 4))
    assert pruner.due_at(7, 0) == (4, pytest.approx(0.8))  # first sampled at 7: straight to s_f
    assert pruner.due_at(3, 0) == (3, pytest.approx(S3))  # first sampled at 3: round 3's target
    assert pruner.due_at(2, 1) == (2, pytest.approx(S2))  # every round: the schedule as before
    assert pruner.due_at(3, 2) == (3, pytest.approx(S3))
    assert pruner.due_at(5, 4) is None  # nothing missed, nothing due
    assert pruner.due_at(8, 4) is None
    assert pruner.due_at(1, 0) == (1, 0.0)  # round 1 prunes to s_i
    every_other = MagnitudePruner(CubicSchedule(0.0, 0.8, 2, 6, frequency=2))  # prunes at 2, 4, 6
    assert every_other.due_at(5, 2) == (4, pytest.approx(0.8 - 0.8 * 0.5**3))  # 0.7
    assert every_other.due_at(3, 2) is None


def _sparsity_after(cfg, rounds: list[int]) -> list[float]:
    """The sparsity a gmp client reports after each of ``rounds`` (its only participations)."""
    context, seen = new_context(), []
    state = start_state(cfg, "gmp")
    for server_round in rounds:
        masks = ClientMemory(context.state, "gmp").mask()
        message = server_message(state, "gmp", server_round, masks=masks, digest=wire.mask_digest(masks))
        answer = handle_train(message, context, cfg)
        assert not answer.has_error(), answer.error if answer.has_error() else None
        seen.append(answer.content["metrics"]["sparsity"])
    return seen


def test_client_first_sampled_at_round_7_reaches_final_sparsity(task_identity) -> None:
    cfg = make_config(CFG)
    first, later = _sparsity_after(cfg, [7, 8])
    assert first == pytest.approx(0.8, abs=0.01) and later == pytest.approx(first)
    assert ClientMemory(new_context().state, "gmp").pruned_step() == 0


def test_client_that_misses_rounds_follows_the_latest_target(task_identity) -> None:
    cfg = make_config(CFG)
    # sampled at 2 (target s(2)), misses 3, back at 5: catches up to s(4) = s_f
    assert _sparsity_after(cfg, [2, 5]) == [pytest.approx(S2, abs=0.01), pytest.approx(0.8, abs=0.01)]
    # every round from 1: 0, s(2), s(3), s_f, then no change
    assert _sparsity_after(cfg, [1, 2, 3, 4, 5]) == pytest.approx([0.0, S2, S3, 0.8, 0.8], abs=0.01)


def test_ten_percent_sampling_reaches_final_sparsity_and_counts_rounds(task_identity) -> None:
    """4 clients, 1 sampled per round for 8 rounds: every client that trained at least once
    ends at s_f, also those first sampled after round 4; participation counts add up."""
    # seed 1 samples clients 1, 0, 2, 0, 3, 3, 3, 3: client 3 first at round 5, after the schedule
    cfg = make_config({**CFG, "fraction_train": 0.25, "fraction_evaluate": 0.25, "seed": 1})
    nodes = {10 + p: p for p in range(4)}
    strategy, template = new_strategy(cfg, "gmp", nodes)
    grid = InProcessGrid(cfg, dict(nodes))
    arrays = ArrayRecord(template)
    first_round: dict[int, int] = {}
    last_round: dict[int, int] = {}
    for server_round in range(1, cfg.rounds + 1):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        for m in messages:
            first_round.setdefault(nodes[m.metadata.dst_node_id], server_round)
            last_round[nodes[m.metadata.dst_node_id]] = server_round
        arrays, _ = strategy.aggregate_train(server_round, grid.send_and_receive(messages))
    counts = strategy.reports.participation
    assert sum(counts.values()) == cfg.rounds and set(counts) == set(first_round)
    # each client is at the schedule's target of its last round, whatever it missed before
    target = {1: 0.0, 2: S2, 3: S3}
    for partition, sparsity in strategy.reports.sparsity.items():
        assert sparsity == pytest.approx(target.get(last_round[partition], 0.8), abs=0.01), partition
    late = [p for p, r in first_round.items() if r > 4]
    assert late and all(strategy.reports.sparsity[p] == pytest.approx(0.8, abs=0.01) for p in late)
    row = summary_row(cfg, "gmp", strategy, CountingGrid(grid, lambda **_: None, nodes), None, 1.0)
    trained = [counts[p] for p in range(4)]
    assert (row["participation_min"], row["participation_max"]) == (min(trained), max(trained))
    assert row["participation_mean"] == pytest.approx(cfg.rounds / 4)
