"""benchmarks/onnx_fusions.py on a small BERT: which settings fuse what, and the rows' arithmetic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def fusions():
    spec = importlib.util.spec_from_file_location("fedprune_bench_onnx_fusions", BENCHMARKS / "onnx_fusions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_only_static_files_with_every_fusion_get_skip_layer_norm_nodes(fusions, monkeypatch) -> None:
    """A residual add + LayerNorm closes each attention block and each FFN: two per layer, and
    onnxruntime fuses them only where the shapes are fixed and SkipLayerNormFusion runs."""
    layers = 2
    monkeypatch.setattr(fusions.bench, "BERT", dict(fusions.bench.BERT, layers=layers, hidden=32, heads=4,
                                                    intermediate=64, vocab=50, batch=4, tokens=8))
    rows = fusions.run(["bert"], 0.5, [1], 0.01, 1)
    nodes = {row["setting"]: row["skip_layer_norm_nodes"] for row in rows}
    assert nodes == {"dynamic": 0, "static": 2 * layers, "static-no-skipln": 0, "static-basic": 0}
    for row in rows:
        assert row["dense_ms"] > 0 and row["squeezed_ms"] > 0
        assert row["speedup"] == pytest.approx(row["dense_ms"] / row["squeezed_ms"])
        assert row["ratio_to_limit"] == pytest.approx(row["speedup"] / row["flop_limit"])
    assert len({row["flop_limit"] for row in rows}) == 1 and rows[0]["flop_limit"] > 1
    text = fusions.format_table(rows)
    assert "static-no-skipln" in text and "SkipLN nodes" in text


def test_bad_arguments_exit_2(fusions, capsys) -> None:
    for argv in (["--models", "mlp"], ["--sparsity", "1.2"], ["--repeats", "0"]):
        with pytest.raises(SystemExit) as failure:
            fusions.main(argv)
        assert failure.value.code == 2
    assert "allowed: bert, bert-width" in capsys.readouterr().err
