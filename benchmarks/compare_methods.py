"""Compare methods over several seeds: runs `fedprune run` once per seed, prints mean (std).

    python benchmarks/compare_methods.py --methods fedavg,gmp,mi --seeds 0,1,2 \
        --set final_sparsity=0.8 --out runs/compare
    python benchmarks/compare_methods.py --preset amazon-minilm --methods fedavg,mi --seeds 0,1 \
        --out runs/amazon-seeds
    python benchmarks/compare_methods.py --methods fedavg,gmp --seeds 0,1 --out runs/cmp --json

Each seed is a separate run (the partition depends on the seed); all methods of one seed
share it. Accuracy, bytes and FLOPs are deterministic per seed; latency and seconds are
measurements on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

COLUMNS = (
    ("received mean", "personal_accuracy_mean", 1.0, "{:.4f}"),
    ("received min", "personal_accuracy_min", 1.0, "{:.4f}"),
    ("trained mean", "personal_accuracy_trained_mean", 1.0, "{:.4f}"),
    ("trained min", "personal_accuracy_trained_min", 1.0, "{:.4f}"),
    ("global acc", "global_accuracy", 1.0, "{:.4f}"),
    ("MB up", "bytes_up", 1e-6, "{:.3f}"),
    ("MB down", "bytes_down", 1e-6, "{:.3f}"),
    ("sparsity", "sparsity", 1.0, "{:.3f}"),
    ("mask overlap", "mask_jaccard", 1.0, "{:.2f}"),
    ("init overlap", "initial_magnitude_overlap", 1.0, "{:.2f}"),
    ("latency ms", "latency_ms_mean", 1.0, "{:.4f}"),
    ("kFLOPs/ex", "flops_mean", 1e-3, "{:.1f}"),
)


def _stats(values: list[float | None]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value) of the values present."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def _cell(values: list[float | None], scale: float, fmt: str) -> str:
    stats = _stats(values)
    if stats is None:
        return "-"
    return f"{fmt.format(stats[0] * scale)} ({fmt.format(stats[1] * scale)})"


def json_rows(rows_by_seed: list[list[dict]]) -> list[dict]:
    """One object per method: ``seeds`` and, per column key, ``{"mean": ..., "std": ...}`` (unscaled)."""
    result = []
    for method in [row["method"] for row in rows_by_seed[0]]:
        rows = [next(r for r in seed_rows if r["method"] == method) for seed_rows in rows_by_seed]
        entry: dict = {"method": method, "seeds": len(rows)}
        for _, key, _, _ in COLUMNS:
            stats = _stats([r.get(key) for r in rows])
            entry[key] = None if stats is None else {"mean": stats[0], "std": stats[1]}
        result.append(entry)
    return result


def table(rows_by_seed: list[list[dict]]) -> str:
    """Markdown table: one line per method, mean (std) over seeds."""
    methods = [row["method"] for row in rows_by_seed[0]]
    lines = ["| method | " + " | ".join(h for h, *_ in COLUMNS) + " |",
             "| --- |" + " --- |" * len(COLUMNS)]
    for method in methods:
        rows = [next(r for r in seed_rows if r["method"] == method) for seed_rows in rows_by_seed]
        cells = [_cell([r.get(key) for r in rows], scale, fmt) for _, key, scale, fmt in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", help="comma list (default: the config's or preset's methods)")
    parser.add_argument("--seeds", default="0,1,2")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="TOML config passed to every run")
    source.add_argument("--preset", help="named preset passed to every run (fedprune run --preset)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", required=True, help="folder for the per-seed run folders")
    parser.add_argument("--json", action="store_true", help="print only a JSON list of rows (one per method)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows_by_seed = []
    for seed in args.seeds.split(","):
        run_dir = out / f"seed-{seed}"
        if not (run_dir / "summary.json").exists():
            command = [sys.executable, "-m", "fedprune.sim.cli", "run", "--no-report",
                       "--out", str(run_dir), "--set", f"seed={seed}"]
            if args.methods:
                command += ["--methods", args.methods]
            if args.config or args.preset:
                command += ["--config", args.config] if args.config else ["--preset", args.preset]
            for override in args.overrides:
                command += ["--set", override]
            print(f"running seed {seed} ...", file=sys.stderr, flush=True)
            result = subprocess.run(command, stdout=subprocess.DEVNULL)
            if result.returncode != 0:
                return result.returncode
        rows_by_seed.append(json.loads((run_dir / "summary.json").read_text())["methods"])
    if args.json:
        print(json.dumps(json_rows(rows_by_seed), indent=2))
        return 0
    base = f"config {args.config}" if args.config else f"preset {args.preset}" if args.preset else "defaults"
    settings = ", ".join([base, *args.overrides])
    print(f"{len(rows_by_seed)} seeds ({args.seeds}); {settings}; mean (std)\n")
    print(table(rows_by_seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
