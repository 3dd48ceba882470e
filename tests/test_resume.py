"""Runs that survive being killed: a run stopped after round k (or in the middle of round
k+1, after some clients already saved their next state) and resumed from its checkpoint ends
with exactly the summary and records of an uninterrupted run. The handlers and strategies
run in this process (``InProcessGrid``; a fresh grid has lost every ``Context.state``, as
a killed simulation has); one test resumes the CLI on the real Ray simulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import Message, MessageType, RecordDict

from fedprune.clients.persist import StateStore, decode, encode, persisted
from fedprune.config import make_config
from fedprune.server import checkpoint as checkpoint_module
from fedprune.server.app import run_experiment
from fedprune.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedprune.server.interrupt import Interrupted
from fedprune.strategies.offset import RoundOffset
from helpers import InProcessGrid, new_context, new_strategy

NODES = {11: 0, 12: 1, 13: 2, 14: 3}
TIMING = ("seconds", "latency", "speedup")
# 3 of 4 clients per round (seeded sampling), every other round evaluated, one new client,
# pruning from round 1 to 3: every kind of state a resume must restore is exercised.
CFG = dict(num_clients=4, new_clients=1, rounds=4, mlp_widths=[16], partitioner="iid", local_epochs=1,
           fraction_train=0.67, evaluate_every=2, prune_start_round=1, prune_end_round=3, final_sparsity=0.6)


class Killed(Exception):
    """Stands for SIGKILL: the run stops where it is."""


class KillableGrid(InProcessGrid):
    """Raises ``Killed`` when ``after`` train messages of ``method``'s round ``server_round``
    have been handled (and saved), or at the first onboarding message with ``after`` = -1."""

    def __init__(self, cfg, partition_of, state_dir, kill: tuple[str, int, int] | None = None,
                 error: type[Exception] = Killed) -> None:
        super().__init__(cfg, partition_of, state_dir)
        self.kill, self.error = kill, error
        self.seen = 0

    def reply(self, message: Message) -> Message | None:
        config = message.content.config_records.get("config")
        if self.kill is not None and config is not None:
            method, server_round, after = self.kill
            if (config["method"], config["server-round"]) == (method, server_round):
                if after < 0 and config.get("onboard", False):
                    raise self.error
                self.seen += message.metadata.message_type == MessageType.TRAIN
                if self.seen > after >= 0:
                    raise self.error
        return super().reply(message)


def without_timing(value):
    """``value`` (rows or records) without the fields that measure time."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


def run(cfg, folder: Path, kill=None, resume=False, error: type[Exception] = Killed) -> list[dict]:
    grid = KillableGrid(cfg, dict(NODES), folder / "checkpoint" / "clients", kill, error)
    return run_experiment(grid, cfg, folder, progress=lambda _: None, resume=resume)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[list[dict], list[dict]]:
    from flwr.supercore.task_identity import TaskIdentity

    cfg = make_config({**CFG, "methods": ["gmp", "mi"]})
    folder = tmp_path_factory.mktemp("whole")
    with pytest.MonkeyPatch.context() as patch:  # conftest's task_identity, for the module
        for name, value in (("_run_id", 0), ("_node_id", 1), ("_task_id", 0)):
            patch.setattr(TaskIdentity, name, value)
        return run(cfg, folder), records(folder)


@pytest.mark.parametrize("kill", [("gmp", 3, 0), ("gmp", 3, 1), ("mi", 1, 1), ("mi", 4, -1)],
                         ids=["after-gmp-2", "gmp-3-midway", "mi-1-midway", "mi-onboarding"])
def test_a_killed_run_resumes_to_the_same_numbers(task_identity, tmp_path, uninterrupted, kill) -> None:
    cfg = make_config({**CFG, "methods": ["gmp", "mi"]})
    with pytest.raises(Killed):
        run(cfg, tmp_path, kill)
    with (tmp_path / "rounds.jsonl").open("a") as cut:  # a kill can cut a line in half
        cut.write('{"phase": "trai')
    saved = load_checkpoint(tmp_path)
    if kill[1:] == (1, 1):  # killed in a method's first round: the previous one is complete
        assert saved is not None and saved.method is None and saved.completed_methods == ["gmp"]
    else:
        done = kill[1] if kill[2] < 0 else kill[1] - 1
        assert saved is not None and saved.method == kill[0] and saved.round == done
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"
    rows = run(cfg, tmp_path, resume=True)
    whole_rows, whole_records = uninterrupted
    assert without_timing(rows) == without_timing(whole_rows)
    assert without_timing(records(tmp_path)) == without_timing(whole_records)
    assert json.loads((tmp_path / "summary.json").read_text())["methods"][0]["method"] == "gmp"
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "complete" and status["completed_methods"] == ["gmp", "mi"]


def test_a_run_stopped_with_ctrl_c_resumes_to_the_same_numbers(task_identity, tmp_path, uninterrupted) -> None:
    cfg = make_config({**CFG, "methods": ["gmp", "mi"]})
    with pytest.raises(Interrupted):  # what the first Ctrl-C raises at the server's next check
        run(cfg, tmp_path, ("gmp", 2, 1), error=Interrupted)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "interrupted"
    rows = run(cfg, tmp_path, resume=True)
    assert without_timing(rows) == without_timing(uninterrupted[0])


def test_resume_of_a_finished_method_does_not_run_it_again(task_identity, tmp_path, uninterrupted) -> None:
    cfg = make_config({**CFG, "methods": ["gmp", "mi"]})
    with pytest.raises(Killed):
        run(cfg, tmp_path, ("mi", 1, 0))
    saved = load_checkpoint(tmp_path)
    assert saved is not None and saved.completed_methods == ["gmp"] and saved.method is None
    grid = KillableGrid(cfg, dict(NODES), tmp_path / "checkpoint" / "clients", ("gmp", 1, 0))
    rows = run_experiment(grid, cfg, tmp_path, progress=lambda _: None, resume=True)  # gmp would raise
    assert without_timing(rows) == without_timing(uninterrupted[0])


def test_a_kill_between_write_and_rename_leaves_the_previous_checkpoint(tmp_path) -> None:
    save_checkpoint(tmp_path, Checkpoint(rounds=4, method="gmp", round=1, arrays={"w": torch.ones(2)}))

    def killed(tmp: Path) -> None:
        assert tmp.exists()
        raise Killed

    with pytest.raises(Killed):
        save_checkpoint(tmp_path, Checkpoint(rounds=4, method="gmp", round=2, arrays={"w": torch.zeros(2)}),
                        before_rename=killed)
    kept = load_checkpoint(tmp_path)
    assert kept is not None and kept.round == 1 and torch.equal(kept.arrays["w"], torch.ones(2))
    assert checkpoint_module.checkpoint_path(tmp_path).exists()


def test_strategy_state_round_trips_and_sampling_continues(tmp_path) -> None:
    cfg = make_config({**CFG, "methods": ["gmp"]})
    first, _ = new_strategy(cfg, "gmp", dict(NODES))
    first.sample(0.5)
    first.client_masks[2] = {"fc.weight": torch.tensor([True, False])}
    first.known.add(2)
    first.health.failed_rounds = 1
    path = tmp_path / "state.pt"
    torch.save(first.state_dict(), path)
    second, _ = new_strategy(cfg, "gmp", dict(NODES))
    second.load_state_dict(torch.load(path, weights_only=True))
    assert second.sample(0.5) == first.sample(0.5)  # the RNG continues where it was
    assert torch.equal(second.client_masks[2]["fc.weight"], torch.tensor([True, False]))
    assert second.known == {2} and second.health.failed_rounds == 1


def test_round_offset_shows_true_rounds() -> None:
    seen = []

    class Recorder:
        def configure_train(self, server_round, *args):
            seen.append(("train", server_round))

        def aggregate_evaluate(self, server_round, replies):
            seen.append(("evaluate", server_round))

    shifted = RoundOffset(Recorder(), 3)  # type: ignore[arg-type]
    shifted.configure_train(1, None, None, None)  # type: ignore[arg-type]
    shifted.aggregate_evaluate(2, [])
    calls = []
    shifted.evaluate_fn(lambda r, a: calls.append(r))(0, None)  # type: ignore[arg-type]
    shifted.evaluate_fn(lambda r, a: calls.append(r))(1, None)  # type: ignore[arg-type]
    assert seen == [("train", 4), ("evaluate", 5)] and calls == [0, 4]


def test_client_state_restores_the_newest_step_before_the_message(task_identity, tmp_path) -> None:
    store = StateStore(tmp_path)
    cfg = make_config({**CFG, "methods": ["gmp", "mi"]})
    for step, value in [((0, 1), 1.0), ((0, 2), 2.0), ((0, 3), 3.0)]:
        state = RecordDict()
        state["gmp.x"] = _array(value)
        store.save(5, step, state)
    assert store.steps(5) == [(0, 2), (0, 3)]  # the two newest are kept
    assert store.load_before(5, (0, 3))["gmp.x"].to_torch_state_dict()["v"].item() == 2.0
    assert store.load_before(5, (1, 1))["gmp.x"].to_torch_state_dict()["v"].item() == 3.0
    assert store.load_before(5, (0, 2)) is None and store.load_before(6, (0, 9)) is None
    # a handler that changes nothing writes nothing; an empty Context.state is restored first
    context = new_context(5, 6)
    message = Message(RecordDict({"config": _config("mi", 1)}), dst_node_id=1, message_type=MessageType.TRAIN)
    persisted(store, message, context, cfg, lambda: message)
    assert store.steps(5) == [(0, 2), (0, 3)] and "gmp.x" in context.state
    decoded = decode(encode(context.state))
    assert torch.equal(decoded["gmp.x"].to_torch_state_dict()["v"], torch.tensor([3.0]))


def _array(value: float):
    from flwr.app import ArrayRecord

    return ArrayRecord({"v": torch.tensor([value])})


def _config(method: str, server_round: int):
    from flwr.app import ConfigRecord

    return ConfigRecord({"method": method, "server-round": server_round})
