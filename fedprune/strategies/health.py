"""Round health: a round in which too few sampled clients were accepted fails; too many
failed rounds in a row stop the run instead of letting it finish with stale numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass


class RunFailed(RuntimeError):
    """Raised when a run cannot go on; the message says why, in one line."""


@dataclass
class RoundHealth:
    """``min_fraction`` of the sampled clients must be accepted (at least one); after
    ``max_failed`` failed rounds in a row (0: never) ``stop_if_exhausted`` raises ``RunFailed``."""

    method: str
    min_fraction: float = 0.0
    max_failed: int = 0
    failing: int = 0
    failed_rounds: int = 0

    def needed(self, sampled: int) -> int:
        """Accepted replies a round of ``sampled`` clients needs."""
        return max(1, math.ceil(self.min_fraction * sampled - 1e-9)) if sampled else 0

    def judge(self, sampled: int, accepted: int, why: str = "") -> bool:
        """True if the round counts (enough accepted replies, no other ``why``); counts failures."""
        if accepted >= self.needed(sampled) and not why:
            self.failing = 0
            return True
        self.failing += 1
        self.failed_rounds += 1
        return False

    def stop_if_exhausted(self, server_round: int, sampled: int, accepted: int, why: str = "") -> None:
        """``RunFailed`` once ``max_failed`` rounds in a row have failed."""
        if self.max_failed and self.failing >= self.max_failed:
            detail = why or f"{accepted} of {sampled} replies accepted, {self.needed(sampled)} needed"
            raise RunFailed(f"method {self.method}: {self.failing} failed rounds in a row (round {server_round}: "
                            f"{detail}); stopping. The reasons are in rounds.jsonl (phase 'rejected').")
