"""Run an experiment in-process on Flower's Ray simulation engine."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

from fedprune.config import ExperimentConfig


def _quiet_logging() -> None:
    """Hide Flower's and Ray's INFO chatter (``--verbose`` keeps it)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)


def simulate(cfg: ExperimentConfig, out_dir: Path, verbose: bool = False) -> list[dict]:
    """Run every method of ``cfg`` with ``cfg.num_clients`` virtual clients; return summary rows.

    Raises ``RuntimeError`` if the simulation ends without writing ``summary.json``.
    """
    from flwr.simulation import run_simulation

    from fedprune.clients.app import build_client_app
    from fedprune.server.app import build_server_app

    random.seed(cfg.seed)
    progress = lambda line: print(line, file=sys.__stdout__, flush=True)  # noqa: E731
    server_app = build_server_app(cfg, out_dir, progress)
    client_app = build_client_app(cfg)
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": cfg.num_cpus_per_client, "num_gpus": 0.0},
        "init_args": {"logging_level": logging.INFO if verbose else logging.ERROR,
                      "log_to_driver": verbose, "include_dashboard": False},
    }
    if not verbose:
        _quiet_logging()
    buffer = io.StringIO()
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(buffer)
    with sink:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.num_clients,
                       backend_config=backend_config, verbose_logging=verbose)
    summary = out_dir / "summary.json"
    if not summary.exists():
        tail = buffer.getvalue()[-2000:]
        raise RuntimeError(f"the simulation ended without a summary; see the log above{tail and ':'}\n{tail}")
    return json.loads(summary.read_text())["methods"]
