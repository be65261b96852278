"""hybrid_ps.config_reference: docs/configuration.md is what the config dataclasses render, and lists every field."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_ps.config import Config, build_parser
from hybrid_ps.config_reference import render_configuration

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"
REGENERATE = "python -m hybrid_ps.config_reference > docs/configuration.md"


def _fields() -> list[tuple[str, dataclasses.Field]]:
    config = Config()
    return [
        (section.name, f)
        for section in dataclasses.fields(Config)
        for f in dataclasses.fields(getattr(config, section.name))
    ]


def _rows(text: str) -> dict[str, list[str]]:
    """The table rows of the reference by setting name: [setting, flag, default, choices, help]."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `") and line.endswith(" |"):
            cells = [cell.strip() for cell in line[2:-2].split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_committed_reference_is_up_to_date():
    assert DOC.is_file(), f"docs/configuration.md is missing: run {REGENERATE}"
    assert DOC.read_text(encoding="utf-8") == render_configuration(), (
        f"docs/configuration.md is out of date with hybrid_ps/config.py: run {REGENERATE}"
    )


def test_every_field_has_a_row():
    rows = _rows(render_configuration())
    names = [f"{section}.{f.name}" for section, f in _fields()]
    assert sorted(rows) == sorted(names)


@pytest.mark.parametrize("section, f", _fields(), ids=lambda value: getattr(value, "name", value))
def test_row_matches_the_field(section, f):
    _setting, flag, default, choices, help_text = _rows(render_configuration())[f"{section}.{f.name}"]
    assert flag.strip("`").startswith("--")
    for choice in f.metadata.get("choices") or ():
        assert f"`{choice}`" in choices
    assert " ".join(f.metadata["help"].split()).replace("<", "&lt;").replace("|", "\\|") == help_text
    assert default != "``"


@pytest.mark.parametrize("section, f", _fields(), ids=lambda value: getattr(value, "name", value))
def test_documented_flag_sets_the_field(section, f):
    """The flag in the table is the one build_parser accepts for this setting."""
    flag = _rows(render_configuration())[f"{section}.{f.name}"][1].strip("`")
    value = (f.metadata.get("choices") or ["1"])[0]
    args = build_parser().parse_args([flag, value])
    assert getattr(args, f"{section}.{f.name}") == value


def test_one_table_per_section():
    text = render_configuration()
    for section in dataclasses.fields(Config):
        assert text.count(f"## `[{section.name}]`") == 1
    assert text.count("| setting | command-line flag | default | choices | help |") == len(dataclasses.fields(Config))


def test_module_writes_the_reference_to_stdout():
    result = subprocess.run([sys.executable, "-m", "hybrid_ps.config_reference"], capture_output=True, text=True,
                            cwd=REPO, check=True, timeout=60)
    assert result.stdout == render_configuration()
    assert result.stderr == ""
