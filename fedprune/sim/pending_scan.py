"""Flower's simulation engine, asked only about nodes that have a message waiting.

Flower 1.42's simulation loop (``vce_api.add_messages_to_queue``) asks the link state for a
message for *every* node, every 0.1 s, and each ask scans every stored message: with 10,000
virtual clients a round costs seconds even when 100 are sampled. ``install`` replaces that
loop with one that first reads which nodes have an undelivered message (one pass over the
stored messages) and asks only those, with Flower's own ``get_message_ins``: what is
delivered, in which order per node, and when, is unchanged. It relies on the in-memory link
state's ``message_ins_store`` and ``lock``; a state without them is scanned as before.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from queue import Queue
from typing import Any


def pending_nodes(state: Any) -> set[int] | None:
    """Nodes with an undelivered message in ``state`` (None: the state does not say)."""
    store, lock = getattr(state, "message_ins_store", None), getattr(state, "lock", None)
    if store is None or lock is None:
        return None
    with lock:
        return {m.metadata.dst_node_id for m in store.values() if m.metadata.delivered_at == ""}


def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: dict[int, int],
                          f_stop: threading.Event) -> None:
    """Flower's loop, asking only the nodes that have a message waiting."""
    while not f_stop.is_set():
        waiting = pending_nodes(state)
        nodes: Iterable[int] = nodes_mapping.keys() if waiting is None else [n for n in nodes_mapping if n in waiting]
        for node_id in nodes:  # in Flower's order
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        f_stop.wait(0.1)


def install() -> bool:
    """Use ``add_messages_to_queue`` in Flower's simulation engine; False if it has no such loop."""
    from flwr.server.superlink.fleet.vce import vce_api

    if getattr(vce_api, "add_messages_to_queue", None) is None:
        return False
    vce_api.add_messages_to_queue = add_messages_to_queue
    return True
