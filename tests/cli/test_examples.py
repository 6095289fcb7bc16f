"""Every `bnbench ...` example in the commands' help and in the README and docs is a command the CLI accepts
as written: its options exist and its values parse (Click parses each, nothing runs), and every norm or
model plugin it names imports from the repository root."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from bnbench.cli.app import app

ROOT = Path(__file__).resolve().parents[2]


def _command_lines(text: str) -> list[str]:
    """`bnbench ...` lines of a help text or a markdown file, without comments, notes and shell plumbing."""
    out = []
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ")
        if not line.startswith("bnbench ") or line.endswith(("`", ".")) or "[--" in line:
            continue  # prose that starts with the name, or a placeholder ([--experiment NAME])
        line = re.split(r"\s{2,}[#(]|\s#\s", line)[0]
        for part in re.split(r"\s(?:&&|\||>|;)\s", line):
            if part.startswith("bnbench "):
                out.append(part.strip())
    return out


def examples() -> list[tuple[str, str]]:
    command = typer.main.get_command(app)
    found = [(f"help of {name}", line) for name, sub in command.commands.items()
             for line in _command_lines(sub.help or "")]  # fmt: skip
    for group in (c for c in command.commands.values() if isinstance(c, click.Group)):
        found += [(f"help of {group.name} {name}", line) for name, sub in group.commands.items()
                  for line in _command_lines(sub.help or "")]  # fmt: skip
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found += [(str(path.relative_to(ROOT)), line) for line in _command_lines(path.read_text())]
    return found


def _parse(args: list[str]) -> click.Command:
    """Parse as the CLI would (options, types, choices), without running the command."""
    command: click.Command = typer.main.get_command(app)
    ctx = command.make_context("bnbench", args)
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    return command


def test_the_examples_are_found():
    found = examples()
    assert len(found) > 60
    assert any(where.startswith("help of check") for where, _ in found)


@pytest.mark.parametrize(("where", "line"), examples())
def test_every_example_parses_as_written(where, line):
    args = shlex.split(line)[1:]
    try:
        _parse(args)
    except click.exceptions.Exit:
        pass  # --help, --version
    except click.ClickException as exc:
        pytest.fail(f"{where}: `{line}`: {exc.format_message()}")


@pytest.mark.parametrize(("where", "line"), [e for e in examples() if re.search(r"--norms? \S*:", e[1])])
def test_every_plugin_an_example_names_imports_from_the_repository_root(where, line, monkeypatch):
    from bnbench import plugins

    monkeypatch.chdir(ROOT)
    for spec in re.findall(r"--norms? (\S+)", line):
        for part in spec.split(","):
            if ":" in part:
                plugins.resolve(part, "norm", where)
