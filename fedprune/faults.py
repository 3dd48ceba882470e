"""Fault injection: which sampled clients misbehave in a round, and how (seeded, off by default).

The server plans the faults (``plan_faults``) and names the kind in the client's message
(``config["fault"]``); the client then misbehaves that way (``fedprune.clients.faults``).
So the run knows exactly what it injected and can set it beside what it detected.

Kinds (``FAULT_KINDS``):

* ``crash``: the client raises instead of replying;
* ``hang``: it replies only after the round's timeout has passed;
* ``straggle``: it replies ``straggle_seconds`` late, within the timeout (a valid reply:
  nothing to detect);
* ``nan``: one value of its update is NaN;
* ``huge``: its update is float32 values of 3e38 (finite: only a bound on values, or a
  robust aggregation rule, keeps them out of the model);
* ``overflow``: its update is float64 values of 1e300 (finite in float64, inf in float32);
* ``wrong-shape``: one tensor loses its last value;
* ``truncated-mask``: a mask bitmap loses its last byte;
* ``absurd-examples``: it claims 1e30 training examples.

Pure Python; no Flower import.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from fedprune.seeds import derive_seed

FAULT_KINDS = ("crash", "hang", "straggle", "nan", "huge", "overflow", "wrong-shape", "truncated-mask",
               "absurd-examples")
#: kinds whose reply is valid: the server is not expected to reject it
HARMLESS = frozenset({"straggle"})


def plan_faults(seed: int, method: str, server_round: int, partitions: Sequence[int], fraction: float,
                kinds: Sequence[str]) -> dict[int, str]:
    """Partition -> fault kind for ``round(fraction * len(partitions))`` of the sampled
    ``partitions``, chosen with a generator seeded by (seed, method, round). Kinds rotate
    through ``kinds`` across rounds, so a short run meets every kind."""
    count = round(fraction * len(partitions))
    if count == 0 or not kinds:
        return {}
    rng = random.Random(derive_seed(seed, "faults", method, server_round))
    chosen = sorted(rng.sample(sorted(partitions), count))
    offset = (server_round - 1) * count
    return {partition: kinds[(offset + i) % len(kinds)] for i, partition in enumerate(chosen)}
