"""Tables (and later figures) comparing runs."""

from fedprune.analysis.table import format_table

__all__ = ["format_table"]
