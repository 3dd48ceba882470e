"""What a checkpoint of many clients costs: disk bytes and seconds to save and load.

    python benchmarks/checkpoint_cost.py                   # 1,000 clients, default MLP, sparsity 0.8
    python benchmarks/checkpoint_cost.py --clients 100 --json

Builds, for every client, the ``Context.state`` a client keeps (``ClientMemory``) for the
default model at ``--sparsity``, in two kinds:

- ``mask``: its personal mask (what ``gmp``, ``mi`` and most pruned methods keep);
- ``mask+model+scores``: the mask, its own full-size tensors (personal layers, random
  partial updates, ``local-*``) and movement scores of every weight (``movement``), the most a
  client keeps;

and the server's checkpoint with every client's mask (``server.pt``). It times
``StateStore.save`` for all clients (what the clients write after a round, one file each,
fsync'd), ``StateStore.load_before`` for all (a resume), and ``save_checkpoint`` /
``load_checkpoint``. Seconds are this machine's (median of ``--repeats``); bytes are exact.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import RecordDict

from fedprune.clients.persist import StateStore
from fedprune.clients.state import ClientMemory
from fedprune.config import make_config
from fedprune.models.factory import initial_model
from fedprune.pruning import magnitude_masks
from fedprune.server.checkpoint import Checkpoint, checkpoint_path, load_checkpoint, save_checkpoint

KINDS = ("mask", "mask+model+scores")


def client_state(kind: str, model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> RecordDict:
    """The ``Context.state`` of one client of ``kind`` (see the module docstring)."""
    state = RecordDict()
    memory = ClientMemory(state, "gmp")
    memory.save_mask(masks)
    if kind == "mask+model+scores":
        memory.save_model({k: v.detach().clone() for k, v in model.state_dict().items()})
        memory.save_pruner_state({name: torch.randn_like(mask, dtype=torch.float32) for name, mask in masks.items()})
    return state


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def timed(action: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``action`` over ``repeats`` runs."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def time_clients(store: StateStore, state: RecordDict, clients: int, repeats: int) -> tuple[float, float]:
    """Median seconds to save ``state`` for every client (one step), and to load them all."""
    steps = iter(range(1, 10_000))

    def save_all() -> None:
        step = (0, next(steps))
        for partition in range(clients):
            store.save(partition, step, state)

    return timed(save_all, repeats), timed(lambda: [store.load_before(p, (0, 10_000)) for p in range(clients)],
                                           repeats)


def measure(clients: int, sparsity: float, repeats: int) -> list[dict]:
    cfg = make_config({})
    model = initial_model(cfg, "full")
    weights = {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters() if p.dim() > 1}
    masks = magnitude_masks(model, weights, sparsity)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            store = StateStore(Path(tmp) / kind)
            save_s, load_s = time_clients(store, client_state(kind, model, masks), clients, repeats)
            size = folder_bytes(store._dir(0)) // max(1, len(store.steps(0)))
            rows.append({"what": f"clients ({kind})", "clients": clients, "bytes": size * clients,
                         "bytes_on_disk": 2 * size * clients, "save_s": save_s, "load_s": load_s})
        server_dir = Path(tmp) / "server"
        strategy = {"client_masks": {p: {k: v.clone() for k, v in masks.items()} for p in range(clients)}}
        checkpoint = Checkpoint(rounds=20, method="gmp", round=1, arrays=dict(model.state_dict()), strategy=strategy)
        save_s = timed(lambda: save_checkpoint(server_dir, checkpoint), repeats)
        load_s = timed(lambda: load_checkpoint(server_dir), repeats)
        size = checkpoint_path(server_dir).stat().st_size
        rows.append({"what": "server.pt (every client's mask)", "clients": clients, "bytes": size,
                     "bytes_on_disk": size, "save_s": save_s, "load_s": load_s})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| what | clients | MB written per round | MB kept on disk | save s | load s |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['what']} | {r['clients']} | {r['bytes'] / 1e6:.2f} | {r['bytes_on_disk'] / 1e6:.2f} | "
              f"{r['save_s']:.3f} | {r['load_s']:.3f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args()
    rows = measure(args.clients, args.sparsity, args.repeats)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))


if __name__ == "__main__":
    main()
