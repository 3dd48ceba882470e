"""The simulation loop asks only nodes with a waiting message, and delivers what Flower's
own loop delivers."""

from __future__ import annotations

import threading
from queue import Queue
from types import SimpleNamespace

from fedprune.sim import pending_scan


class FakeState:
    """Flower's in-memory link state in miniature: ``message_ins_store``, ``lock`` and a
    ``get_message_ins`` that marks what it returns as delivered; counts who was asked."""

    def __init__(self, destinations: list[int]) -> None:
        self.lock = threading.Lock()
        self.message_ins_store = {
            f"m{i}": SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node, delivered_at=""))
            for i, node in enumerate(destinations)}
        self.asked: list[int] = []

    def get_message_ins(self, node_id: int, limit: int) -> list:
        self.asked.append(node_id)
        for message in self.message_ins_store.values():
            if message.metadata.dst_node_id == node_id and message.metadata.delivered_at == "":
                message.metadata.delivered_at = "now"
                return [message][:limit]
        return []


def run_loop(loop, state, nodes: dict[int, int], scans: int) -> list:
    """Run ``loop`` for ``scans`` + 1 passes (its stop event is set in the last wait)."""
    stop = threading.Event()
    waits = iter(range(scans))
    stop.wait = lambda _t: next(waits, None) is None and stop.set()  # type: ignore[method-assign]
    queue: Queue = Queue()
    loop(state, queue, nodes, stop)
    return [queue.get_nowait() for _ in range(queue.qsize())]


def flower_loop(state, queue, nodes_mapping, f_stop) -> None:
    """Flower 1.42's loop as documented: every node, every pass."""
    while not f_stop.is_set():
        for node_id in nodes_mapping.keys():
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        f_stop.wait(0.1)


def test_only_nodes_with_messages_are_asked_and_the_same_messages_arrive() -> None:
    nodes = {node: node for node in range(1000)}
    destinations = [7, 3, 7, 999]
    ours, theirs = FakeState(destinations), FakeState(destinations)
    got = run_loop(pending_scan.add_messages_to_queue, ours, nodes, scans=3)
    expected = run_loop(flower_loop, theirs, nodes, scans=3)
    assert len(got) == len(expected) == 4
    assert [m.metadata.dst_node_id for m in got] == [m.metadata.dst_node_id for m in expected] == [3, 7, 999, 7]
    assert sorted(set(ours.asked)) == [3, 7, 999]  # Flower's loop asked all 1000 nodes each pass
    assert len(theirs.asked) == 4 * 1000


def test_a_state_without_a_store_is_scanned_like_flower() -> None:
    state = FakeState([2])
    del state.message_ins_store
    state.get_message_ins = lambda node_id, limit: state.asked.append(node_id) or []  # type: ignore[method-assign]
    run_loop(pending_scan.add_messages_to_queue, state, {0: 0, 1: 1, 2: 2}, scans=1)
    assert state.asked == [0, 1, 2, 0, 1, 2]


def test_install_replaces_flowers_loop() -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    try:
        assert pending_scan.install()
        assert vce_api.add_messages_to_queue is pending_scan.add_messages_to_queue
    finally:
        vce_api.add_messages_to_queue = original
