"""Plain-text table of a run's summary rows.

Two personal accuracies, both final-round and on each client's own test part: *received*
scores the personal model as the client holds it when the round's model arrives (after the
method's evaluation step), *trained* its model right after its local training. A column
that is empty for every row (no new clients, no validation part) is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MB = 1e6

COLUMNS = (
    # header, key, format
    ("method", "method", "{}"),
    ("received mean", "personal_accuracy_mean", "{:.4f}"),
    ("received min", "personal_accuracy_min", "{:.4f}"),
    ("trained mean", "personal_accuracy_trained_mean", "{:.4f}"),
    ("trained min", "personal_accuracy_trained_min", "{:.4f}"),
    ("new clients", "new_client_accuracy_mean", "{:.4f}"),
    ("global acc", "global_accuracy", "{:.4f}"),
    ("MB up", "bytes_up", "mb"),
    ("MB down", "bytes_down", "mb"),
    ("sparsity", "sparsity", "{:.3f}"),
    ("mask overlap", "mask_jaccard", "{:.2f}"),
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


#: shown even when every row has no value ("-": not applicable)
ALWAYS = ("method", "personal_accuracy_mean", "global_accuracy")


def table_columns(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    """The ``COLUMNS`` that some row has a value for (and those in ``ALWAYS``)."""
    return [c for c in COLUMNS if c[1] in ALWAYS or any(row.get(c[1]) is not None for row in rows)]


def format_table(rows: Sequence[dict]) -> str:
    """Fixed-width table of summary rows (bytes shown in MB, 10^6 bytes)."""
    columns = table_columns(rows)
    cells = [[header for header, _, _ in columns]]
    cells += [[_cell(row.get(key), fmt) for _, key, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    def justify(line: list[str]) -> str:
        pairs = enumerate(zip(line, widths, strict=True))
        return "  ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in pairs)

    lines = [justify(line) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: ``header``, the separator line, one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)
