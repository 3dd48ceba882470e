"""The server's checkpoint: ``RUN_DIR/checkpoint/server.pt``, rewritten after every round of
every method and after every finished method, so that ``fedprune run --resume`` continues
from the last complete round.

It holds the summary rows of the finished methods and, for the method in progress, its
last complete round, the global model after it, the strategy's ``state_dict`` (sampling
RNG, per-client masks and unit masks, reports, rejections, round health, fault counts),
the bytes counted so far, the latest global accuracy and mask diagnostics, and the seconds
spent; ``records_offset`` is the length of ``rounds.jsonl`` at that point (a resumed run
drops what follows). The file is written through a temporary file, flushed to disk and
renamed over the previous one: a kill at any moment leaves the previous or the new
checkpoint, never half of one. The clients' own state is saved by the clients
(``fedprune.clients.persist``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from fedprune.server.records import Recorder, write_status

FOLDER = "checkpoint"
SERVER_FILE = "server.pt"
FORMAT = 1


@dataclass
class Checkpoint:
    """What a resumed run needs from the server (see the module docstring)."""

    rounds: int
    completed: list[dict] = field(default_factory=list)
    records_offset: int = 0
    method: str | None = None
    round: int = 0
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    strategy: dict[str, Any] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    global_accuracy: float | None = None
    diagnostics: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def completed_methods(self) -> list[str]:
        return [row["method"] for row in self.completed]


def checkpoint_path(out_dir: Path) -> Path:
    return out_dir / FOLDER / SERVER_FILE


def save_checkpoint(out_dir: Path, checkpoint: Checkpoint,
                    before_rename: Callable[[Path], None] | None = None) -> None:
    """Write ``checkpoint`` atomically (temporary file, fsync, ``os.replace``);
    ``before_rename`` (tests) runs between the write and the rename."""
    path = checkpoint_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    payload = {"format": FORMAT, **{f.name: getattr(checkpoint, f.name) for f in fields(checkpoint)}}
    with tmp.open("wb") as file:
        torch.save(payload, file)
        file.flush()
        os.fsync(file.fileno())
    if before_rename is not None:
        before_rename(tmp)
    os.replace(tmp, path)


def load_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The folder's checkpoint, or None if it has none."""
    path = checkpoint_path(out_dir)
    if not path.exists():
        return None
    payload = torch.load(path, weights_only=True)
    if payload.pop("format", None) != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format")
    return Checkpoint(**payload)


class Checkpointer:
    """Writes the run's checkpoint and the progress in ``status.json`` as the run goes."""

    def __init__(self, out_dir: Path, recorder: Recorder, start: Checkpoint) -> None:
        self.out_dir = out_dir
        self.recorder = recorder
        self.completed = list(start.completed)
        self.rounds = start.rounds
        self.method_started = time.perf_counter()
        self.spent_before = 0.0  # seconds the method in progress took before a resume

    def start_method(self, resumed: Checkpoint | None) -> None:
        self.method_started = time.perf_counter()
        self.spent_before = resumed.seconds if resumed is not None else 0.0

    @property
    def seconds(self) -> float:
        """Seconds the method in progress has run, before a resume included."""
        return self.spent_before + time.perf_counter() - self.method_started

    def _save(self, checkpoint: Checkpoint) -> None:
        save_checkpoint(self.out_dir, checkpoint)
        write_status(self.out_dir, "running", completed_methods=checkpoint.completed_methods,
                     method=checkpoint.method, round=checkpoint.round, rounds=self.rounds)

    def round_done(self, method: str, server_round: int, arrays: dict[str, torch.Tensor],
                   strategy: dict[str, Any], bytes_up: int, bytes_down: int, global_accuracy: float | None,
                   diagnostics: dict[str, float | None]) -> None:
        """Checkpoint after round ``server_round`` of ``method`` (its records are written)."""
        self._save(Checkpoint(self.rounds, self.completed, self.recorder.offset, method, server_round,
                              arrays, strategy, bytes_up, bytes_down, global_accuracy, diagnostics,
                              self.seconds))

    def method_done(self, row: dict) -> None:
        """Checkpoint after a finished method (its summary row, models and records written)."""
        self.completed.append(row)
        self._save(Checkpoint(self.rounds, self.completed, self.recorder.offset))
