"""fedprune's cost over plain Flower: the same dense FedAvg workload run by both, interleaved.

The workload: scikit-learn's digits split IID over N clients (Flower Datasets'
``IidPartitioner``, 20% of each client's part held out for its test), the MLP 64-128-64-10,
dense FedAvg with every client sampled, R rounds of ``--epochs`` local epochs of SGD
(batch 32, learning rate 0.05, momentum 0.9, one torch thread per client), every client
evaluated after every round and the global model scored on the union of the clients' test
parts, on Flower's Ray simulation engine with 1 CPU per client.

* ``fedprune``: ``fedprune.sim.runner.simulate`` with ``methods = ["fedavg"]`` (the CLI's path,
  its run folder in a temporary directory).
* ``plain``: a minimal Flower app written here: a ``ServerApp`` running Flower's own
  ``FedAvg`` strategy and a ``ClientApp`` that trains and evaluates the same MLP.

Each run is its own process (a fresh Ray), fedprune and plain alternating, ``--repeats``
times per N. Both time the same points: ``Strategy.start`` calls its ``evaluate_fn`` before
the first round and after every round. The client actors start while the server already
runs (plain Flower's first round waits for them, fedprune's partition query does), so the
first round is counted as start-up: seconds per round are (end of round R - end of round 1)
/ (R - 1), and start-up is the time from just before ``run_simulation`` to the end of round 1
less one such round (Ray, the actors, fedprune's partition query, first contact). R >= 2.
Rows report the median over repeats; ``ratio`` is fedprune's seconds per round over plain
Flower's.

Usage::

    python benchmarks/overhead.py                          # N = 10, 50; 3 rounds; table
    python benchmarks/overhead.py --clients 10 --rounds 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

WIDTHS = (128, 64)
BATCH, LR, MOMENTUM, TEST_FRACTION = 32, 0.05, 0.9, 0.2
TARGET = 1.10
APPS = ("fedprune", "plain")


# ---- the plain Flower app ------------------------------------------------------------------
def _mlp():  # type: ignore[no-untyped-def]
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    previous = 64
    for width in WIDTHS:
        layers += [nn.Linear(previous, width), nn.ReLU()]
        previous = width
    return nn.Sequential(*layers, nn.Linear(previous, 10))


@lru_cache(maxsize=1)
def _digits():  # type: ignore[no-untyped-def]
    import datasets
    from sklearn.datasets import load_digits

    raw = load_digits()
    return datasets.Dataset.from_dict({"features": (raw.data / 16.0).astype("float32").tolist(),
                                       "label": raw.target.tolist()})


@lru_cache(maxsize=1)
def _all_parts(clients: int, seed: int) -> list:
    """Every client's (train x, train y, test x, test y), split once per process (as fedprune does)."""
    import torch
    from flwr_datasets.partitioner import IidPartitioner

    splitter = IidPartitioner(num_partitions=clients)
    splitter.dataset = _digits()

    def tensors(table):  # type: ignore[no-untyped-def]
        table = table.with_format("numpy")
        return torch.from_numpy(table["features"][:]).float(), torch.from_numpy(table["label"][:]).long()

    parts = []
    for partition in range(clients):
        split = splitter.load_partition(partition).train_test_split(test_size=TEST_FRACTION, seed=seed + partition)
        parts.append((*tensors(split["train"]), *tensors(split["test"])))
    return parts


def _client_part(partition: int, clients: int, seed: int):  # type: ignore[no-untyped-def]
    return _all_parts(clients, seed)[partition]


def _accuracy(model, x, y) -> float:  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        model.eval()
        return float((model(x).argmax(dim=1) == y).float().mean()) if len(y) else 0.0


def plain_apps(clients: int, rounds: int, epochs: int, seed: int, marks: list[float]):  # type: ignore[no-untyped-def]
    """A ServerApp (Flower's FedAvg) and a ClientApp for the workload; ``marks`` receives the
    time of every ``evaluate_fn`` call."""
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    client_app = ClientApp()

    def local(message: Message, context: Context):  # type: ignore[no-untyped-def]
        torch.set_num_threads(1)
        part = _client_part(int(context.node_config["partition-id"]), clients, seed)
        model = _mlp()
        model.load_state_dict(message.content["arrays"].to_torch_state_dict())
        return model, part

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        model, (x, y, _, _) = local(message, context)
        step = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        generator = torch.Generator().manual_seed(seed + int(context.node_config["partition-id"]))
        loss_fn, total = torch.nn.CrossEntropyLoss(), 0.0
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), BATCH):
                batch = order[start:start + BATCH]
                step.zero_grad()
                loss = loss_fn(model(x[batch]), y[batch])
                loss.backward()
                step.step()
                total += loss.item() * len(batch)
        metrics = MetricRecord({"num-examples": len(y), "train-loss": total / max(1, epochs * len(y))})
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                       reply_to=message)

    @client_app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        model, (_, _, x, y) = local(message, context)
        metrics = MetricRecord({"num-examples": len(y), "accuracy": _accuracy(model, x, y)})
        return Message(RecordDict({"metrics": metrics}), reply_to=message)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(seed)
        union = _all_parts(clients, seed)
        test_x, test_y = torch.cat([u[2] for u in union]), torch.cat([u[3] for u in union])

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            marks.append(time.perf_counter())
            model = _mlp()
            model.load_state_dict(arrays.to_torch_state_dict())
            return MetricRecord({"accuracy": _accuracy(model, test_x, test_y)})

        FedAvg(fraction_train=1.0, fraction_evaluate=1.0).start(
            grid, ArrayRecord(_mlp().state_dict()), num_rounds=rounds, evaluate_fn=central)

    return server_app, client_app


# ---- one run per process -----------------------------------------------------------------
def worker(app: str, clients: int, rounds: int, epochs: int, seed: int) -> dict:
    """Run the workload once with ``app``; its start-up and per-round seconds."""
    from fedprune.config import make_config

    cfg = make_config({"methods": ["fedavg"], "dataset": "digits", "model": "mlp", "mlp_widths": list(WIDTHS),
                       "partitioner": "iid", "num_clients": clients, "rounds": rounds, "local_epochs": epochs,
                       "batch_size": BATCH, "learning_rate": LR, "momentum": MOMENTUM,
                       "test_fraction": TEST_FRACTION, "seed": seed})
    marks: list[float] = []
    started = time.perf_counter()
    if app == "fedprune":
        from fedprune.server import experiment
        from fedprune.sim.runner import simulate

        class TimedRoundEnd(experiment.RoundEnd):
            def __call__(self, server_round, arrays):  # type: ignore[no-untyped-def]
                marks.append(time.perf_counter())
                return super().__call__(server_round, arrays)

        experiment.RoundEnd = TimedRoundEnd  # type: ignore[misc]
        with tempfile.TemporaryDirectory() as folder:
            simulate(cfg, Path(folder) / "run")
    else:
        from flwr.simulation import run_simulation

        from fedprune.sim.runner import _quiet_logging, backend_config

        _quiet_logging()
        server_app, client_app = plain_apps(clients, rounds, epochs, seed, marks)
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=clients,
                       backend_config=backend_config(cfg))
        import ray

        ray.shutdown()
    if len(marks) != rounds + 1:
        raise RuntimeError(f"{app}: expected {rounds + 1} evaluate_fn calls, got {len(marks)}")
    steady = (marks[-1] - marks[1]) / (rounds - 1)
    return {"startup_s": marks[1] - started - steady, "round_s": steady}


def run_once(app: str, clients: int, rounds: int, epochs: int, seed: int) -> dict:
    """``worker`` in a fresh process (its own Ray)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--worker", app, "--clients", str(clients), "--rounds", str(rounds),
                   "--epochs", str(epochs), "--seed", str(seed), "--result", out.name]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{app} with {clients} clients failed: {tail[0]}")
        return json.loads(Path(out.name).read_text())


def measure(clients: list[int], rounds: int, epochs: int, repeats: int, seed: int) -> list[dict]:
    rows = []
    for n in clients:
        runs: dict[str, list[dict]] = {app: [] for app in APPS}
        for repeat in range(repeats):
            for app in (APPS if repeat % 2 == 0 else APPS[::-1]):  # interleaved, alternating order
                runs[app].append(run_once(app, n, rounds, epochs, seed))
                print(f"  {app:8s} N={n}: {runs[app][-1]}", file=sys.stderr, flush=True)
        med = {app: {key: statistics.median(r[key] for r in runs[app]) for key in ("startup_s", "round_s")}
               for app in APPS}
        rows.append({"clients": n, "rounds": rounds, "epochs": epochs, "repeats": repeats,
                     "fedprune_startup_s": med["fedprune"]["startup_s"], "plain_startup_s": med["plain"]["startup_s"],
                     "fedprune_round_s": med["fedprune"]["round_s"], "plain_round_s": med["plain"]["round_s"],
                     "startup_ratio": med["fedprune"]["startup_s"] / med["plain"]["startup_s"],
                     "ratio": med["fedprune"]["round_s"] / med["plain"]["round_s"]})
    return rows


def format_rows(rows: list[dict]) -> str:
    head = ("| clients | rounds | epochs | start-up fedprune s | start-up plain s | start-up ratio | "
            "s/round fedprune | s/round plain | ratio |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        flag = "" if r["ratio"] <= TARGET else " (above 1.10)"
        lines.append(f"| {r['clients']} | {r['rounds']} | {r['epochs']} | {r['fedprune_startup_s']:.2f} | "
                     f"{r['plain_startup_s']:.2f} | {r['startup_ratio']:.2f} | {r['fedprune_round_s']:.3f} | "
                     f"{r['plain_round_s']:.3f} | {r['ratio']:.2f}{flag} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="10,50", help="comma-separated numbers of clients")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each app per N (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows only")
    parser.add_argument("--worker", choices=APPS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        Path(args.result).write_text(json.dumps(worker(args.worker, int(args.clients), args.rounds, args.epochs,
                                                       args.seed)))
        return 0
    try:
        clients = [int(part) for part in args.clients.split(",") if part.strip()]
    except ValueError:
        print(f"overhead: --clients: expected comma-separated integers, got {args.clients!r}", file=sys.stderr)
        return 2
    if not clients or min(clients) < 1 or args.rounds < 2 or args.epochs < 1 or args.repeats < 1:
        print("overhead: --clients, --epochs and --repeats must be positive, --rounds at least 2", file=sys.stderr)
        return 2
    rows = measure(clients, args.rounds, args.epochs, args.repeats, args.seed)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
