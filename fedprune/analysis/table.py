"""Plain-text table of a run's summary rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MB = 1e6

COLUMNS = (
    # header, key, format
    ("method", "method", "{}"),
    ("rounds", "rounds", "{}"),
    ("clients", "clients", "{}"),
    ("pers.acc mean", "personal_accuracy_mean", "{:.4f}"),
    ("pers.acc min", "personal_accuracy_min", "{:.4f}"),
    ("global acc", "global_accuracy", "{:.4f}"),
    ("MB up", "bytes_up", "mb"),
    ("MB down", "bytes_down", "mb"),
    ("sparsity", "sparsity", "{:.3f}"),
    ("latency ms", "latency_ms_mean", "{:.3f}"),
    ("kFLOPs/ex", "flops_mean", "kflops"),
    ("seconds", "seconds", "{:.1f}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "mb":
        return f"{float(value) / MB:.3f}"
    if fmt == "kflops":
        return f"{float(value) / 1e3:.1f}"
    return fmt.format(value)


def format_table(rows: Sequence[dict]) -> str:
    """Fixed-width table of summary rows (bytes shown in MB, 10^6 bytes)."""
    columns = [c for c in COLUMNS if any(c[1] in row for row in rows)]
    cells = [[header for header, _, _ in columns]]
    cells += [[_cell(row.get(key), fmt) for _, key, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    def justify(line: list[str]) -> str:
        pairs = enumerate(zip(line, widths, strict=True))
        return "  ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in pairs)

    lines = [justify(line) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
