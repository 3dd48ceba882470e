"""Seconds per round: Flower's deployment engine (scripts/deploy_local.sh) next to the simulation.

    python benchmarks/deploy_speed.py --rounds 2 --methods fedavg,gmp,mi --out runs/deploy-speed [--json]

Runs the same config (2 clients, the default digits experiment otherwise) on each engine:
``simulation`` (``fedprune run``, Ray), ``deploy`` (SuperLink + 2 SuperNodes, each with
fedprune's long-running executor) and ``deploy-flower`` (the same with Flower's own
one-process-per-message ClientApp, ``--flower-executor``). Seconds per round are the
ServerApp's own timing (summary ``seconds`` summed over methods, divided by rounds x
methods): start-up (Ray, SuperLink, SuperNodes) is not in it but is in ``wall s``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("simulation", "deploy", "deploy-flower")


def command(engine: str, rounds: int, methods: str, out: Path) -> list[str]:
    if engine == "simulation":
        return [sys.executable, "-m", "fedprune.sim.cli", "run", "--methods", methods, "--set", "num_clients=2",
                "--set", f"rounds={rounds}", "--out", str(out)]
    extra = ["--flower-executor"] if engine == "deploy-flower" else []
    return ["bash", str(ROOT / "scripts" / "deploy_local.sh"), str(rounds), str(out), "--methods", methods, *extra]


def measure(engine: str, rounds: int, methods: str, out: Path) -> dict:
    started = time.perf_counter()
    result = subprocess.run(command(engine, rounds, methods, out), cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{engine}: exit {result.returncode}: {(result.stderr or result.stdout).strip()[-500:]}")
    rows = json.loads((out / "summary.json").read_text())["methods"]
    seconds = sum(row["seconds"] for row in rows)
    return {"engine": engine, "rounds": rounds, "methods": [row["method"] for row in rows],
            "seconds_per_round": seconds / (rounds * len(rows)), "wall_seconds": wall,
            "accuracy": {row["method"]: row["personal_accuracy_mean"] for row in rows}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", default="fedavg,gmp,mi")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {', '.join(ENGINES)}")
    parser.add_argument("--out", type=Path, default=Path("runs/deploy-speed"))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"--engines: unknown {unknown}; allowed: {', '.join(ENGINES)}")
    results = [measure(e, args.rounds, args.methods, args.out / f"{e}-{time.strftime('%H%M%S')}") for e in engines]
    base = next((r["seconds_per_round"] for r in results if r["engine"] == "simulation"), None)
    for r in results:
        r["vs_simulation"] = None if base is None else r["seconds_per_round"] / base
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("| engine | s/round | x simulation | wall s | personal acc |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        ratio = "-" if r["vs_simulation"] is None else f"{r['vs_simulation']:.2f}"
        acc = ", ".join(f"{m} {a:.3f}" for m, a in r["accuracy"].items())
        print(f"| {r['engine']} | {r['seconds_per_round']:.2f} | {ratio} | {r['wall_seconds']:.0f} | {acc} |")


if __name__ == "__main__":
    main()
