"""Small builders shared by the tests (imported as ``helpers``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Context, Error, Message, MessageType, RecordDict

from fedprune.clients.app import handle_evaluate, handle_query, handle_train
from fedprune.clients.persist import StateStore, persisted
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
    parts of Flower's ``Grid`` that ``Strategy.start`` and fedprune use, without Ray.
    ``reply`` returning None stands for a client that never answers. With ``state_dir`` each
    client persists its state there, as the ClientApp does (``fedprune.clients.persist``)."""

    def __init__(self, cfg: ExperimentConfig, partition_of: dict[int, int], state_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.store = None if state_dir is None else StateStore(state_dir)
        self.contexts = {
            node: Context(run_id=0, node_id=node, state=RecordDict(), run_config={},
                          node_config={"partition-id": partition, "num-partitions": len(partition_of)})
            for node, partition in partition_of.items()
        }

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def reply(self, message: Message) -> Message | None:
        """The handler's reply to one message."""
        context = self.contexts[message.metadata.dst_node_id]
        kind = message.metadata.message_type
        if kind == MessageType.QUERY:
            return handle_query(message, context)
        handler = handle_train if kind == MessageType.TRAIN else handle_evaluate
        try:
            return persisted(self.store, message, context, self.cfg, lambda: handler(message, context, self.cfg))
        except Exception as error:  # what Flower sends back when a ClientApp raises
            return Message(Error(code=0, reason=f"{type(error).__name__}: {error}"), reply_to=message)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        return [reply for reply in map(self.reply, messages) if reply is not None]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Answer every message at once (as Flower's in-memory grid, ids are fresh uuids)."""
        ids = []
        self.outbox: dict[str, Message] = getattr(self, "outbox", {})
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            ids.append(message.metadata.message_id)
            reply = self.reply(message)
            if reply is not None:
                self.outbox[message.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.outbox.pop(i) for i in list(message_ids) if i in self.outbox]
