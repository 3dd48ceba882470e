"""The deployment engine: run-config checks, the long-running executor's FAB check, SuperLink
errors credited to their node, and (slow) scripts/deploy_local.sh on real SuperLink/SuperNodes."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message
from flwr.common.constant import SUPERLINK_NODE_ID

from fedprune.config import make_config
from fedprune.deploy import check, executor
from fedprune.server.grid import CountingGrid
from helpers import InProcessGrid, new_strategy

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "deploy_local.sh"
needs_flower_deployment = pytest.mark.skipif(
    shutil.which("flower-superlink") is None, reason="flower-superlink is not on PATH (pip install -e .)")


@pytest.mark.parametrize(("run_config", "names"), [
    ("rounds=-1", "rounds"), ("bogus=1", "bogus"), ("rounds=abc", "--run-config"),
    ("methods='fedavg,nope'", "nope"), ("final-sparsity=1.5", "final_sparsity")])
def test_check_refuses_a_bad_run_config_in_one_line(capsys, run_config: str, names: str) -> None:
    assert check.main(["--run-config", run_config, "--app", str(ROOT)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("fedprune: error: ") and names in err


def test_check_fuses_the_run_config_over_the_apps_defaults() -> None:
    fused = check.fused_run_config("rounds=3 num-clients=2 out-dir='x'", ROOT)
    assert fused["rounds"] == 3 and fused["num-clients"] == 2 and fused["out-dir"] == "x"
    assert fused["methods"] == "fedavg,gmp,mi"  # from pyproject.toml
    assert check.main(["--run-config", "rounds=3 num-clients=2", "--app", str(ROOT)]) == 0


def _fab(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as fab:
        for name, data in files.items():
            fab.writestr(name, data)
    return buffer.getvalue()


def test_executor_serves_only_the_fedprune_it_loaded() -> None:
    sources = {f"fedprune/{p.relative_to(executor.PACKAGE).as_posix()}": p.read_bytes()
               for p in executor.PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert executor.fab_matches_loaded_code(_fab({**sources, "pyproject.toml": b"x"}))
    edited = dict(sources, **{"fedprune/wire.py": sources["fedprune/wire.py"] + b"\n# edited\n"})
    assert not executor.fab_matches_loaded_code(_fab(edited))
    missing = {k: v for k, v in sources.items() if k != "fedprune/seeds.py"}
    assert not executor.fab_matches_loaded_code(_fab(missing))
    assert not executor.fab_matches_loaded_code(_fab({**sources, "fedprune/extra.py": b""}))


class UnavailableNodeGrid(InProcessGrid):
    """Node 42 stopped: the SuperLink answers for it with an error whose sender is the SuperLink."""

    def reply(self, message: Message) -> Message | None:
        if message.metadata.dst_node_id != 42:
            return super().reply(message)
        error = Message(Error(code=3, reason="Error: Node Unavailable"), reply_to=message)
        error.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
        return error


def test_superlink_error_is_credited_to_the_node_asked(task_identity) -> None:
    nodes = {41: 0, 42: 1}
    cfg = make_config(dict(num_clients=2, rounds=1, mlp_widths=[8], partitioner="iid", local_epochs=1))
    strategy, template = new_strategy(cfg, "fedavg", nodes)
    records: list[dict] = []
    counting = CountingGrid(UnavailableNodeGrid(cfg, dict(nodes)), lambda **r: records.append(r), dict(nodes))
    replies = list(counting.send_and_receive(
        strategy.configure_train(1, ArrayRecord(template), ConfigRecord(), counting), timeout=5))
    assert sorted(r.metadata.src_node_id for r in replies) == [41, 42]
    strategy.aggregate_train(1, replies)
    (rejection,) = strategy.rejected  # one rejection, for client 1: not an unknown sender plus a no-reply
    assert rejection.partition == 1 and rejection.code == "client-error" and "Node Unavailable" in rejection.reason


# ------------------------------------------------------------------ the real deployment engine

def _deploy(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _started_pids(stdout: str) -> list[int]:
    return [int(line.split(" pid ")[1].split()[0]) for line in stdout.splitlines() if " pid " in line]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.parametrize(("args", "message"), [
    (("-1",), "ROUNDS: must be an integer >= 1"),
    (("2", "--run-config", "rounds=-1"), "rounds: -1 must be at least 1"),  # overrides ROUNDS, then refused
    (("2", "--run-config", "final-sparsity=1.5"), "final_sparsity: 1.5 is outside"),
    (("2", "--methods", "fedavg,nope"), "methods: unknown item 'nope'")])
def test_script_refuses_a_bad_run_config_before_starting_anything(tmp_path: Path, args, message) -> None:
    result = _deploy(tmp_path, args[0], str(tmp_path / "run"), *args[1:])
    assert result.returncode == 2
    assert message in result.stderr and " pid " not in result.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@needs_flower_deployment
def test_deploy_local_one_round(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _deploy(tmp_path, "1", str(out), "--methods", "fedavg")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    (row,) = json.loads((out / "summary.json").read_text())["methods"]
    assert row["method"] == "fedavg" and row["rounds"] == 1 and row["clients"] == 2
    assert row["evaluated_clients"] == 2 and row["bytes_up"] > 0
    started = _started_pids(result.stdout)
    assert len(started) == 5  # SuperLink, 2 SuperNodes, 2 executors
    assert not any(_alive(pid) for pid in started)


@pytest.mark.slow
@needs_flower_deployment
def test_killed_supernode_is_reported_missing(tmp_path: Path) -> None:
    """SuperNode 1 is killed after round 1 of 3: the run completes, client 1 is rejected in later
    rounds, and the summary holds only client 0's final accuracy (none of client 1's stale ones)."""
    out = tmp_path / "run"
    settings = tmp_path / "short.toml"
    settings.write_text("round_timeout = 30.0\n")
    result = _deploy(tmp_path, "3", str(out), "--methods", "fedavg", "--kill-node-after-round", "1",
                     "--run-config", f"config-file='{settings}'")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "killing SuperNode 1" in result.stdout
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    final = {r["client"]: r["accuracy"] for r in records if r["phase"] == "personal" and r["round"] == 3}
    assert list(final) == [0]
    rejected = {(r["round"], r["exchange"]) for r in records if r["phase"] == "rejected"}
    assert all(r["client"] == 1 for r in records if r["phase"] == "rejected")
    assert (3, "train") in rejected and (3, "evaluate") in rejected
    (row,) = json.loads((out / "summary.json").read_text())["methods"]
    assert row["evaluated_clients"] == 1 and row["personal_accuracy_mean"] == pytest.approx(final[0])
    assert row["rejected_replies"] == len(rejected)


def test_object_pulls_retry_sooner_and_only_once_patched() -> None:
    import functools

    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal

    from fedprune.deploy.polling import shorten_object_pulls

    original = start_client_internal.pull_objects
    try:
        shorten_object_pulls(initial_s=0.03, cap_s=0.3)
        patched = start_client_internal.pull_objects
        assert isinstance(patched, functools.partial) and patched.func is inflatable_utils.pull_objects
        assert patched.keywords == {"initial_backoff": 0.03, "backoff_cap": 0.3}
        assert shorten_object_pulls() == []  # a second call changes nothing
    finally:
        start_client_internal.pull_objects = original


def test_supernode_sleeps_are_capped(monkeypatch) -> None:
    import time
    import types

    from fedprune.deploy.supernode import shorten_polls

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    module = types.ModuleType("loop")
    module.time = time  # type: ignore[attr-defined]
    assert shorten_polls(module, 0.1)
    module.time.sleep(3)
    module.time.sleep(0.05)
    assert slept == [0.1, 0.05]
    assert module.time.monotonic is time.monotonic  # everything else is the real module
    assert not shorten_polls(module, 0.1)  # already replaced: nothing to patch
