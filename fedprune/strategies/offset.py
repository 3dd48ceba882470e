"""Resuming a strategy after round ``done``: Flower's ``Strategy.start`` counts its rounds
from 1, so ``RoundOffset`` runs it for the remaining rounds and shows the wrapped strategy
(and the ``evaluate_fn``) the true round numbers. The round loop stays Flower's."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class RoundOffset(Strategy):
    """``strategy`` with round ``r`` of ``Strategy.start`` seen as round ``r + done``."""

    def __init__(self, strategy: Strategy, done: int = 0) -> None:
        self.strategy = strategy
        self.done = done

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.done, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round + self.done, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.done, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.done, replies)

    def evaluate_fn(self, evaluate: EvaluateFn) -> EvaluateFn:
        """``evaluate`` seeing true rounds; the call before the first round stays round 0."""
        return lambda server_round, arrays: evaluate(server_round + self.done if server_round else 0, arrays)
