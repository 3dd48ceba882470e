"""Shorter waits in Flower's deployment-engine loops (Flower 1.42 internals, patched in place).

Flower's SuperNode, its ClientApp runtime and the ServerApp's grid announce a message before
its content (the objects of its arrays) is stored, and the reader retries a missing object
after an exponential backoff that starts at 1 s (``flwr.supercore.constant``). On a fast
link each exchange then waits about a second for nothing. ``shorten_object_pulls`` makes
the retries start at ``initial_s`` and cap at ``cap_s`` in the modules that pull; everything
else stays Flower's. A Flower version without these names is left as it is (returns the
names that were patched).
"""

from __future__ import annotations

import functools
import importlib

# the modules that pull objects, and the pullers they import from flwr.supercore.inflatable.inflatable_utils
PULLERS = ("flwr.supernode.runtime.run_clientapp", "flwr.supernode.start_client_internal",
           "flwr.superlink.grid.http_grid")
NAMES = ("pull_objects", "pull_and_inflate_object_from_tree")


def shorten_object_pulls(initial_s: float = 0.02, cap_s: float = 0.2) -> list[str]:
    """Patch every module of ``PULLERS`` that has its puller; return the patched module names."""
    patched = []
    for module_name in PULLERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in NAMES:
            puller = getattr(module, name, None)
            if puller is None or isinstance(puller, functools.partial):
                continue
            setattr(module, name, functools.partial(puller, initial_backoff=initial_s, backoff_cap=cap_s))
            patched.append(f"{module_name}.{name}")
    return patched
