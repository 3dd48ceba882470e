"""Config errors through the CLI: exit code 2, one line naming the field, no run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprune.config import ConfigError, make_config
from fedprune.sim.cli import main

CASES = [
    # (CLI arguments, field the message must name)
    (["--set", "bogus_key=1"], "bogus_key"),
    (["--set", "rounds=abc"], "rounds"),
    (["--set", "rounds=2.5"], "rounds"),
    (["--set", "mlp_widths=[16, \"x\"]"], "mlp_widths"),
    (["--set", "final_sparsity=1.0"], "final_sparsity"),
    (["--set", "final_sparsity=-0.1"], "final_sparsity"),
    (["--set", "fraction_train=0"], "fraction_train"),
    (["--set", "fraction_evaluate=1.5"], "fraction_evaluate"),
    (["--set", "num_clients=5000"], "num_clients"),
    (["--set", "dataset=bogus"], "dataset"),
    (["--methods", "fedavg,bogus"], "methods"),
    (["--set", "partitioner=bogus"], "partitioner"),
    (["--set", "partitioner=pathological", "--set", "classes_per_client=11"], "classes_per_client"),
    (["--set", "learning_rate=inf"], "learning_rate"),
    (["--set", "aggregation=krum"], "aggregation"),
]


def run_cli(args: list[str], out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(["run", *args, "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line_naming(err: str, field: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert field in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(("args", "field"), CASES, ids=[c[1] + ":" + " ".join(c[0]) for c in CASES])
def test_cli_config_error(args: list[str], field: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, err = run_cli(args, out, capsys)
    assert code == 2
    assert_one_line_naming(err, field)
    assert not out.exists()


def test_cli_bad_key_in_config_file(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('rounds = 3\nnot_a_setting = "x"\n')
    out = tmp_path / "run"
    code, err = run_cli(["--config", str(config)], out, capsys)
    assert code == 2
    assert_one_line_naming(err, "not_a_setting")
    assert not out.exists()


def test_cli_bad_value_in_config_file(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("final_sparsity = 1.5\n")
    out = tmp_path / "run"
    code, err = run_cli(["--config", str(config)], out, capsys)
    assert code == 2
    assert_one_line_naming(err, "final_sparsity")
    assert not out.exists()


def test_cli_missing_config_file(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere.toml"
    out = tmp_path / "run"
    code, err = run_cli(["--config", str(missing)], out, capsys)
    assert code == 2
    assert_one_line_naming(err, "--config")
    assert "nowhere.toml" in err
    assert not out.exists()


def test_cli_invalid_toml_file(tmp_path: Path, capsys) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("rounds = = 3\n[[\n")
    out = tmp_path / "run"
    code, err = run_cli(["--config", str(config)], out, capsys)
    assert code == 2
    assert "--config" in err.strip().splitlines()[0]
    assert not out.exists()


def test_override_beats_file(tmp_path: Path) -> None:
    from fedprune.config import load_config

    config = tmp_path / "ok.toml"
    config.write_text("rounds = 3\nfinal_sparsity = 0.7\n")
    cfg = load_config(config, ["rounds=5"])
    assert cfg.rounds == 5 and cfg.final_sparsity == 0.7


@pytest.mark.parametrize(("values", "field"), [
    ({"final_sparsity": 1.0}, "final_sparsity"),
    ({"fraction_train": 0}, "fraction_train"),
    ({"num_clients": 5000}, "num_clients"),
    ({"num_clients": 899}, "num_clients"),  # 1797 examples: at least 2 per client
    ({"methods": ["gmp", "nope"]}, "methods"),
    ({"seed": True}, "seed"),
])
def test_make_config_raises_config_error(values: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(values)
    assert str(info.value).startswith(field)
    assert "\n" not in str(info.value)


def test_valid_edges_accepted() -> None:
    cfg = make_config({"final_sparsity": 0.0, "fraction_train": 1.0, "fraction_evaluate": 0.01,
                       "num_clients": 898, "partitioner": "iid", "methods": "fedavg, gmp"})
    assert cfg.methods == ["fedavg", "gmp"]
    assert cfg.fraction_train == 1.0 and cfg.num_clients == 898
