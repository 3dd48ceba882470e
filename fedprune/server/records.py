"""The run folder's files: ``rounds.jsonl`` records, ``status.json``, and JSON written safely.

``rounds.jsonl`` holds one JSON object per line, each with a ``phase``: ``setup``
(partition query bytes), ``train`` / ``evaluate`` (bytes of each message, per client),
``fault`` (an injected fault), ``train-metrics`` (an accepted train reply's metrics),
``train-summary`` (per round: sampled and accepted clients, whether the round failed,
example-weighted training loss), ``personal`` (an accepted personal accuracy),
``evaluate-summary`` (per evaluation round: example-weighted personal accuracy),
``rejected`` (a reply the server did not use, or a client that did not answer, with its
code and reason), ``global`` (the global model's accuracy), ``device`` (run-end cost of
each personal model).

``status.json`` says what the folder holds: ``running``, ``complete``, ``failed`` or
``interrupted`` (with a one-line ``message``). Every JSON file is strict JSON: a
non-finite number is written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, TextIO

STATUS_FILE = "status.json"
STATUSES = ("running", "complete", "failed", "interrupted")


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or inf)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def write_json_atomic(path: Path, payload: object) -> None:
    """Write strict JSON to ``path`` through a temporary file, so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def write_status(out_dir: Path, status: str, message: str = "") -> None:
    """Mark the run folder ``status`` (one of ``STATUSES``)."""
    if status not in STATUSES:
        raise ValueError(f"status: unknown {status!r}; allowed: {', '.join(STATUSES)}")
    write_json_atomic(out_dir / STATUS_FILE, {"status": status, "message": message})


def read_status(out_dir: Path) -> dict[str, str] | None:
    """The folder's status, or None if it has none (or it cannot be read)."""
    try:
        return dict(json.loads((out_dir / STATUS_FILE).read_text()))
    except (OSError, ValueError):
        return None


class Recorder:
    """Appends one JSON object per line to ``rounds.jsonl`` in the run folder."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._file: TextIO = (out_dir / "rounds.jsonl").open("w")

    def write(self, **record: Any) -> None:
        self._file.write(json.dumps(json_safe(record), sort_keys=True, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
