"""On-device speedup of pruned personal models: dense vs masked vs squeezed (CPU latency).

For each model, sparsity and thread count, three versions of the same randomly
initialised model are timed with ``fedprune.device.measure_latency``:

* ``dense``: the model as built.
* ``masked``: unstructured magnitude masks (``magnitude_masks``, per layer) at the same
  sparsity over the same weights, applied to a copy of the dense model. The zeros go
  through the same dense kernels, so this shows the speedup unstructured masks give on a
  CPU without sparse kernels: none.
* ``squeezed``: structured selection (``L1StructuredPruner``, uniform allocation) then
  ``squeeze()``: a smaller dense model. L1 is used because MI scores need data; at
  equal per-group counts (uniform allocation) the selection method does not change the
  squeezed shapes, hence not the latency.

Models: ``mlp``; ``bert``, the MiniLM-shaped BERT with heads and FFN neurons pruned and the
residual width (384) whole; ``bert-width``, the same model with ``prune_hidden``: the width
keeps ``(1 - s) ** hidden_keep_exponent`` of its dims (default 0.33) and heads and FFN
neurons the rest of the budget, so embeddings, LayerNorms and residual adds shrink too.

Sparsity is the fraction of the prunable weights removed: the weights the unit groups
own (``fedprune.models.structure.weight_names``). ``flop_limit`` is
FLOPs(dense) / FLOPs(squeezed) from ``flops_per_example`` (``FlopCounterMode``), which
counts matrix multiplies: the Linear layers and attention's QK^T and AV (CPU fused attention
included); the target is ``squeezed_speedup >= 0.8 * flop_limit``.

Memory: the process first calls ``keep_freed_memory`` (glibc), so that no version pays page
faults for its activation buffers on every pass and no workload's timings depend on which
workloads ran before it in the process (without it, a fresh process's dense BERT faults about
20,000 pages per forward pass, and does not after the MLP rows have run).

Each latency is the smallest of ``--repeats`` medians (``torch.utils.benchmark``
``blocked_autorange``), the three versions of a row measured in interleaved rounds so
that load from other processes hits them alike. ``masked`` doubles as a noise gauge:
it runs the dense kernels, so a row whose dense and masked latencies disagree by more
than 15% is timed again (``--retries``) and, if it still disagrees, marked ``*``. All
numbers come from one run.

Runtime (``--runtime``): eager PyTorch by default. ``inductor`` times all three versions compiled
alike by ``torch.compile`` (inductor, static shapes), compiled once per thread count because
inductor builds its C++ kernels for a fixed thread count; compilation and a first call
stay out of the timing, and each row records how far compiled and eager outputs differ.
Inductor needs a C++ compiler (``g++``). ``onnxruntime`` times each version exported as
``fedprune export`` writes it (ONNX, dynamic batch and token axes) and run by onnxruntime as
``fedprune device`` runs it (``onnx_session``), one session per thread count; export and a
first call stay out of the timing, and each row records how far onnxruntime and eager differ.

GPU rows: where ``torch.cuda.is_available()``, the BERT workloads are also timed on the GPU
(dense vs squeezed, eager, batch 1 and 32 of the same 64-token inputs), after the CPU rows, in
a table of their own and in the JSON with ``"device": "cuda"``. They carry no target: the
target above is for the CPU rows (``"device": "cpu"``). Without a GPU there are none; the
benchmark never needs one.

Usage::

    python benchmarks/device_speedup.py                 # table on stdout, progress on stderr
    python benchmarks/device_speedup.py --json          # JSON list of rows only on stdout
    python benchmarks/device_speedup.py --quick --json  # MLP, sparsity 0.5, 1 thread (tests)
    python benchmarks/device_speedup.py --runtime inductor     # the same rows, torch.compile'd alike
    python benchmarks/device_speedup.py --runtime onnxruntime  # the same rows in onnxruntime
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedprune.device import flops_per_example, keep_freed_memory, measure_latency
from fedprune.device.export import ATTENTION_MASK, FEATURES, INPUT_IDS, LOGITS, export_onnx, onnx_session
from fedprune.models import MLP
from fedprune.models.structure import unit_groups, weight_names
from fedprune.models.text import TextClassifier, pack_tokens
from fedprune.pruning import apply_masks, magnitude_masks, mask_sparsity, masked, squeeze
from fedprune.pruning.pruner import PruneData
from fedprune.pruning.schedule import CubicSchedule
from fedprune.pruning.structured import unit_sparsity
from fedprune.pruning.units import L1StructuredPruner

MODELS = ("mlp", "bert", "bert-width")
WIDTH_MODELS = ("bert-width",)  # structured pruning with prune_hidden
SPARSITIES = (0.5, 0.7, 0.9)
GPU_BATCHES = (1, 32)
TARGET_RATIO = 0.8
#: --runtime choices: what runs the three versions of every row
RUNTIMES = ("eager", "inductor", "onnxruntime")
NOISE_BAND = 1.15  # masked runs the dense kernels: masked_x outside [1/1.15, 1.15] is noise
DEFAULT_THREADS = torch.get_num_threads()  # read at import, before any set_num_threads

MLP_IN, MLP_WIDTHS, MLP_CLASSES, MLP_BATCH = 784, (2048, 2048, 2048), 10, 128
BERT = {"layers": 6, "hidden": 384, "heads": 12, "intermediate": 1536, "vocab": 30522,
        "labels": 2, "batch": 32, "tokens": 64}

@dataclass
class Workload:
    name: str
    model: nn.Module
    inputs: object  # tensor or dict of keyword tensors
    batch: int
    title: str


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_mlp(seed: int) -> Workload:
    torch.manual_seed(seed)
    model = MLP(MLP_IN, MLP_CLASSES, MLP_WIDTHS).eval()
    inputs = torch.randn(MLP_BATCH, MLP_IN, generator=torch.Generator().manual_seed(seed + 1))
    widths = ", ".join(str(w) for w in MLP_WIDTHS)
    return Workload("mlp", model, inputs, MLP_BATCH,
                    f"MLP {MLP_IN} -> [{widths}] -> {MLP_CLASSES}, batch {MLP_BATCH}")


def build_bert(seed: int, name: str = "bert") -> Workload:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        num_hidden_layers=BERT["layers"], hidden_size=BERT["hidden"],
        num_attention_heads=BERT["heads"], intermediate_size=BERT["intermediate"],
        vocab_size=BERT["vocab"], num_labels=BERT["labels"],
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, BERT["vocab"], (BERT["batch"], BERT["tokens"]), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    attention = getattr(model.config, "_attn_implementation", "?")
    pruned = "heads, FFN neurons and the residual width" if name in WIDTH_MODELS else "heads and FFN neurons"
    title = (f"{name}: BERT (MiniLM shape: {BERT['layers']} layers, hidden {BERT['hidden']}, "
             f"{BERT['heads']} heads, FFN {BERT['intermediate']}, random init, {attention} attention), "
             f"batch {BERT['batch']} x {BERT['tokens']} tokens; {pruned} pruned")
    return Workload(name, model, inputs, BERT["batch"], title)


BUILDERS = {"mlp": build_mlp, "bert": build_bert, "bert-width": lambda seed: build_bert(seed, "bert-width")}


def structured_units(model: nn.Module, sparsity: float, width: bool) -> dict[str, torch.Tensor]:
    """Unit masks of ``L1StructuredPruner`` (uniform allocation) at ``sparsity``; ``width``:
    with ``prune_hidden``."""
    pruner = L1StructuredPruner(CubicSchedule(0.0, sparsity, 1, 1), {"prune_hidden": width})
    return pruner.prune(model, None, sparsity, PruneData(torch.empty(0), torch.empty(0)))


def squeezed_version(work: Workload, groups: list, sparsity: float,
                     width: bool) -> tuple[nn.Module, dict[str, torch.Tensor], float, float]:
    """The squeezed model of ``work`` at ``sparsity`` (``structured_units``), its unit masks,
    its achieved structured sparsity and its FLOPs per example."""
    unit_masks = structured_units(work.model, sparsity, width)
    small = squeeze(work.model, unit_masks, groups).eval()
    return (small, unit_masks, unit_sparsity(work.model, groups, unit_masks),
            flops_per_example(small, work.inputs, work.batch))


def unstructured_copy(model: nn.Module, names: list[str], sparsity: float) -> tuple[nn.Module, float]:
    """A copy of ``model`` with per-layer magnitude masks at ``sparsity`` on ``names``."""
    params = dict(model.named_parameters())
    current = {name: torch.ones_like(params[name], dtype=torch.bool) for name in names}
    masks = magnitude_masks(model, current, sparsity, scope="layer")
    copied = copy.deepcopy(model)
    apply_masks(copied, masks)
    return copied.eval(), mask_sparsity(masks)


def logits(model: nn.Module, inputs: object) -> torch.Tensor:
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, inputs: object) -> float:
    return float((logits(a, inputs) - logits(b, inputs)).abs().max())


@torch.no_grad()
def compile_variants(variants: dict[str, nn.Module], inputs: object,
                     threads: int) -> tuple[dict[str, nn.Module], float]:
    """Each variant compiled by ``torch.compile`` (inductor, static shapes) for ``threads``
    threads and called once, and the largest |compiled - eager| output difference.

    Inductor writes the thread count into its C++ kernels (``cpp.threads``, default: torch's
    count at compile time), so every thread count needs its own compilation; dynamo's
    caches are reset first so that no kernel built for another count is reused.
    """
    torch._dynamo.reset()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    compiled, error = {}, 0.0
    try:
        with torch._inductor.config.patch({"cpp.threads": threads}):
            for name, model in variants.items():
                compiled[name] = torch.compile(model, dynamic=False)
                error = max(error, max_abs_diff(compiled[name], model, inputs))
    except Exception as failure:  # inductor's errors are many and long: name the cause once
        raise SystemExit(f"--runtime inductor: torch.compile failed ({type(failure).__name__}: "
                         f"{(str(failure).splitlines() or [''])[0][:200]}); inductor needs "
                         "a C++ compiler (g++) on the PATH") from failure
    finally:
        torch.set_num_threads(previous)
    return compiled, error


class OnnxRuntimeModel(nn.Module):
    """``model`` as ``fedprune export`` writes it (``export_onnx``: ONNX, dynamic batch and token
    axes) run by onnxruntime as ``fedprune device`` runs it (``onnx_session``, ``threads``
    intra-op threads); called like ``model``, it returns the logits."""

    def __init__(self, model: nn.Module, inputs: object, threads: int) -> None:
        super().__init__()
        text = isinstance(inputs, dict)
        exported = TextClassifier(model) if text else model
        batch = pack_tokens(inputs["input_ids"], inputs["attention_mask"]) if text else inputs  # type: ignore[index]
        buffer = io.BytesIO()
        export_onnx(exported, batch, buffer)
        self.session = onnx_session(buffer.getvalue(), threads)

    def forward(self, features: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        named = {FEATURES: features, INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        feeds = {name: tensor.numpy() for name, tensor in named.items() if tensor is not None}
        return torch.from_numpy(self.session.run([LOGITS], feeds)[0])


@torch.no_grad()
def onnxruntime_variants(variants: dict[str, nn.Module], inputs: object,
                         threads: int) -> tuple[dict[str, nn.Module], float]:
    """Each variant exported to ONNX and run by onnxruntime on ``threads`` threads
    (``OnnxRuntimeModel``), and the largest |onnxruntime - eager| output difference."""
    sessions = {name: OnnxRuntimeModel(model, inputs, threads) for name, model in variants.items()}
    error = max(max_abs_diff(sessions[name], model, inputs) for name, model in variants.items())
    return sessions, error


RUNTIME_BUILDERS = {"inductor": compile_variants, "onnxruntime": onnxruntime_variants}
RUNTIME_TITLES = {
    "eager": "eager PyTorch",
    "inductor": "torch.compile (inductor, static shapes, compiled per thread count), applied to "
                "dense, masked and squeezed alike",
    "onnxruntime": "onnxruntime (CPU; each version exported as fedprune export writes it: ONNX, dynamic "
                   "batch and token axes; sessions as fedprune device opens them), applied to dense, "
                   "masked and squeezed alike",
}


def time_variants(variants: dict[str, nn.Module], inputs: object, threads: int,
                  min_run_time: float, repeats: int) -> dict[str, float]:
    """Smallest median latency (ms) of each variant over ``repeats`` interleaved rounds."""
    best = {name: math.inf for name in variants}
    names = list(variants)
    for round_index in range(repeats):
        shift = round_index % len(names)  # rotate the order: no variant is always measured first
        for name in names[shift:] + names[:shift]:
            # Later rounds need no warm-up: the model is warm and blocked_autorange's own
            # block-size estimate runs it once before timing.
            latency = measure_latency(variants[name], inputs, threads=threads, min_run_time=min_run_time,
                                      warmup=3 if round_index == 0 else 0)
            best[name] = min(best[name], latency.median_ms)
    return best


def thread_counts(quick: bool) -> list[int]:
    if quick:
        return [1]
    return sorted({1, max(1, DEFAULT_THREADS)})


def run(models: Sequence[str], sparsities: Sequence[float], threads: Sequence[int],
        min_run_time: float, repeats: int, seed: int = 0, retries: int = 2,
        runtime: str = "eager") -> tuple[list[dict], list[str]]:
    """Benchmark rows (one per model, sparsity, thread count) and the workload titles.

    A row whose dense and masked latencies disagree by more than ``NOISE_BAND`` is timed
    again (at most ``retries`` times), keeping the smallest latency of each version.
    ``runtime``: one of ``RUNTIMES``; other than eager, the versions are timed as
    ``RUNTIME_BUILDERS[runtime]`` builds them for each thread count (``compile_variants``,
    ``onnxruntime_variants``).
    """
    rows, titles = [], []
    for name in models:
        started = time.perf_counter()
        work = BUILDERS[name](seed)
        titles.append(work.title)
        log(f"[{name}] {work.title}")
        groups = unit_groups(work.model)
        names = weight_names(work.model, groups)
        width = name in WIDTH_MODELS
        dense_flops = flops_per_example(work.model, work.inputs, work.batch)
        for sparsity in sparsities:
            small, unit_masks, achieved, squeezed_flops = squeezed_version(work, groups, sparsity, width)
            error = max_abs_diff(small, masked(work.model, unit_masks, groups), work.inputs)
            masked_model, masked_sparsity = unstructured_copy(work.model, names, sparsity)
            kept = {group.name: int(unit_masks[group.name].sum()) for group in groups if group.name in unit_masks}
            log(f"[{name}] sparsity {sparsity}: structured {achieved:.3f}, unstructured "
                f"{masked_sparsity:.3f}, squeeze-vs-masked max |diff| {error:.2e}")
            eager = {"dense": work.model, "masked": masked_model, "squeezed": small}
            for count in threads:
                variants, runtime_error = eager, None
                if runtime != "eager":
                    built_at = time.perf_counter()
                    variants, runtime_error = RUNTIME_BUILDERS[runtime](eager, work.inputs, count)
                    log(f"[{name}] sparsity {sparsity}, {count} thread(s): {runtime} built in "
                        f"{time.perf_counter() - built_at:.0f} s, {runtime}-vs-eager max |diff| "
                        f"{runtime_error:.2e}")
                ms = time_variants(variants, work.inputs, count, min_run_time, repeats)
                for _ in range(retries):  # dense and masked run the same kernels: re-time if they disagree
                    if 1 / NOISE_BAND <= ms["dense"] / ms["masked"] <= NOISE_BAND:
                        break
                    log(f"[{name}] sparsity {sparsity}, {count} thread(s): dense {ms['dense']:.2f} ms vs "
                        f"masked {ms['masked']:.2f} ms disagree (noise), timing the row again")
                    again = time_variants(variants, work.inputs, count, min_run_time, repeats)
                    ms = {key: min(ms[key], again[key]) for key in ms}
                speedup = ms["dense"] / ms["squeezed"]
                limit = dense_flops / squeezed_flops
                rows.append({
                    "model": name,
                    "device": "cpu",
                    "sparsity": sparsity,
                    "threads": count,
                    "dense_ms": ms["dense"],
                    "masked_ms": ms["masked"],
                    "squeezed_ms": ms["squeezed"],
                    "flop_limit": limit,
                    "masked_speedup": ms["dense"] / ms["masked"],
                    "squeezed_speedup": speedup,
                    "ratio_to_limit": speedup / limit,
                    "structured_sparsity": achieved,
                    "unstructured_sparsity": masked_sparsity,
                    "dense_flops": dense_flops,
                    "squeezed_flops": squeezed_flops,
                    "squeeze_max_abs_diff": error,
                    "runtime": runtime,
                    "runtime_max_abs_diff": runtime_error,
                    "kept_units": kept,
                    "batch": work.batch,
                })
                log(f"[{name}] sparsity {sparsity}, {count} thread(s): dense {ms['dense']:.2f} ms, "
                    f"masked {ms['masked']:.2f} ms, squeezed {ms['squeezed']:.2f} ms "
                    f"(x{speedup:.2f}, limit x{limit:.2f})")
        log(f"[{name}] done in {time.perf_counter() - started:.0f} s")
    return rows, titles


def batch_of(inputs: dict[str, torch.Tensor], size: int, device: str) -> dict[str, torch.Tensor]:
    """The first ``size`` rows of BERT keyword ``inputs``, on ``device``."""
    return {key: value[:size].to(device) for key, value in inputs.items()}


def gpu_rows(models: Sequence[str], sparsities: Sequence[float], min_run_time: float, repeats: int,
             seed: int = 0, device: str = "cuda") -> list[dict]:
    """Dense vs squeezed latency of the BERT workloads on ``device`` (eager), one row per model,
    sparsity and batch in ``GPU_BATCHES``: the units and squeezed shapes of the CPU rows, moved
    to ``device`` after squeezing. FLOP limits are per example, so they do not depend on the batch."""
    kind = "cuda" if device.startswith("cuda") else device
    label = torch.cuda.get_device_name(device) if kind == "cuda" else device
    rows = []
    for name in [name for name in models if name != "mlp"]:
        work = BUILDERS[name](seed)
        log(f"[{name} on {label}] {work.title}")
        groups = unit_groups(work.model)
        dense_flops = flops_per_example(work.model, work.inputs, work.batch)
        squeezed = [squeezed_version(work, groups, sparsity, name in WIDTH_MODELS) for sparsity in sparsities]
        dense = work.model.to(device)  # selection and FLOP counts above ran on the CPU
        for sparsity, (small, _, achieved, small_flops) in zip(sparsities, squeezed, strict=True):
            limit = dense_flops / small_flops
            variants = {"dense": dense, "squeezed": small.to(device)}
            for size in GPU_BATCHES:
                ms = time_variants(variants, batch_of(work.inputs, size, device), 1, min_run_time, repeats)
                speedup = ms["dense"] / ms["squeezed"]
                rows.append({"model": name, "device": kind,
                             "device_name": label, "sparsity": sparsity, "batch": size,
                             "tokens": BERT["tokens"], "dense_ms": ms["dense"], "squeezed_ms": ms["squeezed"],
                             "squeezed_speedup": speedup, "flop_limit": limit, "ratio_to_limit": speedup / limit,
                             "structured_sparsity": achieved, "runtime": "eager"})
                log(f"[{name} on {label}] sparsity {sparsity}, batch {size}: dense {ms['dense']:.2f} ms, "
                    f"squeezed {ms['squeezed']:.2f} ms (x{speedup:.2f}, limit x{limit:.2f})")
    return rows


def aligned(table: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells right-aligned in columns two spaces apart."""
    widths = [max(len(cells[i]) for cells in table) for i in range(len(table[0]))]
    return ["  ".join(cell.rjust(width) for cell, width in zip(cells, widths)) for cells in table]


def format_gpu_table(rows: list[dict]) -> str:
    """The GPU rows as a table of their own: informational, no target."""
    header = ("model", "sparsity", "batch", "dense_ms", "squeezed_ms", "squeezed_x", "flop_limit", "ratio")
    table = [header] + [(
        row["model"], f"{row['sparsity']:.1f}", str(row["batch"]), f"{row['dense_ms']:.2f}",
        f"{row['squeezed_ms']:.2f}", f"{row['squeezed_speedup']:.2f}", f"{row['flop_limit']:.2f}",
        shown_ratio(row["ratio_to_limit"])) for row in rows]
    return "\n".join([
        f"GPU latency ({rows[0]['device_name']}), dense vs squeezed, eager, {BERT['tokens']} tokens per "
        "example; no target (batch 1 measures kernel launches more than FLOPs):",
        *aligned(table),
    ])


def shown_ratio(ratio: float) -> str:
    """``ratio`` cut (not rounded) to 3 decimals, so that a row below the target never reads as on it."""
    return f"{math.floor(ratio * 1000) / 1000:.3f}"


def is_noisy(row: dict) -> bool:
    """Masked and dense run the same kernels: a masked speedup far from 1 is measurement noise."""
    return not 1 / NOISE_BAND <= row["masked_speedup"] <= NOISE_BAND


def format_table(rows: list[dict], titles: list[str], min_run_time: float, repeats: int,
                 load: tuple[float, float]) -> str:
    runtime = rows[0].get("runtime", "eager") if rows else "eager"
    header = ("model", "sparsity", "struct_sp", "threads", "dense_ms", "masked_ms", "squeezed_ms",
              "masked_x", "squeezed_x", "flop_limit", "ratio", "target")
    lines = [
        f"On-device CPU latency, dense vs masked vs squeezed (torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, threads 1 and all = {DEFAULT_THREADS})",
        f"  runtime: {RUNTIME_TITLES[runtime]}",
        *(f"  {title}" for title in titles),
        "",
    ]
    table = [header]
    for row in rows:
        met = "ok" if row["ratio_to_limit"] >= TARGET_RATIO else "MISS"
        table.append((
            row["model"], f"{row['sparsity']:.1f}", f"{row['structured_sparsity']:.3f}",
            str(row["threads"]), f"{row['dense_ms']:.2f}", f"{row['masked_ms']:.2f}",
            f"{row['squeezed_ms']:.2f}", f"{row['masked_speedup']:.2f}",
            f"{row['squeezed_speedup']:.2f}", f"{row['flop_limit']:.2f}",
            shown_ratio(row["ratio_to_limit"]), met + ("*" if is_noisy(row) else ""),
        ))
    lines += aligned(table)
    missed = [row for row in rows if row["ratio_to_limit"] < TARGET_RATIO]
    noisy = [row for row in rows if is_noisy(row)]
    masked_x = [row["masked_speedup"] for row in rows]
    lines += [
        "",
        f"ratio = squeezed_x / flop_limit (cut to 3 decimals); target >= {TARGET_RATIO}: met in "
        f"{len(rows) - len(missed)}/{len(rows)} rows.",
        "sparsity = target pruned fraction of the prunable weights (the unit groups' weights); "
        "struct_sp = achieved structured sparsity (integer unit counts).",
        "masked = unstructured per-layer magnitude masks at the same sparsity on the dense model: "
        "same dense kernels, so it brings no speedup (masked_x ~ 1).",
        "squeezed = L1StructuredPruner (uniform allocation; bert-width with prune_hidden) + squeeze(). "
        "L1 needs no data (MI scores would); at equal per-group counts the method does not change the shapes.",
        "flop_limit = FLOPs(dense) / FLOPs(squeezed) by FlopCounterMode, which counts matmuls: "
        "Linear layers and attention's QK^T and AV (scaled_dot_product_attention, CPU kernel included); "
        "embeddings, LayerNorm, GELU, softmax and residual adds count 0.",
        f"latency = min over {repeats} interleaved round(s) of the torch.utils.benchmark median "
        f"(min_run_time {min_run_time} s); load average at start/end {load[0]:.2f}/{load[1]:.2f}.",
        f"noise gauge: masked_x ranges {min(masked_x):.2f}..{max(masked_x):.2f} (ideal 1.00); "
        f"* = masked_x outside {1 / NOISE_BAND:.2f}..{NOISE_BAND:.2f}, i.e. dense/masked timings "
        f"disagree by more than {NOISE_BAND - 1:.0%} although they run the same kernels "
        f"({len(noisy)} row(s)): other load on the machine, read those rows with care.",
    ]
    if runtime != "eager":
        worst = max(row["runtime_max_abs_diff"] for row in rows)
        lines.append(f"{runtime} outputs match eager within {worst:.1e} (max |logit diff| over all versions); "
                     "compilation or export and a first call are not timed.")
    if DEFAULT_THREADS > 1 and any(row["threads"] > 1 for row in rows):
        lines.append(
            f"threads={DEFAULT_THREADS} uses every core: any other process stalls whole OpenMP "
            "parallel regions, so multi-thread rows are the noisiest.")
    for row in missed:
        cause = "within measurement noise (*)" if is_noisy(row) else "not flagged as noisy"
        lines.append(f"miss: {row['model']} sparsity {row['sparsity']} threads {row['threads']}: "
                     f"ratio {shown_ratio(row['ratio_to_limit'])}, {cause}.")
    if any(row["model"] == "bert" for row in missed):
        lines.append(
            "BERT misses: only heads and FFN neurons are pruned; the residual width (hidden "
            f"{BERT['hidden']}) is not, so the embeddings and every LayerNorm and residual add keep their full "
            "cost while the matmul FLOPs shrink by flop_limit (Amdahl). That fixed part, counted as 0 "
            "FLOPs, weighs most at high sparsity; small squeezed matmuls (1 head, narrow FFN) also run "
            "below peak GEMM efficiency.")
    if any(row["model"] in WIDTH_MODELS for row in missed):
        lines.append(
            "bert-width misses: the width shrinks too, so what remains outside flop_limit is mostly "
            "attention running below GEMM efficiency (fused attention, whose FLOPs shrink with the kept "
            "heads only), per-call LayerNorm/GELU overhead, and small GEMMs that run below peak "
            "(see docs/results/device-speedup.md for a profile).")
    if any(row["model"] == "mlp" and not is_noisy(row) for row in missed):
        lines.append(
            "MLP misses: at high sparsity the squeezed matmuls are small, so per-layer overhead "
            "(bias add, ReLU, dispatch, thread sync) and lower GEMM efficiency weigh more.")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only a JSON list of rows on stdout")
    parser.add_argument("--quick", action="store_true",
                        help="MLP only, sparsity 0.5, 1 thread, short min_run_time, 1 round (for tests)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of: " + ", ".join(MODELS))
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds per blocked_autorange (default 0.3; 0.05 with --quick)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved timing rounds per row, min of medians (default 5; 1 with --quick)")
    parser.add_argument("--retries", type=int, default=None,
                        help="re-time a row up to this many times when dense and masked latencies "
                             "disagree by more than 15%% (default 2; 0 with --quick)")
    parser.add_argument("--runtime", default="eager", choices=RUNTIMES,
                        help="what runs dense, masked and squeezed alike: eager PyTorch (default), "
                             "inductor (torch.compile; needs g++) or onnxruntime (the ONNX file "
                             "fedprune export writes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.models = ["mlp"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; allowed: {', '.join(MODELS)}")
    if args.min_run_time is None:
        args.min_run_time = 0.05 if args.quick else 0.3
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.retries is None:
        args.retries = 0 if args.quick else 2
    if args.min_run_time <= 0 or args.repeats < 1 or args.retries < 0:
        parser.error("--min-run-time must be > 0, --repeats >= 1 and --retries >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not keep_freed_memory():
        log("note: no glibc mallopt here; large buffers may be page-faulted in again on every forward pass, "
            "differently for each workload")
    sparsities = (0.5,) if args.quick else SPARSITIES
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    started = time.perf_counter()
    rows, titles = run(args.models, sparsities, thread_counts(args.quick), args.min_run_time,
                       args.repeats, args.seed, args.retries, args.runtime)
    gpu = [] if args.quick or not torch.cuda.is_available() else gpu_rows(
        args.models, sparsities, args.min_run_time, args.repeats, args.seed)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    log(f"benchmark took {time.perf_counter() - started:.0f} s")
    if args.json:
        print(json.dumps(rows + gpu, indent=2))
    else:
        print(format_table(rows, titles, args.min_run_time, args.repeats, (load_start, load_end)))
        if gpu:
            print("\n" + format_gpu_table(gpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
