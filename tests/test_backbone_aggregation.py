"""Server-side aggregation: masked_mean by hand, MaskedFedAvg/DenseFedAvg without Ray."""

from __future__ import annotations

import itertools

import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedprune import wire
from fedprune.models import MLP
from fedprune.pruning import mask_sparsity
from fedprune.strategies import DenseFedAvg, MaskedFedAvg, masked_mean

T, F = True, False
NODES = {101: 0, 102: 1, 103: 2}
WEIGHTS = {0: 1, 1: 2, 2: 3}
LOSSES = {0: 0.9, 1: 0.6, 2: 0.3}
PRUNABLE = ("body.0.weight", "head.weight")


# ---- masked_mean by hand -------------------------------------------------------------
def test_masked_mean_hand_worked() -> None:
    previous = torch.tensor([10.0, 20.0, 30.0, 40.0])
    values = [torch.tensor([1.0, 2.0, 3.0, 4.0]),
              torch.tensor([5.0, 6.0, 7.0, 8.0]),
              torch.tensor([9.0, 10.0, 11.0, 12.0])]
    masks = [torch.tensor([T, T, F, F]),
             torch.tensor([T, F, F, F]),
             torch.tensor([T, T, F, T])]
    result = masked_mean(previous, values, masks, [1.0, 2.0, 3.0])
    # entry 0: all keep -> (1*1 + 2*5 + 3*9) / 6 = 38/6
    # entry 1: clients 0 and 2 -> (1*2 + 3*10) / 4 = 8
    # entry 2: nobody keeps it -> previous value 30
    # entry 3: only client 2 -> its value 12
    assert result.tolist() == pytest.approx([38 / 6, 8.0, 30.0, 12.0], abs=1e-6)
    assert result.dtype == previous.dtype


def test_masked_mean_none_masks_is_plain_weighted_mean() -> None:
    previous = torch.tensor([[100.0, -100.0]])
    values = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 5.0]]), torch.tensor([[6.0, -4.0]])]
    result = masked_mean(previous, values, [None, None, None], [1.0, 2.0, 3.0])
    # (1 + 6 + 18) / 6 = 25/6 ; (2 + 10 - 12) / 6 = 0
    assert result.reshape(-1).tolist() == pytest.approx([25 / 6, 0.0], abs=1e-6)
    # mixing: None keeps everything, the other keeps only entry 0
    result = masked_mean(previous, values[:2], [None, torch.tensor([[T, F]])], [1.0, 1.0])
    assert result.reshape(-1).tolist() == pytest.approx([2.0, 2.0], abs=1e-6)


# ---- strategies without Ray ---------------------------------------------------------------
def make_template() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in MLP(6, 3, [4]).state_dict().items()}


def as_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord(state)


def client_masks(template: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """Random personal masks with three hand-set entries of body.0.weight:
    (0, 0) kept by nobody, (0, 1) kept only by partition 2, (0, 2) kept by everyone."""
    result = {}
    for partition in WEIGHTS:
        generator = torch.Generator().manual_seed(100 + partition)
        masks = {name: torch.rand(template[name].shape, generator=generator) < 0.5 for name in PRUNABLE}
        masks["body.0.weight"][0, 0] = False
        masks["body.0.weight"][0, 1] = partition == 2
        masks["body.0.weight"][0, 2] = True
        result[partition] = masks
    return result


def client_states(template: dict[str, torch.Tensor], masks: dict[int, dict] | None) -> dict[int, dict]:
    states = {}
    for partition in WEIGHTS:
        generator = torch.Generator().manual_seed(200 + partition)
        state = {k: torch.randn(v.shape, generator=generator) for k, v in template.items()}
        for name, mask in ((masks or {}).get(partition) or {}).items():
            state[name] = state[name] * mask  # a client's pruned entries are zero
        states[partition] = state
    return states


def reply(instruction: Message, state: dict[str, torch.Tensor], masks: dict | None, *,
          bitmaps: bool = True, digest: int | None = None, server_round: int = 1) -> Message:
    """A train reply built the way clients.app.handle_train builds it."""
    partition = NODES.get(instruction.metadata.dst_node_id, 3)
    arrays = wire.pack(state, masks, masks if bitmaps else None)
    metrics = MetricRecord({
        "num-examples": WEIGHTS.get(partition, 4),
        "train-loss": LOSSES.get(partition, 0.0),
        "compute-seconds": 0.01,
        "sparsity": mask_sparsity(masks or {}),
        "partition-id": partition,
        "budget-met": -1,
        "sgd-steps": 1,
    })
    config = ConfigRecord({"mask-digest": wire.mask_digest(masks) if digest is None else digest,
                           "server-round": server_round})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics, "wire": config}), reply_to=instruction)


def hand_masked_mean(previous: dict[str, torch.Tensor], states: dict[int, dict],
                     masks: dict[int, dict]) -> dict[str, torch.Tensor]:
    """Per entry, with plain Python loops: the weighted mean over clients keeping it."""
    result = {}
    for name, prev in previous.items():
        out = prev.clone().to(torch.float64)
        for index in itertools.product(*(range(s) for s in prev.shape)):
            num = den = 0.0
            for partition, state in states.items():
                mask = masks[partition].get(name)
                if mask is None or bool(mask[index]):
                    num += WEIGHTS[partition] * float(state[name][index])
                    den += WEIGHTS[partition]
            if den > 0:
                out[index] = num / den
        result[name] = out
    return result


def start_round(strategy, server_round: int, state: dict[str, torch.Tensor]) -> dict[int, Message]:
    messages = strategy.configure_train(server_round, as_record(state), ConfigRecord(), object())
    return {m.metadata.dst_node_id: m for m in messages}


def as_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


def test_masked_fedavg_aggregates_per_entry(task_identity) -> None:
    template = make_template()
    masks = client_masks(template)
    states = client_states(template, masks)
    strategy = MaskedFedAvg(template, dict(NODES), "gmp", seed=0, num_rounds=2)
    instructions = start_round(strategy, 1, template)
    assert sorted(instructions) == sorted(NODES)
    for message in instructions.values():  # first contact: the dense model
        assert message.metadata.message_type == MessageType.TRAIN
        assert message.content["config"]["encoding"] == "dense"
        assert set(message.content["arrays"]) == set(template)

    replies = [reply(instructions[node], states[p], masks[p]) for node, p in NODES.items()]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert strategy.rejected == []
    result = as_tensors(arrays)
    expected = hand_masked_mean(template, states, masks)
    for name in template:
        assert torch.allclose(result[name].double(), expected[name], atol=1e-6), name
    body = result["body.0.weight"]
    assert body[0, 0] == template["body.0.weight"][0, 0]          # nobody keeps it: unchanged
    assert body[0, 1] == states[2]["body.0.weight"][0, 1]          # only partition 2 keeps it
    hand = sum(WEIGHTS[p] * float(states[p]["body.0.weight"][0, 2]) for p in WEIGHTS) / 6
    assert float(body[0, 2]) == pytest.approx(hand, abs=1e-6)     # everyone keeps it
    # metrics: example-weighted train loss (1*.9 + 2*.6 + 3*.3) / 6 = 0.5
    assert metrics["train-loss"] == pytest.approx(0.5)
    # the server now holds every client's mask
    for partition in WEIGHTS:
        for name in PRUNABLE:
            assert torch.equal(strategy.client_masks[partition][name], masks[partition][name])


def test_masked_fedavg_second_round_sparse_both_ways(task_identity) -> None:
    template = make_template()
    masks = client_masks(template)
    states = client_states(template, masks)
    strategy = MaskedFedAvg(template, dict(NODES), "gmp", seed=0, num_rounds=2)
    instructions = start_round(strategy, 1, template)
    arrays, _ = strategy.aggregate_train(1, [reply(instructions[n], states[p], masks[p]) for n, p in NODES.items()])
    global1 = as_tensors(arrays)

    instructions = start_round(strategy, 2, global1)
    for node, partition in NODES.items():
        content = instructions[node].content
        assert content["config"]["encoding"] == "masked"
        assert content["config"]["mask-digest"] == wire.mask_digest(masks[partition])
        assert content["config"]["server-round"] == 2
        assert not any(k.endswith(wire.BITMAP_SUFFIX) for k in content["arrays"])
        for name in PRUNABLE:  # downlink: only the client's kept entries
            sent = content["arrays"][name].numpy()
            assert sent.size == int(masks[partition][name].sum())
            assert torch.equal(torch.from_numpy(sent.copy()), global1[name][masks[partition][name]])

    # round-2 replies without bitmaps: the server decodes them with the masks it holds
    states2 = client_states(template, masks)
    states2 = {p: {k: v + 1.0 * (p + 1) for k, v in s.items()} for p, s in states2.items()}
    for p in states2:
        for name in PRUNABLE:
            states2[p][name] = states2[p][name] * masks[p][name]
    replies = [reply(instructions[n], states2[p], masks[p], bitmaps=False, server_round=2)
               for n, p in NODES.items()]
    arrays, _ = strategy.aggregate_train(2, replies)
    assert strategy.rejected == []
    expected = hand_masked_mean(global1, states2, masks)
    result = as_tensors(arrays)
    for name in template:
        assert torch.allclose(result[name].double(), expected[name], atol=1e-5), name


def test_aggregation_does_not_depend_on_reply_order(task_identity) -> None:
    template = make_template()
    masks = client_masks(template)
    states = client_states(template, masks)
    results = []
    for order in (list(NODES), list(reversed(NODES))):
        strategy = MaskedFedAvg(template, dict(NODES), "gmp", seed=0, num_rounds=2)
        instructions = start_round(strategy, 1, template)
        arrays, _ = strategy.aggregate_train(1, [reply(instructions[n], states[NODES[n]], masks[NODES[n]])
                                                 for n in order])
        results.append(as_tensors(arrays))
    for name in template:
        assert torch.equal(results[0][name], results[1][name])


def test_dense_fedavg_is_plain_weighted_mean(task_identity) -> None:
    template = make_template()
    states = client_states(template, None)
    strategy = DenseFedAvg(template, dict(NODES), "fedavg", seed=0, num_rounds=2)
    instructions = start_round(strategy, 1, template)
    replies = [reply(instructions[n], states[p], None) for n, p in NODES.items()]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert strategy.rejected == []
    result = as_tensors(arrays)
    for name in template:
        expected = sum(WEIGHTS[p] * states[p][name].double() for p in WEIGHTS) / sum(WEIGHTS.values())
        assert result[name].shape == template[name].shape
        assert torch.allclose(result[name].double(), expected, atol=1e-6), name
    assert metrics["train-loss"] == pytest.approx(0.5)


@pytest.mark.parametrize("fault", ["nan", "wrong-digest", "no-bitmap-first-contact", "value-count",
                                   "zero-weight", "infinite-weight"])
def test_faulty_reply_is_dropped_and_does_not_change_result(task_identity, fault: str) -> None:
    template = make_template()
    masks = client_masks(template)
    states = client_states(template, masks)
    # reference: only the three good clients
    good_only = MaskedFedAvg(template, dict(NODES), "gmp", seed=0, num_rounds=2)
    instructions = start_round(good_only, 1, template)
    reference, _ = good_only.aggregate_train(1, [reply(instructions[n], states[p], masks[p])
                                                 for n, p in NODES.items()])

    nodes = {**NODES, 104: 3}
    strategy = MaskedFedAvg(template, nodes, "gmp", seed=0, num_rounds=2)
    instructions = start_round(strategy, 1, template)
    assert sorted(instructions) == sorted(nodes)
    bad_masks = {k: v.clone() for k, v in masks[0].items()}
    bad_state = {k: torch.full_like(v, 1000.0) for k, v in template.items()}
    if fault == "nan":
        bad_state["head.bias"][0] = float("nan")
        bad = reply(instructions[104], bad_state, bad_masks)
    elif fault == "wrong-digest":
        bad = reply(instructions[104], bad_state, bad_masks, digest=wire.mask_digest(bad_masks) + 1)
    elif fault == "no-bitmap-first-contact":
        bad = reply(instructions[104], bad_state, bad_masks, bitmaps=False)
    elif fault in ("zero-weight", "infinite-weight"):
        bad = reply(instructions[104], bad_state, bad_masks)
        bad.content["metrics"]["num-examples"] = 0 if fault == "zero-weight" else float("inf")
    else:
        record = wire.pack(bad_state, bad_masks, bad_masks)
        record["head.weight"] = Array(record["head.weight"].numpy()[:-1].copy())
        bad = reply(instructions[104], bad_state, bad_masks)
        bad.content["arrays"] = record
    replies = [bad] + [reply(instructions[n], states[p], masks[p]) for n, p in NODES.items()]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert [r.partition for r in strategy.rejected] == [3]
    assert 3 not in strategy.client_masks
    result, expected = as_tensors(arrays), as_tensors(reference)
    for name in template:
        assert torch.equal(result[name], expected[name]), name


def test_dense_fedavg_drops_nan_reply(task_identity) -> None:
    template = make_template()
    states = client_states(template, None)
    nodes = {**NODES, 104: 3}
    strategy = DenseFedAvg(template, nodes, "fedavg", seed=0, num_rounds=2)
    instructions = start_round(strategy, 1, template)
    bad_state = {k: v.clone() for k, v in template.items()}
    bad_state["body.0.weight"][1, 1] = float("nan")
    replies = [reply(instructions[n], states[p], None) for n, p in NODES.items()]
    arrays, _ = strategy.aggregate_train(1, replies + [reply(instructions[104], bad_state, None)])
    assert [r.partition for r in strategy.rejected] == [3]
    result = as_tensors(arrays)
    for name in template:
        expected = sum(WEIGHTS[p] * states[p][name].double() for p in WEIGHTS) / 6
        assert torch.allclose(result[name].double(), expected, atol=1e-6), name


def test_all_replies_faulty_gives_no_model(task_identity) -> None:
    template = make_template()
    strategy = MaskedFedAvg(template, dict(NODES), "gmp", seed=0, num_rounds=2)
    instructions = start_round(strategy, 1, template)
    bad_state = {k: torch.full_like(v, float("nan")) for k, v in template.items()}
    arrays, metrics = strategy.aggregate_train(1, [reply(m, bad_state, None) for m in instructions.values()])
    assert arrays is None and metrics is None
    assert sorted(r.partition for r in strategy.rejected) == [0, 1, 2]
