"""Seeds derived from the experiment seed and a path of names (client, round, purpose)."""

from __future__ import annotations

import zlib


def derive_seed(base: object, *parts: object) -> int:
    """CRC-32 of ``"base/part1/part2/..."``: stable across processes and Python versions."""
    return zlib.crc32("/".join(str(p) for p in (base, *parts)).encode())
