"""The seed paper's claim at equal sparsity: MiniLM on an SST-2 subsample, every method side by side.

    python benchmarks/seed_claim.py --out runs/seed-claim            # the full benchmark
    python benchmarks/seed_claim.py --out runs/seed-claim --json     # the rows as JSON
    python benchmarks/seed_claim.py --quick --out runs/seed-quick    # a tiny smoke run (tiny BERT)

The claim (Fan et al. 2021): at the same sparsity, squeezed layer-wise MI pruning gives both
a greater speedup and a higher accuracy than weight-based pruning (magnitude, movement).

Two settings, each at sparsity 0.5, 0.7 and 0.9:

- ``centralized``: one client holding every training example (1-client FedAvg is
  centralized training);
- ``federated``: 8 clients, Dirichlet(0.5) label skew, the same number of training examples
  in all (each client keeps ``examples / 8`` of its partition).

Methods: ``fedavg`` (dense reference), ``mi``, ``mi-post``, ``gmp``, ``movement``,
``soft-movement``, with one training budget (rounds, local epochs, learning rate, examples,
schedule) for all. Each (setting, sparsity) is one ``fedprune run`` with all its methods, so
every method shares the seed, the partition and the initial model. ``fedavg`` does not read
the sparsity: it runs in the first sparsity's run of each setting and its row is repeated
(same seed, same config otherwise: a seeded run is reproducible).

The schedule gives movement pruning the regime it is designed for (Sanh et al. 2020:
pruning during fine-tuning, cubic schedule after a warm-up, the mask fixed well before the
end): the cubic schedule starts at round 1 at sparsity 0 (round 1 is dense; the scores
accumulate over its steps), prunes to 7/8 of the target after round 2 and to the target
after round 3, and round 4 trains under the final mask. Minibatches of 16 give the scores
16 steps per round in the centralized setting (2 per client and round in the federated one,
whose clients hold 32 examples each: movement's scores see few steps there, by design of
the budget).

``--settings centralized-long`` (not in the default run) gives every method 8x the training
examples of ``centralized`` (2,048 sentences, the same 4 rounds): 128 steps per round, 384
before movement's mask is final, the regime closer to the one movement pruning is designed for
(Sanh et al. fine-tune for thousands of steps); ``--sparsities 0.9`` keeps it to the sparsity
the paper recommends soft movement for. ``--settings centralized-xl`` gives 32x (8,192
sentences): 512 steps per round, 1,536 before movement's mask is final, 2,048 in all, the
thousands of steps Sanh et al.'s regime asks for; with ``--methods mi,gmp,movement,soft-movement``
it took 58 minutes on the 2-core development machine.

Run folders go to ``--out``; an existing complete run is read, not run again, and an
interrupted one is resumed (``fedprune run --resume``), so the same command finishes a
benchmark that was stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedprune.analysis.table import markdown_table
from fedprune.clients.persist import StateStore
from fedprune.clients.state import ClientMemory
from fedprune.pruning.soft_movement import CONFIGURED_KEEPS, EFFECTIVE_THRESHOLD

SPARSITIES = (0.5, 0.7, 0.9)
PRUNED = ("mi", "mi-post", "gmp", "movement", "soft-movement")
DENSE = "fedavg"
METHODS = (DENSE, *PRUNED)  #: every method --methods may name, in run order
EXAMPLES, TEST_EXAMPLES = 256, 400
LONG_EXAMPLES = 2048
XL_EXAMPLES = 8192
FED_CLIENTS = 8

#: training and data settings shared by every run (the budget is the same for every method)
BASE: dict[str, Any] = {
    "seed": 0, "dataset": "text", "data_path": "../shared/data/sst2", "text_column": "sentence",
    "label_column": "label", "test_fraction": 0.2, "max_length": 32, "model": "transformer",
    "pretrained": "minilm", "freeze_embeddings": True, "rounds": 4, "evaluate_every": 4, "local_epochs": 1,
    "batch_size": 16, "optimizer": "adamw", "learning_rate": 2e-4, "prune_start_round": 1,
    "prune_end_round": 3, "mi_allocation": "kind", "mi_max_rows": 512, "finetune_epochs": 1,
    "finetune_learning_rate": 5e-5, "latency_tokens": 64,
}
SETTINGS: dict[str, dict[str, Any]] = {
    "centralized": {"num_clients": 1, "partitioner": "iid", "max_train_examples": EXAMPLES,
                    "max_test_examples": TEST_EXAMPLES},
    "federated": {"num_clients": FED_CLIENTS, "partitioner": "dirichlet", "dirichlet_alpha": 0.5,
                  "max_train_examples": EXAMPLES // FED_CLIENTS, "max_test_examples": TEST_EXAMPLES // FED_CLIENTS},
    # opt-in (--settings centralized-long): 8x the examples, so 128 steps per round and 384
    # before movement's mask is final; the same budget for every method
    "centralized-long": {"num_clients": 1, "partitioner": "iid", "max_train_examples": LONG_EXAMPLES,
                         "max_test_examples": TEST_EXAMPLES},
    # opt-in (--settings centralized-xl): 32x the examples, so 512 steps per round and 1,536
    # before movement's mask is final
    "centralized-xl": {"num_clients": 1, "partitioner": "iid", "max_train_examples": XL_EXAMPLES,
                       "max_test_examples": TEST_EXAMPLES},
}
#: --quick: a random 2-layer BERT on a generated TSV, 1 round each, to check the wiring
QUICK: dict[str, Any] = {"pretrained": "tiny-bert", "rounds": 2, "evaluate_every": 2, "local_epochs": 1,
                         "prune_start_round": 1, "prune_end_round": 1, "max_length": 16, "mi_max_rows": 64,
                         "learning_rate": 1e-3}
QUICK_SETTINGS: dict[str, dict[str, Any]] = {
    "centralized": {"num_clients": 1, "partitioner": "iid", "max_train_examples": 32, "max_test_examples": 16},
    "federated": {"num_clients": 2, "partitioner": "iid", "max_train_examples": 16, "max_test_examples": 8},
    "centralized-long": {"num_clients": 1, "partitioner": "iid", "max_train_examples": 64, "max_test_examples": 16},
    "centralized-xl": {"num_clients": 1, "partitioner": "iid", "max_train_examples": 128, "max_test_examples": 16},
}
#: a row is marked "near chance" when both accuracy means are at most 0.5 + this (two classes;
#: SST-2's majority class is about 56% of its sentences)
CHANCE_MARGIN = 0.1
#: (header, key, scale, format) of the table's columns
COLUMNS = (
    ("received mean", "personal_accuracy_mean", 1.0, "{:.3f}"),
    ("received min", "personal_accuracy_min", 1.0, "{:.3f}"),
    ("trained mean", "personal_accuracy_trained_mean", 1.0, "{:.3f}"),
    ("trained min", "personal_accuracy_trained_min", 1.0, "{:.3f}"),
    ("sparsity", "sparsity", 1.0, "{:.3f}"),
    ("GFLOPs/ex", "flops_mean", 1e-9, "{:.3f}"),
    ("speedup", "speedup_mean", 1.0, "{:.2f}"),
    ("latency ms", "latency_ms_mean", 1.0, "{:.0f}"),
    ("MB up+down", "megabytes", 1.0, "{:.1f}"),
)


def toml_line(key: str, value: Any) -> str:
    """``key = value`` for flat TOML values (strings, numbers, booleans, lists of them)."""
    return f"{key} = {json.dumps(value)}"


def run_config(setting: str, sparsity: float, methods: list[str], quick: bool, data_path: str) -> dict[str, Any]:
    """The flat config of one (setting, sparsity) run."""
    config = {**BASE, **(SETTINGS if not quick else QUICK_SETTINGS)[setting], **(QUICK if quick else {})}
    return {**config, "data_path": data_path, "final_sparsity": sparsity, "methods": methods}


def speedups(run_dir: Path) -> dict[str, float]:
    """Per method: the mean over clients of dense latency / personal-model latency (rounds.jsonl)."""
    found: dict[str, list[float]] = {}
    with (run_dir / "rounds.jsonl").open() as lines:
        for line in lines:
            record = json.loads(line)
            if record.get("phase") == "device":
                found.setdefault(record["method"], []).append(record["speedup"])
    return {method: statistics.fmean(values) for method, values in found.items()}


def rows_of(run_dir: Path, setting: str, sparsity: float) -> list[dict]:
    """The benchmark rows of one complete run folder (summary.json plus measured speedups)."""
    summary = json.loads((run_dir / "summary.json").read_text())["methods"]
    speed = speedups(run_dir)
    rows = [{**row, "setting": setting, "target_sparsity": sparsity, "speedup_mean": speed.get(row["method"]),
             "megabytes": (row["bytes_up"] + row["bytes_down"]) / 1e6} for row in summary]
    for row in rows:
        if row["method"] == "soft-movement":
            row["soft_movement"] = soft_movement_thresholds(run_dir, row.get("clients", 1))
    return rows


def soft_movement_thresholds(run_dir: Path, clients: int) -> dict[str, float] | None:
    """``soft-movement``'s last pruning step, as its clients kept it (the checkpoint's client
    states): the mean over clients of the threshold on sigmoid(S) it used and of the share of
    the allowed entries that the configured threshold alone would have kept (None if absent)."""
    store = StateStore(run_dir / "checkpoint" / "clients")
    used, configured = [], []
    for partition in range(clients):
        state = store.load_before(partition, (10**9, 0))
        kept = None if state is None else ClientMemory(state, "soft-movement").pruner_state()
        if kept and EFFECTIVE_THRESHOLD in kept:
            used.append(float(kept[EFFECTIVE_THRESHOLD]))
            configured.append(float(kept[CONFIGURED_KEEPS]))
    if not used:
        return None
    return {"effective_threshold": statistics.fmean(used), "configured_keeps": statistics.fmean(configured)}


def chance_note(row: dict, chance: float = 0.5) -> str:
    """``near chance`` for a centralized row whose accuracy means are both at most
    ``chance + CHANCE_MARGIN`` (a label-skewed federated client's own majority class can score
    far higher, so federated rows get no note)."""
    if not row["setting"].startswith("centralized"):
        return ""
    values = [row.get("personal_accuracy_mean"), row.get("personal_accuracy_trained_mean")]
    if all(v is not None and v <= chance + CHANCE_MARGIN for v in values):
        return "near chance"
    return ""


def _cell(row: dict, key: str, scale: float, fmt: str) -> str:
    value = row.get(key)
    return "-" if value is None else fmt.format(value * scale)


def table(rows: list[dict]) -> str:
    """Markdown table: one line per (setting, sparsity, method), dense first, then the pruned methods."""
    header = ["setting", "sparsity", "method", *(h for h, *_ in COLUMNS), "note"]
    return markdown_table(header, [
        [row["setting"], str(row["target_sparsity"]), row["method"],
         *(_cell(row, key, scale, fmt) for _, key, scale, fmt in COLUMNS),
         chance_note(row)]
        for row in rows])


def beats(mine: dict, others: list[dict], key: str) -> bool | None:
    """Whether ``mine[key]`` exceeds every other row's (None where a value is missing)."""
    values = [r.get(key) for r in others]
    if mine.get(key) is None or any(v is None for v in values):
        return None
    return all(mine[key] > v for v in values)


def claim_checks(rows: list[dict]) -> list[dict]:
    """Per (setting, sparsity): does ``mi`` (and ``mi-post``) beat every weight-based method in
    both speedup and accuracy (trained and received means)? ``mi-post``'s trained column is
    its dense training model (FedAvg's), not a pruned one: its trained check is None."""
    checks = []
    for setting, sparsity in sorted({(r["setting"], r["target_sparsity"]) for r in rows}):
        group = {r["method"]: r for r in rows if (r["setting"], r["target_sparsity"]) == (setting, sparsity)}
        weight = [group[m] for m in ("gmp", "movement", "soft-movement") if m in group]
        for mi in ("mi", "mi-post"):
            if mi in group and weight:
                checks.append({"setting": setting, "sparsity": sparsity, "method": mi,
                               "faster": beats(group[mi], weight, "speedup_mean"),
                               "more_accurate_received": beats(group[mi], weight, "personal_accuracy_mean"),
                               "more_accurate_trained": None if mi == "mi-post"
                               else beats(group[mi], weight, "personal_accuracy_trained_mean")})
    return checks


def claim_table(checks: list[dict]) -> str:
    """Markdown: per (setting, sparsity, mi method), whether it is faster and more accurate than all weight-based."""
    word = {True: "yes", False: "no", None: "-"}  # "-": a value is missing or (mi-post, trained) not pruned
    lines = ["| setting | sparsity | method | faster than all weight-based | more accurate (received) | "
             "more accurate (trained) |", "| --- | --- | --- | --- | --- | --- |"]
    for c in checks:
        lines.append(f"| {c['setting']} | {c['sparsity']} | {c['method']} | {word[c['faster']]} | "
                     f"{word[c['more_accurate_received']]} | {word[c['more_accurate_trained']]} |")
    return "\n".join(lines)


def _run(run_dir: Path, config: dict[str, Any], config_dir: Path) -> int:
    """``fedprune run`` for one config (resumed where a run was interrupted); its exit code."""
    if (run_dir / "summary.json").exists():
        return 0
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"{run_dir.name}.toml"
    path.write_text("\n".join(toml_line(k, v) for k, v in config.items()) + "\n")
    command = [sys.executable, "-m", "fedprune.sim.cli", "run", "--no-report", "--config", str(path)]
    command += ["--resume", str(run_dir)] if run_dir.exists() else ["--out", str(run_dir)]
    print(f"running {run_dir.name} ({', '.join(config['methods'])}) ...", file=sys.stderr, flush=True)
    return subprocess.run(command, stdout=sys.stderr).returncode


def quick_data(folder: Path) -> str:
    """A tiny two-class GLUE-style TSV folder (``train.tsv``) for --quick; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    good = ["a fine warm film", "great and moving", "a lovely story", "bright funny work"]
    bad = ["a dull flat mess", "boring and slow", "a weak plot", "tired empty work"]
    lines = ["sentence\tlabel"]
    for i in range(40):
        lines.append(f"{good[i % 4]} {i}\t1")
        lines.append(f"{bad[i % 4]} {i}\t0")
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/seed-claim", help="folder of the run folders")
    parser.add_argument("--json", action="store_true", help="print the rows (and the claim checks) as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: random tiny BERT on generated text")
    parser.add_argument("--settings", default="centralized,federated",
                        help="comma list of: " + ", ".join(SETTINGS))
    parser.add_argument("--sparsities", default=",".join(str(s) for s in SPARSITIES))
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma list of: " + ", ".join(METHODS) + " (default: all)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        print(f"seed_claim: --settings: unknown {unknown[0]!r}; allowed: {', '.join(SETTINGS)}", file=sys.stderr)
        return 2
    chosen = [m for m in args.methods.split(",") if m]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        print(f"seed_claim: --methods: unknown {(unknown or [''])[0]!r}; allowed: {', '.join(METHODS)}",
              file=sys.stderr)
        return 2
    try:
        sparsities = [float(s) for s in args.sparsities.split(",") if s]
    except ValueError:
        print(f"seed_claim: --sparsities: {args.sparsities!r} is not a comma list of numbers", file=sys.stderr)
        return 2
    data_path = quick_data(out / "data") if args.quick else str(BASE["data_path"])
    started = time.perf_counter()
    rows: list[dict] = []
    for setting in settings:
        dense_rows: list[dict] = []
        for index, sparsity in enumerate(sparsities):
            methods = [m for m in ([DENSE] if index == 0 else []) + list(PRUNED) if m in chosen]
            rows += [{**r, "target_sparsity": sparsity} for r in dense_rows] if index else []
            if not methods:  # --methods fedavg: nothing to run at the later sparsities
                continue
            run_dir = out / f"{setting}-s{sparsity}"
            code = _run(run_dir, run_config(setting, sparsity, methods, args.quick, data_path), out / "configs")
            if code != 0:
                print(f"seed_claim: {run_dir} failed (exit {code}); rerun the same command to resume it",
                      file=sys.stderr)
                return code
            found = rows_of(run_dir, setting, sparsity)
            dense_rows = dense_rows or [{**r, "target_sparsity": sparsity} for r in found if r["method"] == DENSE]
            rows += found
    checks = claim_checks(rows)
    if args.json:
        print(json.dumps({"rows": rows, "claim": checks}, indent=2))
        return 0
    shape = QUICK_SETTINGS if args.quick else SETTINGS
    subsample = "; ".join(f"{name}: {s['num_clients']} client(s) x {s['max_train_examples']} train / "
                          f"{s['max_test_examples']} test examples" for name, s in shape.items() if name in settings)
    data = "generated two-class text (tiny BERT)" if args.quick else "SST-2 subsample"
    print(f"seed claim ({'quick' if args.quick else 'full'}); {data}: {subsample}; "
          f"{time.perf_counter() - started:.0f} s in this call\n")
    print(table(rows))
    if any(chance_note(r) for r in rows):
        print(f"\nnear chance: both accuracy means <= {0.5 + CHANCE_MARGIN:.2f} on two balanced-ish classes "
              "(centralized rows only; a label-skewed client's own majority class can score far higher)")
    soft = [r for r in rows if r.get("soft_movement")]
    if soft:
        print("\nsoft-movement's last pruning step (mean over clients): the threshold on sigmoid(S) it used, "
              "and the share of the allowed entries that sigmoid(S) > soft_movement_threshold alone would keep")
        for r in soft:
            print(f"  {r['setting']} {r['target_sparsity']}: used {r['soft_movement']['effective_threshold']:.4f}, "
                  f"configured threshold keeps {r['soft_movement']['configured_keeps']:.3f}")
    print()
    print(claim_table(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
