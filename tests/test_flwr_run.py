"""`flwr run .` on the local simulation federation runs the same apps (2 rounds)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _stop_superlinks(flwr_home: Path) -> None:
    """Stop the detached flower-superlink that `flwr run` started for this FLWR_HOME."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "flower-superlink" in args and str(flwr_home) in args:
            os.kill(int(cmdline.parent.name), signal.SIGTERM)


@pytest.mark.slow
def test_flwr_run_local_simulation(tmp_path: Path) -> None:
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or shutil.which("flwr")
    assert flwr, "the flwr command comes with the flwr dependency"
    flwr_home = tmp_path / "flwr-home"
    out_dir = tmp_path / "run"
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    try:
        result = subprocess.run(
            [flwr, "run", ".", "--stream",
             "--run-config", f"rounds=2 num-clients=4 methods='fedavg,gmp' out-dir='{out_dir}'",
             "--federation-config", "num-supernodes=4 client-resources-num-cpus=1"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        _stop_superlinks(flwr_home)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out_dir / "summary.json").read_text())["methods"]
    assert [row["method"] for row in summary] == ["fedavg", "gmp"]
    assert all(row["rounds"] == 2 and row["clients"] == 4 for row in summary)
    assert all(row["bytes_up"] > 0 for row in summary)
    assert "[gmp] round 2/2" in result.stdout


def test_pyproject_run_config_matches_defaults() -> None:
    """The keys `flwr run` may override carry fedprune's own defaults (one source of truth)."""
    import tomllib

    from fedprune.config import RUN_ONLY_KEYS, ExperimentConfig

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = ExperimentConfig().to_dict()
    for key, value in listed.items():
        if key in RUN_ONLY_KEYS:
            continue
        default = defaults[key.replace("-", "_")]
        assert value == (",".join(default) if isinstance(default, list) else default), key
