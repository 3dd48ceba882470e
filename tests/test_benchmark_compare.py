"""benchmarks/compare_methods.py: mean (std) over seeds, as a table and as JSON."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_methods.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("fedprune_bench_compare", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEEDS = [[{"method": "gmp", "personal_accuracy_mean": 0.5, "bytes_up": 2_000_000, "global_accuracy": None}],
         [{"method": "gmp", "personal_accuracy_mean": 0.7, "bytes_up": 4_000_000, "global_accuracy": None}]]


def test_json_rows_hand_worked(bench) -> None:
    (row,) = bench.json_rows(SEEDS)
    assert row["method"] == "gmp" and row["seeds"] == 2
    # mean 0.6, sample std sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1414...
    assert row["personal_accuracy_mean"] == pytest.approx({"mean": 0.6, "std": 0.1 * 2 ** 0.5})
    assert row["bytes_up"] == pytest.approx({"mean": 3_000_000, "std": 2 ** 0.5 * 1_000_000})
    assert row["global_accuracy"] is None  # no value in any seed: not applicable, not zero


def test_table_scales_and_marks_missing(bench) -> None:
    text = bench.table(SEEDS)
    line = next(line for line in text.splitlines() if line.startswith("| gmp |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "0.6000 (0.1414)"   # received mean
    assert cells[5] == "-"                 # global acc
    assert cells[6] == "3.000 (1.414)"     # MB up
