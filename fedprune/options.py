"""Settings described by their own metadata: help text, allowed values and bounds.

The experiment config's fields carry a ``Doc`` in their dataclass metadata; a pruner
declares its own settings as ``Option``s. Both are checked by the same code and both
appear in the generated configuration reference (``docs/configuration.md``), so a
setting cannot exist without its documentation. Pure Python.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bounds:
    """An allowed numeric range; ``None`` ends are unbounded, ``*_open`` ends exclusive."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` (finite) lies in the range."""
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        """``[0, 1)``, ``>= 1``, ``> 0`` ..."""
        if self.low is not None and self.high is not None:
            return f"{'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "any number"

    def violation(self, name: str, value: float) -> str:
        """The one-line error for ``value`` outside the range."""
        if not math.isfinite(value):
            return f"{name}: {value} is not a finite number; allowed: {self.describe()}"
        if self.low is not None and self.high is not None:
            return f"{name}: {value} is outside the allowed range {self.describe()}"
        if self.low == 0 and self.low_open:
            return f"{name}: {value} must be positive"
        if self.low is not None:
            return f"{name}: {value} must be {'greater than' if self.low_open else 'at least'} {_num(self.low)}"
        return f"{name}: {value} must be {self.describe()}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def at_least(low: float) -> Bounds:
    """``>= low``."""
    return Bounds(low=low)


POSITIVE = Bounds(low=0, low_open=True)
FRACTION_OPEN_CLOSED = Bounds(0, 1, low_open=True)  # (0, 1]
FRACTION_CLOSED_OPEN = Bounds(0, 1, high_open=True)  # [0, 1)
FRACTION_OPEN = Bounds(0, 1, low_open=True, high_open=True)  # (0, 1)


@dataclass(frozen=True)
class Doc:
    """What the reference says about a setting and what values it allows.

    ``choices`` (for strings, or every item of a list of strings) and ``bounds`` (for
    numbers, or every item of a list of numbers) are checked by ``check_value``.
    """

    help: str
    choices: tuple[str, ...] = ()
    bounds: Bounds | None = None
    section: str = ""


def setting(default: Any, help: str, *, choices: tuple[str, ...] = (), bounds: Bounds | None = None,
            section: str = "") -> Any:
    """A dataclass field with its ``Doc`` (mutable defaults are copied per instance)."""
    doc = Doc(help, tuple(choices), bounds, section)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: _copy(default), metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def _copy(value: Any) -> Any:
    return [dict(v) if isinstance(v, dict) else v for v in value] if isinstance(value, list) else dict(value)


def check_value(name: str, value: Any, doc: Doc) -> None:
    """Raise ``ValueError`` naming ``name`` if ``value`` (already of the right type) breaks ``doc``."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if doc.choices and isinstance(item, str) and item not in doc.choices:
            what = "unknown value" if not isinstance(value, list) else "unknown item"
            raise ValueError(f"{name}: {what} {item!r}; allowed: {', '.join(doc.choices)}")
        if doc.bounds is not None and isinstance(item, (int, float)) and not isinstance(item, bool):
            if not doc.bounds.contains(float(item)):
                raise ValueError(doc.bounds.violation(name, item))


@dataclass(frozen=True)
class Option:
    """A setting that a pruner declares for itself (flat key in the config, like any other).

    ``kind`` is the Python type of the value (``int``, ``float``, ``str``, ``bool``).
    """

    name: str
    default: Any
    doc: Doc
    kind: type = dataclasses.field(default=object)

    def __post_init__(self) -> None:
        if self.kind is object:
            object.__setattr__(self, "kind", type(self.default))


def option(name: str, default: Any, help: str, *, choices: tuple[str, ...] = (),
           bounds: Bounds | None = None) -> Option:
    """Shorthand for ``Option(name, default, Doc(help, choices, bounds))``."""
    return Option(name, default, Doc(help, tuple(choices), bounds))
