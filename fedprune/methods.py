"""The methods a run can compare, and what each asks of clients and server.

``pruning`` says how a client builds its personal mask; ``aggregation`` says how
the server merges replies (``dense``: Flower's FedAvg; ``masked``: per-entry mean
over the clients that keep the entry).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One federated method."""

    name: str
    pruning: str
    aggregation: str
    summary: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("fedavg", "none", "dense", "dense FedAvg (McMahan et al. 2017); no pruning"),
        Method("gmp", "magnitude", "masked",
               "gradual magnitude pruning per client on the cubic schedule (Zhu & Gupta 2017)"),
    )
}
