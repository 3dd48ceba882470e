"""Checks every reply passes before the server uses it (records present, metrics sane).

A failed check raises ``RejectedReply`` with a one-line reason; the strategy then
records the rejection and leaves the reply out of aggregation, records and summary.
"""

from __future__ import annotations

import math

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedprune import wire


class RejectedReply(ValueError):
    """A reply the server will not use; the message is the reason."""


def _record(message: Message, name: str, kind: type) -> ArrayRecord | ConfigRecord | MetricRecord:
    content = message.content
    if name not in content:
        raise RejectedReply(f"record {name!r} missing")
    record = content[name]
    if not isinstance(record, kind):
        raise RejectedReply(f"record {name!r} is a {type(record).__name__}, expected {kind.__name__}")
    return record


def _number(metrics: MetricRecord, name: str) -> float:
    if name not in metrics:
        raise RejectedReply(f"metric {name!r} missing")
    value = metrics[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RejectedReply(f"metric {name!r} is not a number: {value!r}")
    if not math.isfinite(value):
        raise RejectedReply(f"metric {name!r} is not finite: {value!r}")
    return float(value)


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise RejectedReply(f"metric {name!r} = {value} is outside [{low:g}, {high:g}]")


def _check_common(message: Message, partition: int, names: tuple[str, ...]) -> dict[str, float]:
    """The metrics ``names`` of a reply from ``partition``: present, finite, sane."""
    if message.has_error():
        raise RejectedReply(f"client error: {message.error.reason}")
    metrics = _record(message, "metrics", MetricRecord)
    assert isinstance(metrics, MetricRecord)
    values = {name: _number(metrics, name) for name in names}
    if values["partition-id"] != partition:
        raise RejectedReply(f"metric 'partition-id' = {values['partition-id']:g}, but the node holds {partition}")
    if values["num-examples"] <= 0:
        raise RejectedReply(f"metric 'num-examples' = {values['num-examples']:g} must be positive")
    _in_range("sparsity", values["sparsity"], 0.0, 1.0)
    return values


def check_train_reply(message: Message, partition: int, server_round: int) -> dict[str, float]:
    """The train metrics of a reply from ``partition`` to round ``server_round``.

    Requires the ``arrays``, ``metrics`` and ``wire`` records and every metric of
    ``wire.TRAIN_METRICS`` (finite numbers; sparsity in [0, 1]; budget-met -1, 0 or 1;
    the partition the node holds; the round it was asked for).
    """
    values = _check_common(message, partition, wire.TRAIN_METRICS)
    _record(message, "arrays", ArrayRecord)
    if values["budget-met"] not in (-1.0, 0.0, 1.0):
        raise RejectedReply(f"metric 'budget-met' = {values['budget-met']:g}; allowed: -1, 0, 1")
    if values["compute-seconds"] < 0:
        raise RejectedReply(f"metric 'compute-seconds' = {values['compute-seconds']:g} is negative")
    info = _record(message, "wire", ConfigRecord)
    for key in ("mask-digest", "server-round"):
        if key not in info:
            raise RejectedReply(f"wire record: {key!r} missing")
    replied = wire.int_of(info, "server-round")
    if replied != server_round:
        raise RejectedReply(f"reply to round {replied}, expected {server_round}")
    return values


def check_evaluate_reply(message: Message, partition: int) -> dict[str, float]:
    """The evaluate metrics of a reply from ``partition``: every metric of
    ``wire.EVALUATE_METRICS``, accuracy in [0, 1]."""
    values = _check_common(message, partition, wire.EVALUATE_METRICS)
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
