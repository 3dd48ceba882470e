"""Every registered method runs train + evaluate through the handlers; local sends nothing;
fedavg-ft fine-tunes before evaluating; mi-post prunes, refits and fine-tunes at evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedprune import wire
from fedprune.clients import app as client_app
from fedprune.clients import local_round
from fedprune.config import make_config
from fedprune.data.federation import clients_data
from fedprune.methods import METHODS
from fedprune.models.factory import initial_model
from fedprune.server.experiment import run_method
from fedprune.server.grid import CountingGrid
from fedprune.server.records import Recorder
from fedprune.strategies import DenseFedAvg, LocalOnly, MaskedFedAvg
from helpers import InProcessGrid, new_strategy

NODES = {31: 0, 32: 1}
ACCURACY = local_round.accuracy
CFG = dict(num_clients=2, rounds=2, mlp_widths=[16], partitioner="iid", local_epochs=1,
           prune_start_round=1, prune_end_round=2, final_sparsity=0.5, finetune_epochs=1)


@pytest.fixture(scope="module")
def cfg():
    return make_config(CFG)


def expected_strategy(method: str) -> type:
    spec = METHODS[method]
    if not spec.federated:
        return LocalOnly
    return MaskedFedAvg if spec.pruner is not None else DenseFedAvg


def test_registry_is_what_the_comparison_needs() -> None:
    assert {"fedavg", "fedavg-ft", "local", "gmp", "gmp-global", "movement", "random", "mi", "l1-structured",
            "random-structured", "small-dense", "mi-post"} <= set(METHODS)
    for name, method in METHODS.items():
        assert method.name == name and method.summary
    assert [m for m in METHODS if METHODS[m].personal.finetune] == ["fedavg-ft", "mi-post"]
    assert [m for m in METHODS if METHODS[m].personal.reports_units] == ["mi-post"]
    pruned = [m for m in METHODS if METHODS[m].pruner is not None and METHODS[m].federated]
    # every pruned method has a local twin: the same pruner, no federation, local's training stream
    assert [m for m in METHODS if not METHODS[m].federated] == ["local", *(f"local-{m}" for m in pruned)]
    for name in pruned:
        twin = METHODS[f"local-{name}"]
        assert twin.pruner is METHODS[name].pruner and twin.stream == "local"
    assert [m for m in METHODS if METHODS[m].model == "small-dense"] == ["small-dense"]
    assert {m for m in METHODS if METHODS[m].structured and METHODS[m].federated} == {
        "mi", "mi-refit", "l1-structured", "random-structured"}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_evaluates(task_identity, cfg, method: str) -> None:
    strategy, template = new_strategy(cfg, method, NODES)
    assert type(strategy) is expected_strategy(method)
    grid = InProcessGrid(cfg, dict(NODES))
    arrays = ArrayRecord(template)
    for server_round in (1, 2):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        assert sorted(m.metadata.dst_node_id for m in messages) == sorted(NODES)
        assert all(m.content["config"]["method"] == method for m in messages)
        replies = grid.send_and_receive(messages, timeout=60)
        assert not any(r.has_error() for r in replies)
        new_arrays, metrics = strategy.aggregate_train(server_round, replies)
        assert strategy.rejected == []
        assert new_arrays is not None and np.isfinite(metrics["train-loss"])
        assert set(strategy.reports.sparsity) == {0, 1}
        state = {k: np.asarray(v.numpy()) for k, v in new_arrays.items()}
        assert set(state) == set(template)
        if METHODS[method].federated:  # the global model moved
            assert any(not np.array_equal(state[k], template[k].numpy()) for k in template)
        else:  # local: the server's model never changes
            assert all(np.array_equal(state[k], template[k].numpy()) for k in template)
        arrays = new_arrays

        evaluations = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        answers = grid.send_and_receive(evaluations, timeout=60)
        assert len(answers) == 2 and not any(a.has_error() for a in answers)
        for answer in answers:
            m = answer.content["metrics"]
            partition = int(m["partition-id"])
            assert m["num-examples"] == len(clients_data(cfg)[partition].test_y)
            assert 0.0 <= m["accuracy"] <= 1.0
            sparsity = m["sparsity"]
            # after round 2 (the end of the schedule) pruned methods are at 0.5, dense ones at 0;
            # post-training methods prune every evaluated personal model to 0.5
            spec = METHODS[method]
            if spec.personal.reports_units or (server_round == 2 and spec.pruner is not None):
                assert abs(sparsity - 0.5) <= 0.05, (method, sparsity)
            if server_round == 1 and method == "random":
                # drawn once at the first pruning round, straight at the final sparsity
                assert abs(sparsity - 0.5) <= 0.01, sparsity
            elif spec.pruner is None and not spec.personal.reports_units:
                assert sparsity == 0.0
        assert strategy.aggregate_evaluate(server_round, answers) is not None
        assert set(strategy.reports.accuracy) == {0, 1}
    # after two rounds everyone is above chance (0.1) on average
    assert np.mean([float(a.content["metrics"]["accuracy"]) for a in answers]) > 0.15


# ---- local: nothing crosses the network -------------------------------------------------
def read_records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_local_goes_through_the_grid_and_records_zero_bytes(task_identity, cfg, tmp_path) -> None:
    recorder = Recorder(tmp_path)
    grid = InProcessGrid(cfg, dict(NODES))
    row = run_method(cfg, "local", grid, recorder, dict(NODES), progress=lambda _: None)
    recorder.close()
    records = read_records(tmp_path / "rounds.jsonl")
    exchanged = [r for r in records if "bytes_down" in r]
    # one train and one evaluate record per client and round
    assert sorted((r["round"], r["phase"], r["client"]) for r in exchanged) == sorted(
        (rnd, phase, c) for rnd in (1, 2) for phase in ("train", "evaluate") for c in (0, 1))
    assert all(r["method"] == "local" for r in exchanged)
    assert all(r["bytes_down"] == 0 and r["bytes_up"] == 0 for r in exchanged)
    assert row["bytes_up"] == 0 and row["bytes_down"] == 0
    assert row["global_accuracy"] is None
    assert row["personal_accuracy_mean"] > 0.15  # the clients did train (alone), in their own contexts
    assert all(len(context.state) > 0 for context in grid.contexts.values())


def test_local_messages_would_cost_bytes_on_a_network(task_identity, cfg, tmp_path) -> None:
    """The zero above is a choice of the grid: the same exchange, counted, is not free."""
    strategy, template = new_strategy(cfg, "local", NODES)
    recorder = Recorder(tmp_path)
    counting = CountingGrid(InProcessGrid(cfg, dict(NODES)), recorder.write, dict(NODES), counted=True)
    messages = list(strategy.configure_train(1, ArrayRecord(template), ConfigRecord(), counting))
    assert all(len(m.content["arrays"]) == 0 for m in messages)  # no model in a local message
    replies = list(counting.send_and_receive(messages, timeout=60))
    recorder.close()
    assert len(replies) == 2
    assert counting.bytes_down > 0 and counting.bytes_up > 0
    assert counting.bytes_up == sum(wire.message_bytes(r) for r in replies)
    assert all(len(r.content["arrays"]) == 0 for r in replies)  # ... and none in the reply


# ---- fedavg-ft fine-tunes before evaluating ---------------------------------------------
def evaluate_capturing(method: str, cfg, state, monkeypatch) -> tuple[float, dict[str, torch.Tensor]]:
    captured = {}

    def spy(model, x, y, *args, **kwargs):
        captured.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return ACCURACY(model, x, y, *args, **kwargs)

    monkeypatch.setattr(local_round, "accuracy", spy)
    config = ConfigRecord({"encoding": "dense", "mask-digest": 0, "method": method, "server-round": 3})
    message = Message(RecordDict({"arrays": wire.pack(state, None), "config": config}),
                      dst_node_id=1, message_type=MessageType.EVALUATE)
    context = Context(run_id=0, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config={})
    answer = client_app.handle_evaluate(message, context, cfg)
    return float(answer.content["metrics"]["accuracy"]), captured


def by_hand_accuracy(cfg, state) -> float:
    model = initial_model(cfg)
    model.load_state_dict(state)
    data = clients_data(cfg)[0]
    with torch.no_grad():
        return int((model(data.test_x).argmax(1) == data.test_y).sum()) / len(data.test_y)


def test_fedavg_ft_fine_tunes_the_received_model(task_identity, cfg, monkeypatch) -> None:
    received = {k: v.detach().clone() for k, v in initial_model(cfg).state_dict().items()}
    plain, plain_model = evaluate_capturing("fedavg", cfg, received, monkeypatch)
    tuned, tuned_model = evaluate_capturing("fedavg-ft", cfg, received, monkeypatch)
    # fedavg evaluates exactly what it received
    assert all(torch.equal(plain_model[k], received[k]) for k in received)
    assert plain == pytest.approx(by_hand_accuracy(cfg, received))
    # fedavg-ft evaluates a different model: every tensor was trained locally
    assert all(not torch.equal(tuned_model[k], received[k]) for k in received)
    assert tuned == pytest.approx(by_hand_accuracy(cfg, tuned_model))
    # one epoch on local data lifts an untrained model well above its starting accuracy
    assert tuned > plain + 0.2, (plain, tuned)


def test_fedavg_ft_without_finetune_epochs_is_fedavg(task_identity, monkeypatch) -> None:
    cfg = make_config({**CFG, "finetune_epochs": 0})
    received = {k: v.detach().clone() for k, v in initial_model(cfg).state_dict().items()}
    tuned, tuned_model = evaluate_capturing("fedavg-ft", cfg, received, monkeypatch)
    assert all(torch.equal(tuned_model[k], received[k]) for k in received)
    assert tuned == pytest.approx(by_hand_accuracy(cfg, received))


# ---- mi-post: dense training, personal pruning at evaluation ----------------------------
def test_mi_post_evaluates_a_squeezed_personal_model_and_reports_its_units(task_identity, cfg,
                                                                           monkeypatch) -> None:
    received = {k: v.detach().clone() for k, v in initial_model(cfg).state_dict().items()}
    _, evaluated = evaluate_capturing("mi-post", cfg, received, monkeypatch)
    # the evaluated model is the squeezed one: 16 hidden units -> 8 (parameter sparsity 0.5)
    assert evaluated["body.0.weight"].shape[0] == 8 and evaluated["head.weight"].shape[1] == 8
    config = ConfigRecord({"encoding": "dense", "mask-digest": 0, "method": "mi-post", "server-round": 3})
    message = Message(RecordDict({"arrays": wire.pack(received, None), "config": config}),
                      dst_node_id=1, message_type=MessageType.EVALUATE)
    context = Context(run_id=0, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config={})
    answer = client_app.handle_evaluate(message, context, cfg)
    units = wire.units_in(answer.content["arrays"], {"body.0": 16})
    assert int(units["body.0"].sum()) == 8
    assert float(answer.content["metrics"]["sparsity"]) == pytest.approx(0.5, abs=0.05)
    # the client keeps nothing between evaluations: no personal mask in its memory
    assert len(context.state) == 0


@pytest.mark.parametrize("corrupt", ["drop arrays", "empty arrays"])
def test_mi_post_reply_without_units_is_rejected(task_identity, cfg, corrupt) -> None:
    records = []
    strategy, template = new_strategy(cfg, "mi-post", NODES, journal=lambda **r: records.append(r))
    grid = InProcessGrid(cfg, dict(NODES))
    replies = grid.send_and_receive(strategy.configure_evaluate(1, ArrayRecord(template), ConfigRecord(), grid))
    for reply in replies:
        if int(reply.content["metrics"]["partition-id"]) == 1:
            del reply.content["arrays"]
            if corrupt == "empty arrays":  # a record that names no group
                reply.content["arrays"] = ArrayRecord()
    strategy.aggregate_evaluate(1, replies)
    assert set(strategy.reports.accuracy) == {0} and set(strategy.post_units) == {0}
    assert [r.partition for r in strategy.rejected] == [1]
    assert [r["client"] for r in records if r["phase"] == "personal"] == [0]
    assert [(r["client"], r["exchange"]) for r in records if r["phase"] == "rejected"] == [(1, "evaluate")]
    masks, units = strategy.personal_structure(0)
    assert int(units["body.0"].sum()) == 8 and masks["body.0.weight"].sum() == 8 * masks["body.0.weight"].shape[1]


def test_mi_post_refuses_device_profiles() -> None:
    from fedprune.config import ConfigError

    profile = {"name": "phone", "max_flops": 1000, "fraction": 1.0}
    with pytest.raises(ConfigError, match="device_profiles: not supported by mi-post"):
        make_config({**CFG, "methods": ["mi-post"], "device_profiles": [profile]})


@pytest.mark.parametrize("method", ["fedavg-ft", "mi-post"])
def test_methods_that_train_like_fedavg_reach_fedavg_s_global_model(task_identity, cfg, method) -> None:
    def global_after_two_rounds(name: str) -> dict[str, np.ndarray]:
        strategy, template = new_strategy(cfg, name, NODES)
        grid = InProcessGrid(cfg, dict(NODES))
        arrays = ArrayRecord(template)
        for server_round in (1, 2):
            messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
            arrays, _ = strategy.aggregate_train(server_round, grid.send_and_receive(messages, timeout=60))
        return {k: v.numpy() for k, v in arrays.items()}

    reference, paired = global_after_two_rounds("fedavg"), global_after_two_rounds(method)
    assert all(np.array_equal(reference[k], paired[k]) for k in reference)
    # ... which is not a property of any two dense methods: small-dense trains its own model
    assert METHODS[method].trains_like == "fedavg" and not METHODS["small-dense"].trains_like
