"""Faulty clients never corrupt the global model: injected faults are rejected with their reason
while the round aggregates the rest; round health stops a run whose clients all fail.

The handlers and strategies run in this process (``InProcessGrid``); one test runs the CLI on
the real Ray simulation.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message

from fedprune.clients import faults as client_faults
from fedprune.config import make_config
from fedprune.faults import FAULT_KINDS, plan_faults
from fedprune.server.experiment import run_method
from fedprune.server.grid import CountingGrid
from fedprune.server.records import Recorder
from fedprune.strategies.health import RunFailed
from fedprune.strategies.replies import error_summary
from helpers import InProcessGrid, new_strategy

NODES = {41: 0, 42: 1, 43: 2, 44: 3}
CFG = dict(num_clients=4, rounds=2, mlp_widths=[16], partitioner="iid", local_epochs=1, prune_start_round=1,
           prune_end_round=1, final_sparsity=0.5, round_timeout=5.0)
EXPECTED_CODE = {"crash": "client-error", "hang": "no-reply", "nan": "non-finite", "huge": "out-of-bounds",
                 "overflow": "non-finite",
                 "wrong-shape": "malformed", "truncated-mask": "malformed", "absurd-examples": "bad-metric"}


class FaultyGrid(InProcessGrid):
    """Runs the handlers here; a client told to hang never answers (the server's timeout)."""

    def reply(self, message: Message) -> Message | None:
        if message.content["config"].get("fault") == "hang":
            return None
        return super().reply(message)


def test_fault_plan_is_seeded_rotates_kinds_and_takes_the_fraction() -> None:
    partitions = list(range(10))
    first = plan_faults(0, "gmp", 1, partitions, 0.3, FAULT_KINDS)
    assert len(first) == 3 and first == plan_faults(0, "gmp", 1, partitions, 0.3, FAULT_KINDS)
    assert first != plan_faults(0, "gmp", 2, partitions, 0.3, FAULT_KINDS)
    kinds = [kind for r in range(1, 4) for kind in plan_faults(0, "gmp", r, partitions, 0.3, FAULT_KINDS).values()]
    kinds += plan_faults(0, "gmp", 4, partitions, 0.3, FAULT_KINDS).values()
    assert set(kinds) == set(FAULT_KINDS)  # 12 faults over 4 rounds meet all 9 kinds
    assert plan_faults(0, "gmp", 1, partitions, 0.0, FAULT_KINDS) == {}


@pytest.mark.parametrize("method", ["fedavg", "gmp"])
@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k != "straggle"])
def test_each_fault_is_rejected_with_its_reason_and_the_rest_aggregates(task_identity, method, kind) -> None:
    cfg = make_config({**CFG, "fault_fraction": 0.25, "fault_kinds": [kind]})
    records = []
    strategy, template = new_strategy(cfg, method, NODES, journal=lambda **r: records.append(r))
    grid = FaultyGrid(cfg, dict(NODES))
    messages = list(strategy.configure_train(1, ArrayRecord(template), ConfigRecord(), grid))
    faulty = [m for m in messages if m.content["config"].get("fault")]
    assert len(faulty) == 1 and faulty[0].content["config"]["fault"] == kind
    replies = grid.send_and_receive(messages)
    arrays, _ = strategy.aggregate_train(1, replies)
    (rejection,) = strategy.rejected
    assert rejection.partition == NODES[faulty[0].metadata.dst_node_id]
    assert rejection.code == EXPECTED_CODE[kind], rejection.reason
    assert arrays is not None  # the three honest clients were aggregated
    state = arrays.to_torch_state_dict()
    assert all(bool(torch.isfinite(t).all()) for t in state.values())
    assert all(float(t.abs().max()) < 100 for t in state.values())
    assert strategy.faults_injected == {kind: 1} and strategy.faults_detected == {kind: 1}
    summary = [r for r in records if r["phase"] == "train-summary"]
    assert summary[0]["sampled"] == 4 and summary[0]["clients"] == 3 and not summary[0]["failed"]


@pytest.mark.parametrize(("rule", "inside"), [("median", True), ("mean", False)])
def test_median_keeps_the_global_model_within_the_honest_range(task_identity, rule, inside) -> None:
    """30% of the clients send finite but huge values and no value bound is set: the median
    stays within the honest clients' values, the mean does not."""
    nodes = {60 + p: p for p in range(10)}
    cfg = make_config({**CFG, "num_clients": 10, "fault_fraction": 0.3, "fault_kinds": ["huge"],
                       "max_abs_value": 0.0, "aggregation": rule})
    strategy, template = new_strategy(cfg, "fedavg", nodes)
    grid = FaultyGrid(cfg, dict(nodes))
    messages = list(strategy.configure_train(1, ArrayRecord(template), ConfigRecord(), grid))
    honest = [nodes[m.metadata.dst_node_id] for m in messages if not m.content["config"].get("fault")]
    replies = grid.send_and_receive(messages)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.rejected == [] and len(honest) == 7  # nothing to reject: the values are finite
    honest_states = [r.content["arrays"].to_torch_state_dict() for r in replies
                     if nodes[r.metadata.src_node_id] in honest]
    state = arrays.to_torch_state_dict()
    within = all(bool(((state[k] >= torch.stack([s[k] for s in honest_states]).min(0).values - 1e-6)
                       & (state[k] <= torch.stack([s[k] for s in honest_states]).max(0).values + 1e-6)).all())
                 for k in state)
    assert within is inside


def test_a_straggler_is_late_but_valid(task_identity, monkeypatch) -> None:
    slept = []
    monkeypatch.setattr(client_faults.time, "sleep", slept.append)
    cfg = make_config({**CFG, "fault_fraction": 0.25, "fault_kinds": ["straggle"], "straggle_seconds": 1.5})
    strategy, template = new_strategy(cfg, "gmp", NODES)
    grid = FaultyGrid(cfg, dict(NODES))
    replies = grid.send_and_receive(strategy.configure_train(1, ArrayRecord(template), ConfigRecord(), grid))
    strategy.aggregate_train(1, replies)
    assert slept == [1.5] and strategy.rejected == []
    assert strategy.faults_injected == {"straggle": 1} and strategy.faults_detected == {}


def test_a_hanging_client_sleeps_past_the_round_timeout(monkeypatch) -> None:
    slept = []
    monkeypatch.setattr(client_faults.time, "sleep", slept.append)
    with pytest.raises(client_faults.InjectedFault, match="hang"):  # gives up: its state stays untouched
        client_faults.before_reply("hang", make_config({**CFG, "round_timeout": 3.0}))
    assert slept and slept[0] > 3.0
    with pytest.raises(client_faults.InjectedFault, match="injected fault: crash"):
        client_faults.before_reply("crash", make_config(CFG))


def test_a_run_with_every_fault_completes_and_counts_them(task_identity, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(client_faults.time, "sleep", lambda seconds: None)
    cfg = make_config({**CFG, "num_clients": 9, "rounds": 3, "fault_fraction": 0.34, "min_reply_fraction": 0.5})
    nodes = {50 + p: p for p in range(9)}
    recorder = Recorder(tmp_path)
    row = run_method(cfg, "gmp", FaultyGrid(cfg, nodes), recorder, nodes, lambda _: None)
    recorder.close()
    # 3 of 9 clients misbehave in each of 3 rounds: the 9 kinds once each
    assert row["faults_injected"] == {kind: 1 for kind in FAULT_KINDS}
    assert row["faults_detected"] == {kind: 1 for kind in FAULT_KINDS if kind != "straggle"}
    assert sum(row["rejected_by_reason"].values()) == row["rejected_replies"] == 8
    assert row["failed_rounds"] == 0
    for key in ("personal_accuracy_mean", "personal_accuracy_min", "personal_accuracy_trained_mean", "sparsity"):
        assert math.isfinite(row[key]), key
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # strict JSON throughout
    faults = [r for r in records if r["phase"] == "fault"]
    rejected = [r for r in records if r["phase"] == "rejected"]
    assert len(faults) == 9 and len(rejected) == 8
    crash = next(r for r in rejected if r["code"] == "client-error")
    assert crash["reason"] == "client error: InjectedFault: injected fault: crash"


def test_round_health_stops_a_run_whose_clients_all_fail(task_identity, tmp_path) -> None:
    cfg = make_config({**CFG, "rounds": 5, "fault_fraction": 1.0, "fault_kinds": ["crash"], "max_failed_rounds": 2})
    recorder = Recorder(tmp_path)
    with pytest.raises(RunFailed, match=r"method gmp: 2 failed rounds in a row \(round 2: 0 of 4 replies"):
        run_method(cfg, "gmp", FaultyGrid(cfg, dict(NODES)), recorder, dict(NODES), lambda _: None)
    recorder.close()
    summaries = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()
                 if '"train-summary"' in line]
    assert [s["failed"] for s in summaries] == [True, True]


def test_a_failed_round_keeps_the_global_model(task_identity) -> None:
    cfg = make_config({**CFG, "fault_fraction": 0.75, "fault_kinds": ["nan"], "min_reply_fraction": 0.5})
    strategy, template = new_strategy(cfg, "fedavg", NODES)
    grid = FaultyGrid(cfg, dict(NODES))
    replies = grid.send_and_receive(strategy.configure_train(1, ArrayRecord(template), ConfigRecord(), grid))
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is None and metrics is None  # 1 of 4 accepted, 2 needed
    assert strategy.health.failed_rounds == 1


def test_error_replies_count_no_uplink_bytes(task_identity) -> None:
    cfg = make_config({**CFG, "fault_fraction": 0.25, "fault_kinds": ["crash"]})
    strategy, template = new_strategy(cfg, "fedavg", NODES)
    records = []
    counting = CountingGrid(FaultyGrid(cfg, dict(NODES)), lambda **r: records.append(r), dict(NODES))
    replies = list(counting.send_and_receive(strategy.configure_train(1, ArrayRecord(template), ConfigRecord(),
                                                                      counting), timeout=5))
    errors = {r.metadata.src_node_id for r in replies if r.has_error()}
    assert len(errors) == 1
    by_client = {r["client"]: r["bytes_up"] for r in records}
    crashed = NODES[errors.pop()]
    assert by_client.pop(crashed) == 0 and counting.bytes_up == sum(by_client.values())
    assert all(size > 1000 for size in by_client.values())  # the honest replies carry a model


def test_error_summary_reads_the_innermost_exception() -> None:
    ray_text = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run()\\n"
                "  File \"x.py\", line 3, in train\\n    raise ValueError('bad')\\nValueError: bad input\\n\\n"
                "flwr.clientapp.client_app.ClientAppException: \\nException ClientAppException occurred. "
                "Message: bad input'>")
    assert error_summary(ray_text) == "ValueError: bad input"
    assert error_summary("") == "unknown error"


@pytest.mark.slow
def test_cli_exits_non_zero_when_every_client_crashes(tmp_path, capsys) -> None:
    from fedprune.sim.cli import main

    out = tmp_path / "run"
    started = time.monotonic()
    code = main(["run", "--methods", "fedavg", "--set", "num_clients=2", "--set", "rounds=4",
                 "--set", "fault_fraction=1.0", "--set", "fault_kinds=crash", "--set", "max_failed_rounds=2",
                 "--out", str(out), "--no-report"])
    err = capsys.readouterr().err
    assert code == 1
    assert "fedprune: error: method fedavg: 2 failed rounds in a row" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (out / "summary.json").exists()
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
    assert time.monotonic() - started < 120
