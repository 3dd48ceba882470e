"""On-device cost of each client's personal model, measured in the server process at run end.

The server knows each personal model's structure (the global model under the
client's mask); values do not change latency or FLOPs. Models with the same
structure are measured once. Latency: batch 32, 1 thread (``fedprune.device``).
"""

from __future__ import annotations

import statistics

import torch

from fedprune import wire
from fedprune.config import ExperimentConfig
from fedprune.data import load_dataset
from fedprune.device import flops_per_example, measure_latency
from fedprune.pruning import apply_masks
from fedprune.pruning.masks import Masks
from fedprune.pruning.squeeze import squeeze
from fedprune.task import new_model

BATCH = 32


def personal_costs(cfg: ExperimentConfig, method: str, global_state: dict[str, torch.Tensor],
                   client_masks: dict[int, Masks | None], client_units: dict[int, Masks | None],
                   threads: int = 1) -> dict[int, dict]:
    """Per partition: ``latency_ms`` (median), ``flops`` (per example) of its personal model,
    ``speedup`` (dense latency / its latency) and ``flop_limit`` (dense FLOPs / its FLOPs).

    Unstructured personal models run dense with zeros; structured ones (with unit
    masks) run squeezed. The dense reference is the method's full model.
    """
    _, info = load_dataset(cfg.dataset)
    inputs = torch.randn(BATCH, *info.input_shape, generator=torch.Generator().manual_seed(0))
    dense = new_model(cfg, method)
    dense_ms = measure_latency(dense, inputs, threads=threads, min_run_time=0.2).median_ms
    dense_flops = flops_per_example(dense, inputs, BATCH)
    measured: dict[int, dict] = {}
    results = {}
    for partition, masks in sorted(client_masks.items()):
        key = wire.mask_digest(masks)
        if key not in measured:
            model = new_model(cfg, method)
            model.load_state_dict(global_state)
            if masks:
                apply_masks(model, masks)
            if client_units.get(partition):
                model = squeeze(model, client_units[partition])
            latency = measure_latency(model, inputs, threads=threads, min_run_time=0.2)
            flops = flops_per_example(model, inputs, BATCH)
            measured[key] = {"latency_ms": latency.median_ms, "flops": flops, "dense_latency_ms": dense_ms,
                             "speedup": dense_ms / latency.median_ms, "flop_limit": dense_flops / flops}
        results[partition] = measured[key]
    return results


def mean_costs(costs: dict[int, dict]) -> dict[str, float | None]:
    """``latency_ms_mean`` and ``flops_mean`` over clients (None without clients)."""
    if not costs:
        return {"latency_ms_mean": None, "flops_mean": None}
    return {"latency_ms_mean": statistics.fmean(c["latency_ms"] for c in costs.values()),
            "flops_mean": statistics.fmean(c["flops"] for c in costs.values())}
