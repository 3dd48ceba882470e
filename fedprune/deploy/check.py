"""Check a ``flwr run --run-config`` string before submitting it: the ServerApp's reading, early.

``flwr run`` submits a run and exits 0 even when the ServerApp then fails on its config
(Flower logs exit code 700). ``python -m fedprune.deploy.check --run-config "rounds=-1"``
reads the string the way Flower does (``parse_config_args`` over the app's
``[tool.flwr.app.config]``) and the way the ServerApp does (``config_from_run_config``);
it prints nothing and exits 0 for a good config, else one line naming the key and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flwr.common.config import flatten_dict, fuse_dicts, get_project_config, parse_config_args

from fedprune.config import config_from_run_config


def fused_run_config(run_config: str | list[str], app_dir: Path) -> dict[str, Any]:
    """The app's ``[tool.flwr.app.config]`` with ``run_config`` (``'k=v k2=v2'``, or several such
    strings, later ones winning, as ``flwr run --run-config A --run-config B``) over it.

    Raises ``ValueError`` (one line) for a malformed string or a key the app does not list.
    """
    defaults = flatten_dict(get_project_config(app_dir)["tool"]["flwr"]["app"].get("config", {}))
    try:
        overrides = parse_config_args([run_config] if isinstance(run_config, str) else run_config)
    except Exception as error:  # click.ClickException for values TOML cannot read
        raise ValueError(f"--run-config: cannot parse {run_config!r}: values must be TOML "
                         f"(numbers, true/false, 'quoted strings')") from error
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"--run-config: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(defaults))}")
    return dict(fuse_dicts(defaults, overrides))


def check(run_config: str | list[str], app_dir: Path) -> None:
    """Raise ``ValueError`` (one line) if the ServerApp would refuse ``run_config``."""
    fused = fused_run_config(run_config, app_dir)
    config_from_run_config(fused)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedprune.deploy.check", description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", action="append", default=[],
                        help="a string given to flwr run --run-config (repeatable; later ones win)")
    parser.add_argument("--app", type=Path, default=Path("."), help="the Flower app folder (pyproject.toml)")
    args = parser.parse_args(argv)
    try:
        check(args.run_config, args.app)
    except (ValueError, OSError) as error:
        print(f"fedprune: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
