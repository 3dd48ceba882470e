"""Configs that used to crash or run uselessly are refused before anything starts: one line
naming the field or file, exit 2, nothing written."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedprune.sim.cli import main

TEXT = ["--set", "dataset=text", "--set", "model=transformer", "--set", "pretrained=tiny-bert",
        "--set", "num_clients=2"]


def write_csv(path: Path, labels: list[int]) -> Path:
    rows = ["text,label"] + [f"review number {i} is {'good' if label else 'bad'},{label}"
                             for i, label in enumerate(labels)]
    path.write_text("\n".join(rows) + "\n")
    return path


def refused(args: list[str], out: Path, capsys) -> str:
    started = time.monotonic()
    code = main(["run", *args, "--out", str(out), "--no-report"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()
    assert time.monotonic() - started < 20  # no hub retries, no Ray start
    return err


@pytest.mark.parametrize(("setting", "field"), [
    ("learning_rate=inf", "learning_rate"),
    ("dirichlet_alpha=inf", "dirichlet_alpha"),
    ("fault_kinds=meltdown", "fault_kinds"),
    ("trim_fraction=0.5", "trim_fraction"),
    ("round_timeout=0", "round_timeout"),
    ("aggregation=krum", "aggregation"),
])
def test_bad_settings(tmp_path, capsys, setting: str, field: str) -> None:
    assert refused(["--set", setting], tmp_path / "run", capsys).startswith(f"fedprune: error: {field}:")


def test_labels_of_one_class(tmp_path, capsys) -> None:
    data = write_csv(tmp_path / "one.csv", [1] * 20)
    err = refused([*TEXT, "--set", f"data_path={data}", "--set", "partitioner=pathological"],
                  tmp_path / "run", capsys)
    assert "data_path" in err and "one.csv" in err and "at least 2 classes" in err


def test_labels_that_are_not_0_to_k(tmp_path, capsys) -> None:
    data = write_csv(tmp_path / "sparse.csv", [0, 1000000] * 10)
    err = refused([*TEXT, "--set", f"data_path={data}"], tmp_path / "run", capsys)
    assert "labels must be the integers 0..K-1" in err and "1000000" in err


def test_a_missing_pretrained_folder(tmp_path, capsys) -> None:
    data = write_csv(tmp_path / "ok.csv", [0, 1] * 10)
    err = refused([*TEXT, "--set", f"data_path={data}", "--set", "pretrained=/nonexistent"], tmp_path / "run",
                  capsys)
    assert err.startswith("fedprune: error: pretrained: /nonexistent")


def test_a_relative_data_path_typo_is_not_a_hub_name(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    err = refused([*TEXT, "--set", "data_path=shared/data/sst2x"], tmp_path / "run", capsys)
    assert "shared/data/sst2x: no such file or folder" in err


def test_an_out_folder_that_cannot_be_written(tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = refused([], blocker / "run", capsys)
    assert err.startswith("fedprune: error: --out:") and "a-file is not a folder" in err
