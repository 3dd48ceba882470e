"""Small builders shared by the tests (imported as ``helpers``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Message, MessageType, RecordDict

from fedprune.clients.app import handle_evaluate, handle_query, handle_train
from fedprune.config import ExperimentConfig
from fedprune.methods import METHODS
from fedprune.models.factory import initial_model
from fedprune.server.experiment import make_strategy


def new_context(partition: int = 0, num_partitions: int = 2) -> Context:
    """A fresh client Context for partition ``partition`` with empty state."""
    return Context(run_id=0, node_id=partition + 1, state=RecordDict(), run_config={},
                   node_config={"partition-id": partition, "num-partitions": num_partitions})


def start_state(cfg: ExperimentConfig, method: str = "fedavg") -> dict:
    """The initial global tensors of ``method`` (a detached copy)."""
    return {k: v.detach().clone() for k, v in initial_model(cfg, METHODS[method].model).state_dict().items()}


def new_strategy(cfg: ExperimentConfig, method: str, partition_of: dict[int, int], journal=None):
    """The strategy ``method`` runs with, and its initial global tensors."""
    model = initial_model(cfg, METHODS[method].model)
    template = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return make_strategy(cfg, method, model, dict(partition_of), journal), template


class InProcessGrid:
    """Hands messages to the ClientApp handlers in this process, one Context per node: the
    parts of Flower's ``Grid`` that ``Strategy.start`` and fedprune use, without Ray."""

    def __init__(self, cfg: ExperimentConfig, partition_of: dict[int, int]) -> None:
        self.cfg = cfg
        self.contexts = {
            node: Context(run_id=0, node_id=node, state=RecordDict(), run_config={},
                          node_config={"partition-id": partition, "num-partitions": len(partition_of)})
            for node, partition in partition_of.items()
        }

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def reply(self, message: Message) -> Message:
        """The handler's reply to one message."""
        context = self.contexts[message.metadata.dst_node_id]
        kind = message.metadata.message_type
        if kind == MessageType.QUERY:
            return handle_query(message, context)
        handler = handle_train if kind == MessageType.TRAIN else handle_evaluate
        return handler(message, context, self.cfg)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        return [self.reply(m) for m in messages]
