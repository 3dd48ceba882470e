"""Beyond one machine: the Ray backend's settings, GPU selection, progress on long exchanges."""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedprune.clients import local_round
from fedprune.config import load_config, make_config
from fedprune.server import grid as grid_module
from fedprune.server.grid import CountingGrid
from fedprune.sim.cli import _parser
from fedprune.sim.runner import backend_config


def test_backend_config_attaches_to_a_cluster_and_asks_for_gpus() -> None:
    local = backend_config(make_config({}))
    assert "address" not in local["init_args"]
    assert local["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    cluster = backend_config(load_config(None, ["ray_address=127.0.0.1:6379", "num_gpus_per_client=0.25",
                                                "num_cpus_per_client=2"]))
    assert cluster["init_args"]["address"] == "127.0.0.1:6379"
    assert cluster["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.25}
    args = _parser().parse_args(["run", "--ray-address", "auto"])
    assert args.ray_address == "auto"


def test_training_device_is_the_cpu_unless_the_config_gives_a_gpu(monkeypatch) -> None:
    cpu, gpu = make_config({}), make_config({"num_gpus_per_client": 1.0})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert local_round.training_device(cpu).type == "cpu"  # default: CPU even where a GPU is visible
    assert local_round.training_device(gpu).type == "cuda"
    assert local_round.training_device(gpu, after_backward=lambda: None).type == "cpu"  # scores live on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local_round.training_device(gpu).type == "cpu"  # no GPU visible


class SlowGrid:
    """Answers the first message at once and the second after a few pulls."""

    def __init__(self) -> None:
        self.pulls = 0
        self.sent: list[Message] = []

    def push_messages(self, messages):
        self.sent = list(messages)
        return [str(i) for i in range(len(self.sent))]

    def pull_messages(self, ids):
        self.pulls += 1
        ready = [i for i in ids if i == "0" or self.pulls >= 4]
        replies = []
        for i in ready:
            reply = Message(RecordDict(), reply_to=self.sent[int(i)])
            reply.metadata.__dict__["_reply_to_message_id"] = i
            replies.append(reply)
        return replies


def test_long_exchange_prints_clients_done_over_sampled(task_identity, monkeypatch) -> None:
    monkeypatch.setattr(grid_module, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(grid_module, "PULL_INTERVAL_S", 0.0)
    lines: list[str] = []
    counting = CountingGrid(SlowGrid(), lambda **_: None, {1: 0, 2: 1}, progress=lines.append)
    config = ConfigRecord({"method": "gmp", "server-round": 3})
    messages = []
    for node in (1, 2):
        message = Message(RecordDict({"config": config}), dst_node_id=node, message_type=MessageType.TRAIN)
        message.metadata.__dict__["_message_id"] = str(node - 1)
        messages.append(message)
    replies = list(counting.send_and_receive(messages, timeout=10))
    assert len(replies) == 2
    assert lines and all(line.startswith("  [gmp] round 3 train: 1/2 clients done") for line in lines)
