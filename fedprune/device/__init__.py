"""On-device cost of personal models: latency, FLOPs, parameter bytes (pure torch)."""

from fedprune.device.cost import (
    Latency,
    flops_per_example,
    keep_freed_memory,
    measure_latency,
    parameter_bytes,
    parameter_count,
    sparse_bytes,
)

__all__ = [
    "Latency",
    "flops_per_example",
    "keep_freed_memory",
    "measure_latency",
    "parameter_bytes",
    "parameter_count",
    "sparse_bytes",
]
