"""The run folder from the command line: its status through each state, one run per folder,
``--resume`` refusing what it cannot continue, ``report``/``device`` on an incomplete run,
and one real Ray simulation killed with SIGKILL after round 1 and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedprune.config import make_config
from fedprune.server.folder import LOCK_FILE, claim
from fedprune.server.records import read_status, run_state, write_status
from fedprune.sim.cli import main

SMALL = ["--methods", "gmp", "--set", "rounds=3", "--set", "num_clients=2", "--set", "local_epochs=1",
         "--set", "mlp_widths=[16]", "--set", "prune_end_round=3"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def stored_run(folder: Path, status: str, **progress) -> dict:
    """A run folder holding the default config and ``status`` (nothing ran)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = make_config({})
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    write_status(folder, status, **progress)
    return cfg.to_dict()


@pytest.mark.parametrize("marker", ["config.json", "rounds.jsonl", "status.json"])
def test_out_refuses_a_folder_holding_a_run(tmp_path, capsys, marker) -> None:
    (tmp_path / marker).write_text("{}")
    assert main(["run", *SMALL, "--out", str(tmp_path), "--no-report"]) == 2
    line = one_line_error(capsys)
    assert "--out" in line and "already holds a run" in line and "--resume" in line


def test_a_second_run_on_a_claimed_folder_exits_2(tmp_path, capsys) -> None:
    with claim(tmp_path):  # stands for a run that started here and holds the folder
        assert main(["run", *SMALL, "--out", str(tmp_path), "--no-report"]) == 2
    line = one_line_error(capsys)
    assert "in use by another run" in line and f"pid {os.getpid()}" in line
    assert not (tmp_path / "config.json").exists()


def test_resume_refuses_a_changed_config_naming_the_field(tmp_path, capsys) -> None:
    stored_run(tmp_path, "interrupted")
    assert main(["run", "--resume", str(tmp_path), "--set", "learning_rate=0.1"]) == 2
    line = one_line_error(capsys)
    assert "learning_rate" in line and "0.05" in line and "0.1" in line


def test_resume_of_a_complete_run_says_so_and_exits_0(tmp_path, capsys) -> None:
    stored_run(tmp_path, "complete")
    assert main(["run", "--resume", str(tmp_path), "--set", "seed=0"]) == 0  # repeating a setting is fine
    assert "already complete" in capsys.readouterr().out


def test_resume_of_a_folder_without_a_run_exits_2(tmp_path, capsys) -> None:
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "holds no run" in one_line_error(capsys)


def test_status_through_each_state(tmp_path) -> None:
    write_status(tmp_path, "running", completed_methods=[], method="gmp", round=2, rounds=6)
    status = read_status(tmp_path)
    assert status is not None and status["pid"] == os.getpid() and status["host"]
    assert run_state(tmp_path)["status"] == "running"  # this process is alive
    write_status(tmp_path, "interrupted", "stopped by the user (Ctrl-C)")
    assert run_state(tmp_path)["status"] == "interrupted" and run_state(tmp_path)["round"] == 2  # progress kept
    write_status(tmp_path, "failed", "boom")
    assert run_state(tmp_path)["message"] == "boom"
    write_status(tmp_path, "complete")
    assert run_state(tmp_path)["status"] == "complete"


def test_a_killed_run_that_still_says_running_reads_interrupted(tmp_path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_status(tmp_path, "running")
    status = json.loads((tmp_path / "status.json").read_text())
    (tmp_path / "status.json").write_text(json.dumps({**status, "pid": dead.pid}))
    state = run_state(tmp_path)
    assert state["status"] == "interrupted" and str(dead.pid) in state["message"]
    # a live PID (reused by another process) but a free claim: the run is gone as well
    write_status(tmp_path, "running")
    (tmp_path / LOCK_FILE).write_text("1\n")
    assert run_state(tmp_path)["status"] == "interrupted"
    with claim(tmp_path):
        assert run_state(tmp_path)["status"] == "running"


def test_report_and_device_say_what_an_incomplete_run_holds(tmp_path, capsys) -> None:
    stored_run(tmp_path, "interrupted", completed_methods=["fedavg"], method="gmp", round=3, rounds=6)
    assert main(["report", str(tmp_path)]) == 2
    line = one_line_error(capsys)
    assert "incomplete" in line and "methods complete: fedavg" in line and "gmp at round 3 of 6" in line
    assert f"fedprune run --resume {tmp_path}" in line
    assert main(["device", str(tmp_path)]) == 2
    assert one_line_error(capsys) == line


@pytest.mark.slow
def test_a_simulation_killed_after_round_1_resumes_to_the_uninterrupted_numbers(task_identity, tmp_path) -> None:
    """SIGKILL to the whole process group (driver and Ray) once round 1 is checkpointed; the
    resumed run's summary equals an uninterrupted run's (in-process: the same numbers as Ray)."""
    from fedprune.server.app import run_experiment
    from helpers import InProcessGrid

    out = tmp_path / "run"
    command = [sys.executable, "-m", "fedprune.sim.cli", "run", *SMALL, "--out", str(out), "--no-report"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while (read_status(out) or {}).get("round") != 1:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    assert read_status(out)["status"] == "running" and run_state(out)["status"] == "interrupted"
    resumed = subprocess.run([sys.executable, "-m", "fedprune.sim.cli", "run", "--resume", str(out), "--no-report"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming gmp" in resumed.stdout
    rounds = [line for line in resumed.stdout.splitlines() if line.startswith("[gmp] round")]
    assert [line.split()[2] for line in rounds] == ["2/3", "3/3"]  # round 1 is not run again
    cfg = make_config(json.loads((out / "config.json").read_text()))
    whole = run_experiment(InProcessGrid(cfg, {5: 0, 6: 1}), cfg, tmp_path / "whole", progress=lambda _: None)
    timing = ("seconds", "latency_ms_mean")
    got = json.loads((out / "summary.json").read_text())["methods"]
    assert [{k: v for k, v in row.items() if k not in timing} for row in got] == \
        [{k: v for k, v in row.items() if k not in timing} for row in whole]
