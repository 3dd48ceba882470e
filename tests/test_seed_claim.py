"""benchmarks/seed_claim.py: rows, table and claim checks from hand-made run folders (no Ray)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import seed_claim  # noqa: E402


def _summary(method: str, received: float, trained: float, sparsity: float, flops: float) -> dict:
    return {"method": method, "personal_accuracy_mean": received, "personal_accuracy_min": received - 0.1,
            "personal_accuracy_trained_mean": trained, "personal_accuracy_trained_min": trained - 0.1,
            "sparsity": sparsity, "flops_mean": flops, "latency_ms_mean": 100.0, "bytes_up": 3_000_000,
            "bytes_down": 1_500_000}


def _run_folder(folder: Path, summaries: list[dict], speedups: dict[str, list[float]]) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"methods": summaries}))
    records = [{"phase": "train", "method": "gmp"}]
    for method, values in speedups.items():
        records += [{"phase": "device", "method": method, "client": i, "speedup": v} for i, v in enumerate(values)]
    (folder / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder


def test_rows_take_speedup_as_the_mean_over_clients(tmp_path) -> None:
    folder = _run_folder(tmp_path / "federated-s0.5",
                         [_summary("mi", 0.8, 0.7, 0.5, 1.5e9), _summary("gmp", 0.85, 0.75, 0.5, 2.7e9)],
                         {"mi": [1.5, 2.0, 2.5], "gmp": [0.9, 1.1]})
    rows = seed_claim.rows_of(folder, "federated", 0.5)
    by = {r["method"]: r for r in rows}
    assert by["mi"]["speedup_mean"] == pytest.approx(2.0)  # (1.5 + 2 + 2.5) / 3
    assert by["gmp"]["speedup_mean"] == pytest.approx(1.0)
    assert by["mi"]["megabytes"] == pytest.approx(4.5)  # 3 MB up + 1.5 MB down
    assert by["gmp"]["setting"] == "federated" and by["gmp"]["target_sparsity"] == 0.5


def test_table_cells_and_chance_note() -> None:
    rows = [{**_summary("movement", 0.52, 0.55, 0.9, 2.718e9), "setting": "centralized", "target_sparsity": 0.9,
             "speedup_mean": 0.98, "megabytes": 12.0},
            {**_summary("mi", 0.81, 0.8, 0.9, 0.5e9), "setting": "centralized", "target_sparsity": 0.9,
             "speedup_mean": None, "megabytes": 1.25}]
    lines = seed_claim.table(rows).splitlines()
    assert len(lines) == 4
    movement = [c.strip() for c in lines[2].strip("|").split("|")]
    # setting, sparsity, method, received mean/min, trained mean/min, sparsity, GFLOPs, speedup, ms, MB, note
    assert movement == ["centralized", "0.9", "movement", "0.520", "0.420", "0.550", "0.450", "0.900", "2.718",
                        "0.98", "100", "12.0", "near chance"]
    mi = [c.strip() for c in lines[3].strip("|").split("|")]
    assert mi[9] == "-" and mi[-1] == "" and mi[8] == "0.500"
    federated = {**rows[0], "setting": "federated"}  # a skewed client's majority class is no chance level
    assert seed_claim.chance_note(federated) == "" and seed_claim.chance_note(rows[0]) == "near chance"


def test_claim_checks_need_both_speed_and_accuracy_against_every_weight_method() -> None:
    def row(method: str, received: float, trained: float, speed: float) -> dict:
        return {"setting": "centralized", "target_sparsity": 0.7, "method": method, "speedup_mean": speed,
                "personal_accuracy_mean": received, "personal_accuracy_trained_mean": trained}

    rows = [row("fedavg", 0.9, 0.9, 1.0), row("gmp", 0.85, 0.80, 1.0), row("movement", 0.6, 0.6, 1.0),
            row("soft-movement", 0.7, 0.7, 1.0), row("mi", 0.86, 0.79, 2.0), row("mi-post", 0.80, 0.81, 0.9)]
    checks = {c["method"]: c for c in seed_claim.claim_checks(rows)}
    # mi: faster than all, received 0.86 > 0.85, trained 0.79 < gmp's 0.80
    assert (checks["mi"]["faster"], checks["mi"]["more_accurate_received"],
            checks["mi"]["more_accurate_trained"]) == (True, True, False)
    # mi-post: 0.9 is not faster than 1.0; received 0.80 < gmp's 0.85; its trained column is the
    # dense model it trains (FedAvg's), not a pruned one: no verdict
    assert (checks["mi-post"]["faster"], checks["mi-post"]["more_accurate_received"],
            checks["mi-post"]["more_accurate_trained"]) == (False, False, None)
    assert "| centralized | 0.7 | mi | yes | yes | no |" in seed_claim.claim_table(list(checks.values()))


def test_generated_config_is_toml_with_the_same_budget_for_every_method(tmp_path) -> None:
    import tomllib

    config = seed_claim.run_config("federated", 0.7, ["fedavg", "mi"], False, "data/sst2")
    text = "\n".join(seed_claim.toml_line(k, v) for k, v in config.items())
    assert tomllib.loads(text) == config
    assert config["num_clients"] == 8 and config["max_train_examples"] * 8 == seed_claim.EXAMPLES
    central = seed_claim.run_config("centralized", 0.9, ["gmp"], False, "data/sst2")
    shared = {k: v for k, v in config.items() if k in seed_claim.BASE}
    assert shared == {k: v for k, v in central.items() if k in seed_claim.BASE}
    assert central["max_train_examples"] == seed_claim.EXAMPLES
    long = seed_claim.run_config("centralized-long", 0.9, ["gmp"], False, "data/sst2")
    assert {k: v for k, v in long.items() if k != "max_train_examples"} == {
        k: v for k, v in central.items() if k != "max_train_examples"}  # only the examples differ
    assert long["max_train_examples"] == 8 * seed_claim.EXAMPLES


def test_unknown_setting_exits_2(capsys) -> None:
    assert seed_claim.main(["--settings", "edge", "--out", "unused"]) == 2
    assert "--settings" in capsys.readouterr().err


def test_soft_movement_thresholds_are_read_from_the_newest_client_states(tmp_path) -> None:
    import torch
    from flwr.app import RecordDict

    from fedprune.clients.persist import StateStore
    from fedprune.clients.state import ClientMemory
    from fedprune.pruning.soft_movement import CONFIGURED_KEEPS, EFFECTIVE_THRESHOLD

    store = StateStore(tmp_path / "checkpoint" / "clients")
    for partition, (used, keeps) in enumerate(((0.40, 0.2), (0.46, 0.3))):
        for step, scale in (((3, 4), 1.0), ((2, 4), 0.5)):  # (3, 4) is the newer: its values count
            state = RecordDict()
            ClientMemory(state, "soft-movement").save_pruner_state(
                {"w": torch.zeros(2), EFFECTIVE_THRESHOLD: torch.tensor(used * scale),
                 CONFIGURED_KEEPS: torch.tensor(keeps * scale)})
            store.save(partition, step, state)
    found = seed_claim.soft_movement_thresholds(tmp_path, 2)
    assert found == pytest.approx({"effective_threshold": 0.43, "configured_keeps": 0.25})
    assert seed_claim.soft_movement_thresholds(tmp_path, 0) is None


def test_xl_setting_differs_from_centralized_only_in_its_32x_examples() -> None:
    central = seed_claim.run_config("centralized", 0.9, ["gmp"], False, "data/sst2")
    xl = seed_claim.run_config("centralized-xl", 0.9, ["gmp"], False, "data/sst2")
    assert {k: v for k, v in xl.items() if k != "max_train_examples"} == {
        k: v for k, v in central.items() if k != "max_train_examples"}
    # 8,192 sentences, minibatches of 16: 512 optimizer steps per round
    assert xl["max_train_examples"] == 8192 and xl["max_train_examples"] // xl["batch_size"] == 512


def test_methods_option_runs_only_the_chosen_methods(tmp_path, monkeypatch) -> None:
    launched: list[tuple[str, list[str]]] = []

    def fake_run(run_dir: Path, config: dict, config_dir: Path) -> int:
        launched.append((run_dir.name, config["methods"]))
        _run_folder(run_dir, [_summary(m, 0.8, 0.8, 0.9, 1e8) for m in config["methods"]], {})
        return 0

    monkeypatch.setattr(seed_claim, "_run", fake_run)
    assert seed_claim.main(["--settings", "centralized-xl", "--sparsities", "0.5,0.9", "--out", str(tmp_path),
                            "--methods", "movement,mi", "--json"]) == 0
    # the registry's order, not the option's; fedavg (not chosen) is not run at the first sparsity
    assert launched == [("centralized-xl-s0.5", ["mi", "movement"]), ("centralized-xl-s0.9", ["mi", "movement"])]


def test_methods_option_with_only_fedavg_runs_once_and_repeats_its_row(tmp_path, monkeypatch, capsys) -> None:
    launched: list[str] = []

    def fake_run(run_dir: Path, config: dict, config_dir: Path) -> int:
        launched.append(run_dir.name)
        _run_folder(run_dir, [_summary(m, 0.8, 0.8, 0.0, 1e9) for m in config["methods"]], {})
        return 0

    monkeypatch.setattr(seed_claim, "_run", fake_run)
    assert seed_claim.main(["--settings", "centralized", "--sparsities", "0.5,0.9", "--out", str(tmp_path),
                            "--methods", "fedavg", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert launched == ["centralized-s0.5"]
    assert [(r["method"], r["target_sparsity"]) for r in rows] == [("fedavg", 0.5), ("fedavg", 0.9)]


def test_unknown_method_exits_2_before_running_anything(tmp_path, capsys) -> None:
    assert seed_claim.main(["--methods", "mi,magnitude", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--methods" in err and "'magnitude'" in err and "soft-movement" in err
    assert not any(tmp_path.iterdir())
