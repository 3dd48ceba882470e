"""The wire format shared by clients and strategies: model tensors <-> Flower records.

A model travels as one ``ArrayRecord``. ``dense``: one array per parameter.
``masked``: for each masked parameter only the values of its kept entries
(1-D, row-major order), optionally followed by ``NAME::bitmap`` (the mask packed
1 bit per entry); unmasked parameters (biases) travel dense. A mask digest
(CRC-32 of the packed masks) tells the receiver which mask the values follow,
so a mask crosses the wire only when it changed.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message

from fedprune.pruning.masks import Masks, decode_bitmap, encode_bitmap

BITMAP_SUFFIX = "::bitmap"
UNITS_PREFIX = "units::"

# Records of a message: "arrays" (ArrayRecord), "config" (ConfigRecord, server -> client),
# "metrics" (MetricRecord, client -> server) and "wire" (ConfigRecord, train replies).
#: the metrics every train reply carries
TRAIN_METRICS = ("num-examples", "train-loss", "compute-seconds", "sparsity", "partition-id", "budget-met",
                 "sgd-steps")
#: the metrics every evaluate reply carries
EVALUATE_METRICS = ("num-examples", "accuracy", "sparsity", "partition-id")
#: accuracies a reply carries only when measured: after local training (train replies of
#: evaluation rounds, ``config["measure"]``) and on the validation part (when a client has one)
TRAINED_ACCURACY, TRAINED_VAL_ACCURACY, VAL_ACCURACY = "trained-accuracy", "trained-val-accuracy", "val-accuracy"


class PayloadError(ValueError):
    """Arrays in a message that cannot be used; ``code`` says why: ``malformed`` (a missing
    tensor, a wrong size or shape, a bitmap that does not fit) or ``non-finite``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def mask_digest(masks: Masks | None) -> int:
    """CRC-32 over the packed masks in name order; 0 means "no mask" (all dense)."""
    if not masks:
        return 0
    crc = 0
    for name in sorted(masks):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(encode_bitmap(masks[name]).tobytes(), crc)
    return crc or 1


def pack(state: Mapping[str, torch.Tensor], masks: Masks | None, bitmaps: Masks | None = None,
         units: Masks | None = None) -> ArrayRecord:
    """Encode ``state``: kept values of tensors in ``masks``, dense otherwise, plus ``bitmaps``.

    ``units`` (structured methods) sends unit masks, 1 bit per unit, as ``units::GROUP``
    instead of entry bitmaps; the receiver expands them through the model's structure.

    A tensor whose mask keeps nothing is left out entirely (a personal tensor never
    appears in a message).
    """
    masks = masks or {}
    record = ArrayRecord()
    for name, tensor in state.items():
        values = tensor.detach().cpu()
        if name not in masks:
            record[name] = Array.from_torch_tensor(values)
        elif bool(masks[name].any()):
            record[name] = Array(values[masks[name]].numpy())
    for name, mask in (bitmaps or {}).items():
        record[name + BITMAP_SUFFIX] = Array(encode_bitmap(mask))
    for group, mask in (units or {}).items():
        record[UNITS_PREFIX + group] = Array(encode_bitmap(mask))
    return record


def values_only(record: ArrayRecord) -> ArrayRecord:
    """``record`` without its bitmap and unit-mask entries."""
    return ArrayRecord({k: v for k, v in record.items()
                        if not (k.endswith(BITMAP_SUFFIX) or k.startswith(UNITS_PREFIX))})


def units_in(record: ArrayRecord, sizes: Mapping[str, int]) -> Masks:
    """The unit masks carried in ``record`` (group sizes from ``sizes``)."""
    units = {}
    for key in record:
        if key.startswith(UNITS_PREFIX):
            group = key[len(UNITS_PREFIX):]
            if group not in sizes:
                raise PayloadError("malformed", f"unit mask for unknown group {group!r}")
            units[group] = _decode(record, key, (sizes[group],))
    return units


def bitmaps_in(record: ArrayRecord, template: Mapping[str, torch.Tensor]) -> Masks:
    """The masks carried as bitmaps in ``record`` (shapes taken from ``template``)."""
    masks = {}
    for key in record:
        if key.endswith(BITMAP_SUFFIX):
            name = key[: -len(BITMAP_SUFFIX)]
            if name not in template:
                raise PayloadError("malformed", f"bitmap for unknown tensor {name!r}")
            masks[name] = _decode(record, key, tuple(template[name].shape))
    return masks


def _decode(record: ArrayRecord, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    try:
        return decode_bitmap(record[key].numpy(), shape)
    except ValueError as error:
        raise PayloadError("malformed", f"{key}: {error}") from None


def unpack(
    record: ArrayRecord, template: Mapping[str, torch.Tensor], masks: Masks | None
) -> dict[str, torch.Tensor]:
    """Decode ``record`` into full-size tensors shaped like ``template``.

    Masked tensors are scattered into zeros at the kept entries of ``masks``. Values are
    cast to the template's dtype first and checked finite after the cast (a float64 1e300
    becomes inf in float32). Raises ``PayloadError`` on a missing tensor, a wrong size or
    a non-finite value, so that a faulty message never reaches a model.
    """
    masks = masks or {}
    state = {}
    for name, like in template.items():
        if name in masks and not bool(masks[name].any()):
            state[name] = torch.zeros_like(like)
            continue
        if name not in record:
            raise PayloadError("malformed", f"tensor {name!r} missing from message")
        try:
            values = torch.from_numpy(np.asarray(record[name].numpy()).copy()).to(like.dtype)
        except (TypeError, ValueError) as error:
            raise PayloadError("malformed", f"tensor {name!r}: {error}") from None
        if name in masks:
            if values.numel() != int(masks[name].sum()):
                raise PayloadError("malformed", f"tensor {name!r}: {values.numel()} values for "
                                                f"{int(masks[name].sum())} kept entries")
            full = torch.zeros_like(like)
            full[masks[name]] = values.reshape(-1)
            values = full
        elif tuple(values.shape) != tuple(like.shape):
            raise PayloadError("malformed", f"tensor {name!r}: shape {tuple(values.shape)}, "
                                            f"expected {tuple(like.shape)}")
        if values.is_floating_point() and not bool(torch.isfinite(values).all()):
            raise PayloadError("non-finite", f"tensor {name!r} holds non-finite values (after the cast to "
                                             f"{str(like.dtype).removeprefix('torch.')})")
        state[name] = values
    return state


def int_of(record: Mapping[str, Any], key: str) -> int:
    """``record[key]`` (a ConfigRecord, MetricRecord or node-config value) as an int;
    ``KeyError`` if absent, ``ValueError`` if it is not a number."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} is not a number: {value!r}")
    return int(value)


def message_bytes(message: Message) -> int:
    """Serialized payload size of ``message``: every record's ``count_bytes()``.

    An error reply carries no records and counts 0: it is not model traffic (its reason
    is recorded with the rejection).
    """
    if message.has_error():
        return 0
    return sum(record.count_bytes() for record in message.content.values())
