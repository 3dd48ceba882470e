"""How fedprune scales with the number of clients: synthetic data, partial participation.

One ``fedprune run`` per setting (clients x sampled fraction x method), each in its own
process: ``dataset = "synthetic"`` (Synthetic(alpha, beta) with alpha = beta = 0.5), MLP
60-128-64-10, ``--rounds`` rounds (default 10) of 1 local epoch, ``fraction_train`` =
``fraction_evaluate`` = the sampled fraction (personal accuracy every 5 rounds; the last round
asks every client), pruning rounds 2 to 6 towards sparsity 0.8. While it runs, the resident
memory of the whole process tree (the CLI, Ray's processes and its workers, found with
psutil) is summed every 0.5 s; ``peak_rss_mb`` is the largest sum.

Columns: ``wall_s`` (the whole command: start-up, rounds, final evaluation of every client,
costs); from the rounds' own times (the progress lines): ``seconds_per_round`` (their
median: a training round), ``mean_round_s`` (their mean) and ``last_round_s`` (the last
round, which also asks every client for its personal accuracy); ``peak_rss_mb``;
``sparsity`` and ``participation_mean`` from the summary.

Usage::

    python benchmarks/scale.py                                 # 100, 1000, 10000 x 1%, 10% x gmp, mi
    python benchmarks/scale.py --clients 100,1000 --json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROUND_LINE = re.compile(r"^\[(?P<method>[\w-]+)\] round (?P<round>\d+)/\d+\s+(?P<seconds>[\d.]+)s")


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of ``process`` and all its descendants (processes gone meanwhile count 0)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_setting(clients: int, fraction: float, method: str, rounds: int, seed: int) -> dict:
    """One ``fedprune run``; its wall time, seconds per round, peak tree RSS and summary."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        settings = {"dataset": "synthetic", "synthetic_alpha": 0.5, "synthetic_beta": 0.5, "num_clients": clients,
                    "fraction_train": fraction, "fraction_evaluate": fraction, "rounds": rounds,
                    "local_epochs": 1, "evaluate_every": 5, "prune_start_round": 2, "prune_end_round": 6,
                    "final_sparsity": 0.8, "seed": seed, "round_timeout": 3600.0}
        command = [sys.executable, "-m", "fedprune.sim.cli", "run", "--no-report", "--methods", method,
                   "--out", str(out)] + [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        root = psutil.Process(child.pid)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss(root))
                done.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout, stderr = child.communicate()
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        if child.returncode != 0:
            tail = (stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{clients} clients, {fraction:.0%}, {method}: exit {child.returncode}: {tail}")
        seconds = [float(m["seconds"]) for line in stdout.splitlines() if (m := ROUND_LINE.match(line))]
        row = json.loads((out / "summary.json").read_text())["methods"][0]
    sampled = max(1, int(clients * fraction))
    return {"clients": clients, "sampled": sampled, "fraction": fraction, "method": method, "rounds": rounds,
            "wall_s": wall, "seconds_per_round": statistics.median(seconds) if seconds else None,
            "mean_round_s": statistics.fmean(seconds) if seconds else None,
            "last_round_s": seconds[-1] if seconds else None,
            "peak_rss_mb": peak / 1e6, "sparsity": row["sparsity"], "participation_mean": row["participation_mean"]}


def format_rows(rows: list[dict]) -> str:
    lines = ["| clients | sampled / round | method | rounds | wall s | s / round (median) | s / round (mean) | "
             "last round s | peak RSS MB | sparsity | rounds per client |", "|" + "---|" * 11]

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for r in rows:
        lines.append(f"| {r['clients']} | {r['sampled']} ({r['fraction']:.0%}) | {r['method']} | {r['rounds']} | "
                     f"{r['wall_s']:.0f} | {seconds(r['seconds_per_round'])} | {seconds(r['mean_round_s'])} | "
                     f"{seconds(r['last_round_s'])} | {r['peak_rss_mb']:.0f} | {r['sparsity']:.3f} | "
                     f"{r['participation_mean']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="100,1000,10000", help="comma-separated numbers of clients")
    parser.add_argument("--fractions", default="0.01,0.1", help="comma-separated sampled fractions")
    parser.add_argument("--methods", default="gmp,mi")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows only")
    args = parser.parse_args(argv)
    try:
        clients = [int(c) for c in args.clients.split(",") if c.strip()]
        fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    except ValueError:
        print("scale: --clients takes integers and --fractions numbers, comma-separated", file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not clients or min(clients) < 1 or not fractions or not all(0 < f <= 1 for f in fractions) or not methods:
        print("scale: --clients must be positive, --fractions in (0, 1], --methods non-empty", file=sys.stderr)
        return 2
    rows = []
    for n in clients:
        for fraction in fractions:
            for method in methods:
                rows.append(run_setting(n, fraction, method, args.rounds, args.seed))
                print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
