"""One fair protocol: two personal accuracies (received, trained), global accuracy only where a
global model exists, mask diagnostics, validation parts, local pruning, and new clients."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import datasets
import pytest
import torch

from fedprune.clients.local_round import onboard
from fedprune.config import make_config
from fedprune.data.federation import clients_data, new_partitions
from fedprune.data.partition import client_split, make_partitioner
from fedprune.methods import METHODS
from fedprune.models.factory import new_model
from fedprune.pruning.diagnostics import jaccard, magnitude_overlap, mean_pairwise_jaccard
from fedprune.server.experiment import run_method
from fedprune.server.records import Recorder
from fedprune.training import accuracy
from helpers import InProcessGrid

T, F = True, False
CFG = dict(num_clients=3, rounds=2, mlp_widths=[16], partitioner="iid", local_epochs=1, prune_start_round=1,
           prune_end_round=2, final_sparsity=0.5)


def run(tmp_path: Path, method: str, **changes) -> tuple[dict, list[dict]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = make_config({**CFG, **changes})
    nodes = {80 + p: p for p in range(cfg.num_clients)}
    recorder = Recorder(tmp_path)
    row = run_method(cfg, method, InProcessGrid(cfg, nodes), recorder, nodes, lambda _: None)
    recorder.close()
    return row, [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]


def of(records: list[dict], phase: str) -> list[dict]:
    return [r for r in records if r["phase"] == phase]


# ---- two accuracies ------------------------------------------------------------------------
def test_trained_and_received_accuracy_by_hand(task_identity, tmp_path) -> None:
    """fedavg: the trained model is the client's own after local training (the values it sent),
    the received one the aggregate; both are checked against accuracies computed here."""
    cfg = make_config({**CFG, "rounds": 1})
    nodes = {80: 0, 81: 1, 82: 2}
    sent: dict[int, dict] = {}

    class Spy(InProcessGrid):
        def reply(self, message):
            answer = super().reply(message)
            if message.metadata.message_type.endswith("train"):
                sent[self.contexts[message.metadata.dst_node_id].node_config["partition-id"]] = \
                    answer.content["arrays"].to_torch_state_dict()
            return answer

    recorder = Recorder(tmp_path)
    run_method(cfg, "fedavg", Spy(cfg, nodes), recorder, nodes, lambda _: None)
    recorder.close()
    records = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    data = clients_data(cfg)
    model = new_model(cfg)
    trained = {r["client"]: r["trained_accuracy"] for r in of(records, "train-metrics")}
    received = {r["client"]: r["accuracy"] for r in of(records, "personal")}
    global_state = {k: sum(sent[p][k] * len(data[p].train_y) for p in sent) / sum(len(d.train_y) for d in data)
                    for k in sent[0]}
    for partition in range(3):
        model.load_state_dict(sent[partition])
        assert trained[partition] == pytest.approx(accuracy(model, data[partition].test_x, data[partition].test_y))
        model.load_state_dict(global_state)
        assert received[partition] == pytest.approx(accuracy(model, data[partition].test_x, data[partition].test_y),
                                                    abs=1e-6)
    assert trained != received  # a client's own trained model is not the aggregate


def test_local_scores_the_same_model_both_ways(task_identity, tmp_path) -> None:
    row, _ = run(tmp_path, "local")
    assert row["personal_accuracy_mean"] == row["personal_accuracy_trained_mean"]
    assert row["trained_clients"] == row["evaluated_clients"] == 3


def test_summary_holds_both_columns_and_steps(task_identity, tmp_path) -> None:
    row, records = run(tmp_path, "gmp")
    assert 0 <= row["personal_accuracy_trained_min"] <= row["personal_accuracy_trained_mean"] <= 1
    # 1 epoch over ceil(train / 32) batches; the digits split gives each client 479 or 480 examples
    steps = {r["sgd_steps"] for r in of(records, "train-metrics")}
    assert steps == {15} and row["sgd_steps_mean"] == 15
    # the trained accuracy is measured only in evaluation rounds (here every round)
    assert all(r["trained_accuracy"] is not None for r in of(records, "train-metrics"))


# ---- global accuracy only where a global model exists ------------------------------------
@pytest.mark.parametrize(("method", "changes", "applies"), [
    ("fedavg", {}, True), ("mi-post", {}, True), ("gmp", {}, False), ("mi", {}, False), ("local", {}, False),
    ("gmp", {"global_mask": "vote"}, True), ("fedavg", {"personal_layers": "head"}, False),
])
def test_global_accuracy_where_it_means_something(task_identity, tmp_path, method, changes, applies) -> None:
    row, _ = run(tmp_path, method, rounds=1, **changes)
    assert (row["global_accuracy"] is not None) is applies


# ---- diagnostics -------------------------------------------------------------------------
def test_jaccard_hand_worked() -> None:
    a = {"w": torch.tensor([[T, T, F, F]]), "b": torch.tensor([T, F])}  # 1-D tensors do not count
    b = {"w": torch.tensor([[T, F, T, F]]), "b": torch.tensor([F, T])}
    c = {"w": torch.tensor([[T, T, F, F]])}
    assert jaccard(a, b) == pytest.approx(1 / 3)  # both keep entry 0; together 0, 1, 2
    assert jaccard(a, c) == 1.0
    assert mean_pairwise_jaccard([a, b, c]) == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)
    assert mean_pairwise_jaccard([a]) is None


def test_magnitude_overlap_hand_worked() -> None:
    initial = {"w": torch.tensor([[0.1, -5.0, 3.0, 0.2]])}
    # the initial magnitude mask keeping 2 entries keeps -5 and 3
    assert magnitude_overlap({"w": torch.tensor([[F, T, T, F]])}, initial) == 1.0
    assert magnitude_overlap({"w": torch.tensor([[T, T, F, F]])}, initial) == 0.5
    assert magnitude_overlap({"w": torch.tensor([[T, F, F, T]])}, initial) == 0.0


def test_diagnostics_are_recorded_per_round(task_identity, tmp_path) -> None:
    row, records = run(tmp_path, "gmp")
    diagnostics = of(records, "diagnostics")
    assert [d["round"] for d in diagnostics] == [1, 2]
    assert diagnostics[-1]["mask_jaccard"] == row["mask_jaccard"] and 0 < row["mask_jaccard"] <= 1
    assert 0 < row["initial_magnitude_overlap"] <= 1 and diagnostics[-1]["masked_clients"] == 3
    dense, _ = run(tmp_path / "dense", "fedavg")
    assert dense["mask_jaccard"] is None


# ---- validation parts --------------------------------------------------------------------
def test_validation_and_test_parts_are_disjoint_seeded_and_leave_test_alone() -> None:
    table = datasets.Dataset.from_dict({"features": [[float(i)] for i in range(200)],
                                        "label": [i % 4 for i in range(200)]})

    def parts(seed: int, fraction: float) -> tuple[set, set, set]:
        partitioner = make_partitioner("iid", 2, seed)
        partitioner.dataset = table
        train, test, validation = client_split(partitioner, table, 1, 0.25, seed, validation_fraction=fraction)
        return ({x[0] for x in train["features"]}, {x[0] for x in test["features"]},
                {x[0] for x in validation["features"]})

    train, test, validation = parts(0, 0.2)
    assert not (train & test) and not (train & validation) and not (test & validation)
    assert len(train) + len(test) + len(validation) == 100 and len(validation) == 15
    assert parts(0, 0.2) == (train, test, validation)  # seeded
    assert parts(1, 0.2)[2] != validation
    assert parts(0, 0.0)[1] == test and parts(0, 0.0)[2] == set()  # the test part does not move


def test_validation_accuracies_reach_the_summary(task_identity, tmp_path) -> None:
    row, _ = run(tmp_path, "fedavg", validation_fraction=0.25)
    assert 0 <= row["personal_val_accuracy_mean"] <= 1 and 0 <= row["personal_val_accuracy_trained_mean"] <= 1
    plain, _ = run(tmp_path / "plain", "fedavg")
    assert plain["personal_val_accuracy_mean"] is None


# ---- pruning without federation, and new clients -----------------------------------------
def test_local_gmp_sends_nothing_and_reaches_its_sparsity(task_identity, tmp_path) -> None:
    row, records = run(tmp_path, "local-gmp")
    assert row["bytes_up"] == row["bytes_down"] == 0
    assert row["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert row["flops_mean"] is not None and row["mask_jaccard"] is not None  # the server knows the masks


def test_new_clients_never_train_before_the_last_round(task_identity, tmp_path) -> None:
    row, records = run(tmp_path, "gmp", num_clients=4, new_clients=1)
    cfg = make_config({**CFG, "num_clients": 4, "new_clients": 1})
    assert new_partitions(cfg) == [3]
    touched = {r["client"] for r in records if r["phase"] in ("train", "train-metrics", "evaluate", "personal")}
    assert 3 not in touched and touched == {0, 1, 2}
    (onboarded,) = of(records, "new-client")
    assert onboarded["client"] == 3 and onboarded["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert [r["client"] for r in of(records, "onboard")] == [3]  # its one message is counted
    assert row["new_client_accuracy_mean"] == onboarded["accuracy"] == row["new_client_accuracy_min"]
    assert row["evaluated_clients"] == 3


def test_a_new_mi_refit_client_refits_after_its_selection(task_identity) -> None:
    """A new ``mi-refit`` client takes its method's step: the same MI units as a new ``mi``
    client, then the refit, so its squeezed model reproduces the final model's logits on its
    training rows more closely (no fine-tuning here, so nothing else differs)."""
    cfg = make_config({**CFG, "num_clients": 4, "new_clients": 1, "finetune_epochs": 0})
    torch.manual_seed(0)
    final = new_model(cfg)
    x = clients_data(cfg)[3].train_x
    with torch.no_grad():
        target = final(x)
    made = {name: onboard(copy.deepcopy(final), METHODS[name], cfg, 3, cfg.rounds) for name in ("mi", "mi-refit")}
    for unit in made["mi"][2]:
        assert torch.equal(made["mi"][2][unit], made["mi-refit"][2][unit])
    with torch.no_grad():
        error = {name: float(((made[name][0](x) - target) ** 2).mean()) for name in made}
    assert error["mi-refit"] < 0.9 * error["mi"]


# ---- the sweep ---------------------------------------------------------------------------
def load_sweep():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sweep.py"
    spec = importlib.util.spec_from_file_location("fedprune_bench_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_grid_and_score() -> None:
    sweep = load_sweep()
    settings = sweep.expand(["local_epochs=2,5", "prune_window=1-4,6-3"])
    assert settings == [{"local_epochs": "2", "prune_start_round": "1", "prune_end_round": "4"},
                        {"local_epochs": "5", "prune_start_round": "1", "prune_end_round": "4"}]  # 6-3 is empty
    runs = [[{"method": "gmp", "v": 0.8}, {"method": "mi", "v": 0.6}],
            [{"method": "gmp", "v": 0.9}, {"method": "mi", "v": 0.7}]]
    assert sweep.score(runs, ["gmp", "mi"], "v") == pytest.approx({"gmp": 0.85, "mi": 0.65, "objective": 0.75})
