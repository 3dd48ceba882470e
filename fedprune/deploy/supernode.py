"""``flower-supernode`` with a short idle poll: ``python -m fedprune.deploy.supernode ARGS``.

Takes exactly ``flower-supernode``'s arguments. Flower 1.42's SuperNode sleeps a hard-coded
3 s whenever a pull from the SuperLink finds no message, and checks for the ClientApp's
reply every 0.5 s (``flwr/supernode/start_client_internal.py``); in a round of two exchanges
that waits longer than the round's work. This entry point caps every sleep of that one
module at ``FEDPRUNE_SUPERNODE_POLL_S`` seconds (default 0.1) and then runs Flower's own
SuperNode, unchanged otherwise. It relies on a Flower internal (the module's ``time``): on a
Flower version without it, it warns and runs the plain SuperNode.
"""

from __future__ import annotations

import os
import sys
import time
from types import ModuleType

DEFAULT_POLL_S = 0.1


class _ShortSleeps:
    """Stands in for the ``time`` module inside Flower's SuperNode loop: ``sleep`` is capped."""

    def __init__(self, cap_s: float) -> None:
        self.cap_s = cap_s

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap_s))

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def shorten_polls(module: ModuleType, cap_s: float) -> bool:
    """Cap ``module.time.sleep`` at ``cap_s``; False if the module has no ``time`` to replace."""
    if getattr(module, "time", None) is not time:
        return False
    module.time = _ShortSleeps(cap_s)  # type: ignore[attr-defined]
    return True


def main() -> int:
    """Run ``flower-supernode`` with ``sys.argv[1:]`` and the short poll."""
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    from fedprune.deploy.polling import shorten_object_pulls

    cap_s = float(os.environ.get("FEDPRUNE_SUPERNODE_POLL_S", DEFAULT_POLL_S))
    shorten_object_pulls()
    if not shorten_polls(start_client_internal, cap_s):
        print("fedprune: warning: this Flower version's SuperNode loop has no `time` to patch; "
              "running it with its own polling", file=sys.stderr)
    sys.argv[0] = "flower-supernode"
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
