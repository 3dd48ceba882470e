"""Stopping a run on request (Ctrl-C): a flag the CLI sets and the server checks between
and during exchanges, so the run ends within a second or two, not at the end of a round."""

from __future__ import annotations

import threading

_STOP = threading.Event()


class Interrupted(RuntimeError):
    """The run was asked to stop; the server marks its folder ``interrupted``."""


def request_stop() -> None:
    """Ask the running experiment to stop at its next check (safe from a signal handler)."""
    _STOP.set()


def stop_requested() -> bool:
    """Whether a stop was requested and not yet cleared."""
    return _STOP.is_set()


def clear() -> None:
    """Forget an earlier request (a new run starts)."""
    _STOP.clear()


def check() -> None:
    """Raise ``Interrupted`` if a stop was requested."""
    if _STOP.is_set():
        raise Interrupted("interrupted on request")
