"""The import rules of docs/architecture.md: data flows one way, the pruning library stands alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fedprune"


def imported_modules(folder: str) -> dict[str, set[str]]:
    """File -> the absolute module names it imports (``import x`` and ``from x import y``)."""
    found = {}
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(PACKAGE))] = names
    return found


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path}: {name}" for path, names in imported_modules(folder).items() for name in sorted(names)
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def test_server_and_strategies_never_import_clients() -> None:
    assert offenders("server", ("fedprune.clients",)) == []
    assert offenders("strategies", ("fedprune.clients", "fedprune.server", "fedprune.sim")) == []


def test_clients_never_import_server_or_sim() -> None:
    assert offenders("clients", ("fedprune.server", "fedprune.strategies", "fedprune.sim")) == []


def test_pruning_models_and_data_import_no_flower_app_code() -> None:
    upper = ("flwr", "ray", "fedprune.clients", "fedprune.server", "fedprune.strategies", "fedprune.sim")
    assert offenders("pruning", (*upper, "fedprune.config", "flwr_datasets")) == []
    assert offenders("models", upper) == []
    assert offenders("data", upper) == []


def test_importing_the_pruning_library_loads_no_flower() -> None:
    code = ("import sys, fedprune.pruning; "
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('flwr', 'ray'))}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
