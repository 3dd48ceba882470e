"""Structured methods (mi, l1-structured, random-structured) through the handlers, no Ray.

The MLP is 64 -> 32 -> 16 -> 10. With k0 of the 32 and k1 of the 16 hidden units kept,
the kept entries are, by hand:

    body.0.weight k0 * 64, body.0.bias k0, body.2.weight k1 * k0, body.2.bias k1,
    head.weight 10 * k1, head.bias 10 (the head's own rows are not prunable)

and the parameter sparsity is 1 - (64 k0 + k0 k1 + 10 k1) / (2048 + 512 + 160).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedprune import wire
from fedprune.clients import local_round
from fedprune.clients.state import ClientMemory
from fedprune.config import make_config
from fedprune.data.federation import clients_data
from fedprune.models.factory import new_model
from fedprune.models.structure import expand_unit_mask, unit_groups
from fedprune.pruning.structured import unit_sparsity
from fedprune.pruning.units import StructuredPruner
from fedprune.strategies import MaskedFedAvg
from helpers import InProcessGrid, new_strategy

NODES = {21: 0, 22: 1}
CFG = dict(num_clients=2, mlp_widths=[32, 16], partitioner="iid", local_epochs=1, structured_schedule="once",
           prune_start_round=1, prune_end_round=1, final_sparsity=0.5)
WEIGHTS_TOTAL = 64 * 32 + 32 * 16 + 16 * 10


def kept_by_hand(units: dict[str, torch.Tensor]) -> dict[str, int]:
    k0, k1 = int(units["body.0"].sum()), int(units["body.2"].sum())
    return {"body.0.weight": k0 * 64, "body.0.bias": k0, "body.2.weight": k1 * k0, "body.2.bias": k1,
            "head.weight": 10 * k1, "head.bias": 10}


def sparsity_by_hand(units: dict[str, torch.Tensor]) -> float:
    k0, k1 = int(units["body.0"].sum()), int(units["body.2"].sum())
    return 1.0 - (64 * k0 + k0 * k1 + 10 * k1) / WEIGHTS_TOTAL


def masks_by_hand(units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    u0, u1 = units["body.0"], units["body.2"]
    return {"body.0.weight": u0[:, None].expand(32, 64), "body.0.bias": u0,
            "body.2.weight": u1[:, None] & u0[None, :], "body.2.bias": u1,
            "head.weight": u1[None, :].expand(10, 16)}


def as_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v.numpy()).copy()) for k, v in record.items()}


def value_counts(record: ArrayRecord) -> dict[str, int]:
    return {k: int(v.numpy().size) for k, v in wire.values_only(record).items()}


class Federation:
    """One method's strategy and two in-process clients (``InProcessGrid``)."""

    def __init__(self, cfg, method: str) -> None:
        self.cfg = cfg
        self.method = method
        self.strategy, self.template = new_strategy(cfg, method, NODES)
        self.grid = InProcessGrid(cfg, dict(NODES))
        self.arrays = ArrayRecord(self.template)

    def memory(self, node: int) -> ClientMemory:
        return ClientMemory(self.grid.contexts[node].state, self.method)

    def train(self, server_round: int):
        messages = list(self.strategy.configure_train(server_round, self.arrays, ConfigRecord(), self.grid))
        replies = self.grid.send_and_receive(messages, timeout=60)
        assert not any(r.has_error() for r in replies)
        arrays, _ = self.strategy.aggregate_train(server_round, replies)
        assert self.strategy.rejected == []
        self.arrays = arrays
        return messages, replies


@pytest.fixture(scope="module")
def cfg():
    return make_config(CFG)


@pytest.fixture(scope="module")
def mi_rounds(cfg):
    """Two mi rounds; shared by the tests below (handlers are deterministic)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 0, 1, 0
    try:
        fed = Federation(cfg, "mi")
        first = fed.train(1)
        units_after_1 = {n: fed.memory(n).units() for n in NODES}
        arrays_after_1 = fed.arrays
        trained_sizes: list[int] = []
        original = local_round.train_epochs

        def spy(model, *args, **kwargs):
            trained_sizes.append(sum(p.numel() for p in model.parameters()))
            return original(model, *args, **kwargs)

        local_round.train_epochs = spy
        try:
            second = fed.train(2)
        finally:
            local_round.train_epochs = original
        yield dict(fed=fed, first=first, second=second, units=units_after_1, arrays1=arrays_after_1,
                   trained_sizes=trained_sizes)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def test_mi_first_reply_carries_units_and_only_kept_values(mi_rounds) -> None:
    fed = mi_rounds["fed"]
    assert isinstance(fed.strategy, MaskedFedAvg)
    messages, replies = mi_rounds["first"]
    assert all(m.content["config"]["encoding"] == "dense" for m in messages)
    for reply in replies:
        partition = int(reply.content["metrics"]["partition-id"])
        node = {p: n for n, p in NODES.items()}[partition]
        arrays = reply.content["arrays"]
        keys = list(arrays)
        assert sorted(k for k in keys if k.startswith(wire.UNITS_PREFIX)) == ["units::body.0", "units::body.2"]
        assert not any(k.endswith(wire.BITMAP_SUFFIX) for k in keys)
        # unit masks travel 1 bit per unit: 32 units -> 4 bytes, 16 -> 2
        assert arrays["units::body.0"].numpy().size == 4 and arrays["units::body.2"].numpy().size == 2

        units = fed.memory(node).units()
        assert units is not None and set(units) == {"body.0", "body.2"}
        assert units["body.0"].shape == (32,) and units["body.2"].shape == (16,)
        assert 0 < int(units["body.0"].sum()) < 32 and 0 < int(units["body.2"].sum()) < 16
        assert value_counts(arrays) == kept_by_hand(units)
        # the wire's unit masks decode to the client's units
        decoded = wire.units_in(arrays, {"body.0": 32, "body.2": 16})
        assert all(torch.equal(decoded[g], units[g]) for g in units)
        # the client's entry mask is the hand expansion of its units
        stored = fed.memory(node).mask()
        hand = masks_by_hand(units)
        assert set(stored) == set(hand)
        assert all(torch.equal(stored[k], hand[k]) for k in hand)
        assert reply.content["metrics"]["sparsity"] == pytest.approx(sparsity_by_hand(units))
        assert abs(sparsity_by_hand(units) - 0.5) < 0.05
        assert reply.content["wire"]["mask-digest"] == wire.mask_digest(hand)


def test_mi_server_decodes_units(mi_rounds) -> None:
    fed = mi_rounds["fed"]
    for node, partition in NODES.items():
        units = mi_rounds["units"][node]
        server_units = fed.strategy.client_units[partition]
        assert set(server_units) == set(units)
        assert all(torch.equal(server_units[g], units[g]) for g in units)
        hand = masks_by_hand(units)
        assert all(torch.equal(fed.strategy.client_masks[partition][k], hand[k]) for k in hand)


def test_mi_second_round_downlink_is_kept_slices_and_client_trains_squeezed(mi_rounds) -> None:
    fed = mi_rounds["fed"]
    messages, replies = mi_rounds["second"]
    global1 = as_tensors(mi_rounds["arrays1"])
    for message in messages:
        node = message.metadata.dst_node_id
        units = mi_rounds["units"][node]
        content = message.content
        assert content["config"]["encoding"] == "masked"
        assert content["config"]["mask-digest"] == wire.mask_digest(masks_by_hand(units))
        assert not any(k.startswith(wire.UNITS_PREFIX) or k.endswith(wire.BITMAP_SUFFIX)
                       for k in content["arrays"])
        assert value_counts(content["arrays"]) == kept_by_hand(units)
        # the values are the global model's at the client's kept entries
        for name, mask in masks_by_hand(units).items():
            assert torch.equal(as_tensors(content["arrays"])[name], global1[name][mask])
        dense = wire.pack(global1, None).count_bytes()
        assert content["arrays"].count_bytes() < 0.6 * dense
    # the squeezed models were trained: parameter count = the kept entries
    expected_sizes = sorted(sum(kept_by_hand(mi_rounds["units"][n]).values()) for n in NODES)
    assert sorted(mi_rounds["trained_sizes"]) == expected_sizes
    assert max(expected_sizes) < sum(t.numel() for t in fed.template.values())
    sent = {m.metadata.dst_node_id: as_tensors(m.content["arrays"]) for m in messages}
    for reply in replies:
        node = reply.metadata.src_node_id
        arrays = reply.content["arrays"]
        assert not any(k.startswith(wire.UNITS_PREFIX) or k.endswith(wire.BITMAP_SUFFIX) for k in arrays)
        assert value_counts(arrays) == kept_by_hand(mi_rounds["units"][node])
        values = as_tensors(arrays)
        assert not torch.equal(values["body.0.weight"], sent[node]["body.0.weight"])  # it trained
        assert reply.content["wire"]["mask-digest"] == wire.mask_digest(masks_by_hand(mi_rounds["units"][node]))
        # units unchanged (schedule "once")
        assert all(torch.equal(fed.memory(node).units()[g], mi_rounds["units"][node][g])
                   for g in ("body.0", "body.2"))


def test_mi_evaluate_equals_masked_full_model(mi_rounds, cfg, task_identity) -> None:
    fed = mi_rounds["fed"]
    messages = list(fed.strategy.configure_evaluate(2, fed.arrays, ConfigRecord(), fed.grid))
    assert len(messages) == 2
    answers = fed.grid.send_and_receive(messages, timeout=60)
    global2 = as_tensors(fed.arrays)
    for answer in answers:
        metrics = answer.content["metrics"]
        partition = int(metrics["partition-id"])
        node = {p: n for n, p in NODES.items()}[partition]
        model = new_model(cfg)
        masks = expand_unit_mask(model, unit_groups(model), fed.memory(node).units())
        state = {k: v.clone() for k, v in global2.items()}
        for name, mask in masks.items():
            state[name][~mask] = 0.0  # another client's values live there on the server
        model.load_state_dict(state)
        data = clients_data(cfg)[partition]
        with torch.no_grad():
            hits = int((model(data.test_x).argmax(1) == data.test_y).sum())
        assert metrics["accuracy"] == pytest.approx(hits / len(data.test_y), abs=1e-12)
        assert metrics["accuracy"] > 0.2  # above chance (0.1) after two short rounds
        assert metrics["sparsity"] == pytest.approx(sparsity_by_hand(fed.memory(node).units()))
    # the clients' unit sets differ, so the server holds non-zero values at entries a client
    # pruned: evaluating the unmasked global model would not be the personal model
    u = [fed.memory(n).units() for n in NODES]
    assert not all(torch.equal(u[0][g], u[1][g]) for g in u[0])
    pruned_values = [global2["body.0.weight"][~masks_by_hand(units)["body.0.weight"]] for units in u]
    assert any(bool((values != 0).any()) for values in pruned_values)


@pytest.mark.parametrize("method", ["l1-structured", "random-structured"])
def test_baseline_unit_masks_meet_target_sparsity(task_identity, cfg, method: str) -> None:
    fed = Federation(cfg, method)
    _, replies = fed.train(1)
    model = new_model(cfg)
    groups = unit_groups(model)
    for node in NODES:
        units = fed.memory(node).units()
        sparsity = unit_sparsity(model, groups, units)
        assert sparsity == pytest.approx(sparsity_by_hand(units))
        assert abs(sparsity - 0.5) <= 0.05
    for reply in replies:
        assert any(k.startswith(wire.UNITS_PREFIX) for k in reply.content["arrays"])


def test_l1_selects_largest_norm_units(task_identity, cfg, monkeypatch) -> None:
    """l1-structured keeps, per hidden layer, the units whose owned weights (their rows and the
    next layer's columns) have the largest L1 norm in the trained, not yet pruned model."""
    seen = []
    original = StructuredPruner.prune

    def spy(self, model, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original(self, model, *args, **kwargs)

    monkeypatch.setattr(StructuredPruner, "prune", spy)
    fed = Federation(cfg, "l1-structured")
    fed.train(1)
    assert len(seen) == 2
    for node, state in zip(sorted(NODES), seen):  # the grid serves the nodes in message order
        units = fed.memory(node).units()
        norms = {
            "body.0": state["body.0.weight"].abs().sum(1) + state["body.2.weight"].abs().sum(0),
            "body.2": state["body.2.weight"].abs().sum(1) + state["head.weight"].abs().sum(0),
        }
        for group, norm in norms.items():
            kept, pruned = norm[units[group]], norm[~units[group]]
            assert len(pruned) > 0
            assert float(kept.min()) >= float(pruned.max()), group


def test_random_structured_differs_between_clients(task_identity, cfg) -> None:
    fed = Federation(cfg, "random-structured")
    fed.train(1)
    u0, u1 = (fed.memory(n).units() for n in NODES)
    assert not all(torch.equal(u0[g], u1[g]) for g in u0)


def test_gradual_structured_schedule_nests_units(task_identity) -> None:
    cfg = make_config({**CFG, "structured_schedule": "gradual", "prune_start_round": 1, "prune_end_round": 3,
                       "initial_sparsity": 0.0, "final_sparsity": 0.6})
    fed = Federation(cfg, "l1-structured")
    history = []
    for server_round in (1, 2, 3):
        _, replies = fed.train(server_round)
        history.append({n: fed.memory(n).units() for n in NODES})
        carries_units = [any(k.startswith(wire.UNITS_PREFIX) for k in r.content["arrays"]) for r in replies]
        # round 1: target 0 -> still dense, nothing to send; rounds 2 and 3: new units each time
        assert carries_units == ([False, False] if server_round == 1 else [True, True])
    for node in NODES:
        assert history[0][node] is None
        second, third = history[1][node], history[2][node]
        # cubic schedule: s(2) = 0.6 + (0 - 0.6) * (1 - 1/2)^3 = 0.525, s(3) = 0.6
        assert abs(sparsity_by_hand(second) - 0.525) <= 0.05
        assert abs(sparsity_by_hand(third) - 0.6) <= 0.05
        for group in ("body.0", "body.2"):  # a pruned unit never comes back
            assert not bool((third[group] & ~second[group]).any())
        assert fed.strategy.client_units[NODES[node]]["body.0"].equal(third["body.0"])


def test_mi_refit_keeps_mi_units_and_refits_only_the_consumers(task_identity, cfg) -> None:
    """``mi-refit`` trains like ``mi`` (same seeds), so it selects the same units; only the
    layers reading pruned units (body.2, head) carry refit values, the first layer's kept
    rows (read from the input, nothing pruned) are mi's own."""
    plain, refit = Federation(cfg, "mi"), Federation(cfg, "mi-refit")
    _, plain_replies = plain.train(1)
    _, refit_replies = refit.train(1)
    for node in NODES:
        a, b = plain.memory(node).units(), refit.memory(node).units()
        assert all(torch.equal(a[g], b[g]) for g in a)
    for mine, theirs in zip(plain_replies, refit_replies):
        values, refitted = (wire.values_only(r.content["arrays"]) for r in (mine, theirs))
        for key in ("body.0.weight", "body.0.bias"):
            assert np.array_equal(values[key].numpy(), refitted[key].numpy()), key
        for key in ("body.2.weight", "head.weight"):
            assert not np.allclose(values[key].numpy(), refitted[key].numpy()), key


def test_warmup_epochs_lengthen_only_the_round_of_the_first_pruning_step(task_identity) -> None:
    """``prune_warmup_epochs = 2`` with one local epoch: the round that prunes first trains
    exactly as three local epochs do (same data order, same values sent); later rounds train one."""
    warm = Federation(make_config({**CFG, "prune_warmup_epochs": 2}), "mi")
    long = Federation(make_config({**CFG, "local_epochs": 3}), "mi")
    _, warm_replies = warm.train(1)
    _, long_replies = long.train(1)
    for node, mine, theirs in zip(NODES, warm_replies, long_replies):
        assert all(torch.equal(a, b) for a, b in zip(warm.memory(node).units().values(),
                                                      long.memory(node).units().values()))
        ours, same = (wire.values_only(r.content["arrays"]) for r in (mine, theirs))
        assert all(np.array_equal(ours[k].numpy(), same[k].numpy()) for k in ours)
    batches = [-(-len(clients_data(warm.cfg)[p].train_y) // 32) for p in NODES.values()]
    steps = [int(r.content["metrics"]["sgd-steps"]) for r in warm_replies]
    assert steps == [3 * b for b in batches]
    _, second = warm.train(2)
    assert [int(r.content["metrics"]["sgd-steps"]) for r in second] == batches


def test_warmup_waits_for_the_first_step_that_prunes(task_identity) -> None:
    """A cubic schedule from 0 at round 1: round 1's step keeps the model dense (target 0), so
    the warm-up comes in round 2, whose step makes the first mask, and never again."""
    cfg = make_config({**CFG, "structured_schedule": "gradual", "prune_start_round": 1, "prune_end_round": 3,
                       "initial_sparsity": 0.0, "final_sparsity": 0.6, "prune_warmup_epochs": 2})
    fed = Federation(cfg, "gmp")
    batches = [-(-len(clients_data(cfg)[p].train_y) // 32) for p in NODES.values()]
    epochs = []
    for server_round in (1, 2, 3):
        _, replies = fed.train(server_round)
        epochs.append([int(r.content["metrics"]["sgd-steps"]) // b for r, b in zip(replies, batches)])
    assert epochs == [[1, 1], [3, 3], [1, 1]]


def test_prune_before_training_prunes_the_received_model_then_trains_it_squeezed(task_identity) -> None:
    """``prune_before_training`` with the step at round 2: round 1 trains and sends the dense
    model; in round 2 each client prunes the model it received (the aggregate of round 1,
    before any local training), trains the squeezed model and sends only its kept values.
    The default prunes after training, so its round 2 trains the dense model."""
    schedule = {**CFG, "prune_start_round": 2, "prune_end_round": 2, "prune_warmup_epochs": 2}
    before = Federation(make_config({**schedule, "prune_before_training": True}), "mi")
    after = Federation(make_config(schedule), "mi")
    pruned, trained = [], []
    original_prune, original_train = local_round.prune_step, local_round.train_epochs

    def prune_spy(pruner, model, *args, **kwargs):
        pruned.append({k: v.clone() for k, v in model.state_dict().items()})
        return original_prune(pruner, model, *args, **kwargs)

    def train_spy(model, cfg, data, masks, epochs, *args, **kwargs):
        trained.append((sum(p.numel() for p in model.parameters()), epochs))
        return original_train(model, cfg, data, masks, epochs, *args, **kwargs)

    local_round.prune_step, local_round.train_epochs = prune_spy, train_spy
    try:
        _, first = before.train(1)
        assert not any(key.startswith(wire.UNITS_PREFIX) for r in first for key in r.content["arrays"])
        full = trained[0][0]
        # the warm-up goes to round 1, the round before the first pruning step
        assert trained == [(full, 3), (full, 3)]
        received = as_tensors(before.arrays)
        pruned.clear(), trained.clear()
        _, second = before.train(2)
        assert len(pruned) == 2
        for state in pruned:  # the model each client pruned is the one it received
            assert all(torch.equal(state[k], received[k]) for k in received)
        assert all(size < full and epochs == 1 for size, epochs in trained)
        for node, reply in zip(NODES, second):
            assert any(key.startswith(wire.UNITS_PREFIX) for key in reply.content["arrays"])
            assert value_counts(reply.content["arrays"]) == kept_by_hand(before.memory(node).units())
        trained.clear()
        after.train(1)
        after.train(2)
        assert trained == [(full, 1), (full, 1), (full, 3), (full, 3)]  # dense, then the warm-up round
    finally:
        local_round.prune_step, local_round.train_epochs = original_prune, original_train


def test_prune_before_training_gives_gmp_the_magnitude_mask_of_the_received_model(task_identity) -> None:
    """Unstructured pruning before training at round 1 prunes the initial model: each layer
    keeps exactly the half of its weights largest in |w| there (worked out here with topk),
    whatever the client then trains, and it sends only the kept values. Training starts from
    the pruned model: its first forward pass already sees the pruned weights as 0."""
    cfg = make_config({**CFG, "structured_schedule": "gradual", "prune_before_training": True})
    fed = Federation(cfg, "gmp")
    initial = as_tensors(fed.arrays)
    zeros_at_start = []
    original = local_round.train_epochs

    def spy(model, cfg, data, masks, *args, **kwargs):
        params = dict(model.named_parameters())
        zeros_at_start.append(all(not params[n][~m].any() for n, m in masks.items()))
        return original(model, cfg, data, masks, *args, **kwargs)

    local_round.train_epochs = spy
    try:
        _, replies = fed.train(1)
    finally:
        local_round.train_epochs = original
    assert zeros_at_start == [True, True]
    for node, reply in zip(NODES, replies):
        mask = fed.memory(node).mask()
        sent = value_counts(reply.content["arrays"])
        assert all(sent[name] == int(kept.sum()) for name, kept in mask.items())  # only kept values
        assert sorted(mask) == ["body.0.weight", "body.2.weight", "head.weight"]
        for name, kept in mask.items():
            magnitude = initial[name].abs().flatten()
            expected = torch.zeros_like(magnitude, dtype=torch.bool)
            expected[torch.topk(magnitude, magnitude.numel() // 2).indices] = True
            assert torch.equal(kept.flatten(), expected), name
