"""``fedprune report``: synthetic run folders (no Ray), hand-worked series, figures and tables."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from fedprune.analysis.figures import FIGURES
from fedprune.analysis.report import markdown_table
from fedprune.analysis.runs import (
    RunError,
    accuracy_vs_mb,
    cumulative_mb_by_round,
    device_points,
    last_round_accuracies,
    last_sparsity,
    load_run,
    load_runs,
    personal_accuracy_by_round,
    series_label,
)
from fedprune.sim.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURE_NAMES = [name for name, _ in FIGURES]


# --------------------------------------------------------------------------- synthetic runs

def _messages(method: str, rnd: int, phase: str, down: int, up: int, clients=(0, 1)) -> list[dict]:
    return [dict(method=method, round=rnd, phase=phase, client=c, bytes_down=down, bytes_up=up) for c in clients]


def run_a_records() -> list[dict]:
    """fedavg and gmp, 2 clients (10 and 30 test examples), 2 rounds, evaluated every round.

    fedavg per round: train 250 000 down + 250 000 up per client, evaluate 250 000 down
    + 1 000 up per client -> 1 502 000 bytes a round: 1.502 MB after round 1, 3.004 MB after 2.
    Totals: up 2*2*(250 000 + 1 000) = 1 004 000, down 2*2*500 000 = 2 000 000.
    gmp per round: train 100 000 + 100 000, evaluate 100 000 + 500 per client -> 601 000 a round.
    """
    records = [dict(method=None, round=0, phase="setup", client=c, bytes_down=0, bytes_up=20) for c in (0, 1)]
    acc = {("fedavg", 1): (0.5, 0.7), ("fedavg", 2): (0.6, 0.9),
           ("gmp", 1): (0.8, 0.4), ("gmp", 2): (1.0, 0.5)}
    train_sparsity = {("gmp", 1): (0.4, 0.4), ("gmp", 2): (0.75, 0.7)}
    personal_sparsity = {("gmp", 1): (0.4, 0.4), ("gmp", 2): (0.8, 0.7)}
    for method, size in (("fedavg", 250_000), ("gmp", 100_000)):
        up_eval = 1_000 if method == "fedavg" else 500
        for rnd in (1, 2):
            records += _messages(method, rnd, "train", size, size)
            for c in (0, 1):
                records.append(dict(method=method, round=rnd, phase="train-metrics", client=c, train_loss=0.1,
                                    sparsity=train_sparsity.get((method, rnd), (0.0, 0.0))[c],
                                    compute_seconds=0.01, num_examples=40))
            records += _messages(method, rnd, "evaluate", size, up_eval)
            for c, n in ((0, 10), (1, 30)):
                records.append(dict(method=method, round=rnd, phase="personal", client=c,
                                    accuracy=acc[(method, rnd)][c],
                                    sparsity=personal_sparsity.get((method, rnd), (0.0, 0.0))[c], num_examples=n))
            records.append(dict(method=method, round=rnd, phase="global", global_accuracy=0.4321))
        for c in (0, 1):
            if method == "gmp":
                latency, flops = (0.25, 6809.6) if c == 0 else (0.4, 34048.0)
            else:
                latency, flops = 0.5, 34048.0
            records.append(dict(method=method, round=2, phase="device", client=c, latency_ms=latency, flops=flops,
                                dense_latency_ms=0.5, speedup=0.5 / latency, flop_limit=34048.0 / flops))
    return records


RUN_A_SUMMARY = [
    dict(method="fedavg", rounds=2, clients=2, personal_accuracy_mean=0.75, personal_accuracy_min=0.6,
         global_accuracy=0.4321, bytes_up=1_004_000, bytes_down=2_000_000, sparsity=0.0, seconds=1.23,
         rejected_replies=0, latency_ms_mean=0.5, flops_mean=34048.0),
    dict(method="gmp", rounds=2, clients=2, personal_accuracy_mean=0.75, personal_accuracy_min=0.5,
         global_accuracy=0.2468, bytes_up=402_000, bytes_down=800_000, sparsity=0.725, seconds=4.56,
         rejected_replies=0, latency_ms_mean=0.325, flops_mean=20428.8),
]


def run_b_records() -> list[dict]:
    """local and gmp, 2 clients, 3 rounds, evaluated at round 3 only (evaluate_every=3).

    gmp: train 200 000 down + 100 000 up per client per round (600 000 a round), evaluate at
    round 3 200 000 down + 1 000 up per client -> cumulative 0.6, 1.2, 2.202 MB.
    local sends nothing (0 bytes).
    """
    records = []
    for method, down, up in (("local", 0, 0), ("gmp", 200_000, 100_000)):
        for rnd in (1, 2, 3):
            records += _messages(method, rnd, "train", down, up)
            for c in (0, 1):
                records.append(dict(method=method, round=rnd, phase="train-metrics", client=c, train_loss=0.2,
                                    sparsity=0.3 * rnd if method == "gmp" else 0.0,
                                    compute_seconds=0.01, num_examples=20))
        records += _messages(method, 3, "evaluate", down, 1_000 if up else 0)
        for c, a in ((0, 0.25), (1, 0.55)):
            records.append(dict(method=method, round=3, phase="personal", client=c, accuracy=a,
                                sparsity=0.9 if method == "gmp" else 0.0, num_examples=20))
        records.append(dict(method=method, round=3, phase="global",
                            global_accuracy=None if method == "local" else 0.3))
        for c in (0, 1):
            records.append(dict(method=method, round=3, phase="device", client=c, latency_ms=0.5, flops=34048.0,
                                dense_latency_ms=0.5, speedup=1.0, flop_limit=1.0))
    return records


RUN_B_SUMMARY = [
    dict(method="local", rounds=3, clients=2, personal_accuracy_mean=0.4, personal_accuracy_min=0.25,
         global_accuracy=None, bytes_up=0, bytes_down=0, sparsity=0.0, seconds=0.5,
         rejected_replies=0, latency_ms_mean=0.5, flops_mean=34048.0),
    dict(method="gmp", rounds=3, clients=2, personal_accuracy_mean=0.4, personal_accuracy_min=0.25,
         global_accuracy=0.3, bytes_up=602_000, bytes_down=1_600_000, sparsity=0.9, seconds=7.89,
         rejected_replies=0, latency_ms_mean=0.5, flops_mean=34048.0),
]


def write_run(folder: Path, records: list[dict], summary: list[dict], config: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "summary.json").write_text(json.dumps({"methods": summary}))
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return folder


@pytest.fixture
def run_a(tmp_path: Path) -> Path:
    return write_run(tmp_path / "runA", run_a_records(), RUN_A_SUMMARY,
                     {"methods": ["fedavg", "gmp"], "rounds": 2, "num_clients": 2, "final_sparsity": 0.8,
                      "dataset": "digits", "seed": 0})


@pytest.fixture
def run_b(tmp_path: Path) -> Path:
    return write_run(tmp_path / "runB", run_b_records(), RUN_B_SUMMARY,
                     {"methods": ["local", "gmp"], "rounds": 3, "num_clients": 2, "final_sparsity": 0.9,
                      "evaluate_every": 3, "seed": 1})


# --------------------------------------------------------------------------- extraction

def pairs(expected: list[tuple]) -> object:
    """``pytest.approx`` for a list of tuples (it does not nest)."""
    class Pairs:
        def __eq__(self, actual: object) -> bool:
            return (isinstance(actual, list) and len(actual) == len(expected)
                    and all(tuple(a) == pytest.approx(tuple(e)) for a, e in zip(actual, expected)))

        def __repr__(self) -> str:
            return f"approx {expected!r}"
    return Pairs()


def test_personal_accuracy_plain_and_weighted_mean_per_round() -> None:
    records = run_a_records()
    assert personal_accuracy_by_round(records, "fedavg") == pairs([(1, 0.6), (2, 0.75)])
    # weighted by num_examples 10 and 30: (0.5*10 + 0.7*30)/40, (0.6*10 + 0.9*30)/40
    assert personal_accuracy_by_round(records, "fedavg", weighted=True) == pairs([(1, 0.65), (2, 0.825)])
    assert personal_accuracy_by_round(records, "gmp") == pairs([(1, 0.6), (2, 0.75)])
    assert personal_accuracy_by_round(records, "nosuch") == []
    # only evaluated rounds give points
    assert personal_accuracy_by_round(run_b_records(), "gmp") == pairs([(3, 0.4)])


def test_cumulative_mb_counts_train_and_evaluate_of_that_method_only() -> None:
    records = run_a_records()
    assert cumulative_mb_by_round(records, "fedavg") == pytest.approx({1: 1.502, 2: 3.004})
    assert cumulative_mb_by_round(records, "gmp") == pytest.approx({1: 0.601, 2: 1.202})
    # setup query (method None) is no method's traffic
    assert cumulative_mb_by_round(records, None) == {}
    # run B: rounds 1, 2 train only; round 3 train + evaluate
    assert cumulative_mb_by_round(run_b_records(), "gmp") == pytest.approx({1: 0.6, 2: 1.2, 3: 2.202})
    assert cumulative_mb_by_round(run_b_records(), "local") == pytest.approx({1: 0.0, 2: 0.0, 3: 0.0})


def test_cumulative_mb_matches_summary_totals() -> None:
    for records, summary in ((run_a_records(), RUN_A_SUMMARY), (run_b_records(), RUN_B_SUMMARY)):
        for row in summary:
            last = max(cumulative_mb_by_round(records, row["method"]).values())
            assert last == pytest.approx((row["bytes_up"] + row["bytes_down"]) / 1e6)


def test_accuracy_vs_mb_pairs_each_evaluated_round_with_traffic_so_far() -> None:
    assert accuracy_vs_mb(run_a_records(), "fedavg") == pairs([(1.502, 0.6), (3.004, 0.75)])
    assert accuracy_vs_mb(run_b_records(), "gmp") == pairs([(2.202, 0.4)])
    assert accuracy_vs_mb(run_b_records(), "local") == pairs([(0.0, 0.4)])


def test_last_round_accuracies() -> None:
    assert last_round_accuracies(run_a_records(), "gmp") == (2, {0: 1.0, 1: 0.5})
    assert last_round_accuracies(run_b_records(), "local") == (3, {0: 0.25, 1: 0.55})
    assert last_round_accuracies(run_a_records(), "nosuch") == (None, {})


def test_last_sparsity_prefers_latest_round_and_personal_over_train_metrics() -> None:
    records = run_a_records()
    assert last_sparsity(records, "gmp") == {0: 0.8, 1: 0.7}
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    assert last_sparsity(shuffled, "gmp") == {0: 0.8, 1: 0.7}
    # without personal records the train-metrics of the last round count
    train_only = [r for r in records if r["phase"] != "personal"]
    assert last_sparsity(train_only, "gmp") == {0: 0.75, 1: 0.7}


def test_device_points_speedup_from_latencies() -> None:
    points = device_points(run_a_records(), "gmp")
    assert [p["client"] for p in points] == [0, 1]
    assert [p["sparsity"] for p in points] == [0.8, 0.7]
    assert [p["speedup"] for p in points] == pytest.approx([2.0, 1.25])
    assert [p["flop_limit"] for p in points] == pytest.approx([5.0, 1.0])


def test_labels(run_a: Path, run_b: Path, tmp_path: Path) -> None:
    runs = load_runs([run_a, run_b])
    assert series_label("gmp", runs[0], several=True) == "gmp [runA]"
    assert series_label("gmp", runs[0], several=False) == "gmp"
    twin = write_run(tmp_path / "other" / "runA", run_a_records(), RUN_A_SUMMARY, {})
    assert [r.label for r in load_runs([run_a, twin])] == ["runA#1", "runA#2"]


def test_markdown_table_uses_table_formats() -> None:
    text = markdown_table(RUN_A_SUMMARY)
    lines = text.splitlines()
    # columns that no row fills (trained accuracy, new clients, mask overlap) are left out
    assert lines[0].startswith("| method | received mean | received min | global acc | MB up")
    assert lines[2] == ("| fedavg | 0.7500 | 0.6000 | 0.4321 | 1.004 | 2.000 | 0.000 | 0.500 | 34.0 | 1.2 |")
    assert lines[3] == ("| gmp | 0.7500 | 0.5000 | 0.2468 | 0.402 | 0.800 | 0.725 | 0.325 | 20.4 | 4.6 |")
    with_trained = markdown_table([{**RUN_A_SUMMARY[0], "personal_accuracy_trained_mean": 0.8,
                                    "personal_accuracy_trained_min": 0.7}])
    header = with_trained.splitlines()[0]
    assert header.startswith("| method | received mean | received min | trained mean | trained min")
    assert "| fedavg | 0.7500 | 0.6000 | 0.8000 | 0.7000 | 0.4321 |" in with_trained


# --------------------------------------------------------------------------- CLI

def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = imread(path)
    assert image.shape[0] >= 200 and image.shape[1] >= 300, (path, image.shape)
    assert float(np.std(image[..., :3])) > 0.01, f"{path} is blank"


def test_report_of_two_runs(run_a: Path, run_b: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert main(["report", str(run_a), str(run_b), "--out", str(out)]) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    for name in FIGURE_NAMES:
        assert_png(out / name)
    text = (out / "report.md").read_text()
    for name in FIGURE_NAMES:
        assert f"]({name})" in text  # embedded with a relative path
    # run A
    assert "| fedavg | 0.7500 | 0.6000 | 0.4321 | 1.004 | 2.000 | 0.000 | 0.500 | 34.0 | 1.2 |" in text
    assert "| gmp | 0.7500 | 0.5000 | 0.2468 | 0.402 | 0.800 | 0.725 | 0.325 | 20.4 | 4.6 |" in text
    # run B: global accuracy null -> "-"
    assert "| local | 0.4000 | 0.2500 | - | 0.000 | 0.000 | 0.000 | 0.500 | 34.0 | 0.5 |" in text
    assert "| gmp | 0.4000 | 0.2500 | 0.3000 | 0.602 | 1.600 | 0.900 | 0.500 | 34.0 | 7.9 |" in text
    assert text.index("### runA") < text.index("### runB")
    assert "final_sparsity = 0.9" in text and "final_sparsity = 0.8" in text
    assert "`method [run folder]`" in text


def test_report_of_one_run_defaults_to_run_folder(run_a: Path, capsys) -> None:
    assert main(["report", str(run_a)]) == 0
    for name in FIGURE_NAMES:
        assert_png(run_a / "report" / name)
    assert "0.4321" in (run_a / "report" / "report.md").read_text()


@pytest.mark.parametrize("broken", ["missing", "no_summary", "no_rounds", "bad_json"])
def test_bad_run_folder_exit_2_nothing_written(broken: str, run_a: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad"
    if broken != "missing":
        write_run(bad, run_a_records(), RUN_A_SUMMARY, {})
        if broken == "no_summary":
            (bad / "summary.json").unlink()
        elif broken == "no_rounds":
            (bad / "rounds.jsonl").unlink()
        else:
            (bad / "rounds.jsonl").write_text('{"phase": "train"\n')
    out = tmp_path / "out"
    assert main(["report", str(run_a), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "Traceback" not in err[0], err
    assert not out.exists()
    assert not (bad / "report").exists()


def test_several_runs_need_out(run_a: Path, run_b: Path, capsys) -> None:
    assert main(["report", str(run_a), str(run_b)]) == 2
    assert "--out" in capsys.readouterr().err
    assert not (run_a / "report").exists()


def test_load_run_error_names_folder(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="nowhere"):
        load_run(tmp_path / "nowhere")


@pytest.mark.parametrize("no_report", [False, True])
def test_run_writes_report_unless_no_report(no_report: bool, tmp_path: Path, monkeypatch, capsys) -> None:
    """``fedprune run`` with the simulation replaced by a synthetic run folder."""
    import fedprune.sim.runner as runner

    def fake_simulate(cfg, out_dir: Path, verbose: bool = False, resume: bool = False) -> list[dict]:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps({"rounds": cfg.rounds}))
        (out_dir / "summary.json").write_text(json.dumps({"methods": RUN_A_SUMMARY}))
        (out_dir / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run_a_records()))
        return RUN_A_SUMMARY

    monkeypatch.setattr(runner, "simulate", fake_simulate)
    out = tmp_path / "run"
    args = ["run", "--set", "rounds=2", "--methods", "fedavg,gmp", "--out", str(out)]
    assert main(args + (["--no-report"] if no_report else [])) == 0
    printed = capsys.readouterr().out
    if no_report:
        assert not (out / "report").exists()
        assert "report:" not in printed
    else:
        assert f"report: {out / 'report' / 'report.md'}" in printed
        for name in FIGURE_NAMES:
            assert_png(out / "report" / name)
        assert "| fedavg | 0.7500 |" in (out / "report" / "report.md").read_text()
