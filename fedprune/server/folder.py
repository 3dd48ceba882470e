"""Claiming a run folder: one run at a time writes into it.

``claim`` takes an exclusive ``fcntl.flock`` on ``RUN_DIR/run.lock`` (which holds the
owner's PID) for as long as the run lasts; the kernel releases it when the process ends,
however it ends, so a killed run never leaves a stale claim. A second run on the same
folder gets ``FolderBusy`` at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "run.lock"
#: files that say a folder already holds a run
RUN_FILES = ("config.json", "rounds.jsonl", "status.json", "checkpoint")


class FolderBusy(RuntimeError):
    """Another process holds the run folder; the message names the folder and its PID."""


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) a run."""
    return any((folder / name).exists() for name in RUN_FILES)


@contextlib.contextmanager
def claim(folder: Path) -> Iterator[None]:
    """Hold ``folder`` exclusively while inside; ``FolderBusy`` if another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "?"
            raise FolderBusy(f"{folder} is in use by another run (pid {owner})") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def in_use(folder: Path) -> bool:
    """Whether a live process holds ``folder`` (tries the lock and lets it go at once)."""
    path = folder / LOCK_FILE
    if not path.exists():
        return False
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False
