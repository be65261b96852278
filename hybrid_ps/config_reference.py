"""The settings reference (docs/configuration.md), rendered from the config dataclasses' field metadata."""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from typing import Any

from .config import Config

__all__ = ["main", "render_configuration"]

_COMMAND = "python -m hybrid_ps.config_reference > docs/configuration.md"

_INTRO = f"""\
<!-- Generated from hybrid_ps/config.py by `{_COMMAND}`: do not edit by hand. -->

# Configuration

Every setting of `python -m hybrid_ps.train` (and of `python -m hybrid_ps.serve`,
which takes the training settings too), by section. Settings come from
defaults < `--config FILE` (TOML) < `--set SECTION.KEY=VALUE` < flags; a TOML
file has one table per section (`[cluster]`, `[data]`, ...) and the keys
below. `--debug` adds debug messages and tracebacks;
`python -m hybrid_ps.train --help` prints the same list. Defaults are written
as TOML values. A bad value stops the job before any work with one line naming
the field (exit 2). Examples: [`jobs/example.toml`](../jobs/example.toml),
[running a job](operations.md#running-a-job).
"""


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (one line, pipes escaped)."""
    return " ".join(text.split()).replace("|", "\\|")


def _prose(text: str) -> str:
    """Plain text for a table cell: ``_cell`` with ``<`` as ``&lt;`` (so ``<output_dir>`` is not read as a tag)."""
    return _cell(text.replace("<", "&lt;"))


def _code(text: str) -> str:
    """An inline code span for a table cell."""
    return f"`{_cell(text)}`"


def _toml_value(value: Any) -> str:
    """A default as it would be written in a TOML config file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and value == float("inf"):
        return '"inf"'
    return repr(value)


def _default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (``default`` or ``default_factory()``)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"config field {f.name!r} has no default")


def _flag(section: str, f: dataclasses.Field[Any]) -> str:
    """The field's command-line flag: its metadata's ``flag``, else ``--<section>-<name>`` (as ``build_parser``)."""
    return f.metadata.get("flag") or f"--{section}-{f.name.replace('_', '-')}"


def _section_table(section: str, section_type: type) -> list[str]:
    """The markdown lines of one section: heading, its docstring, and one table row per field."""
    lines = [f"## `[{section}]`", ""]
    if section_type.__doc__:
        lines += [_prose(section_type.__doc__), ""]
    lines += ["| setting | command-line flag | default | choices | help |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(section_type):
        choices = f.metadata.get("choices") or ()
        row = [
            _code(f"{section}.{f.name}"),
            _code(_flag(section, f)),
            _code(_toml_value(_default(f))),
            ", ".join(_code(str(choice)) for choice in choices),
            _prose(str(f.metadata.get("help", ""))),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def render_configuration() -> str:
    """The markdown settings reference: an introduction, then one table per config section.

    Returns:
        The text of docs/configuration.md (ends with a single newline).
    """
    hints = typing.get_type_hints(Config)
    lines = [_INTRO]
    for section in dataclasses.fields(Config):
        lines += _section_table(section.name, hints[section.name])
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    """Write the settings reference to stdout (``python -m hybrid_ps.config_reference > docs/configuration.md``)."""
    sys.stdout.write(render_configuration())


if __name__ == "__main__":
    main()
