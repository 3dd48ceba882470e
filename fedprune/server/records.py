"""Run records: per-round per-client JSON lines and the per-method summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

SUMMARY_KEYS = ("method", "rounds", "clients", "personal_accuracy_mean", "personal_accuracy_min",
                "global_accuracy", "bytes_up", "bytes_down", "sparsity", "seconds")


@dataclass
class MethodTally:
    """Running totals of one method's run."""

    method: str
    bytes_up: int = 0
    bytes_down: int = 0
    personal_accuracy: dict[int, float] = field(default_factory=dict)
    sparsity: dict[int, float] = field(default_factory=dict)
    budget_met: dict[int, bool] = field(default_factory=dict)
    global_accuracy: float | None = None


class Recorder:
    """Appends one JSON object per line to ``rounds.jsonl`` in the run folder."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._file: TextIO = (out_dir / "rounds.jsonl").open("w")

    def write(self, **record: Any) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
