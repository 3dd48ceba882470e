"""docs/configuration.md is generated from the settings' own docs and kept equal to the code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedprune.config import ExperimentConfig, make_config, settings_fields
from fedprune.methods import method_options
from fedprune.sim.reference import main, render

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_committed_reference_is_current() -> None:
    assert DOC.read_text() == render(), "run: python -m fedprune.sim.reference --write docs/configuration.md"
    assert main(["--check", str(DOC)]) == 0


def test_every_setting_and_option_is_in_the_reference() -> None:
    text = render()
    names = [f.name for f in settings_fields()] + list(method_options())
    assert len(names) == len(set(names))  # an option never shadows a field
    for name in names:
        assert f"| `{name}` |" in text, name
    # and nothing else is: every table row names a real setting
    rows = [line.split("|")[1].strip().strip("`") for line in text.splitlines()
            if line.startswith("| `")]
    assert sorted(rows) == sorted(names)


def test_a_field_without_documentation_fails_the_reference() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithUndocumented(ExperimentConfig):
        shiny_new_knob: int = 3

    fields = [f for f in dataclasses.fields(WithUndocumented) if not f.metadata.get("internal")]
    with pytest.raises(ValueError, match="'shiny_new_knob' has no documentation"):
        render(fields)


def test_defaults_in_the_reference_are_the_config_defaults() -> None:
    defaults = make_config({}).to_dict()
    text = render()
    for name, value in defaults.items():
        line = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        shown = line.split("|")[2].strip().strip("`")
        expected = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value
        assert shown.replace('"', "") == str(expected).replace("'", "").replace('"', ""), name


def test_stale_reference_is_reported(tmp_path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n")
    assert main(["--check", str(stale)]) == 1
