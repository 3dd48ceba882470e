"""On-device cost of each client's personal model, measured in the server process at run end.

The server knows each personal model's structure (the global model under the
client's mask); values do not change latency or FLOPs. Models with the same
structure are measured once. Latency: batch 32, 1 thread (``fedprune.device``);
transformers: ``latency_tokens`` random tokens per example.
"""

from __future__ import annotations

import statistics

import torch

from fedprune import wire
from fedprune.config import ExperimentConfig
from fedprune.device import flops_per_example, measure_latency, parameter_bytes, sparse_bytes
from fedprune.device.export import onnx_latency
from fedprune.models.factory import cost_inputs, new_model, personal_model
from fedprune.pruning.masks import Masks
from fedprune.server import interrupt

BATCH = 32


def personal_costs(cfg: ExperimentConfig, variant: str, global_state: dict[str, torch.Tensor],
                   client_masks: dict[int, Masks | None], client_units: dict[int, Masks | None],
                   threads: dict[int, int] | None = None, onnxruntime: bool = False) -> dict[int, dict]:
    """Per client: ``latency_ms`` (median), ``flops`` (per example) of its personal model,
    ``speedup`` (dense latency / its latency) and ``flop_limit`` (dense FLOPs / its FLOPs).
    With ``onnxruntime``, also ``onnxruntime_latency_ms``, ``onnxruntime_dense_latency_ms`` and
    ``onnxruntime_speedup``: the same models exported to ONNX and run by onnxruntime on the same
    batch at the same thread count (``fedprune.device.export.onnx_latency``).

    Unstructured personal models run dense with zeros; structured ones run squeezed
    (``fedprune.models.factory.personal_model``). ``variant`` is the method's model
    (``Method.model``); ``threads``: per client (default 1). The dense reference is the
    method's unpruned model, timed at the same thread count.
    """
    dense = new_model(cfg, variant)
    inputs = cost_inputs(cfg, dense, BATCH)
    dense_flops = flops_per_example(dense, inputs, BATCH)
    dense_ms: dict[int, float] = {}
    dense_ort_ms: dict[int, float] = {}
    measured: dict[tuple, dict] = {}
    results = {}
    for partition, masks in sorted(client_masks.items()):
        interrupt.check()  # timing thousands of distinct models takes minutes: Ctrl-C stops here too
        count = (threads or {}).get(partition, 1)
        if count not in dense_ms:
            dense_ms[count] = measure_latency(dense, inputs, threads=count, min_run_time=0.2).median_ms
            if onnxruntime:
                dense_ort_ms[count] = onnx_latency(dense, inputs, threads=count, min_run_time=0.2).median_ms
        units = client_units.get(partition)
        model = personal_model(cfg, variant, global_state, masks, units)
        # Timing and FLOPs depend on the model's shapes only: unstructured masks run dense, so
        # every unsqueezed personal model is timed once, each squeezed structure once.
        key = (wire.mask_digest(units) if units else 0, count)
        if key not in measured:
            latency = measure_latency(model, inputs, threads=count, min_run_time=0.2).median_ms
            flops = flops_per_example(model, inputs, BATCH)
            measured[key] = {"latency_ms": latency, "flops": flops, "dense_latency_ms": dense_ms[count],
                             "speedup": dense_ms[count] / latency, "flop_limit": dense_flops / flops,
                             "threads": count}
            if onnxruntime:
                ort_ms = onnx_latency(model, inputs, threads=count, min_run_time=0.2).median_ms
                measured[key].update(onnxruntime_latency_ms=ort_ms, onnxruntime_dense_latency_ms=dense_ort_ms[count],
                                     onnxruntime_speedup=dense_ort_ms[count] / ort_ms)
        results[partition] = {**measured[key], "stored_bytes": stored_bytes(model, masks, units)}
    return results


def stored_bytes(model: torch.nn.Module, masks: Masks | None, units: Masks | None) -> int:
    """Bytes to store the personal model: dense if squeezed or unmasked, else values + bitmaps."""
    return sparse_bytes(model, masks) if masks and not units else parameter_bytes(model)


def mean_costs(costs: dict[int, dict]) -> dict[str, float | None]:
    """``latency_ms_mean`` and ``flops_mean`` over clients (None without clients)."""
    if not costs:
        return {"latency_ms_mean": None, "flops_mean": None}
    return {"latency_ms_mean": statistics.fmean(c["latency_ms"] for c in costs.values()),
            "flops_mean": statistics.fmean(c["flops"] for c in costs.values())}
