"""``fedprune`` command line.

``fedprune run [--config F | --preset NAME] [--set k=v ...] [--methods a,b] [--out DIR] [--ray-address A]
  [--no-report]``
``fedprune run --resume RUN_DIR``
``fedprune report RUN_DIR [RUN_DIR ...] [--out DIR]``
``fedprune device RUN_DIR``
``fedprune export RUN_DIR [--format onnx|torchscript] [--out DIR]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib import resources
from pathlib import Path

from fedprune.config import ExperimentConfig
from fedprune.methods import METHODS

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


PRESETS = resources.files("fedprune") / "presets"


def preset_names() -> list[str]:
    """Names of the presets shipped in ``fedprune/presets/*.toml``."""
    return sorted(entry.name[: -len(".toml")] for entry in PRESETS.iterdir() if entry.name.endswith(".toml"))


def preset_path(name: str) -> Path:
    """The TOML file of preset ``name``; raises ``ConfigError`` naming the allowed presets."""
    from fedprune.config import ConfigError

    if name not in preset_names():
        raise ConfigError(f"--preset: unknown preset {name!r}; allowed: {', '.join(preset_names())}")
    return Path(str(PRESETS / f"{name}.toml"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedprune", description="Federated personalized-pruning simulator on Flower: "
                                     "bytes sent, personal accuracy and on-device speedup per method.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a federated pruning experiment")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--config", help="TOML file of settings (flat keys; see README)")
    source.add_argument("--preset", help="a named config shipped with fedprune: " + ", ".join(preset_names()))
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one setting, e.g. --set final_sparsity=0.9 (repeatable)")
    run.add_argument("--methods", help="comma-separated methods (default: the config's, "
                     f"{','.join(ExperimentConfig().methods)}): " + ", ".join(METHODS))
    run.add_argument("--out", help="run folder (default: runs/run-YYYYmmdd-HHMMSS); refused if it holds a run")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR after its last complete "
                     "round, with its config (--config/--set may only repeat it)")
    run.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    run.add_argument("--ray-address", help="attach to a running Ray cluster (e.g. 127.0.0.1:6379 or auto) "
                     "instead of starting one; same as --set ray_address=...")
    run.add_argument("--no-report", action="store_true",
                     help="do not write the figures and report.md into RUN_DIR/report/")
    device = commands.add_parser("device", help="measure every client's personal model of a run")
    device.add_argument("run_dir", metavar="RUN_DIR", help="run folder made by fedprune run")
    export = commands.add_parser("export", help="every client's personal model of a run as an ONNX or "
                                 "TorchScript file, checked against PyTorch")
    export.add_argument("run_dir", metavar="RUN_DIR", help="run folder made by fedprune run")
    export.add_argument("--format", dest="fmt", default="onnx", metavar="FORMAT",
                        help="onnx (default) or torchscript")
    export.add_argument("--out", help="output folder (default: RUN_DIR/export)")
    report = commands.add_parser("report", help="figures and a Markdown report of run folders")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s) made by fedprune run")
    report.add_argument("--out", help="output folder (default: RUN_DIR/report; required for several runs)")
    return parser


def _run(args: argparse.Namespace) -> int:
    from fedprune.config import ConfigError
    from fedprune.server.folder import FolderBusy, claim, holds_run

    overrides = list(args.overrides)
    if args.methods is not None:
        overrides.append(f"methods={args.methods!r}".replace("'", '"'))
    if args.ray_address is not None:
        overrides.append(f"ray_address={args.ray_address!r}".replace("'", '"'))
    if args.resume is not None:
        if args.out is not None:
            raise ConfigError("--out: not with --resume (the run folder is RUN_DIR)")
        out_dir = Path(args.resume)
        cfg = _resumed_config(out_dir, args, overrides)
    else:
        cfg = _load(args, overrides)
        out_dir = Path(args.out or f"runs/run-{time.strftime('%Y%m%d-%H%M%S')}")
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"--out: {out_dir} exists and is not a folder")
        if holds_run(out_dir):
            raise ConfigError(f"--out: {out_dir} already holds a run; choose a new folder, or continue it with "
                              f"--resume {out_dir}")
        _check_writable(out_dir)
    from fedprune.server.records import read_status
    from fedprune.sim.runner import simulate

    if cfg.prune_end_round > cfg.rounds and any(METHODS[m].pruner is not None for m in cfg.methods):
        print(f"fedprune: warning: prune_end_round ({cfg.prune_end_round}) is after the last round "
              f"({cfg.rounds}); gradual methods stop short of final_sparsity", file=sys.stderr)
    try:
        with claim(out_dir):
            if args.resume is None and holds_run(out_dir):  # another run started here meanwhile
                raise ConfigError(f"--out: {out_dir} already holds a run; choose a new folder")
            if args.resume is not None and (read_status(out_dir) or {}).get("status") == "complete":
                print(f"fedprune: {out_dir} is already complete; nothing to resume")
                return 0
            verb = "resuming" if args.resume is not None else "running"
            print(f"fedprune: {verb} {', '.join(cfg.methods)} on {cfg.dataset}, {cfg.num_clients} clients, "
                  f"{cfg.rounds} rounds -> {out_dir}", flush=True)
            simulate(cfg, out_dir, verbose=args.verbose, resume=args.resume is not None)
    except FolderBusy as error:
        raise ConfigError(f"--{'resume' if args.resume is not None else 'out'}: {error}") from None
    print(f"\nrun folder: {out_dir}")
    if args.no_report:
        return 0
    from fedprune.analysis.report import write_report

    try:
        report = write_report([out_dir], out_dir / "report")
    except Exception as error:  # the run folder is complete; do not lose it over a plotting failure
        print(f"fedprune: error: the report failed ({type(error).__name__}: {error}); the run folder is "
              f"complete, retry with: fedprune report {out_dir}", file=sys.stderr)
        return 1
    print(f"report: {report}")
    return 0


def _load(args: argparse.Namespace, overrides: list[str], base: dict | None = None) -> ExperimentConfig:
    """The config of ``--config``/``--preset`` and ``overrides``, on top of ``base`` (if any)."""
    from fedprune.config import load_config

    return load_config(args.config if args.preset is None else preset_path(args.preset), overrides, base)


WHERE_IT_RUNS = ("ray_address", "num_cpus_per_client")  # may change on --resume: same numbers


def _resumed_config(run_dir: Path, args: argparse.Namespace, overrides: list[str]) -> ExperimentConfig:
    """The config of the run in ``run_dir``; ``ConfigError`` naming the first field that
    ``--config``/``--preset``/``--set``/``--methods`` would change."""
    import json

    from fedprune.config import ConfigError

    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume: {run_dir} holds no run (no config.json)")
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"--resume: {path} is unreadable ({error})") from None
    cfg = _load(args, overrides, stored)
    changed = [key for key, value in cfg.to_dict().items()
               if stored.get(key) != value and key not in WHERE_IT_RUNS]
    if changed:
        key = changed[0]
        raise ConfigError(f"--resume: {key} differs from the run's config ({stored.get(key)!r} -> "
                          f"{cfg.to_dict()[key]!r}); a resumed run keeps its config")
    return cfg


def _check_writable(folder: Path) -> None:
    """``ConfigError`` naming ``--out`` unless ``folder`` can be created and written (an
    existing parent is checked, so nothing is created here)."""
    from fedprune.config import ConfigError

    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = "is not a folder" if not existing.is_dir() else "is not writable"
        raise ConfigError(f"--out: cannot write {folder}: {existing} {reason}")


def _report(args: argparse.Namespace) -> int:
    """``fedprune report``: does not import the simulator (fedprune.config pulls in flwr_datasets)."""
    from fedprune.analysis.report import write_report
    from fedprune.analysis.runs import RunError

    if args.out is None and len(args.run_dirs) > 1:
        return _fail("--out: required with several run folders", EXIT_BAD_INPUT)
    out_dir = Path(args.out) if args.out is not None else Path(args.run_dirs[0]) / "report"
    if out_dir.exists() and not out_dir.is_dir():
        return _fail(f"--out: {out_dir} exists and is not a folder", EXIT_BAD_INPUT)
    try:
        report = write_report(args.run_dirs, out_dir)
    except RunError as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    except OSError as error:
        return _fail(f"cannot write the report to {out_dir}: {error}", 1)
    print(f"report: {report}")
    return 0


def _fail(message: str, code: int) -> int:
    print(f"fedprune: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedprune`` console command; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "report":
        return _report(args)
    from fedprune.config import ConfigError
    from fedprune.sim.runner import RunInterrupted

    try:
        if args.command == "device":
            from fedprune.sim.device_cmd import run_device

            print(run_device(Path(args.run_dir)))
            print(f"\nwritten: {Path(args.run_dir) / 'device.md'}, {Path(args.run_dir) / 'device.json'}")
            return 0
        if args.command == "export":
            from fedprune.sim.export_cmd import run_export

            print(run_export(Path(args.run_dir), args.fmt, None if args.out is None else Path(args.out)))
            return 0
        return _run(args)
    except ConfigError as error:
        print(f"fedprune: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunInterrupted as error:
        print(f"fedprune: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("fedprune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as error:
        print(f"fedprune: error: {error}", file=sys.stderr)
        return 1


def console() -> None:
    """Console-script wrapper: exit with ``main``'s code."""
    sys.exit(main())


if __name__ == "__main__":
    console()
