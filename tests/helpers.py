"""Small builders shared by the tests (imported as ``helpers``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

from flwr.app import Context, RecordDict


def new_context(partition: int = 0, num_partitions: int = 2) -> Context:
    """A fresh client Context for partition ``partition`` with empty state."""
    return Context(run_id=0, node_id=partition + 1, state=RecordDict(), run_config={},
                   node_config={"partition-id": partition, "num-partitions": num_partitions})
