"""On-device cost: FLOPs against hand counts, budgets, profile assignment, `fedprune device`."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from flwr.app import RecordDict
from torch import nn

from fedprune.clients.app import handle_train
from fedprune.config import ConfigError, make_config
from fedprune.data.federation import clients_data
from fedprune.device import flops_per_example, measure_latency, parameter_bytes, sparse_bytes
from fedprune.device.budget import DeviceProfile, assign_profiles, first_sparsity, fit_sparsity
from fedprune.models import MLP
from fedprune.models.factory import initial_model
from fedprune.pruning.squeeze import squeeze
from helpers import new_context


def test_linear_flops_hand_count() -> None:
    layer = nn.Linear(7, 5)
    # one multiply-add per weight and example = 2 FLOPs: 2 * 7 * 5 = 70 per example
    assert flops_per_example(layer, torch.randn(4, 7), batch_size=4) == 70


def test_mlp_flops_hand_count() -> None:
    model = MLP(64, 10, [128, 64])
    expected = 2 * (64 * 128 + 128 * 64 + 64 * 10)  # 34,048
    assert flops_per_example(model, torch.randn(32, 64), batch_size=32) == expected == 34048


def test_parameter_and_sparse_bytes_hand_count() -> None:
    layer = nn.Linear(4, 3)  # 12 weights + 3 biases, float32
    assert parameter_bytes(layer) == 15 * 4
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, :2] = True
    # 2 kept values * 4 bytes + ceil(12 / 8) = 2 bitmap bytes + 3 dense biases * 4 bytes
    assert sparse_bytes(layer, {"weight": mask}) == 2 * 4 + 2 + 12


def test_latency_is_positive_and_reports_threads() -> None:
    latency = measure_latency(nn.Linear(8, 8), torch.randn(2, 8), threads=1, min_run_time=0.01)
    assert latency.median_ms > 0 and latency.threads == 1


def test_assign_profiles_explicit_then_fractions() -> None:
    big = DeviceProfile("big", max_flops=1e6, fraction=0.5)
    small = DeviceProfile("small", max_param_bytes=1e3, clients=(9, 0))
    assigned = assign_profiles([big, small], 10)
    assert [c for c, p in assigned.items() if p is small] == [0, 9]
    # the remaining clients 1..8 in order: round(0.5 * 10) = 5 of them get "big"
    assert [c for c, p in assigned.items() if p is big] == [1, 2, 3, 4, 5]
    assert [c for c, p in assigned.items() if p is None] == [6, 7, 8]


def test_first_sparsity_and_fit() -> None:
    profile = DeviceProfile("p", max_flops=250.0, max_param_bytes=600.0)
    # shares: 250/1000 = 0.25 of FLOPs, 600/1000 = 0.6 of bytes: the tighter one wins
    assert first_sparsity(profile, 1000.0, 1000.0) == pytest.approx(0.75)
    calls = []
    sparsity, met = fit_sparsity(0.5, lambda s: calls.append(s) or s >= 0.55, step=0.02)
    assert met and sparsity == pytest.approx(0.56) and len(calls) == 4
    assert fit_sparsity(0.95, lambda s: False, step=0.02) == (0.99, False)


@pytest.mark.parametrize("bad", [
    [{"name": "x", "max_flops": -1}],
    [{"name": "x", "colour": "red"}],
    [{"max_flops": 10}],
    [{"name": "x", "clients": [99]}],
    "phone",
])
def test_bad_profiles_are_config_errors(bad) -> None:
    with pytest.raises(ConfigError) as info:
        make_config({"device_profiles": bad})
    assert str(info.value).startswith("device_profiles")


def _train_once(cfg, method: str, partition: int):
    from flwr.app import ConfigRecord, Message

    from fedprune import wire
    context = new_context(partition, cfg.num_clients)
    state = initial_model(cfg).state_dict()
    content = RecordDict({"arrays": wire.pack(state, None), "config": ConfigRecord(
        {"encoding": "dense", "mask-digest": 0, "method": method, "server-round": 1})})
    reply = handle_train(Message(content, dst_node_id=partition + 1, message_type="train"), context, cfg)
    return reply, context


@pytest.mark.parametrize("method", ["mi", "l1-structured"])
def test_structured_personal_model_meets_flop_budget(task_identity, method: str) -> None:
    budget = 9000.0  # the dense MLP needs 34,048 FLOPs per example
    cfg = make_config({"num_clients": 2, "rounds": 1, "structured_schedule": "once", "prune_start_round": 1,
                       "methods": [method],
                       "device_profiles": [{"name": "phone", "max_flops": budget, "clients": [0]}]})
    reply, context = _train_once(cfg, method, 0)
    assert reply.content["metrics"]["budget-met"] == 1.0
    from fedprune.clients.state import ClientMemory
    units = ClientMemory(context.state, method).units()
    model = initial_model(cfg)
    small = squeeze(model, units)
    x = clients_data(cfg)[0].train_x[:32]
    assert flops_per_example(small, x, len(x)) <= budget  # measured independently here


def test_unstructured_cannot_meet_flop_budget_but_meets_bytes(task_identity) -> None:
    cfg = make_config({"num_clients": 2, "rounds": 1, "prune_start_round": 1, "prune_end_round": 1,
                       "methods": ["gmp"],
                       "device_profiles": [{"name": "flops", "max_flops": 9000, "clients": [0]},
                                           {"name": "bytes", "max_param_bytes": 20000, "clients": [1]}]})
    flops_reply, _ = _train_once(cfg, "gmp", 0)
    assert flops_reply.content["metrics"]["budget-met"] == 0.0  # dense kernels: FLOPs unchanged
    bytes_reply, context = _train_once(cfg, "gmp", 1)
    assert bytes_reply.content["metrics"]["budget-met"] == 1.0
    from fedprune.clients.state import ClientMemory
    masks = ClientMemory(context.state, "gmp").mask()
    assert sparse_bytes(initial_model(cfg), masks) <= 20000


def test_device_command_on_saved_run(tmp_path, task_identity) -> None:
    """`fedprune device` rebuilds personal models from models/METHOD.pt and measures them."""
    from fedprune.server.experiment import save_personal_models
    from fedprune.sim.cli import main
    from fedprune.strategies import MaskedFedAvg

    cfg = make_config({"num_clients": 2, "methods": ["gmp"], "final_sparsity": 0.5})
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    model = initial_model(cfg)
    template = model.state_dict()
    strategy = MaskedFedAvg(template, {1: 0, 2: 1}, "gmp", seed=0, num_rounds=1)
    masks = {name: torch.rand(t.shape, generator=torch.Generator().manual_seed(1)) < 0.5
             for name, t in template.items() if t.dim() == 2}
    strategy.client_masks = {0: masks}
    save_personal_models(tmp_path / "models" / "gmp.pt", template, strategy)
    assert main(["device", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "device.json").read_text())
    assert [r["client"] for r in rows] == [0, 1]
    kept = sum(int(m.sum()) for m in masks.values())
    assert rows[0]["sparsity"] == pytest.approx(1 - kept / sum(m.numel() for m in masks.values()))
    assert rows[1]["sparsity"] == 0.0
    assert rows[0]["flop_limit"] == pytest.approx(1.0)  # unstructured: dense FLOPs
    assert (tmp_path / "device.md").read_text().count("| gmp |") == 2


_PAGE_FAULTS = """
import resource, sys, torch
from torch import nn
if sys.argv[1] == "keep":
    from fedprune.device import keep_freed_memory
    assert keep_freed_memory()
torch.manual_seed(0)
torch.set_num_threads(1)
# BERT-layer-shaped buffers: 3 MB in and out, 12.6 MB inside each block
blocks = nn.Sequential(*[nn.Sequential(nn.Linear(384, 1536), nn.GELU(), nn.Linear(1536, 384)) for _ in range(6)])
x = torch.randn(2048, 384)
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.no_grad():
        blocks(x)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()  # the first pass maps its pages in any case
print(faults() + faults())
"""


def _faults_after_first_pass(mode: str) -> int:
    import subprocess

    done = subprocess.run([sys.executable, "-c", _PAGE_FAULTS, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and ru_minflt: Linux only")
def test_keep_freed_memory_stops_repeated_passes_from_page_faulting_their_buffers() -> None:
    default = _faults_after_first_pass("default")
    if default < 1000:
        pytest.skip(f"this C library does not page-fault repeated passes ({default} faults): nothing to stop")
    # two passes of 12.6 MB buffers fault thousands of 4 KiB pages by default, none with freed memory kept
    assert _faults_after_first_pass("keep") < 50 < default
