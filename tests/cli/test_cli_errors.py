"""Command-line mistakes through the real entry point: one line, exit 2, and a pointer where an option lives
in another command; help shows no `<bool>` anywhere, -h/--help included."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["run", "smoke", "--grid", "x"], "--grid makes a grid of runs: bnbench sweep CONFIG --grid"),
        (["sweep", "smoke", "--seed", "1"], "--seeds 0-2 (or 0,1,2) gives a sweep its seeds"),
        (["sweep", "smoke", "--resume", "x"], "a sweep resumes by itself"),
        (["compare", ".", "--out", "x.png"], "compare writes a figure with --plot FILE.png"),
    ],
)
def test_a_misplaced_option_points_to_where_it_lives(cli, args, hint):
    result = cli(*args)
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert hint in line and line.startswith("error: No such option")


def test_no_arguments_shows_the_help_and_no_empty_error_line():
    result = subprocess.run([sys.executable, "-m", "bnbench"], capture_output=True, text=True)
    assert "Usage: bnbench" in result.stdout + result.stderr and "error:" not in result.stderr


@pytest.mark.parametrize("command", [[], ["run"], ["config"], ["compare"]])
def test_help_shows_no_bool_metavar_even_beside_help(cli, command):
    result = cli(*command, "--help")
    assert result.exit_code == 0 and "<bool>" not in result.stdout and "--help" in result.stdout


def test_ctrl_c_while_the_cli_still_imports_is_exit_130_without_a_traceback():
    """A Ctrl-C in the first third of a second (the CLI's imports) ends as a later one does. The interrupt is
    raised by an import hook, in a real process, so the test does not depend on when a signal lands."""
    code = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'bnbench.cli.app':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from bnbench.cli import main\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code, "compare", "."], capture_output=True, text=True)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
    later = ("import sys, typer.main\n"
             "def interrupted(*args, **kwargs):\n    raise KeyboardInterrupt\n"
             "typer.main.get_command = interrupted\n"  # Typer building the command, before Click's handlers
             "from bnbench.cli import main\nmain()\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", later, "compare", "."], capture_output=True, text=True)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
