"""Measure what a model costs on a device.

Latency comes from ``torch.utils.benchmark`` (warm-up, then ``blocked_autorange`` at a
fixed thread count); FLOPs from ``torch.utils.flop_counter.FlopCounterMode`` (a
multiply-add counts as 2 FLOPs). Masked models are timed as they are: zeros cost
the same as any other value in a dense kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

# glibc mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse, for the rest of this process.

    By default glibc serves large blocks with fresh ``mmap`` pages and hands freed heap memory
    back to the OS, with thresholds that adapt to what the process freed before. PyTorch's
    CPU allocator does not cache, so a model whose activations are a few MB each (a dense BERT
    layer's FFN output) can page-fault them back in on every forward pass (about 20,000 minor
    faults per pass for the MiniLM-shaped BERT at batch 32 x 64 tokens), or not, depending on
    what ran earlier in the process. Fixed thresholds (blocks up to 32 MiB from the heap, no
    trimming below 1 GiB) make every model's repeated forward passes run on pages already
    mapped, whatever ran before (blocks over 32 MiB, glibc's limit, still get fresh pages).
    Call it once at the start of a process that times models. Returns False (nothing changed)
    where the C library has no glibc ``mallopt``. Hand-written with ctypes: no Python library
    exposes ``mallopt``.
    """
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        return False
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1


@dataclass(frozen=True)
class Latency:
    """Median and interquartile range of one forward pass, in milliseconds."""

    median_ms: float
    iqr_ms: float
    threads: int


def _forward(model: nn.Module, inputs: object) -> Callable[[], object]:
    if isinstance(inputs, dict):
        return lambda: model(**inputs)
    return lambda: model(inputs)


@torch.no_grad()
def measure_latency(model: nn.Module, inputs: object, threads: int = 1, min_run_time: float = 0.3,
                    warmup: int = 3, warmup_s: float = 0.1) -> Latency:
    """Inference latency of ``model(inputs)`` (a tensor or a dict of keyword tensors).

    Warm-up: at least ``warmup`` calls and ``warmup_s`` seconds, so caches and the
    allocator settle before timing.
    """
    model.eval()
    return time_call(_forward(model, inputs), threads, min_run_time, warmup, warmup_s)


def time_call(run: Callable[[], object], threads: int = 1, min_run_time: float = 0.3,
              warmup: int = 3, warmup_s: float = 0.1) -> Latency:
    """Latency of ``run()``: warm-up (at least ``warmup`` calls and ``warmup_s`` seconds), then
    the median of ``torch.utils.benchmark``'s ``blocked_autorange`` with torch at ``threads``
    threads and denormals flushed. ``run`` may call any runtime (``measure_latency``: a torch
    model; ``fedprune.device.export.onnx_latency``: an onnxruntime session)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    # Tiny surviving weights can be denormal floats, which some CPUs process far slower.
    flushed = torch.set_flush_denormal(True)
    try:
        started, calls = time.perf_counter(), 0
        while calls < warmup or time.perf_counter() - started < warmup_s:
            run()
            calls += 1
        timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=threads)
        measurement = timer.blocked_autorange(min_run_time=min_run_time)
    finally:
        torch.set_num_threads(previous)
        if flushed:
            torch.set_flush_denormal(False)
    return Latency(measurement.median * 1e3, measurement.iqr * 1e3, threads)


def _cpu_attention_flops(query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size,
                         *args: object, out_shape: object = None, **kwargs: object) -> int:
    """FLOPs of CPU fused attention: the formula torch uses for its GPU kernels (QK^T and AV)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's FlopCounterMode has formulas for the CUDA fused-attention kernels only; on CPU,
# scaled_dot_product_attention runs this one, which it would count as 0 FLOPs.
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


@torch.no_grad()
def flops_per_example(model: nn.Module, inputs: object, batch_size: int) -> float:
    """FLOPs of one forward pass divided by ``batch_size``.

    Counts what ``FlopCounterMode`` has formulas for (matmuls, convolutions, attention's
    QK^T and AV, CPU fused attention included); not norms, activations or embeddings.
    """
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
    with counter:
        _forward(model, inputs)()
    return counter.get_total_flops() / batch_size


def parameter_count(model: nn.Module) -> int:
    """Number of parameter entries."""
    return sum(p.numel() for p in model.parameters())


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of all parameters stored dense."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def sparse_bytes(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """Bytes when masked parameters are stored as kept values plus a 1-bit-per-entry bitmap."""
    total = 0
    for name, param in model.named_parameters():
        if name in masks:
            total += int(masks[name].sum()) * param.element_size() + (param.numel() + 7) // 8
        else:
            total += param.numel() * param.element_size()
    return total
