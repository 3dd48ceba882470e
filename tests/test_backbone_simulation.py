"""Two real Flower/Ray simulations of the same config: run records, byte totals, reproducibility."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from fedprune.config import make_config
from fedprune.models.factory import initial_model

pytestmark = pytest.mark.slow

SETTINGS = dict(methods=["fedavg", "gmp"], num_clients=2, rounds=2, partitioner="iid", mlp_widths=[16],
                final_sparsity=0.5, prune_start_round=1, prune_end_round=2, local_epochs=1)
KEYS = {"method", "rounds", "clients", "personal_accuracy_mean", "personal_accuracy_min",
        "global_accuracy", "bytes_up", "bytes_down", "sparsity", "seconds"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[tuple[Path, list[dict]]]:
    """The same config simulated twice, into two folders (the only Ray runs of the suite)."""
    from fedprune.sim.runner import simulate

    cfg = make_config(SETTINGS)
    result = []
    for name in ("first", "second"):
        out = tmp_path_factory.mktemp("sim") / name
        rows = simulate(cfg, out)
        result.append((out, rows))
    return result


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines() if line.strip()]


def test_summary_file(runs) -> None:
    out, rows = runs[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == rows
    assert [row["method"] for row in rows] == ["fedavg", "gmp"]
    for row in rows:
        assert KEYS <= set(row), KEYS - set(row)
        assert row["rounds"] == 2 and row["clients"] == 2
        assert 0.0 <= row["personal_accuracy_min"] <= row["personal_accuracy_mean"] <= 1.0
        assert 0.0 <= row["personal_accuracy_trained_min"] <= row["personal_accuracy_trained_mean"] <= 1.0
        assert row["bytes_up"] > 0 and row["bytes_down"] > 0
        assert row["seconds"] > 0
    fedavg, gmp = rows
    assert 0.0 <= fedavg["global_accuracy"] <= 1.0
    assert gmp["global_accuracy"] is None  # personal masks: no single global model to run
    assert fedavg["sparsity"] == 0.0
    assert gmp["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert gmp["bytes_up"] < fedavg["bytes_up"]
    assert gmp["bytes_down"] < fedavg["bytes_down"]
    config = json.loads((out / "config.json").read_text())
    assert config["num_clients"] == 2 and config["methods"] == ["fedavg", "gmp"]


def test_round_records_per_client(runs) -> None:
    out, _ = runs[0]
    records = read_records(out)
    for method in ("fedavg", "gmp"):
        for server_round in (1, 2):
            for phase in ("train", "personal"):
                clients = sorted(r["client"] for r in records
                                 if r["method"] == method and r["round"] == server_round and r["phase"] == phase)
                assert clients == [0, 1], (method, server_round, phase)
    setup = [r for r in records if r["method"] is None]
    assert len(setup) == 2 and all(r["phase"] == "setup" for r in setup)


def test_record_bytes_add_up_to_summary(runs) -> None:
    out, rows = runs[0]
    records = read_records(out)
    for row in rows:
        mine = [r for r in records if r["method"] == row["method"]]
        assert sum(r.get("bytes_up", 0) for r in mine) == row["bytes_up"]
        assert sum(r.get("bytes_down", 0) for r in mine) == row["bytes_down"]


def _npy_bytes(array: np.ndarray) -> int:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return len(buffer.getvalue())


def test_first_dense_download_hand_count(runs) -> None:
    """Round 1 sends every client the dense model: .npy bytes + key per tensor, plus the
    config record (encoding, mask-digest, method, server-round, and measure: an evaluation
    round asks for the accuracy right after training)."""
    out, _ = runs[0]
    cfg = make_config(SETTINGS)
    state = initial_model(cfg).state_dict()
    arrays = sum(_npy_bytes(v.numpy()) + len(k) for k, v in state.items())
    for method in ("fedavg", "gmp"):
        config = (len("encoding") + len("dense") + len("mask-digest") + 8 + len("method") + len(method)
                  + len("server-round") + 8 + len("measure") + 1)
        down = [r["bytes_down"] for r in read_records(out)
                if r["method"] == method and r["round"] == 1 and r["phase"] == "train"]
        assert down == [arrays + config, arrays + config], method


def is_timing(key: str) -> bool:
    """Wall-clock measurements differ between runs (seconds, latencies)."""
    return ("seconds" in key or "latency" in key or key.endswith("_ms") or "_ms_" in key
            or key == "speedup")


def test_same_config_same_numbers(runs) -> None:
    (first_out, first), (second_out, second) = runs
    assert len(first) == len(second) == 2
    for a, b in zip(first, second):
        assert set(a) == set(b)
        assert {k: v for k, v in a.items() if not is_timing(k)} == {k: v for k, v in b.items() if not is_timing(k)}
        assert {"bytes_up", "personal_accuracy_mean", "global_accuracy"} <= {k for k in a if not is_timing(k)}

    def comparable(out: Path) -> list[str]:
        # same records; their order within a round follows reply arrival, so compare sorted
        return sorted(json.dumps({k: v for k, v in r.items() if not is_timing(k)}, sort_keys=True)
                      for r in read_records(out))

    assert comparable(first_out) == comparable(second_out)
