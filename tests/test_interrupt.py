"""Ctrl-C: the first SIGINT stops a real simulation within seconds, marks the run folder
interrupted, says so in one line, exits 130 and leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def ray_processes(marker: str) -> set[int]:
    """PIDs of running Ray processes started under ``marker`` (a unique RAY_TMPDIR): other
    people's Ray processes on the same machine do not count."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if b"ray" in cmdline and marker.encode() in cmdline + environ:
                found.add(int(entry.name))
    return found


def test_sigint_exits_130_within_10_seconds(tmp_path) -> None:
    ray_dir = tempfile.mkdtemp(prefix="fpr", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_TMPDIR": ray_dir}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fedprune.sim.cli", "run", "--methods", "fedavg", "--set", "rounds=500",
               "--set", "num_clients=4", "--out", str(out), "--no-report"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until training has started
            records = out / "rounds.jsonl"
            if records.exists() and '"phase": "train"' in records.read_text():
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        running = ray_processes(ray_dir)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = process.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, err
    assert elapsed < 10, elapsed
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in err, err
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    assert not (out / "summary.json").exists()
    assert running, "found none of the run's Ray processes: the check below would prove nothing"
    time.sleep(2)  # let Ray's processes finish exiting
    assert ray_processes(ray_dir) == set()
    shutil.rmtree(ray_dir, ignore_errors=True)


def test_a_stop_request_ends_the_run_end_timing_too() -> None:
    """Timing every personal model at run end checks for Ctrl-C before each model."""
    from fedprune.config import make_config
    from fedprune.models.factory import new_model
    from fedprune.server import interrupt
    from fedprune.server.costs import personal_costs

    cfg = make_config({"num_clients": 2})
    state = new_model(cfg, "full").state_dict()
    interrupt.request_stop()
    try:
        with pytest.raises(interrupt.Interrupted):
            personal_costs(cfg, "full", state, {0: None, 1: None}, {})
    finally:
        interrupt.clear()
    assert len(personal_costs(cfg, "full", state, {0: None}, {})) == 1  # without a request it times
