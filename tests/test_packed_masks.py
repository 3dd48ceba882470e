"""Bit-packed masks: the round trip, in client state and in the strategy's records, and their size."""

from __future__ import annotations

import torch
from flwr.app import RecordDict

from fedprune.clients.state import BITS, ClientMemory
from fedprune.pruning.masks import PackedMaskStore, pack_masks, packed_bytes, unpack_masks


def _masks(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.rand(128, 64, generator=g) > 0.8, "b.weight": torch.rand(10, 13, generator=g) > 0.5,
            "units": torch.tensor([True, False, True])}


def test_pack_round_trip_and_size() -> None:
    masks = _masks()
    packed = pack_masks(masks)
    back = unpack_masks(packed)
    assert set(back) == set(masks)
    for name, mask in masks.items():
        assert back[name].dtype == torch.bool and torch.equal(back[name], mask)
    # 8192 entries -> 1024 bytes, 130 -> 17 (ceil(130 / 8)), 3 -> 1
    assert packed_bytes(packed) == 1024 + 17 + 1


def test_client_state_keeps_masks_packed() -> None:
    state = RecordDict()
    memory = ClientMemory(state, "gmp")
    assert memory.mask() is None and memory.units() is None
    masks = _masks(1)
    memory.save_mask(masks)
    memory.save_units({"body.0": torch.tensor([True, False, False, True, True])})
    again = ClientMemory(state, "gmp").mask()
    assert again is not None and all(torch.equal(again[k], v) for k, v in masks.items())
    units = ClientMemory(state, "gmp").units()
    assert units is not None and units["body.0"].tolist() == [True, False, False, True, True]
    record = state.array_records["gmp.personal-mask"]
    stored = sum(record[k].numpy().nbytes for k in record if k.endswith(BITS))
    assert stored == 1024 + 17 + 1  # 1 bit per entry, not the 8322 bytes of bool tensors
    assert ClientMemory(state, "mi").mask() is None  # per method


def test_strategy_store_acts_like_a_dict_of_masks() -> None:
    store = PackedMaskStore()
    assert not store and store.get(3) is None
    store[3] = _masks(2)
    store[1] = _masks(3)
    assert sorted(store) == [1, 3] and len(store) == 2 and 3 in store
    assert all(torch.equal(store[3][k], v) for k, v in _masks(2).items())
    assert store.nbytes() == 2 * (1024 + 17 + 1)
    copy = store[3]
    copy["a.weight"][:] = False  # reading gives a copy; the stored mask is unchanged
    assert torch.equal(store[3]["a.weight"], _masks(2)["a.weight"])
    del store[1]
    assert list(store) == [3]
