"""Where a squeezed MiniLM-shaped BERT spends its time: a ``torch.profiler`` table per operator.

Builds the workload of ``device_speedup.py`` (``bert`` or ``bert-width``), prunes it with
``L1StructuredPruner`` at ``--sparsity`` (uniform allocation), squeezes it, and profiles
``--runs`` forward passes of the dense and the squeezed model at ``--threads``. Prints, per
operator, the share of the time and the dense/squeezed ratio, next to the FLOP limit.

Usage::

    python benchmarks/profile_squeezed.py --model bert-width --sparsity 0.9 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import device_speedup as bench  # noqa: E402  (the sibling script, not a package)

from fedprune.device import flops_per_example, keep_freed_memory  # noqa: E402
from fedprune.pruning import squeeze  # noqa: E402


@torch.no_grad()
def operator_ms(model: nn.Module, inputs: dict, runs: int) -> dict[str, float]:
    """Self CPU milliseconds per forward pass, per operator."""
    for _ in range(3):
        model(**inputs)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            model(**inputs)
    return {event.key: event.self_cpu_time_total / 1e3 / runs for event in prof.key_averages()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bert-width", choices=("bert", "bert-width"))
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args(argv)
    keep_freed_memory()  # as device_speedup.py: no per-pass page faults in either model
    torch.set_num_threads(args.threads)
    work = bench.BUILDERS[args.model](0)
    units = bench.structured_units(work.model, args.sparsity, args.model in bench.WIDTH_MODELS)
    small = squeeze(work.model, units).eval()
    limit = flops_per_example(work.model, work.inputs, work.batch) / flops_per_example(small, work.inputs, work.batch)
    dense, squeezed = operator_ms(work.model, work.inputs, args.runs), operator_ms(small, work.inputs, args.runs)
    total_dense, total_small = sum(dense.values()), sum(squeezed.values())
    print(f"{args.model} sparsity {args.sparsity}, {args.threads} thread(s): dense {total_dense:.1f} ms, "
          f"squeezed {total_small:.1f} ms per forward (profiled), x{total_dense / total_small:.2f}, "
          f"FLOP limit x{limit:.2f}")
    print("| operator | dense ms | share | squeezed ms | share | dense / squeezed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in sorted(squeezed, key=squeezed.get, reverse=True)[: args.top]:
        before, after = dense.get(name, 0.0), squeezed[name]
        print(f"| {name} | {before:.1f} | {before / total_dense:.0%} | {after:.1f} | {after / total_small:.0%} | "
              f"{before / after if after else float('nan'):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
