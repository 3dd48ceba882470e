"""The ClientApp's handlers called directly (no Ray): pruning, sparse replies, evaluation."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedprune import wire
from fedprune.clients.app import handle_evaluate, handle_train
from fedprune.clients.state import ClientMemory
from fedprune.config import make_config
from fedprune.data.federation import clients_data
from fedprune.models.factory import initial_model, new_model
from helpers import new_context

CFG = dict(num_clients=2, rounds=2, mlp_widths=[16], prune_start_round=1, prune_end_round=1,
           final_sparsity=0.5, partitioner="iid", local_epochs=1)
PRUNABLE = ("body.0.weight", "head.weight")


@pytest.fixture(scope="module")
def cfg():
    return make_config(CFG)


@pytest.fixture(scope="module")
def start_state(cfg) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in initial_model(cfg).state_dict().items()}




def server_message(state, method: str, server_round: int, *, masks=None, digest: int = 0,
                   message_type: str = MessageType.TRAIN) -> Message:
    """A message the way PersonalizedStrategy._messages builds it."""
    encoding = "dense" if masks is None and digest == 0 else "masked"
    config = ConfigRecord({"encoding": encoding, "mask-digest": digest, "method": method,
                           "server-round": server_round})
    return Message(RecordDict({"arrays": wire.pack(state, masks), "config": config}),
                   dst_node_id=1, message_type=message_type)


def bitmap_keys(record) -> list[str]:
    return [k for k in record if k.endswith(wire.BITMAP_SUFFIX)]


def test_gmp_reply_at_prune_round_is_sparse_with_bitmaps(task_identity, cfg, start_state) -> None:
    context = new_context()
    answer = handle_train(server_message(start_state, "gmp", 1), context, cfg)
    assert not answer.has_error()
    content = answer.content
    metrics = content["metrics"]
    arrays = content["arrays"]
    assert metrics["partition-id"] == 0
    assert metrics["num-examples"] == len(clients_data(cfg)[0].train_y)
    assert sorted(bitmap_keys(arrays)) == sorted(n + wire.BITMAP_SUFFIX for n in PRUNABLE)
    masks = wire.bitmaps_in(arrays, start_state)
    total = kept = 0
    for name in PRUNABLE:
        n = start_state[name].numel()
        # each layer pruned to 50 % (within rounding), and only kept values travel
        assert abs(int(masks[name].sum()) - n * 0.5) <= 1, name
        assert arrays[name].numpy().size == int(masks[name].sum()), name
        total += n
        kept += int(masks[name].sum())
    assert metrics["sparsity"] == pytest.approx(1 - kept / total)
    assert metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
    for name in ("body.0.bias", "head.bias"):  # biases travel dense
        assert tuple(arrays[name].shape) == tuple(start_state[name].shape)
    assert content["wire"]["mask-digest"] == wire.mask_digest(masks)
    assert content["wire"]["mask-digest"] != 0
    # kept entries carry trained (non-zero) values; pruned ones come back as exact zeros
    values = wire.unpack(wire.values_only(arrays), start_state, masks)
    for name in PRUNABLE:
        assert bool((values[name].abs()[masks[name]] > 0).all())
        assert bool((values[name][~masks[name]] == 0).all())
    # the personal mask is remembered in the client's Context.state
    assert len(context.state) > 0
    stored = ClientMemory(context.state, "gmp").mask()
    assert stored is not None
    assert set(stored) == set(PRUNABLE)
    for name in PRUNABLE:
        assert torch.equal(stored[name], masks[name])


def test_mask_sent_only_when_server_does_not_hold_it(task_identity, cfg, start_state) -> None:
    context = new_context()
    first = handle_train(server_message(start_state, "gmp", 1), context, cfg)
    masks = wire.bitmaps_in(first.content["arrays"], start_state)
    digest = wire.mask_digest(masks)
    global_state = wire.unpack(wire.values_only(first.content["arrays"]), start_state, masks)

    # round 2: the server holds the mask and sends values under it -> no bitmaps back
    second = handle_train(server_message(global_state, "gmp", 2, masks=masks, digest=digest), context, cfg)
    arrays = second.content["arrays"]
    assert bitmap_keys(arrays) == []
    assert second.content["wire"]["mask-digest"] == digest
    for name in PRUNABLE:
        assert arrays[name].numpy().size == int(masks[name].sum())
    assert second.content["metrics"]["sparsity"] == pytest.approx(first.content["metrics"]["sparsity"])

    # the server lost the mask (dense resync, digest 0) -> the client sends it again
    third = handle_train(server_message(global_state, "gmp", 2), context, cfg)
    assert sorted(bitmap_keys(third.content["arrays"])) == sorted(n + wire.BITMAP_SUFFIX for n in PRUNABLE)
    again = wire.bitmaps_in(third.content["arrays"], start_state)
    for name in PRUNABLE:
        assert torch.equal(again[name], masks[name])


def test_client_rejects_values_under_an_unknown_mask(task_identity, cfg, start_state) -> None:
    context = new_context()
    first = handle_train(server_message(start_state, "gmp", 1), context, cfg)
    masks = wire.bitmaps_in(first.content["arrays"], start_state)
    with pytest.raises(ValueError):
        handle_train(server_message(start_state, "gmp", 2, masks=masks, digest=wire.mask_digest(masks) + 1),
                     context, cfg)


def test_fedavg_reply_is_dense(task_identity, cfg, start_state) -> None:
    context = new_context(partition=1)
    answer = handle_train(server_message(start_state, "fedavg", 1), context, cfg)
    arrays = answer.content["arrays"]
    assert bitmap_keys(arrays) == []
    assert set(arrays) == set(start_state)
    for name, tensor in start_state.items():
        assert tuple(arrays[name].shape) == tuple(tensor.shape)
    assert answer.content["wire"]["mask-digest"] == 0
    assert answer.content["metrics"]["sparsity"] == 0.0
    assert answer.content["metrics"]["partition-id"] == 1
    assert answer.content["metrics"]["num-examples"] == len(clients_data(cfg)[1].train_y)
    trained = wire.unpack(arrays, start_state, None)
    assert any(not torch.equal(trained[k], start_state[k]) for k in start_state)  # it trained
    assert ClientMemory(context.state, "fedavg").mask() is None


def _reference_accuracy(cfg, state, masks, partition) -> float:
    """Accuracy by hand: load the weights, zero the pruned ones, count argmax hits."""
    model = new_model(cfg)
    state = {k: v.clone() for k, v in state.items()}
    for name, mask in (masks or {}).items():
        state[name][~mask] = 0.0
    model.load_state_dict(state)
    data = clients_data(cfg)[partition]
    with torch.no_grad():
        predictions = model(data.test_x).argmax(dim=1)
    return int((predictions == data.test_y).sum()) / len(data.test_y)


def test_evaluate_dense(task_identity, cfg, start_state) -> None:
    context = new_context()
    message = server_message(start_state, "fedavg", 1, message_type=MessageType.EVALUATE)
    answer = handle_evaluate(message, context, cfg)
    metrics = answer.content["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["num-examples"] == len(clients_data(cfg)[0].test_y)
    assert metrics["accuracy"] == pytest.approx(_reference_accuracy(cfg, start_state, None, 0), abs=1e-9)


def test_evaluate_uses_the_personal_mask(task_identity, cfg, start_state) -> None:
    context = new_context(partition=1)
    first = handle_train(server_message(start_state, "gmp", 1), context, cfg)
    masks = wire.bitmaps_in(first.content["arrays"], start_state)
    trained = wire.unpack(wire.values_only(first.content["arrays"]), start_state, masks)
    message = server_message(trained, "gmp", 1, masks=masks, digest=wire.mask_digest(masks),
                             message_type=MessageType.EVALUATE)
    metrics = handle_evaluate(message, context, cfg).content["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["num-examples"] == len(clients_data(cfg)[1].test_y)
    assert metrics["sparsity"] == pytest.approx(first.content["metrics"]["sparsity"])
    assert metrics["accuracy"] == pytest.approx(_reference_accuracy(cfg, trained, masks, 1), abs=1e-9)


def test_client_resynchronises_after_a_dropped_mask_reply(task_identity) -> None:
    """A reply that carries a new mask but is dropped by the server (here: corrupted to NaN
    in transit) must not lock the client out: within two rounds the server and the client
    agree on the mask again and the client's replies are aggregated."""
    from flwr.app import Array, Error

    from fedprune.strategies import MaskedFedAvg

    # gmp prunes in rounds 1 (to 0.2), 2 and 3: the mask changes every round
    cfg = make_config({**CFG, "initial_sparsity": 0.2, "prune_start_round": 1, "prune_end_round": 3,
                       "rounds": 5})
    template = {k: v.detach().clone() for k, v in initial_model(cfg).state_dict().items()}
    strategy = MaskedFedAvg(template, {1: 0}, "gmp", seed=0, num_rounds=5)
    context = new_context(partition=0)
    arrays = wire.pack(template, None)

    def client(message: Message) -> Message:
        try:
            return handle_train(message, context, cfg)
        except ValueError as error:  # what Flower sends back when the ClientApp raises
            return Message(Error(code=0, reason=str(error)), reply_to=message)

    for server_round in (1, 2):
        (message,) = strategy.configure_train(server_round, arrays, ConfigRecord(), None)
        answer = client(message)
        assert not answer.has_error()
        if server_round == 2:  # corrupted in transit: the server must drop it
            assert bitmap_keys(answer.content["arrays"])  # it carried the client's new mask
            bias = answer.content["arrays"]["head.bias"].numpy().copy()
            bias[0] = float("nan")
            answer.content["arrays"]["head.bias"] = Array(bias)
        new_arrays, _ = strategy.aggregate_train(server_round, [answer])
        arrays = new_arrays or arrays
    assert [r.partition for r in strategy.rejected] == [0]

    accepted = []
    for server_round in (3, 4):
        (message,) = strategy.configure_train(server_round, arrays, ConfigRecord(), None)
        before = len(strategy.rejected)
        new_arrays, _ = strategy.aggregate_train(server_round, [client(message)])
        arrays = new_arrays or arrays
        accepted.append(len(strategy.rejected) == before)
    assert any(accepted), f"client never re-admitted; rejections: {strategy.rejected}"
