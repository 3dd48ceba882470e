"""The configuration reference, ``docs/configuration.md``, generated from the settings' own docs.

``python -m fedprune.sim.reference --write docs/configuration.md`` regenerates it;
``--check`` exits 1 if the file differs (the test suite checks the same). Every field
of ``ExperimentConfig`` must carry a ``Doc`` and every pruner option is documented by
the pruner that declares it, so the reference cannot fall behind the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from fedprune.config import ExperimentConfig, settings_fields
from fedprune.methods import method_options, option_owners
from fedprune.options import Doc

DEFAULT_PATH = Path("docs/configuration.md")
HEADER = """# Configuration reference

Generated from the settings' own documentation by `python -m fedprune.sim.reference --write
docs/configuration.md`; do not edit by hand (a test fails when this file and the code
disagree).

Every setting is one flat key. Set it in a TOML file (`fedprune run --config FILE.toml`, or
`config-file` with `flwr run`), with `--set key=value` (the value is read as TOML; a bare word
is a string; lists also accept a comma string), or, for `methods`, with `--methods a,b`.
The whole configuration is checked before anything runs: a bad value stops the run with
one line naming the key and what is allowed, exit code 2, and nothing written.
"""


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{json.dumps(value)}`"


def _allowed(kind: Any, doc: Doc) -> str:
    if get_origin(kind) is list:
        item = get_args(kind)[0]
        return "list of tables" if item is dict else f"list of {_allowed(item, doc)}"
    if doc.choices:
        return ", ".join(f"`{c}`" for c in doc.choices)
    if doc.bounds is not None:
        return f"integer {doc.bounds.describe()}" if kind is int else doc.bounds.describe()
    return {int: "integer", float: "number", str: "text", bool: "`true`, `false`"}[kind]


def _row(name: str, default: Any, kind: Any, doc: Doc, extra: str = "") -> str:
    help_text = doc.help + (f" ({extra})" if extra else "")
    return f"| `{name}` | {_default(default)} | {_allowed(kind, doc)} | {help_text} |"


def _default_of(field: dataclasses.Field) -> Any:
    factory = field.default_factory
    return factory() if callable(factory) else field.default


def render(fields: Iterable[dataclasses.Field] | None = None) -> str:
    """The reference as Markdown; ``ValueError`` naming any field without a ``Doc``."""
    fields = list(settings_fields() if fields is None else fields)
    kinds = get_type_hints(ExperimentConfig)
    lines = [HEADER.rstrip("\n")]
    section = None
    for field in fields:
        doc = field.metadata.get("doc")
        if not isinstance(doc, Doc) or not doc.help.strip():
            raise ValueError(f"config field {field.name!r} has no documentation (use fedprune.options.setting)")
        if doc.section != section:
            section = doc.section
            lines += ["", f"## {section}", "", "| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
        lines.append(_row(field.name, _default_of(field), kinds.get(field.name, str), doc))
    owners = option_owners()
    lines += ["", "## Pruner options", "",
              "Declared by the pruners themselves (`Pruner.options`); each applies to the methods named.", "",
              "| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for name, opt in method_options().items():
        methods = ", ".join(f"`{m}`" for m in dict.fromkeys(owners[name]))
        lines.append(_row(name, opt.default, opt.kind, opt.doc, f"methods: {methods}"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``--write PATH`` regenerates the reference, ``--check PATH`` compares; prints it otherwise."""
    parser = argparse.ArgumentParser(prog="python -m fedprune.sim.reference", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="PATH", help="write the reference to PATH")
    group.add_argument("--check", type=Path, metavar="PATH", help="exit 1 if PATH is not the current reference")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        args.write.write_text(text)
    elif args.check:
        current = args.check.read_text() if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is out of date: run python -m fedprune.sim.reference --write {args.check}",
                  file=sys.stderr)
            return 1
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
