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
``interrupted`` (with a one-line ``message``), the ``pid`` and ``host`` of the process
that runs it, and how far it got (``completed_methods``; ``method`` and ``round`` of the
last checkpointed round, ``rounds``). A run killed outright (SIGKILL, power loss) leaves
``running``: ``run_state`` reports it ``interrupted`` once its process is gone. Every JSON
file is strict JSON: a non-finite number is written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any, BinaryIO

from fedprune.server.folder import LOCK_FILE, in_use

STATUS_FILE = "status.json"
STATUSES = ("running", "complete", "failed", "interrupted")
#: how far a run got, in status.json
PROGRESS = ("completed_methods", "method", "round", "rounds")


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


def write_status(out_dir: Path, status: str, message: str = "", **progress: Any) -> None:
    """Mark the run folder ``status`` (one of ``STATUSES``). ``running`` records this process
    as the owner; ``progress`` (``completed_methods``, ``method``, ``round``, ``rounds``)
    updates what an earlier status said, which is otherwise kept."""
    if status not in STATUSES:
        raise ValueError(f"status: unknown {status!r}; allowed: {', '.join(STATUSES)}")
    previous = read_status(out_dir) or {}
    kept = {key: previous[key] for key in PROGRESS if key in previous}
    owner: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()} if status == "running" else \
        {key: previous[key] for key in ("pid", "host") if key in previous}
    write_json_atomic(out_dir / STATUS_FILE, {"status": status, "message": message, **owner, **kept, **progress})


def read_status(out_dir: Path) -> dict[str, Any] | None:
    """The folder's status file as written, or None if it has none (or it cannot be read)."""
    try:
        status = json.loads((out_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def run_state(out_dir: Path) -> dict[str, Any] | None:
    """The folder's status as it stands: a ``running`` run whose process is gone on this host
    (killed, or the machine restarted), or whose folder claim is free
    (``fedprune.server.folder``), is ``interrupted``."""
    status = read_status(out_dir)
    if status is None or status.get("status") != "running":
        return status
    pid, host = status.get("pid"), status.get("host")
    gone = host == socket.gethostname() and isinstance(pid, int) and not _alive(pid)
    released = (out_dir / LOCK_FILE).exists() and not in_use(out_dir)  # the owner holds it while alive
    if gone or released:
        return {**status, "status": "interrupted", "message": f"its process ({pid}) is gone: killed"}
    return status


def describe(out_dir: Path) -> str:
    """One line on what an incomplete run folder holds and how to continue it."""
    status = run_state(out_dir) or {}
    state = status.get("status", "unknown")
    done = status.get("completed_methods") or []
    parts = [f"{out_dir} is an incomplete run ({state}" + (f": {status['message']}" if status.get("message") else "")
             + ")", f"methods complete: {', '.join(done) if done else 'none'}"]
    if status.get("method"):
        parts.append(f"{status['method']} at round {status.get('round', 0)} of {status.get('rounds', '?')}")
    hint = "it is still running" if state == "running" else f"resume it with: fedprune run --resume {out_dir}"
    return "; ".join(parts) + f"; {hint}"


class Recorder:
    """Appends one JSON object per line to ``rounds.jsonl`` in the run folder.

    ``keep`` bytes of an existing file are kept (a resumed run: the records of the
    checkpointed rounds) and the rest, a line cut by a kill included, is dropped.
    ``offset`` is the file's length after the last record.
    """

    def __init__(self, out_dir: Path, keep: int = 0) -> None:
        self.out_dir = out_dir
        path = out_dir / "rounds.jsonl"
        self._file: BinaryIO = path.open("r+b" if keep and path.exists() else "wb")
        self._file.truncate(keep)
        self._file.seek(keep)

    @property
    def offset(self) -> int:
        return self._file.tell()

    def write(self, **record: Any) -> None:
        self._file.write((json.dumps(json_safe(record), sort_keys=True, allow_nan=False) + "\n").encode())
        self._file.flush()

    def close(self) -> None:
        self._file.close()
