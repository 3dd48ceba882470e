"""The Flower ServerApp: runs every configured method in turn and writes the run folder.

Run folder: ``config.json`` (the resolved config), ``status.json`` (running, complete,
failed, interrupted; ``fedprune.server.records``), ``checkpoint/`` (``server.pt``, the
clients' states under ``clients/``), ``rounds.jsonl`` (per-round, per-client records, ``fedprune.server.records``) and,
once every method has finished, ``summary.json`` (``{"methods": [...]}``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedprune.analysis import format_table
from fedprune.config import ExperimentConfig, config_from_run_config
from fedprune.deploy.polling import shorten_object_pulls
from fedprune.server.checkpoint import Checkpoint, Checkpointer, load_checkpoint
from fedprune.server.experiment import discover_partitions, run_method
from fedprune.server.interrupt import Interrupted
from fedprune.server.records import Recorder, write_json_atomic, write_status


def run_experiment(grid: Grid, cfg: ExperimentConfig, out_dir: Path,
                   progress: Callable[[str], None] = print, resume: bool = False) -> list[dict]:
    """Run every method of ``cfg`` on the nodes of ``grid``; write and return the summary rows.

    The run is checkpointed after every round (``fedprune.server.checkpoint``). With
    ``resume``, it continues from the folder's checkpoint: finished methods are not run
    again, the method in progress continues after its last complete round, and
    ``rounds.jsonl`` is cut back to that round (no checkpoint: the run starts over).

    A run that fails (``RunFailed`` or any other error) is marked ``failed`` in
    ``status.json`` with a one-line message and writes no summary; the error propagates.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    start = load_checkpoint(out_dir) if resume else None
    if start is None:
        write_json_atomic(out_dir / "config.json", cfg.to_dict())
        start = Checkpoint(cfg.rounds)
    write_status(out_dir, "running", "", completed_methods=start.completed_methods, method=start.method,
                 round=start.round, rounds=cfg.rounds)
    recorder = Recorder(out_dir, keep=start.records_offset)
    checkpointer = Checkpointer(out_dir, recorder, start)
    try:
        # a resumed run's setup records are already in rounds.jsonl
        journal = recorder.write if not start.records_offset else _discard
        partition_of = discover_partitions(grid, journal, cfg.num_clients)
        if len(partition_of) != cfg.num_clients:
            raise RuntimeError(f"{len(partition_of)} nodes connected, config asks for {cfg.num_clients}")
        for method in cfg.methods[len(start.completed):]:
            resumed = start if start.method == method else None
            checkpointer.method_done(run_method(cfg, method, grid, recorder, partition_of, progress,
                                                checkpointer, resumed))
    except Interrupted:
        write_status(out_dir, "interrupted", "stopped by the user (Ctrl-C)")
        raise
    except Exception as error:
        write_status(out_dir, "failed", str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise
    finally:
        recorder.close()
    rows = checkpointer.completed
    write_json_atomic(out_dir / "summary.json", {"methods": rows})
    write_status(out_dir, "complete")
    progress("\n" + format_table(rows))
    return rows


def _discard(**record: object) -> None:
    """A journal that keeps nothing."""


def build_server_app(cfg: ExperimentConfig | None = None, out_dir: Path | None = None,
                     progress: Callable[[str], None] = print, resume: bool = False) -> ServerApp:
    """A ServerApp for ``cfg``; with None, config and ``out-dir`` come from the run config.
    ``resume``: continue the run in ``out_dir`` from its checkpoint (``run_experiment``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = dict(context.run_config)
        try:
            settings = cfg if cfg is not None else config_from_run_config(run_cfg)
        except ValueError as error:  # one line in `flwr log`; the run ends "failed" (Flower: exit code 700)
            raise ValueError(f"fedprune: error: {str(error).splitlines()[0]}") from None
        folder = out_dir or Path(str(run_cfg.get("out-dir") or f"runs/flwr-{time.strftime('%Y%m%d-%H%M%S')}"))
        if cfg is None:  # under `flwr run`: replies' content is pulled from the SuperLink
            shorten_object_pulls()
        run_experiment(grid, settings, folder.resolve(), progress, resume)

    return app


app = build_server_app()
