"""The device speedup benchmark (benchmarks/device_speedup.py) in its --quick mode."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_speedup.py"
REQUIRED = ("model", "sparsity", "threads", "dense_ms", "masked_ms", "squeezed_ms", "flop_limit")


def _load_script():
    spec = importlib.util.spec_from_file_location("fedprune_bench_device_speedup", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_script()


@pytest.fixture(scope="module")
def quick_rows(bench):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert bench.main(["--quick", "--json"]) == 0
    assert "[mlp]" in err.getvalue()  # progress goes to stderr
    return json.loads(out.getvalue())  # stdout holds only JSON


def _mlp_flops(widths: list[int]) -> int:
    """Matmul FLOPs per example of Linear layers chaining ``widths``: 2 * sum(in * out)."""
    return 2 * sum(a * b for a, b in zip(widths, widths[1:]))


def test_quick_rows_have_the_keys_and_positive_times(bench, quick_rows) -> None:
    assert len(quick_rows) == 1
    row = quick_rows[0]
    for key in REQUIRED + ("squeezed_speedup", "ratio_to_limit"):
        assert key in row, key
    assert (row["model"], row["sparsity"], row["threads"]) == ("mlp", 0.5, 1)
    for key in ("dense_ms", "masked_ms", "squeezed_ms"):
        assert row[key] > 0 and math.isfinite(row[key])
    assert row["flop_limit"] > 1
    assert row["squeezed_speedup"] == pytest.approx(row["dense_ms"] / row["squeezed_ms"])
    assert row["ratio_to_limit"] == pytest.approx(row["squeezed_speedup"] / row["flop_limit"])


def test_flop_limit_matches_the_squeezed_layer_widths(bench, quick_rows) -> None:
    row = quick_rows[0]
    hidden = [row["kept_units"][name] for name in ("body.0", "body.2", "body.4")]
    assert all(0 < kept < full for kept, full in zip(hidden, bench.MLP_WIDTHS))
    dense = _mlp_flops([bench.MLP_IN, *bench.MLP_WIDTHS, bench.MLP_CLASSES])
    small = _mlp_flops([bench.MLP_IN, *hidden, bench.MLP_CLASSES])
    assert row["dense_flops"] == pytest.approx(dense)
    assert row["squeezed_flops"] == pytest.approx(small)
    assert row["flop_limit"] == pytest.approx(dense / small, rel=1e-9)
    # The weights the groups own are every Linear weight (head columns included), so the
    # weight-entry sparsity equals the FLOP sparsity here: flop_limit ~ 1 / (1 - 0.5).
    assert 1 - small / dense == pytest.approx(row["structured_sparsity"], abs=1e-9)
    assert row["flop_limit"] == pytest.approx(2.0, rel=0.02)


def test_squeezed_model_matches_masked_and_masks_hit_the_sparsity(quick_rows) -> None:
    row = quick_rows[0]
    assert row["squeeze_max_abs_diff"] < 1e-4
    assert row["unstructured_sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_table_output_and_options(bench, capsys) -> None:
    rows = [{
        "model": "bert", "sparsity": 0.9, "threads": 1, "dense_ms": 10.0, "masked_ms": 10.0,
        "squeezed_ms": 2.0, "flop_limit": 8.0, "masked_speedup": 1.0, "squeezed_speedup": 5.0,
        "ratio_to_limit": 0.625, "structured_sparsity": 0.9,
    }]
    noisy = dict(rows[0], threads=2, masked_ms=20.0, masked_speedup=0.5, ratio_to_limit=0.9)
    text = bench.format_table(rows + [noisy], ["BERT test"], 0.5, 3, (0.0, 0.0))
    assert "MISS\n" in text and "ok*" in text and "BERT misses" in text and "met in 1/2 rows" in text
    assert bench.is_noisy(noisy) and not bench.is_noisy(rows[0])
    assert "L1StructuredPruner" in text and "FlopCounterMode" in text
    edge = dict(rows[0], ratio_to_limit=0.7996)  # just below the target: never shown as 0.800
    row_line = bench.format_table([edge], ["BERT test"], 0.5, 3, (0.0, 0.0)).splitlines()[5]
    assert row_line.split()[-2:] == ["0.799", "MISS"]
    assert bench.shown_ratio(0.8) == "0.800" and bench.shown_ratio(1.0519) == "1.051"
    width = dict(rows[0], model="bert-width")
    assert "bert-width misses" in bench.format_table([width], ["BERT test"], 0.5, 3, (0.0, 0.0))
    assert bench.parse_args([]).models == ["mlp", "bert", "bert-width"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "resnet"])
    args = bench.parse_args(["--models", "mlp,bert", "--min-run-time", "0.2"])
    assert args.models == ["mlp", "bert"] and args.min_run_time == 0.2 and args.repeats == 5


def test_eager_is_the_default_runtime(bench, quick_rows) -> None:
    assert quick_rows[0]["runtime"] == "eager" and quick_rows[0]["runtime_max_abs_diff"] is None
    assert bench.parse_args([]).runtime == "eager"
    assert bench.parse_args(["--runtime", "inductor"]).runtime == "inductor"
    with pytest.raises(SystemExit):
        bench.parse_args(["--runtime", "tflite"])
    text = bench.format_table(quick_rows, ["MLP"], 0.05, 1, (0.0, 0.0))
    assert "runtime: eager PyTorch" in text and "outputs match eager" not in text


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler")
def test_compile_mode_times_compiled_models_that_match_eager(bench) -> None:
    import contextlib
    import io

    import torch

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert bench.main(["--quick", "--json", "--runtime", "inductor"]) == 0
    (row,) = json.loads(out.getvalue())
    assert row["runtime"] == "inductor" and "inductor built in" in err.getvalue()
    assert 0 <= row["runtime_max_abs_diff"] < 1e-4
    assert row["squeezed_ms"] > 0 and row["flop_limit"] == pytest.approx(2.0, rel=0.02)
    # Inductor bakes the thread count into its kernels: compile_variants builds them for the
    # count asked for and leaves torch's own count as it found it.
    before = torch.get_num_threads()
    variants, error = bench.compile_variants({"m": torch.nn.Linear(4, 3)}, torch.randn(2, 4), 1)
    assert torch.get_num_threads() == before and error < 1e-6
    assert isinstance(variants["m"], torch._dynamo.eval_frame.OptimizedModule)
    text = bench.format_table([row], ["MLP"], 0.05, 1, (0.0, 0.0))
    assert "runtime: torch.compile (inductor" in text and "inductor outputs match eager" in text


def test_compile_failure_is_one_clear_error(bench, monkeypatch) -> None:
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler found\nlong traceback text")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(SystemExit) as failure:
        bench.compile_variants({"m": torch.nn.Linear(4, 3)}, torch.randn(2, 4), 1)
    message = str(failure.value)
    assert message.startswith("--runtime inductor: torch.compile failed (RuntimeError: no compiler found)")
    assert "g++" in message and "\n" not in message


def test_onnxruntime_mode_times_the_exported_files(bench, monkeypatch) -> None:
    """``--runtime onnxruntime``: every version runs from its ONNX export in onnxruntime, not
    from the torch module: the session holds no torch parameters and keeps the exported
    weights when the module's change; its logits match eager on the MLP and on a small BERT."""
    pytest.importorskip("onnxruntime")
    import contextlib
    import io

    import torch

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert bench.main(["--quick", "--json", "--runtime", "onnxruntime"]) == 0
    (row,) = json.loads(out.getvalue())
    assert row["runtime"] == "onnxruntime" and "onnxruntime built in" in err.getvalue()
    assert 0 <= row["runtime_max_abs_diff"] < 1e-4 and row["squeezed_ms"] > 0
    text = bench.format_table([row], ["MLP"], 0.05, 1, (0.0, 0.0))
    assert "runtime: onnxruntime" in text and "onnxruntime outputs match eager" in text

    monkeypatch.setattr(bench, "BERT", dict(bench.BERT, layers=1, hidden=32, heads=4, intermediate=64,
                                            vocab=50, tokens=8))
    work = bench.build_bert(0)
    sessions, error = bench.onnxruntime_variants({"dense": work.model}, work.inputs, 1)
    assert error < 1e-4 and not list(sessions["dense"].parameters())
    before = bench.logits(sessions["dense"], work.inputs)
    with torch.no_grad():
        for parameter in work.model.parameters():
            parameter.mul_(0.5)
    assert torch.equal(bench.logits(sessions["dense"], work.inputs), before)
    assert (bench.logits(work.model, work.inputs) - before).abs().max() > 1e-3


def test_gpu_rows_time_dense_and_squeezed_at_batch_1_and_32_on_the_device(bench, monkeypatch) -> None:
    """The GPU rows' code path, run on the CPU (no GPU here): every (model, sparsity) is timed
    at both batches, with the inputs and both models on the requested device, and the rows
    print in a table of their own that the CPU target count leaves out."""
    monkeypatch.setattr(bench, "BERT", dict(bench.BERT, layers=1, hidden=32, heads=4, intermediate=64,
                                            vocab=50, tokens=8))
    timed, measure = [], bench.measure_latency

    def fake_latency(model, inputs, threads=1, min_run_time=0.3, warmup=3):
        timed.append((inputs["input_ids"].shape, next(model.parameters()).device.type,
                      sum(p.numel() for p in model.parameters())))
        return measure(model, inputs, threads, 0.001, warmup=0)

    monkeypatch.setattr(bench, "measure_latency", fake_latency)
    rows = bench.gpu_rows(["mlp", "bert-width"], [0.5], 0.001, 1, device="cpu")
    assert [(r["model"], r["batch"], r["device"]) for r in rows] == [("bert-width", 1, "cpu"),
                                                                     ("bert-width", 32, "cpu")]
    assert sorted({shape[0] for shape, _, _ in timed}) == [1, 32]
    assert {shape[1] for shape, _, _ in timed} == {8} and {where for _, where, _ in timed} == {"cpu"}
    assert len({size for _, _, size in timed}) == 2  # the dense and the squeezed model
    assert rows[0]["flop_limit"] == rows[1]["flop_limit"] > 1.5  # per example: the batch does not change it
    text = bench.format_gpu_table(rows)
    assert "no target" in text and len(text.splitlines()) == 4
