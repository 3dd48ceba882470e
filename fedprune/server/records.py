"""Run records: one JSON object per line in ``rounds.jsonl``.

Phases: ``setup`` (partition query bytes), ``train`` / ``evaluate`` (bytes of each
message, per client), ``train-metrics`` (an accepted train reply's metrics),
``train-summary`` (per round: accepted clients, example-weighted training loss),
``personal`` (an accepted personal accuracy), ``evaluate-summary`` (per evaluation
round: example-weighted personal accuracy), ``rejected`` (a reply the server did not
use, with its reason), ``global`` (the global model's accuracy), ``device`` (run-end
cost of each personal model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO


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
