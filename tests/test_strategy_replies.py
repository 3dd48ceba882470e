"""Replies are validated once, in the strategy: only accepted ones reach records and the summary.

Whole methods run on Flower's ``Strategy.start`` over an in-process grid (no Ray) whose
replies a test corrupts in transit.
"""

from __future__ import annotations

import json
import math

import pytest
from flwr.app import Array, ConfigRecord, Message, MetricRecord, RecordDict

from fedprune import wire
from fedprune.config import make_config
from fedprune.server.experiment import run_method
from fedprune.server.records import Recorder
from fedprune.strategies.replies import RejectedReply, check_evaluate_reply, check_train_reply
from helpers import InProcessGrid

NODES = {21: 0, 22: 1}
CFG = dict(num_clients=2, rounds=2, mlp_widths=[16], partitioner="iid", local_epochs=1,
           prune_start_round=1, prune_end_round=2, final_sparsity=0.5)


class TamperingGrid(InProcessGrid):
    """Hands ``tamper(reply, phase, round)`` every reply of partition 1 before returning it."""

    def __init__(self, cfg, partition_of, tamper) -> None:
        super().__init__(cfg, partition_of)
        self.tamper = tamper

    def reply(self, message: Message) -> Message:
        answer = super().reply(message)
        if self.contexts[message.metadata.dst_node_id].node_config["partition-id"] == 1:
            config = message.content["config"]
            phase = "train" if message.metadata.message_type.endswith("train") else "evaluate"
            self.tamper(answer, phase, int(config["server-round"]))
        return answer


def run(tmp_path, method: str, tamper, **changes) -> tuple[dict, list[dict]]:
    cfg = make_config({**CFG, **changes, "methods": [method]})
    recorder = Recorder(tmp_path)
    row = run_method(cfg, method, TamperingGrid(cfg, dict(NODES), tamper), recorder, dict(NODES), lambda _: None)
    recorder.close()
    records = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    return row, records


def of(records: list[dict], phase: str) -> list[dict]:
    return [r for r in records if r["phase"] == phase]


def test_untouched_run_accepts_everything(task_identity, tmp_path) -> None:
    row, records = run(tmp_path, "gmp", lambda *_: None)
    assert row["rejected_replies"] == 0 and of(records, "rejected") == []
    assert sorted((r["round"], r["client"]) for r in of(records, "train-metrics")) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert row["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_rejected_reply_leaves_no_train_metrics_and_no_sparsity(task_identity, tmp_path) -> None:
    """Client 1's train replies carry NaN values: they are rejected every round, so neither
    its training metrics nor its sparsity reach the records or the summary."""
    def poison(reply: Message, phase: str, server_round: int) -> None:
        if phase == "train":
            bias = reply.content["arrays"]["body.0.bias"].numpy().copy()
            bias[0] = math.nan
            reply.content["arrays"]["body.0.bias"] = Array(bias)

    row, records = run(tmp_path, "gmp", poison)
    assert [r["client"] for r in of(records, "train-metrics")] == [0, 0]
    rejected = of(records, "rejected")
    assert [(r["round"], r["client"], r["exchange"]) for r in rejected] == [(1, 1, "train"), (2, 1, "train")]
    assert all("non-finite" in r["reason"] for r in rejected)
    assert row["rejected_replies"] == 2
    assert [r["clients"] for r in of(records, "train-summary")] == [1, 1]
    # its evaluate replies are fine, so its personal accuracy still counts
    assert sorted(r["client"] for r in of(records, "personal") if r["round"] == 2) == [0, 1]
    assert math.isfinite(row["personal_accuracy_mean"])


def test_rejected_sparsity_does_not_reach_the_summary(task_identity, tmp_path) -> None:
    """A reply that claims sparsity 0.9 with NaN values: the summary's sparsity stays 0.5."""
    def lie(reply: Message, phase: str, server_round: int) -> None:
        if phase == "train":
            reply.content["metrics"]["sparsity"] = 0.9
            bias = reply.content["arrays"]["body.0.bias"].numpy().copy()
            bias[0] = math.nan
            reply.content["arrays"]["body.0.bias"] = Array(bias)

    row, _ = run(tmp_path, "gmp", lie)
    assert row["sparsity"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("metric", ["partition-id", "sparsity"])
def test_reply_without_an_expected_metric_is_rejected_and_the_run_completes(task_identity, tmp_path,
                                                                           metric: str) -> None:
    def drop(reply: Message, phase: str, server_round: int) -> None:
        del reply.content["metrics"][metric]

    row, records = run(tmp_path, "gmp", drop)
    rejected = of(records, "rejected")
    assert [(r["round"], r["exchange"], r["client"]) for r in rejected] == [
        (1, "train", 1), (1, "evaluate", 1), (2, "train", 1), (2, "evaluate", 1)]
    assert all(r["reason"] == f"metric {metric!r} missing" for r in rejected)
    assert row["rejected_replies"] == 4
    assert [r["client"] for r in of(records, "personal")] == [0, 0]  # client 1 is missing, not guessed
    assert row["personal_accuracy_mean"] == row["personal_accuracy_min"]
    assert row["evaluated_clients"] == 1
    assert row["sparsity"] == pytest.approx(0.5, abs=0.01)  # the run went on with client 0


def test_reply_without_its_records_is_rejected(task_identity, tmp_path) -> None:
    def strip(reply: Message, phase: str, server_round: int) -> None:
        if phase == "train":
            del reply.content["wire"]

    row, records = run(tmp_path, "fedavg", strip)
    assert {r["reason"] for r in of(records, "rejected")} == {"record 'wire' missing"}
    assert row["rejected_replies"] == 2


# ---- the checks by hand -----------------------------------------------------------------
def train_reply(**metrics) -> Message:
    values = {"num-examples": 10, "train-loss": 0.5, "compute-seconds": 0.1, "sparsity": 0.3, "partition-id": 4,
              "budget-met": -1, "sgd-steps": 3, **metrics}
    values = {k: v for k, v in values.items() if v is not None}
    content = RecordDict({"arrays": wire.pack({}, None), "metrics": MetricRecord(values),
                          "wire": ConfigRecord({"mask-digest": 0, "server-round": 3})})
    return Message(content, dst_node_id=0, message_type="train")


def evaluate_reply(**metrics) -> Message:
    values = {"num-examples": 10, "accuracy": 0.5, "sparsity": 0.0, "partition-id": 4, **metrics}
    return Message(RecordDict({"metrics": MetricRecord(values)}), dst_node_id=0, message_type="evaluate")


def test_a_good_train_reply_passes(task_identity) -> None:
    assert check_train_reply(train_reply(), 4, 3)["num-examples"] == 10


@pytest.mark.parametrize(("change", "reason"), [
    ({"partition-id": 5}, "but the node holds 4"),
    ({"num-examples": 0}, "must be positive"),
    ({"num-examples": math.inf}, "not finite"),
    ({"train-loss": math.nan}, "not finite"),
    ({"sparsity": 1.5}, "outside [0, 1]"),
    ({"budget-met": 2}, "allowed: -1, 0, 1"),
    ({"compute-seconds": -1.0}, "negative"),
    ({"train-loss": None}, "metric 'train-loss' missing"),
])
def test_bad_train_metrics_are_rejected_with_a_reason(task_identity, change: dict, reason: str) -> None:
    with pytest.raises(RejectedReply, match=reason.replace("[", r"\[").replace("]", r"\]")):
        check_train_reply(train_reply(**change), 4, 3)


def test_a_reply_to_another_round_is_rejected(task_identity) -> None:
    with pytest.raises(RejectedReply, match="reply to round 3, expected 4"):
        check_train_reply(train_reply(), 4, 4)


@pytest.mark.parametrize(("accuracy", "reason"), [(7.0, "outside"), (math.nan, "not finite"), (-0.1, "outside")])
def test_impossible_accuracy_is_rejected(task_identity, accuracy: float, reason: str) -> None:
    assert check_evaluate_reply(evaluate_reply(), 4)["accuracy"] == 0.5
    with pytest.raises(RejectedReply, match=reason):
        check_evaluate_reply(evaluate_reply(accuracy=accuracy), 4)


def test_a_failed_last_evaluation_leaves_the_client_missing_not_stale(task_identity, tmp_path) -> None:
    def last_fails(reply: Message, phase: str, server_round: int) -> None:
        if phase == "evaluate" and server_round == 2:
            reply.content["metrics"]["accuracy"] = 7.0

    row, records = run(tmp_path, "fedavg", last_fails)
    personal = {(r["round"], r["client"]): r["accuracy"] for r in of(records, "personal")}
    assert set(personal) == {(1, 0), (1, 1), (2, 0)}  # client 1 answered round 1 only
    assert row["evaluated_clients"] == 1
    assert row["personal_accuracy_mean"] == personal[(2, 0)]  # not the mean with client 1's round-1 value


def test_a_round_without_evaluation_misses_nobody(task_identity, tmp_path) -> None:
    """Round 3 of 4 with evaluate_every=2 asks nobody for accuracy: no client is missing there
    (a stale list of round 2's asked clients once rejected all of them, and they were sent the
    dense model again in round 4)."""
    row, records = run(tmp_path, "gmp", lambda *_: None, rounds=4, evaluate_every=2)
    assert of(records, "rejected") == [] and row["rejected_replies"] == 0
    assert [r["round"] for r in of(records, "evaluate-summary")] == [2, 4]
    round4 = [r for r in of(records, "train") if r["round"] == 4]
    round2 = [r for r in of(records, "train") if r["round"] == 2]
    assert all(a["bytes_down"] < b["bytes_down"] for a, b in zip(round4, round2, strict=True))  # masked, not dense
