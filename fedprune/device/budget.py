"""Device classes with budgets, their assignment to clients, and fitting a model to a budget.

A profile caps the personal model's FLOPs per example or its parameter bytes (or
both) and fixes the thread count it is timed with. As in HeteroFL and FjORD, each
client's target sparsity follows its device's budget. Structured personal models
meet a FLOP budget physically (they are smaller dense models); unstructured ones
run dense kernels, so only a byte budget (sparse storage) can be met by them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

PROFILE_KEYS = {"name": str, "max_flops": float, "max_param_bytes": float, "threads": int,
                "fraction": float, "clients": list}


@dataclass(frozen=True)
class DeviceProfile:
    """A device class: budgets (None = unbounded), timing threads, and who has it."""

    name: str
    max_flops: float | None = None
    max_param_bytes: float | None = None
    threads: int = 1
    fraction: float | None = None
    clients: tuple[int, ...] = ()

    @classmethod
    def from_mapping(cls, values: Mapping) -> DeviceProfile:
        """Build from a TOML table; raises ValueError naming a bad key or value."""
        unknown = set(values) - set(PROFILE_KEYS)
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(PROFILE_KEYS)}")
        if not isinstance(values.get("name"), str) or not values["name"]:
            raise ValueError("each profile needs a name")
        for key in ("max_flops", "max_param_bytes", "fraction"):
            value = values.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"{key} of profile {values['name']!r} must be a positive number")
        threads = values.get("threads", 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads of profile {values['name']!r} must be a positive integer")
        clients = values.get("clients", [])
        if not isinstance(clients, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in clients):
            raise ValueError(f"clients of profile {values['name']!r} must be a list of client ids")
        if values.get("fraction") is not None and values["fraction"] > 1:
            raise ValueError(f"fraction of profile {values['name']!r} must be in (0, 1]")
        return cls(values["name"], values.get("max_flops"), values.get("max_param_bytes"), threads,
                   values.get("fraction"), tuple(clients))


def assign_profiles(profiles: Sequence[DeviceProfile], num_clients: int) -> dict[int, DeviceProfile | None]:
    """Client id -> its profile (None: no budget).

    Explicit ``clients`` lists come first; the remaining clients, in id order, are
    filled profile by profile with ``round(fraction * num_clients)`` clients each.
    """
    assigned: dict[int, DeviceProfile | None] = {c: None for c in range(num_clients)}
    for profile in profiles:
        for client in profile.clients:
            if not 0 <= client < num_clients:
                raise ValueError(f"profile {profile.name!r} names client {client}; clients are 0..{num_clients - 1}")
            assigned[client] = profile
    free = [c for c in range(num_clients) if assigned[c] is None]
    for profile in profiles:
        if profile.fraction is None:
            continue
        take = min(len(free), round(profile.fraction * num_clients))
        for client in free[:take]:
            assigned[client] = profile
        free = free[take:]
    return assigned


def within_budget(profile: DeviceProfile, flops: float, param_bytes: float) -> bool:
    """Whether a model of ``flops`` per example and ``param_bytes`` fits ``profile``."""
    return ((profile.max_flops is None or flops <= profile.max_flops)
            and (profile.max_param_bytes is None or param_bytes <= profile.max_param_bytes))


def first_sparsity(profile: DeviceProfile, dense_flops: float, dense_bytes: float) -> float:
    """A first guess of the sparsity that fits: the tightest budget's share of the dense cost."""
    shares = [1.0]
    if profile.max_flops is not None:
        shares.append(profile.max_flops / dense_flops)
    if profile.max_param_bytes is not None:
        shares.append(profile.max_param_bytes / dense_bytes)
    return min(0.99, max(0.0, 1.0 - min(shares)))


def fit_sparsity(start: float, cost_fits: Callable[[float], bool], step: float = 0.02,
                 limit: float = 0.99) -> tuple[float, bool]:
    """The smallest sparsity from ``start`` up (in ``step``s) whose model fits; (sparsity, met)."""
    sparsity = start
    while True:
        if cost_fits(sparsity):
            return sparsity, True
        if sparsity >= limit:
            return sparsity, False
        sparsity = min(limit, sparsity + step)
