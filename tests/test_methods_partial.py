"""Partial updates: personal heads and random personal fractions, client and server side."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedprune import partial, wire
from fedprune.clients.app import handle_evaluate, handle_train
from fedprune.clients.state import ClientMemory
from fedprune.config import make_config
from fedprune.data.federation import clients_data
from fedprune.models import CNN, MLP
from fedprune.models.cnn import CNNFamily
from fedprune.models.factory import initial_model, new_model
from fedprune.models.mlp import MLPFamily
from fedprune.strategies import MaskedFedAvg
from helpers import InProcessGrid, new_context, new_strategy

T, F = True, False
HEAD = ("head.weight", "head.bias")
CFG = dict(num_clients=2, mlp_widths=[16], partitioner="iid", local_epochs=1, personal_layers="head",
           prune_start_round=1, prune_end_round=1, final_sparsity=0.5)
NODES = {11: 0, 12: 1}


# ---- shared_masks ----------------------------------------------------------------------
def mlp_template() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in MLP(64, 10, [16, 8]).state_dict().items()}


def test_head_is_personal_and_the_rest_is_absent() -> None:
    template = mlp_template()
    masks = partial.shared_masks(template, HEAD, 0.0, seed=0, client=1, server_round=3)
    assert set(masks) == set(HEAD)
    for name in HEAD:
        assert masks[name].dtype == torch.bool
        assert masks[name].shape == template[name].shape
        assert not bool(masks[name].any())
    # nothing personal at all: no masks (everything shared)
    assert partial.shared_masks(template, (), 0.0, 0, 1, 3) == {}


def test_the_family_names_the_head() -> None:
    assert MLPFamily().head_names(MLP(64, 10, [16, 8])) == ["head.weight", "head.bias"]
    assert CNNFamily().head_names(CNN((1, 8, 8), 10, [4], 8)) == ["head.weight", "head.bias"]
    # frozen and personal names never travel; nothing else is masked without a fraction
    template = mlp_template()
    masks = partial.shared_masks(template, HEAD, 0.0, 0, 1, 3, frozen=["body.0.bias"])
    assert set(masks) == {*HEAD, "body.0.bias"} and not any(bool(m.any()) for m in masks.values())


def test_personal_fraction_is_about_p_and_seeded_by_client_and_round() -> None:
    template = {"big": torch.zeros(200, 150), "bias": torch.zeros(50)}
    masks = partial.shared_masks(template, (), 0.3, seed=4, client=2, server_round=5)
    assert set(masks) == {"big", "bias"}
    personal = 1.0 - float(masks["big"].float().mean())
    assert abs(personal - 0.3) < 0.03  # 30,000 entries: sd of the fraction is 0.0026
    # the same (seed, client, round) gives the same split (client and server derive it alone)
    again = partial.shared_masks(template, (), 0.3, seed=4, client=2, server_round=5)
    assert all(torch.equal(masks[k], again[k]) for k in masks)
    # a new split every round, per client and per seed
    for other in (dict(seed=4, client=2, server_round=6), dict(seed=4, client=3, server_round=5),
                  dict(seed=5, client=2, server_round=5)):
        different = partial.shared_masks(template, (), 0.3, **other)
        assert not torch.equal(masks["big"], different["big"]), other
        # independent splits agree on about 0.7^2 + 0.3^2 = 58 % of the entries
        agree = float((masks["big"] == different["big"]).float().mean())
        assert 0.54 < agree < 0.62, other


def test_personal_fraction_with_personal_head() -> None:
    template = mlp_template()
    masks = partial.shared_masks(template, HEAD, 0.5, seed=0, client=0, server_round=1)
    assert set(masks) == set(template)
    for name in HEAD:
        assert not bool(masks[name].any())
    share = float(masks["body.0.weight"].float().mean())  # 16 x 64 = 1024 entries
    assert 0.42 < share < 0.58


def test_intersect_hand_worked() -> None:
    first = {"a": torch.tensor([T, T, F]), "b": torch.tensor([T, F])}
    second = {"a": torch.tensor([T, F, F]), "c": torch.tensor([F, T])}
    result = partial.intersect(first, second)
    assert {k: v.tolist() for k, v in result.items()} == {"a": [T, F, F], "b": [T, F], "c": [F, T]}
    assert partial.intersect(None, None) == {}
    assert partial.intersect(None, second)["c"].tolist() == [F, T]


# ---- client replies --------------------------------------------------------------------
@pytest.fixture(scope="module")
def cfg():
    return make_config(CFG)


@pytest.fixture(scope="module")
def start_state(cfg) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in initial_model(cfg).state_dict().items()}


def dense_message(state, method: str, server_round: int, message_type: str = MessageType.TRAIN) -> Message:
    config = ConfigRecord({"encoding": "dense", "mask-digest": 0, "method": method,
                           "server-round": server_round})
    return Message(RecordDict({"arrays": wire.pack(state, None), "config": config}),
                   dst_node_id=1, message_type=message_type)


def npy_bytes(name: str, shape: tuple[int, ...]) -> int:
    """What one float32 tensor costs in an ArrayRecord: its .npy file plus its key."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, dtype=np.float32), allow_pickle=False)
    return len(buffer.getvalue()) + len(name)


def test_train_reply_with_personal_head_leaves_the_head_out(task_identity, cfg, start_state) -> None:
    context = new_context()
    answer = handle_train(dense_message(start_state, "fedavg", 1), context, cfg)
    assert not answer.has_error()
    arrays = answer.content["arrays"]
    assert set(arrays) == {"body.0.weight", "body.0.bias"}
    assert not any(key.startswith("head.") for key in arrays)
    # the bytes are those of the shared tensors only (shapes from the model, sizes by hand)
    shared = sum(npy_bytes(name, tuple(t.shape)) for name, t in start_state.items() if not name.startswith("head."))
    assert arrays.count_bytes() == shared
    # ... i.e. a full record minus exactly the head tensors' bytes
    full = ArrayRecord({k: Array(v.numpy()) for k, v in start_state.items()})
    head_bytes = sum(npy_bytes(name, tuple(start_state[name].shape)) for name in HEAD)
    assert full.count_bytes() - arrays.count_bytes() == head_bytes
    # the client keeps its trained head for itself
    own = ClientMemory(context.state, "fedavg").model()
    assert own is not None and set(HEAD) <= set(own)
    assert not torch.equal(own["head.weight"], start_state["head.weight"])  # it trained
    assert torch.equal(own["body.0.weight"], torch.from_numpy(arrays["body.0.weight"].numpy().copy()))


def test_pruned_reply_with_personal_head_carries_no_head_values(task_identity, cfg, start_state) -> None:
    context = new_context(partition=1)
    answer = handle_train(dense_message(start_state, "gmp", 1), context, cfg)
    arrays = answer.content["arrays"]
    values = wire.values_only(arrays)
    assert set(values) == {"body.0.weight", "body.0.bias"}
    masks = ClientMemory(context.state, "gmp").mask()
    assert arrays["body.0.weight"].numpy().size == int(masks["body.0.weight"].sum())
    assert abs(int(masks["body.0.weight"].sum()) - 16 * 64 * 0.5) <= 1


# ---- server side -----------------------------------------------------------------------
def as_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v.numpy()).copy()) for k, v in record.items()}


def test_server_keeps_head_and_never_sends_it_to_known_clients(task_identity, cfg, start_state) -> None:
    strategy, _ = new_strategy(cfg, "fedavg", NODES)
    assert isinstance(strategy, MaskedFedAvg)  # partial updates: per-entry aggregation
    grid = InProcessGrid(cfg, dict(NODES))
    arrays = ArrayRecord(start_state)

    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    assert all(m.content["config"]["encoding"] == "dense" for m in messages)  # first contact
    replies = grid.send_and_receive(messages, timeout=60)
    new_arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.rejected == []
    result = as_tensors(new_arrays)
    # head: nobody shares it -> the previous global value, exactly
    for name in HEAD:
        assert torch.equal(result[name], start_state[name]), name
    # body: example-weighted mean of the two replies, by hand
    weights = {int(r.content["metrics"]["partition-id"]): float(r.content["metrics"]["num-examples"])
               for r in replies}
    values = {int(r.content["metrics"]["partition-id"]): as_tensors(r.content["arrays"]) for r in replies}
    for name in ("body.0.weight", "body.0.bias"):
        expected = (weights[0] * values[0][name].double() + weights[1] * values[1][name].double()) \
            / (weights[0] + weights[1])
        assert torch.allclose(result[name].double(), expected, atol=1e-6), name
        assert not torch.equal(result[name], start_state[name])

    # round 2: known clients get no head tensor
    messages = list(strategy.configure_train(2, new_arrays, ConfigRecord(), grid))
    assert len(messages) == 2
    for message in messages:
        content = message.content
        assert content["config"]["encoding"] == "masked"
        assert set(content["arrays"]) == {"body.0.weight", "body.0.bias"}
        assert torch.equal(as_tensors(content["arrays"])["body.0.weight"], result["body.0.weight"])
    own_before = {p: ClientMemory(grid.contexts[n].state, "fedavg").model() for n, p in NODES.items()}
    replies = grid.send_and_receive(messages, timeout=60)
    assert not any(r.has_error() for r in replies)
    arrays2, _ = strategy.aggregate_train(2, replies)
    assert strategy.rejected == []
    result2 = as_tensors(arrays2)
    for name in HEAD:
        assert torch.equal(result2[name], start_state[name]), name

    # personal evaluation: the server's body + the client's own head (computed here by hand)
    evaluations = list(strategy.configure_evaluate(2, arrays2, ConfigRecord(), grid))
    for message in evaluations:
        assert not any(key.startswith("head.") for key in message.content["arrays"])
    answers = {int(a.content["metrics"]["partition-id"]): a for a in grid.send_and_receive(evaluations, 60)}
    for node, partition in NODES.items():
        own = ClientMemory(grid.contexts[node].state, "fedavg").model()
        assert not torch.equal(own["head.weight"], own_before[partition]["head.weight"])  # trained in round 2
        model = new_model(cfg)
        model.load_state_dict({**result2, "head.weight": own["head.weight"], "head.bias": own["head.bias"]})
        data = clients_data(cfg)[partition]
        with torch.no_grad():
            hits = int((model(data.test_x).argmax(1) == data.test_y).sum())
        assert answers[partition].content["metrics"]["accuracy"] == pytest.approx(hits / len(data.test_y))


def test_server_payload_with_personal_fraction_matches_client_split(task_identity, start_state) -> None:
    cfg = make_config({**CFG, "personal_layers": "none", "personal_fraction": 0.3})
    strategy, _ = new_strategy(cfg, "fedavg", NODES)
    grid = InProcessGrid(cfg, dict(NODES))
    arrays = ArrayRecord(start_state)
    replies = grid.send_and_receive(list(strategy.configure_train(1, arrays, ConfigRecord(), grid)), 60)
    for reply in replies:  # uplink: only the shared ~70 % of every tensor
        partition = int(reply.content["metrics"]["partition-id"])
        split = partial.shared_masks(start_state, (), 0.3, cfg.seed, partition, 1)
        for name, mask in split.items():
            assert reply.content["arrays"][name].numpy().size == int(mask.sum())
        total = sum(m.numel() for m in split.values())
        assert 0.6 < sum(int(m.sum()) for m in split.values()) / total < 0.8
    new_arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.rejected == []
    messages = list(strategy.configure_train(2, new_arrays, ConfigRecord(), grid))
    for message in messages:  # downlink of round 2: the round-2 split of that client
        partition = NODES[message.metadata.dst_node_id]
        split = partial.shared_masks(start_state, (), 0.3, cfg.seed, partition, 2)
        for name, mask in split.items():
            assert message.content["arrays"][name].numpy().size == int(mask.sum())
    replies = grid.send_and_receive(messages, 60)
    assert not any(r.has_error() for r in replies)
    strategy.aggregate_train(2, replies)
    assert strategy.rejected == []


def test_personal_head_survives_a_dense_resync(task_identity, cfg, start_state) -> None:
    """After the server drops a reply it resynchronises the client with a dense payload.
    The personal head never left the client, so the client must keep using its own head;
    the server's head is the never-trained initial one."""
    strategy, _ = new_strategy(cfg, "fedavg", NODES)
    grid = InProcessGrid(cfg, dict(NODES))
    arrays = ArrayRecord(start_state)
    replies = grid.send_and_receive(list(strategy.configure_train(1, arrays, ConfigRecord(), grid)), 60)
    arrays, _ = strategy.aggregate_train(1, replies)

    replies = grid.send_and_receive(list(strategy.configure_train(2, arrays, ConfigRecord(), grid)), 60)
    for reply in replies:  # client 0's reply is corrupted in transit: the server drops it
        if int(reply.content["metrics"]["partition-id"]) == 0:
            bias = reply.content["arrays"]["body.0.bias"].numpy().copy()
            bias[0] = float("nan")
            reply.content["arrays"]["body.0.bias"] = Array(bias)
    arrays, _ = strategy.aggregate_train(2, replies)
    assert [r.partition for r in strategy.rejected] == [0]

    evaluations = list(strategy.configure_evaluate(2, arrays, ConfigRecord(), grid))
    by_node = {m.metadata.dst_node_id: m for m in evaluations}
    assert by_node[11].content["config"]["encoding"] == "dense"  # the resync
    answer = handle_evaluate(by_node[11], grid.contexts[11], cfg)
    own = ClientMemory(grid.contexts[11].state, "fedavg").model()
    server = as_tensors(arrays)
    assert torch.equal(server["head.weight"], start_state["head.weight"])  # the server's head never trained
    model = new_model(cfg)
    model.load_state_dict({**server, "head.weight": own["head.weight"], "head.bias": own["head.bias"]})
    data = clients_data(cfg)[0]
    with torch.no_grad():
        hits = int((model(data.test_x).argmax(1) == data.test_y).sum())
    assert answer.content["metrics"]["accuracy"] == pytest.approx(hits / len(data.test_y))
