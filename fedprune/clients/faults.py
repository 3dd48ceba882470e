"""How a client misbehaves when its message names a fault (``config["fault"]``; see
``fedprune.faults``): crash, hang, straggle, or a corrupted reply."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, RecordDict

from fedprune import wire
from fedprune.config import ExperimentConfig

#: a hanging client answers this long after the round's timeout
HANG_MARGIN_S = 2.0


class InjectedFault(RuntimeError):
    """The ``crash`` fault: the ClientApp raises this instead of replying."""


def before_reply(kind: str, cfg: ExperimentConfig) -> None:
    """Crash, hang past the round's timeout or straggle, as ``kind`` says (others: nothing).

    A hanging client gives up (raises) once it wakes: the server stopped waiting for it long
    ago, and in the simulation a late reply would write its stale ``Context.state`` over the
    state of the client's later rounds (Flower runs a node's messages concurrently)."""
    if kind == "crash":
        raise InjectedFault("injected fault: crash")
    if kind == "hang":
        time.sleep(cfg.round_timeout + HANG_MARGIN_S)
        raise InjectedFault("injected fault: hang (woke after the round's timeout)")
    if kind == "straggle":
        time.sleep(cfg.straggle_seconds)


def corrupt(content: RecordDict, kind: str) -> None:
    """Corrupt a train reply's records in place as ``kind`` says (a reply without arrays keeps
    its arrays as they are)."""
    arrays = content.array_records["arrays"]
    values = [key for key in arrays if not (key.endswith(wire.BITMAP_SUFFIX) or key.startswith(wire.UNITS_PREFIX))
              and arrays[key].numpy().size > 0]
    if kind == "absurd-examples":
        content.metric_records["metrics"]["num-examples"] = 1e30
    elif kind == "nan" and values:
        first = arrays[values[0]].numpy().astype(np.float32)
        first.reshape(-1)[0] = np.nan
        arrays[values[0]] = Array(first)
    elif kind in ("huge", "overflow"):
        value, dtype = (3e38, np.float32) if kind == "huge" else (1e300, np.float64)
        for key in values:
            arrays[key] = Array(np.full(arrays[key].numpy().shape, value, dtype=dtype))
    elif kind == "wrong-shape" and values:
        arrays[values[0]] = Array(arrays[values[0]].numpy().reshape(-1)[:-1].copy())
    elif kind == "truncated-mask":
        masks = [key for key in arrays if key.endswith(wire.BITMAP_SUFFIX) or key.startswith(wire.UNITS_PREFIX)]
        if masks:
            arrays[masks[0]] = Array(arrays[masks[0]].numpy()[:-1].copy())
        elif values:  # no mask travels this round: send one, cut short
            size = arrays[values[0]].numpy().size
            arrays[values[0] + wire.BITMAP_SUFFIX] = Array(np.packbits(np.ones(size, dtype=bool))[:-1].copy())
