"""Run an experiment in-process on Flower's Ray simulation engine.

Without ``verbose``, Flower's and Ray's own logs (tracebacks of failing clients included)
are hidden: every client problem reaches the user as one line in the progress output and
in ``rounds.jsonl``. The first Ctrl-C asks the run to stop (it ends within about a second
and marks its folder ``interrupted``); a second one stops at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from fedprune.config import ExperimentConfig


class RunInterrupted(RuntimeError):
    """The user stopped the run (Ctrl-C); its folder is marked ``interrupted``."""


def _quiet_logging() -> None:
    """Hide Flower's and Ray's own logs (``--verbose`` keeps them)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def _stop_on_ctrl_c() -> Iterator[None]:
    """While inside: the first SIGINT requests a stop, the second raises KeyboardInterrupt."""
    from fedprune.server import interrupt

    def handler(signum: int, frame: FrameType | None) -> None:
        if interrupt.stop_requested():
            raise KeyboardInterrupt
        interrupt.request_stop()

    interrupt.clear()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        interrupt.clear()


def _shutdown_ray() -> None:
    """Stop the Ray processes this run started (Flower leaves them to process exit)."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


def backend_config(cfg: ExperimentConfig, verbose: bool = False) -> dict[str, Any]:
    """Flower's Ray backend settings for ``cfg``: each client's CPUs and GPUs, and ``ray.init``'s
    arguments (``address`` attaches to the running cluster ``ray_address`` instead of starting
    a local one; Flower's RayBackend passes ``init_args`` to ``ray.init`` as they are)."""
    init_args: dict[str, Any] = {"logging_level": logging.INFO if verbose else logging.ERROR,
                                 "log_to_driver": verbose, "include_dashboard": False}
    if cfg.ray_address:
        init_args["address"] = cfg.ray_address
    return {"client_resources": {"num_cpus": cfg.num_cpus_per_client, "num_gpus": cfg.num_gpus_per_client},
            "init_args": init_args}


def simulate(cfg: ExperimentConfig, out_dir: Path, verbose: bool = False, resume: bool = False) -> list[dict]:
    """Run every method of ``cfg`` with ``cfg.num_clients`` virtual clients; return summary rows.
    ``resume``: continue the run in ``out_dir`` from its checkpoint. Clients keep their state
    under ``client_state_dir`` (default ``out_dir/checkpoint/clients``).

    Raises ``RunInterrupted`` after Ctrl-C and ``RuntimeError`` (one line) if the run fails.
    """
    from flwr.simulation import run_simulation

    from fedprune.clients.app import build_client_app
    from fedprune.server.app import build_server_app
    from fedprune.server.checkpoint import FOLDER as CHECKPOINT_FOLDER
    from fedprune.server.interrupt import Interrupted
    from fedprune.server.records import read_status, write_status
    from fedprune.sim import pending_scan
    from fedprune.strategies.health import RunFailed

    pending_scan.install()  # each scan asks only the nodes with a message waiting
    random.seed(cfg.seed)
    progress = lambda line: print(line, file=sys.__stdout__, flush=True)  # noqa: E731
    server_app = build_server_app(cfg, out_dir, progress, resume)
    client_app = build_client_app(cfg, out_dir.resolve() / CHECKPOINT_FOLDER / "clients")
    if not verbose:
        _quiet_logging()
    buffer = io.StringIO()
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(buffer)
    try:
        with _stop_on_ctrl_c(), sink:
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.num_clients,
                           backend_config=backend_config(cfg, verbose), verbose_logging=verbose)
    except (Interrupted, KeyboardInterrupt):
        if out_dir.exists():
            write_status(out_dir, "interrupted", "stopped by the user (Ctrl-C)")
        raise RunInterrupted(f"interrupted; the run folder {out_dir} is marked interrupted") from None
    except RunFailed as error:
        raise RuntimeError(str(error)) from None
    finally:
        _shutdown_ray()
    summary = out_dir / "summary.json"
    if not summary.exists():
        status = read_status(out_dir) or {}
        if status.get("message"):
            raise RuntimeError(f"the run failed: {status['message']}")
        tail = buffer.getvalue().strip().splitlines()[-1:] if not verbose else []
        raise RuntimeError("the simulation ended without a summary" + (f": {tail[0]}" if tail else
                                                                       "; run again with --verbose"))
    return json.loads(summary.read_text())["methods"]
