"""How onnxruntime's graph fusions and the file's input shapes change a squeezed BERT's speedup.

For the MiniLM-shaped BERT workloads of ``device_speedup.py`` (``bert``, ``bert-width``) at
``--sparsity``, the dense and the squeezed model (``L1StructuredPruner``, uniform allocation) are
exported to ONNX and timed in onnxruntime under four settings:

* ``dynamic``: the file ``fedprune export`` writes (dynamic batch and token axes) in the session
  ``fedprune device`` opens (``onnx_session``: every graph optimization, onnxruntime's default);
* ``static``: the same model exported with fixed input shapes (the benchmark's batch), every
  graph optimization;
* ``static-no-skipln``: ``static`` with the ``SkipLayerNormFusion`` optimizer disabled (the
  residual add and the LayerNorm after it stay two nodes);
* ``static-basic``: ``static`` with basic graph optimizations only (no fusions).

Each row gives the latencies (the smallest of ``--repeats`` medians of ``time_call``, dense and
squeezed alternating), the speedup, the FLOP limit of ``device_speedup.py`` and the ratio of the
two, and how many ``SkipLayerNormalization`` nodes the optimized dense graph holds. All numbers
come from one run. Latencies of one setting are comparable with each other, not with another
run's.

Usage::

    python benchmarks/onnx_fusions.py                  # table on stdout, progress on stderr
    python benchmarks/onnx_fusions.py --json           # JSON list of rows only on stdout
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import device_speedup as bench  # noqa: E402  (the sibling script, not a package)

from fedprune.device import flops_per_example, keep_freed_memory  # noqa: E402
from fedprune.device.cost import time_call  # noqa: E402
from fedprune.device.export import ATTENTION_MASK, INPUT_IDS, LOGITS, OPSET, export_onnx, session_options  # noqa: E402
from fedprune.models.text import TextClassifier, pack_tokens  # noqa: E402
from fedprune.pruning import squeeze  # noqa: E402

SETTINGS = ("dynamic", "static", "static-no-skipln", "static-basic")
SKIP_LAYER_NORM = "SkipLayerNormFusion"


class _Logits(nn.Module):
    """A Hugging Face classifier that takes ``input_ids`` and ``attention_mask`` and returns logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


@torch.no_grad()
def onnx_bytes(model: nn.Module, inputs: dict[str, torch.Tensor], static: bool) -> bytes:
    """``model`` as ONNX: with fixed input shapes, or as ``fedprune export`` writes it."""
    buffer = io.BytesIO()
    if not static:
        export_onnx(TextClassifier(model), pack_tokens(inputs[INPUT_IDS], inputs[ATTENTION_MASK]), buffer)
        return buffer.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Logits(model).eval(), (inputs[INPUT_IDS], inputs[ATTENTION_MASK]), buffer,
                          input_names=[INPUT_IDS, ATTENTION_MASK], output_names=[LOGITS],
                          opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


def session(model: bytes, setting: str, threads: int, optimized: Path | None = None) -> object:
    """An onnxruntime session on ``model`` under ``setting`` (``SETTINGS``)."""
    import onnxruntime

    options = session_options(threads)
    if setting == "static-basic":
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    disabled = [SKIP_LAYER_NORM] if setting == "static-no-skipln" else []
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=disabled)


def fused_nodes(model: bytes, setting: str) -> int:
    """How many ``SkipLayerNormalization`` nodes onnxruntime's optimized graph holds."""
    import onnx

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "optimized.onnx"
        session(model, setting, 1, path)  # onnxruntime writes the optimized graph as it opens it
        return sum(node.op_type == "SkipLayerNormalization" for node in onnx.load(str(path)).graph.node)


def run(models: Sequence[str], sparsity: float, threads: Sequence[int], min_run_time: float,
        repeats: int) -> list[dict]:
    rows = []
    for name in models:
        work = bench.BUILDERS[name](0)
        units = bench.structured_units(work.model, sparsity, name in bench.WIDTH_MODELS)
        small = squeeze(work.model, units).eval()
        limit = (flops_per_example(work.model, work.inputs, work.batch)
                 / flops_per_example(small, work.inputs, work.batch))
        feeds = {key: value.numpy() for key, value in work.inputs.items()}  # type: ignore[union-attr]
        for setting in SETTINGS:
            static = setting != "dynamic"
            files = {"dense": onnx_bytes(work.model, work.inputs, static),  # type: ignore[arg-type]
                     "squeezed": onnx_bytes(small, work.inputs, static)}  # type: ignore[arg-type]
            fused = fused_nodes(files["dense"], setting)
            for count in threads:
                sessions = {key: session(blob, setting, count) for key, blob in files.items()}
                best = {key: math.inf for key in sessions}
                for _ in range(repeats):
                    for key, opened in sessions.items():
                        latency = time_call(lambda s=opened, f=feeds: s.run([LOGITS], f), count, min_run_time)
                        best[key] = min(best[key], latency.median_ms)
                speedup = best["dense"] / best["squeezed"]
                rows.append({"model": name, "sparsity": sparsity, "setting": setting, "threads": count,
                             "dense_ms": best["dense"], "squeezed_ms": best["squeezed"], "speedup": speedup,
                             "flop_limit": limit, "ratio_to_limit": speedup / limit,
                             "skip_layer_norm_nodes": fused})
                bench.log(f"[{name}] {setting}, {count} thread(s): dense {best['dense']:.2f} ms, squeezed "
                          f"{best['squeezed']:.2f} ms (x{speedup:.2f}, limit x{limit:.2f}), "
                          f"{fused} SkipLayerNormalization node(s)")
    return rows


def format_table(rows: list[dict]) -> str:
    import onnxruntime

    header = ("model", "setting", "threads", "SkipLN nodes", "dense_ms", "squeezed_ms", "speedup",
              "flop_limit", "ratio")
    table = [header] + [(r["model"], r["setting"], str(r["threads"]), str(r["skip_layer_norm_nodes"]),
                         f"{r['dense_ms']:.2f}", f"{r['squeezed_ms']:.2f}", f"{r['speedup']:.2f}",
                         f"{r['flop_limit']:.2f}", bench.shown_ratio(r["ratio_to_limit"])) for r in rows]
    return "\n".join([
        f"onnxruntime {onnxruntime.__version__} CPU, sparsity {rows[0]['sparsity']}, "
        f"batch {bench.BERT['batch']} x {bench.BERT['tokens']} tokens",
        *bench.aligned(table), "",
        "dynamic = the file fedprune export writes, in fedprune device's session; static = fixed input shapes; "
        "no-skipln = SkipLayerNormFusion disabled; basic = no fusions.",
        "ratio = speedup / flop_limit (device_speedup.py's FLOP limit, cut to 3 decimals); SkipLN nodes: in the "
        "optimized dense graph.",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print only a JSON list of rows on stdout")
    parser.add_argument("--models", default="bert,bert-width", help="comma list of: bert, bert-width")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or any(m not in ("bert", "bert-width") for m in models):
        parser.error(f"--models: {args.models!r}; allowed: bert, bert-width")
    if not 0 < args.sparsity < 1 or args.min_run_time <= 0 or args.repeats < 1:
        parser.error("--sparsity must be in (0, 1), --min-run-time > 0 and --repeats >= 1")
    keep_freed_memory()
    rows = run(models, args.sparsity, bench.thread_counts(False), args.min_run_time, args.repeats)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
