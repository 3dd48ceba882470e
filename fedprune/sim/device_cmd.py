"""``fedprune device RUN_DIR``: measure every client's personal model of a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fedprune.analysis.table import markdown_table
from fedprune.config import ConfigError, ExperimentConfig, make_config
from fedprune.device import keep_freed_memory
from fedprune.device.budget import within_budget
from fedprune.device.profiles import profile_threads, profiles_of
from fedprune.methods import METHODS
from fedprune.models.factory import new_model
from fedprune.pruning.masks import mask_sparsity, prunable_names
from fedprune.server.costs import personal_costs
from fedprune.server.records import STATUS_FILE, describe

COLUMNS = ("method", "client", "profile", "threads", "sparsity", "kFLOPs/ex", "latency ms",
           "speedup", "ORT ms", "ORT speedup", "FLOP limit", "stored KB", "budget met")


def finished_run(run_dir: Path) -> ExperimentConfig:
    """The config of the complete run in ``run_dir``; ``ConfigError`` naming RUN_DIR for a
    missing folder, a folder that holds no run, or an incomplete run."""
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR: {run_dir} {'is not a folder' if run_dir.exists() else 'does not exist'}")
    if not (run_dir / "summary.json").is_file() and (run_dir / STATUS_FILE).is_file():
        raise ConfigError(describe(run_dir))
    for name in ("config.json", "models"):
        if not (run_dir / name).exists():
            raise ConfigError(f"RUN_DIR: {run_dir} has no {name}; give a folder written by `fedprune run`")
    cfg = make_config(json.loads((run_dir / "config.json").read_text()))
    for method in cfg.methods:
        if not (run_dir / "models" / f"{method}.pt").is_file():
            raise ConfigError(f"RUN_DIR: {run_dir} has no models/{method}.pt; the run did not finish {method}")
    return cfg


def device_rows(run_dir: Path) -> list[dict]:
    """One row per method and client: cost of its personal model, timed at its profile's threads
    in PyTorch and, exported to ONNX, in onnxruntime."""
    cfg = finished_run(run_dir)
    profiles = profiles_of(cfg)
    threads = profile_threads(cfg)
    rows = []
    for method in cfg.methods:
        saved = torch.load(run_dir / "models" / f"{method}.pt")
        masks = {c: saved["masks"].get(c) for c in range(cfg.num_clients)}
        costs = personal_costs(cfg, METHODS[method].model, saved["global"], masks, saved["units"], threads,
                               onnxruntime=True)
        counted = prunable_names(new_model(cfg, METHODS[method].model))
        for client, cost in costs.items():
            profile = profiles[client]
            rows.append({
                "method": method, "client": client, "profile": profile.name if profile else None,
                "sparsity": mask_sparsity(masks[client] or {}, counted),
                "budget_met": None if profile is None else within_budget(profile, cost["flops"], cost["stored_bytes"]),
                **cost,
            })
    return rows


def format_rows(rows: list[dict]) -> str:
    """Markdown table of ``device_rows``."""
    def cells(row: dict) -> list[str]:
        met = {None: "-", True: "yes", False: "no"}[row["budget_met"]]
        return [row["method"], str(row["client"]), row["profile"] or "-", str(row["threads"]),
                f"{row['sparsity']:.3f}", f"{row['flops'] / 1e3:.1f}", f"{row['latency_ms']:.4f}",
                f"{row['speedup']:.2f}", f"{row['onnxruntime_latency_ms']:.4f}", f"{row['onnxruntime_speedup']:.2f}",
                f"{row['flop_limit']:.2f}", f"{row['stored_bytes'] / 1e3:.1f}", met]
    return markdown_table(COLUMNS, [cells(row) for row in rows])


def run_device(run_dir: Path) -> str:
    """Measure, write ``device.json`` and ``device.md`` into ``run_dir``, return the table.

    Calls ``keep_freed_memory`` first: this process only times models."""
    keep_freed_memory()
    rows = device_rows(run_dir)
    text = format_rows(rows)
    (run_dir / "device.json").write_text(json.dumps(rows, indent=2) + "\n")
    (run_dir / "device.md").write_text(
        "# Personal models on the device\n\nBatch 32; latency is the median of "
        "torch.utils.benchmark at the profile's thread count (1 without a profile); speedup is "
        "dense latency / personal latency (freed memory kept for reuse, so no model page-faults its buffers on "
        "every pass); ORT ms and ORT speedup: the same models exported to ONNX as fedprune export writes them "
        "(dynamic batch and token axes) and "
        "run by onnxruntime (as many intra-op threads, the same batch, the same repeat policy), against the "
        "dense model in onnxruntime; FLOP limit is dense FLOPs / personal FLOPs.\n\n" + text + "\n")
    return text
