"""Wire format: pack/unpack round trips, mask digests, fault detection, byte counting."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from fedprune import wire
from fedprune.models import MLP
from fedprune.pruning import encode_bitmap


def model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in MLP(6, 3, [5]).state_dict().items()}


def random_masks(state: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(state[name].shape, generator=generator) < 0.5
            for name in ("body.0.weight", "head.weight")}


def test_dense_round_trip_is_exact() -> None:
    state = model_state()
    record = wire.pack(state, None)
    assert set(record) == set(state)
    for name, tensor in state.items():
        assert tuple(record[name].shape) == tuple(tensor.shape)
    back = wire.unpack(record, state, None)
    assert set(back) == set(state)
    for name in state:
        assert back[name].dtype == state[name].dtype
        assert torch.equal(back[name], state[name])


def test_masked_pack_sends_kept_values_in_row_major_order() -> None:
    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4) + 1, "b": torch.tensor([7.0, 8.0])}
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    record = wire.pack(state, {"w": mask})
    # kept entries of [[1 2 3 4] [5 6 7 8] [9 10 11 12]] in row-major order
    assert record["w"].numpy().tolist() == [1.0, 4.0, 6.0, 7.0, 12.0]
    assert record["b"].numpy().tolist() == [7.0, 8.0]  # unmasked tensors travel dense
    assert not any(k.endswith(wire.BITMAP_SUFFIX) for k in record)
    back = wire.unpack(record, state, {"w": mask})
    assert back["w"].tolist() == [[1, 0, 0, 4], [0, 6, 7, 0], [0, 0, 0, 12]]
    assert torch.equal(back["b"], state["b"])


def test_masked_round_trip_random_model() -> None:
    state = model_state()
    masks = random_masks(state)
    record = wire.pack(state, masks, masks)
    for name, mask in masks.items():
        assert record[name].numpy().size == int(mask.sum())
        assert np.array_equal(record[name + wire.BITMAP_SUFFIX].numpy(), encode_bitmap(mask))
    # the receiver learns the masks from the bitmaps
    carried = wire.bitmaps_in(record, state)
    assert set(carried) == set(masks)
    for name in masks:
        assert torch.equal(carried[name], masks[name])
    values = wire.values_only(record)
    assert set(values) == set(state)
    back = wire.unpack(values, state, carried)
    for name, tensor in state.items():
        if name in masks:
            assert bool((back[name][~masks[name]] == 0).all())
            assert torch.equal(back[name][masks[name]], tensor[masks[name]])
        else:
            assert torch.equal(back[name], tensor)


def test_masked_payload_is_smaller_than_dense() -> None:
    state = model_state()
    masks = random_masks(state)
    assert wire.pack(state, masks).count_bytes() < wire.pack(state, None).count_bytes()


def test_mask_digest_changes_when_a_bit_flips() -> None:
    state = model_state()
    masks = random_masks(state)
    digest = wire.mask_digest(masks)
    assert digest != 0
    same = {k: v.clone() for k, v in masks.items()}
    assert wire.mask_digest(same) == digest
    for name in masks:
        for index in [(0, 0), (masks[name].shape[0] - 1, masks[name].shape[1] - 1)]:
            flipped = {k: v.clone() for k, v in masks.items()}
            flipped[name][index] = ~flipped[name][index]
            assert wire.mask_digest(flipped) != digest, (name, index)
    assert wire.mask_digest(None) == 0
    assert wire.mask_digest({}) == 0


def test_mask_digest_changes_when_kept_entries_move() -> None:
    # same kept count, different entries: swap one kept and one pruned bit
    masks = {"w": torch.tensor([[True, False, True], [False, False, True]])}
    moved = {"w": torch.tensor([[False, True, True], [False, False, True]])}
    assert int(masks["w"].sum()) == int(moved["w"].sum())
    assert wire.mask_digest(moved) != wire.mask_digest(masks)
    # the same bits under another tensor name are another mask
    assert wire.mask_digest({"v": masks["w"]}) != wire.mask_digest(masks)


def test_unpack_rejects_nan_dense_and_masked() -> None:
    state = model_state()
    bad = dict(state)
    bad["head.bias"] = state["head.bias"].clone()
    bad["head.bias"][1] = float("nan")
    with pytest.raises(ValueError):
        wire.unpack(wire.pack(bad, None), state, None)
    masks = random_masks(state)
    bad = dict(state)
    bad["head.weight"] = torch.full_like(state["head.weight"], float("nan"))
    with pytest.raises(ValueError):
        wire.unpack(wire.pack(bad, masks), state, masks)
    bad["head.weight"] = torch.full_like(state["head.weight"], float("inf"))
    with pytest.raises(ValueError):
        wire.unpack(wire.pack(bad, masks), state, masks)


def test_unpack_rejects_wrong_shape() -> None:
    state = model_state()
    record = wire.pack(state, None)
    record["head.weight"] = Array(np.zeros((5, 3), dtype=np.float32))  # transposed
    with pytest.raises(ValueError):
        wire.unpack(record, state, None)
    record["head.weight"] = Array(np.zeros(15, dtype=np.float32))  # flat
    with pytest.raises(ValueError):
        wire.unpack(record, state, None)


def test_unpack_rejects_wrong_value_count() -> None:
    state = model_state()
    masks = random_masks(state)
    record = wire.pack(state, masks)
    kept = int(masks["head.weight"].sum())
    record["head.weight"] = Array(np.zeros(kept + 1, dtype=np.float32))
    with pytest.raises(ValueError):
        wire.unpack(record, state, masks)
    record["head.weight"] = Array(np.zeros(kept - 1, dtype=np.float32))
    with pytest.raises(ValueError):
        wire.unpack(record, state, masks)


def test_unpack_rejects_missing_tensor() -> None:
    state = model_state()
    record = wire.pack(state, None)
    del record["body.0.bias"]
    with pytest.raises(ValueError):
        wire.unpack(record, state, None)


def _npy_bytes(array: np.ndarray) -> int:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return len(buffer.getvalue())


def test_array_record_hand_count_matches_npy_size() -> None:
    arrays = {"w": np.zeros((3, 4), dtype=np.float32), "bias": np.arange(5, dtype=np.float64)}
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    # per entry: the serialized .npy bytes plus the key's length
    hand = sum(_npy_bytes(v) + len(k) for k, v in arrays.items())
    assert record.count_bytes() == hand
    # a .npy of float32 3x4 is a 128-byte header + 48 data bytes
    assert _npy_bytes(arrays["w"]) == 128 + 12 * 4


def _config_bytes(config: dict) -> int:
    total = 0
    for key, value in config.items():
        if isinstance(value, bool):
            total += 1
        elif isinstance(value, (int, float)):
            total += 8
        else:
            total += len(value)
        total += len(key)
    return total


def test_message_bytes_sums_every_record(task_identity) -> None:
    state = model_state()
    masks = random_masks(state)
    arrays = wire.pack(state, masks, masks)
    metrics = {"num-examples": 17, "train-loss": 0.25, "sparsity": 0.5}
    config = {"mask-digest": 12345, "encoding": "masked", "all-clients": True}
    request = Message(RecordDict({"config": ConfigRecord({"method": "gmp"})}), dst_node_id=9,
                      message_type=MessageType.TRAIN)
    reply = Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics),
                                "wire": ConfigRecord(config)}), reply_to=request)
    # independently: the records' own count_bytes ...
    by_records = arrays.count_bytes() + MetricRecord(metrics).count_bytes() + ConfigRecord(config).count_bytes()
    assert wire.message_bytes(reply) == by_records
    # ... and a hand count: .npy size + key per array, 8 bytes + key per metric,
    # 8 per number / 1 per bool / length per string + key per config entry
    hand_arrays = sum(_npy_bytes(arrays[k].numpy()) + len(k) for k in arrays)
    hand_metrics = sum(8 + len(k) for k in metrics)
    assert wire.message_bytes(reply) == hand_arrays + hand_metrics + _config_bytes(config)
    assert _config_bytes({"method": "gmp"}) == 3 + 6
    assert wire.message_bytes(request) == 9


def test_message_bytes_of_simple_array_message(task_identity) -> None:
    values = np.linspace(0, 1, 10, dtype=np.float32)
    message = Message(RecordDict({"arrays": ArrayRecord({"abc": Array(values)})}), dst_node_id=3,
                      message_type=MessageType.TRAIN)
    assert wire.message_bytes(message) == _npy_bytes(values) + 3
    assert wire.message_bytes(message) == 128 + 40 + 3


def test_an_error_reply_is_not_model_traffic(task_identity) -> None:
    request = Message(RecordDict(), dst_node_id=3, message_type=MessageType.TRAIN)
    reply = Message(Error(code=0, reason="boom!"), reply_to=request)
    assert wire.message_bytes(reply) == 0
