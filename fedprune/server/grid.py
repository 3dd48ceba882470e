"""A Flower ``Grid`` that counts what crosses the network: every message's bytes, both ways.

``CountingGrid`` implements Flower's ``Grid`` interface by delegating to the real grid
(simulation or deployment engine), so ``Strategy.start`` runs on it unchanged. For every
message sent with ``send_and_receive`` it records one line per client (method, round and
phase read from the message itself) and keeps running totals. A method that does not
federate (``local``) is counted as 0 bytes: its messages only carry the order to train,
which a real deployment would not send.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedprune import wire
from fedprune.server import interrupt

PULL_INTERVAL_S = 0.1
#: on a long exchange, a progress line (clients done / sampled) every this many seconds
PROGRESS_EVERY_S = 10.0
PHASES = {MessageType.TRAIN: "train", MessageType.EVALUATE: "evaluate", MessageType.QUERY: "setup"}


def attributed(reply: Message, sent: dict[str, Message]) -> Message:
    """``reply`` as coming from the node it answers for. The deployment engine's SuperLink
    answers for a node that stopped sending heartbeats with an error of its own (``Node
    Unavailable``, sender: the SuperLink); that error is credited to the node asked, so the
    strategy records that client as failed instead of an unknown sender plus a no-reply."""
    asked = sent.get(reply.metadata.reply_to_message_id)
    if asked is None or not reply.has_error() or reply.metadata.src_node_id == asked.metadata.dst_node_id:
        return reply
    return Message(reply.error, reply_to=asked)


class CountingGrid(Grid):
    """Delegates to ``grid``; ``send_and_receive`` records the bytes of every message (phase
    ``setup``, ``train``, ``evaluate`` or ``onboard``: a new client's final model).

    ``journal`` receives one record per client and exchange; ``partition_of`` maps node
    ids to partition ids; ``counted`` False records 0 bytes (nothing would be sent);
    ``progress``, if given, receives a line with the clients done / sampled every
    ``PROGRESS_EVERY_S`` seconds of an exchange that lasts that long.
    """

    def __init__(self, grid: Grid, journal: Callable[..., None], partition_of: dict[int, int],
                 counted: bool = True, progress: Callable[[str], None] | None = None) -> None:
        self.grid = grid
        self.journal = journal
        self.partition_of = partition_of
        self.counted = counted
        self.progress = progress
        self.bytes_up = 0
        self.bytes_down = 0

    # ---- the counted exchange -------------------------------------------------------------
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send ``messages``, wait for the replies (at most ``timeout`` seconds; a stop request
        ends the wait at once), record down/up bytes per client. An error reply counts 0 bytes."""
        interrupt.check()
        messages = list(messages)
        if not messages:
            return []
        size = wire.message_bytes if self.counted else (lambda _: 0)
        down = {m.metadata.dst_node_id: size(m) for m in messages}
        config = messages[0].content.config_records.get("config")
        method = None if config is None else config.get("method")
        server_round = 0 if config is None else wire.int_of(config, "server-round")
        phase = PHASES.get(messages[0].metadata.message_type, messages[0].metadata.message_type)
        if config is not None and config.get("onboard", False):
            phase = "onboard"
        replies = self._exchange(messages, timeout, "[" + str(method) + f"] round {server_round} {phase}")
        up = {r.metadata.src_node_id: size(r) for r in replies}
        for node, sent in sorted(down.items(), key=lambda item: self.partition_of.get(item[0], -1)):
            self.journal(method=method, round=server_round, phase=phase, client=self.partition_of.get(node),
                         bytes_down=sent, bytes_up=up.get(node, 0))
        self.bytes_down += sum(down.values())
        self.bytes_up += sum(up.values())
        return replies

    def _exchange(self, messages: list[Message], timeout: float | None, label: str = "") -> list[Message]:
        """Push, then pull until every reply is in, ``timeout`` passes or a stop is requested
        (Flower's ``send_and_receive`` loop, with the stop check and progress lines)."""
        ids = list(self.grid.push_messages(messages))
        sent = dict(zip(ids, messages, strict=True))
        pending = set(ids)
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        next_line = started + PROGRESS_EVERY_S
        replies: list[Message] = []
        while pending:
            interrupt.check()
            pulled = list(self.grid.pull_messages(pending))
            replies += [attributed(reply, sent) for reply in pulled]
            pending -= {m.metadata.reply_to_message_id for m in pulled}
            now = time.monotonic()
            if not pending or (deadline is not None and now >= deadline):
                break
            if self.progress is not None and now >= next_line:
                self.progress(f"  {label}: {len(replies)}/{len(messages)} clients done ({now - started:.0f}s)")
                next_line = now + PROGRESS_EVERY_S
            time.sleep(PULL_INTERVAL_S)
        return replies

    # ---- everything else is the real grid's ------------------------------------------------
    @property
    def run(self) -> Run:
        return self.grid.run

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Any:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)
