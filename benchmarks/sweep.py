"""Choose settings on validation data: run every combination of a grid, rank by validation
accuracy, report test accuracy only for the chosen setting.

    python benchmarks/sweep.py --methods gmp,mi --grid local_epochs=2,5,10 \
        --grid prune_window=1-4,3-8 --grid learning_rate=0.05,0.1 \
        --set partitioner=dirichlet --set num_clients=20 --seeds 0 --out runs/sweep
    python benchmarks/sweep.py ... --json

Every run holds out ``--validation-fraction`` of each client's training part as its
validation part (``validation_fraction``); the test part is the same as without it. A
setting's score is the plain mean, over ``--methods`` and seeds, of the final-round mean
validation accuracy under ``--protocol`` (``trained``: each client's model right after its
local training; ``received``: as it holds it after the round's model arrives). The test
accuracy of the other settings is never printed. ``prune_window=a-b`` sets
``prune_start_round=a`` and ``prune_end_round=b``. Finished runs are reused, so an
interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
from pathlib import Path

KEYS = {"trained": ("personal_val_accuracy_trained_mean", "personal_accuracy_trained_mean"),
        "received": ("personal_val_accuracy_mean", "personal_accuracy_mean")}


def expand(grid: list[str]) -> list[dict[str, str]]:
    """The cartesian product of ``key=v1,v2`` axes, ``prune_window=a-b`` split in two keys;
    windows that end before they start are left out."""
    axes = []
    for item in grid:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"sweep: error: --grid {item!r}: expected key=v1,v2,...")
        axes.append([(key.strip(), v.strip()) for v in values.split(",") if v.strip()])
    settings = []
    for combination in itertools.product(*axes):
        setting: dict[str, str] = {}
        for key, value in combination:
            if key == "prune_window":
                start, _, end = value.partition("-")
                setting["prune_start_round"], setting["prune_end_round"] = start, end or start
            else:
                setting[key] = value
        if int(setting.get("prune_end_round", 1)) >= int(setting.get("prune_start_round", 1)):
            settings.append(setting)
    return settings


def slug(setting: dict[str, str]) -> str:
    """A folder name for ``setting``."""
    return "_".join(f"{k}-{v}" for k, v in sorted(setting.items())).replace("/", "-") or "defaults"


def run_once(setting: dict[str, str], seed: str, args: argparse.Namespace) -> list[dict]:
    """The summary rows of one run (run now unless ``--out`` already holds it)."""
    folder = Path(args.out) / slug(setting) / f"seed-{seed}"
    if not (folder / "summary.json").exists():
        command = [sys.executable, "-m", "fedprune.sim.cli", "run", "--no-report", "--out", str(folder),
                   "--methods", args.methods, "--set", f"seed={seed}",
                   "--set", f"validation_fraction={args.validation_fraction}"]
        for key, value in [*(s.split("=", 1) for s in args.overrides), *setting.items()]:
            command += ["--set", f"{key}={value}"]
        print(f"sweep: {slug(setting)} seed {seed} ...", file=sys.stderr, flush=True)
        if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:
            raise SystemExit(f"sweep: error: the run in {folder} failed")
    return json.loads((folder / "summary.json").read_text())["methods"]


def score(rows_by_seed: list[list[dict]], methods: list[str], key: str) -> dict[str, float]:
    """Per method, the mean over seeds of ``key``; and ``objective``, their plain mean."""
    result = {}
    for method in methods:
        values = [r[key] for rows in rows_by_seed for r in rows if r["method"] == method and r.get(key) is not None]
        if not values:
            raise SystemExit(f"sweep: error: no {key} for {method}: is validation_fraction > 0?")
        result[method] = statistics.fmean(values)
    result["objective"] = statistics.fmean(result[m] for m in methods)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", required=True, help="comma list; the objective is their mean")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="one axis (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a fixed setting for every run (repeatable)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--protocol", choices=tuple(KEYS), default="trained")
    parser.add_argument("--out", required=True, help="folder for the runs (reused when run again)")
    parser.add_argument("--json", action="store_true", help="print only a JSON list of rows")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    val_key, test_key = KEYS[args.protocol]
    rows = []
    for setting in expand(args.grid):
        runs = [run_once(setting, seed, args) for seed in args.seeds.split(",")]
        rows.append({"setting": setting, "validation": score(runs, methods, val_key), "runs": runs})
    rows.sort(key=lambda row: -row["validation"]["objective"])
    best = rows[0]
    best["test"] = score(best["runs"], methods, test_key)
    result = [{"setting": row["setting"], "validation": row["validation"], "chosen": row is best,
               **({"test": row["test"]} if row is best else {})} for row in rows]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{len(rows)} settings, seeds {args.seeds}, {args.protocol} protocol; validation accuracy "
          f"(mean over seeds), ranked by the mean over {', '.join(methods)}\n")
    print("| rank | " + " | ".join(sorted(best["setting"])) + " | " + " | ".join(methods) + " | objective |")
    print("|" + " --- |" * (2 + len(best["setting"]) + len(methods)))
    for rank, row in enumerate(result, 1):
        cells = [row["setting"].get(k, "") for k in sorted(best["setting"])]
        cells += [f"{row['validation'][m]:.4f}" for m in [*methods, "objective"]]
        print(f"| {rank} | " + " | ".join(cells) + " |")
    print(f"\nchosen: {best['setting']}; its test accuracy ({args.protocol}): "
          + ", ".join(f"{m} {best['test'][m]:.4f}" for m in methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
