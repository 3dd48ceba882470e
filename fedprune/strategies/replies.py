"""Checks every reply passes before the server uses it (records present, metrics sane,
values within bounds).

A failed check raises ``RejectedReply`` with a one-line reason and a ``code`` (the
summary counts rejections by code); the strategy then records the rejection and leaves
the reply out of aggregation, records and summary.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedprune import wire
from fedprune.pruning.masks import Masks

#: why a reply was rejected (``RejectedReply.code``; ``wire.PayloadError`` adds malformed, non-finite)
CODES = ("client-error", "no-reply", "missing", "bad-metric", "malformed", "non-finite", "out-of-bounds")


class RejectedReply(ValueError):
    """A reply the server will not use; the message is the reason, ``code`` one of ``CODES``."""

    def __init__(self, message: str, code: str = "bad-metric") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Safeguards:
    """What the server accepts from a reply, and when a round has failed.

    ``max_examples``: per partition, the most examples a reply may claim (absent: unchecked);
    ``max_abs_value`` and ``max_update_ratio`` bound the values (0: unchecked);
    ``min_reply_fraction`` of the sampled clients must be accepted for a round to count, and
    ``max_failed_rounds`` failed rounds in a row stop the run (0: never).
    """

    max_examples: Mapping[int, int] = field(default_factory=dict)
    max_abs_value: float = 0.0
    max_update_ratio: float = 0.0
    min_reply_fraction: float = 0.0
    max_failed_rounds: int = 0


def code_of(error: Exception) -> str:
    """The rejection code of an exception raised while checking or decoding a reply."""
    return str(getattr(error, "code", "malformed"))


_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Fault|Interrupt)):\s*(.+)$")
_WRAPPERS = ("ClientAppException", "RayTaskError", "RayActorError")


def error_summary(reason: str) -> str:
    """One line from a client error's text (often a whole Ray traceback): the innermost
    ``Type: message`` line that is not a Flower or Ray wrapper, else its first line."""
    lines = [line.strip() for line in (reason or "").replace("\\n", "\n").splitlines() if line.strip()]
    for line in lines:
        match = _ERROR_LINE.match(line)
        if match and not any(wrapper in match.group(1) for wrapper in _WRAPPERS):
            return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}"[:300]
    return (lines[0] if lines else "unknown error")[:300]


def _record(message: Message, name: str, kind: type) -> ArrayRecord | ConfigRecord | MetricRecord:
    content = message.content
    if name not in content:
        raise RejectedReply(f"record {name!r} missing", "missing")
    record = content[name]
    if not isinstance(record, kind):
        raise RejectedReply(f"record {name!r} is a {type(record).__name__}, expected {kind.__name__}", "missing")
    return record


def _number(metrics: MetricRecord, name: str) -> float:
    if name not in metrics:
        raise RejectedReply(f"metric {name!r} missing", "missing")
    value = metrics[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RejectedReply(f"metric {name!r} is not a number: {value!r}")
    if not math.isfinite(value):
        raise RejectedReply(f"metric {name!r} is not finite: {value!r}")
    return float(value)


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise RejectedReply(f"metric {name!r} = {value} is outside [{low:g}, {high:g}]")


def _check_common(message: Message, partition: int, names: tuple[str, ...],
                  optional: tuple[str, ...] = ()) -> dict[str, float]:
    """The metrics ``names`` (and those of ``optional`` present, all accuracies in [0, 1]) of a
    reply from ``partition``: present, finite, sane."""
    if message.has_error():
        raise RejectedReply(f"client error: {error_summary(message.error.reason or '')}", "client-error")
    metrics = _record(message, "metrics", MetricRecord)
    assert isinstance(metrics, MetricRecord)
    values = {name: _number(metrics, name) for name in (*names, *(o for o in optional if o in metrics))}
    for name in optional:
        if name in values:
            _in_range(name, values[name], 0.0, 1.0)
    if values["partition-id"] != partition:
        raise RejectedReply(f"metric 'partition-id' = {values['partition-id']:g}, but the node holds {partition}")
    if values["num-examples"] <= 0:
        raise RejectedReply(f"metric 'num-examples' = {values['num-examples']:g} must be positive")
    _in_range("sparsity", values["sparsity"], 0.0, 1.0)
    return values


def check_train_reply(message: Message, partition: int, server_round: int,
                      max_examples: int | None = None) -> dict[str, float]:
    """The train metrics of a reply from ``partition`` to round ``server_round``.

    Requires the ``arrays``, ``metrics`` and ``wire`` records and every metric of
    ``wire.TRAIN_METRICS`` (finite numbers; sparsity in [0, 1]; budget-met -1, 0 or 1;
    the partition the node holds; the round it was asked for; at most ``max_examples``
    examples).
    """
    values = _check_common(message, partition, wire.TRAIN_METRICS,
                           (wire.TRAINED_ACCURACY, wire.TRAINED_VAL_ACCURACY))
    if values["sgd-steps"] < 0:
        raise RejectedReply(f"metric 'sgd-steps' = {values['sgd-steps']:g} is negative")
    if max_examples is not None and values["num-examples"] > max_examples:
        raise RejectedReply(f"metric 'num-examples' = {values['num-examples']:g}, but the client holds "
                            f"{max_examples}")
    _record(message, "arrays", ArrayRecord)
    if values["budget-met"] not in (-1.0, 0.0, 1.0):
        raise RejectedReply(f"metric 'budget-met' = {values['budget-met']:g}; allowed: -1, 0, 1")
    if values["compute-seconds"] < 0:
        raise RejectedReply(f"metric 'compute-seconds' = {values['compute-seconds']:g} is negative")
    info = _record(message, "wire", ConfigRecord)
    for key in ("mask-digest", "server-round"):
        if key not in info:
            raise RejectedReply(f"wire record: {key!r} missing", "missing")
    replied = wire.int_of(info, "server-round")
    if replied != server_round:
        raise RejectedReply(f"reply to round {replied}, expected {server_round}")
    return values


def check_evaluate_reply(message: Message, partition: int) -> dict[str, float]:
    """The evaluate metrics of a reply from ``partition``: every metric of
    ``wire.EVALUATE_METRICS``, accuracy in [0, 1]."""
    values = _check_common(message, partition, wire.EVALUATE_METRICS, (wire.VAL_ACCURACY,))
    _in_range("accuracy", values["accuracy"], 0.0, 1.0)
    return values


def arrays_of(message: Message) -> ArrayRecord:
    """The reply's ``arrays`` record (``RejectedReply`` if absent)."""
    record = _record(message, "arrays", ArrayRecord)
    assert isinstance(record, ArrayRecord)
    return record


def wire_of(message: Message) -> ConfigRecord:
    """The reply's ``wire`` record (``RejectedReply`` if absent)."""
    record = _record(message, "wire", ConfigRecord)
    assert isinstance(record, ConfigRecord)
    return record


def check_values(state: Mapping[str, torch.Tensor], sent: Masks, global_state: Mapping[str, torch.Tensor],
                 max_abs_value: float, max_update_ratio: float) -> None:
    """Raise ``RejectedReply`` (``out-of-bounds``) if a value the client sent exceeds
    ``max_abs_value`` in magnitude, or its update norm exceeds ``max_update_ratio`` times the
    global model's norm over the same entries (a bound of 0 is not checked)."""
    update, reference = 0.0, 0.0
    for name, value in state.items():
        if not value.is_floating_point():
            continue
        kept = sent.get(name)
        values = value if kept is None else value[kept]
        if values.numel() == 0:
            continue
        largest = float(values.abs().max())
        if max_abs_value and largest > max_abs_value:
            raise RejectedReply(f"tensor {name!r} holds {largest:.3g}, above max_abs_value {max_abs_value:g}",
                                "out-of-bounds")
        old = global_state[name] if kept is None else global_state[name][kept]
        update += float((values.double() - old.double()).pow(2).sum())
        reference += float(old.double().pow(2).sum())
    if max_update_ratio and math.sqrt(update) > max_update_ratio * math.sqrt(reference):
        raise RejectedReply(f"update norm {math.sqrt(update):.3g} exceeds max_update_ratio {max_update_ratio:g} "
                            f"x the global norm {math.sqrt(reference):.3g}", "out-of-bounds")
