"""The Flower ServerApp: runs every configured method in turn and writes the run folder.

Run folder: ``config.json`` (the resolved config), ``status.json`` (running, complete,
failed), ``rounds.jsonl`` (per-round, per-client records, ``fedprune.server.records``) and,
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
from fedprune.server.experiment import discover_partitions, run_method
from fedprune.server.interrupt import Interrupted
from fedprune.server.records import Recorder, write_json_atomic, write_status


def run_experiment(grid: Grid, cfg: ExperimentConfig, out_dir: Path,
                   progress: Callable[[str], None] = print) -> list[dict]:
    """Run every method of ``cfg`` on the nodes of ``grid``; write and return the summary rows.

    A run that fails (``RunFailed`` or any other error) is marked ``failed`` in
    ``status.json`` with a one-line message and writes no summary; the error propagates.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "config.json", cfg.to_dict())
    write_status(out_dir, "running")
    recorder = Recorder(out_dir)
    try:
        partition_of = discover_partitions(grid, recorder, cfg.num_clients)
        if len(partition_of) != cfg.num_clients:
            raise RuntimeError(f"{len(partition_of)} nodes connected, config asks for {cfg.num_clients}")
        rows = [run_method(cfg, method, grid, recorder, partition_of, progress) for method in cfg.methods]
    except Interrupted:
        write_status(out_dir, "interrupted", "stopped by the user (Ctrl-C)")
        raise
    except Exception as error:
        write_status(out_dir, "failed", str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise
    finally:
        recorder.close()
    write_json_atomic(out_dir / "summary.json", {"methods": rows})
    write_status(out_dir, "complete")
    progress("\n" + format_table(rows))
    return rows


def build_server_app(cfg: ExperimentConfig | None = None, out_dir: Path | None = None,
                     progress: Callable[[str], None] = print) -> ServerApp:
    """A ServerApp for ``cfg``; with None, config and ``out-dir`` come from the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = dict(context.run_config)
        try:
            settings = cfg if cfg is not None else config_from_run_config(run_cfg)
        except ValueError as error:  # one line in `flwr log`; the run ends "failed" (Flower: exit code 700)
            raise ValueError(f"fedprune: error: {str(error).splitlines()[0]}") from None
        folder = out_dir or Path(str(run_cfg.get("out-dir") or f"runs/flwr-{time.strftime('%Y%m%d-%H%M%S')}"))
        run_experiment(grid, settings, folder.resolve(), progress)

    return app


app = build_server_app()
