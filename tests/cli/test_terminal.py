"""bnbench as a person sees it: the real CLI in a pseudo-terminal (pexpect) at 100 and 60 columns, its
output played into a terminal emulator (pyte) so that the tests read the screen, live bars included."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pexpect
import pyte
import pytest

from conftest import write_config

ROOT = Path(__file__).resolve().parents[2]
WIDTHS = (100, 60)
BAR = "━"
# A bar line on one line: a label, the bar, a count, as one screen row.
TABLE = re.compile("[┏┡┗└┌├│┃╇┳╋┓┩]")  # table borders are drawn with the same heavy line
BAR_LINE = re.compile(rf"^\S.*? [{BAR}╺╸ ]+ .*\d+/\d+")


@dataclass
class Session:
    code: int
    screen: list[str]  # the final screen, trailing blank lines dropped
    bar_lines: list[str] = field(default_factory=list)  # every line that showed a bar while it ran

    @property
    def text(self) -> str:
        return "\n".join(self.screen)


def in_terminal(command: str, cwd: Path, columns: int, timeout: float = 180) -> Session:
    """Run a shell command line in a pseudo-terminal of `columns` x 30 and play its output into an emulator
    tall enough to keep every line (a real terminal scrolls; the test reads everything)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "CI", "NO_COLOR")}
    env.update(TERM="xterm-256color", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    screen = pyte.Screen(columns, 2000)
    stream = pyte.ByteStream(screen)
    child = pexpect.spawn("bash", ["-c", command], cwd=str(cwd), env=env, dimensions=(30, columns), timeout=timeout)
    bar_lines: list[str] = []
    while True:
        try:
            chunk = child.read_nonblocking(65536, timeout=timeout)
        except pexpect.EOF:
            break
        stream.feed(chunk)
        bar_lines += [line.rstrip() for line in screen.display if BAR in line and not TABLE.search(line)]
    child.close()
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    code = child.exitstatus if child.exitstatus is not None else 128 + (child.signalstatus or 0)
    return Session(code, lines, bar_lines)


def bnbench(*args: object) -> str:
    return "bnbench " + " ".join(shlex.quote(str(a)) for a in args)


def statuses(folder: Path) -> list[str]:
    return [json.loads(p.read_text())["status"] for p in sorted(folder.glob("**/meta.json"))]


def assert_fits(session: Session, columns: int) -> None:
    """Every bar stayed on one line; no table or message runs past the terminal (pyte would wrap it onto a
    line that starts mid-word, which the bar check and the callers' line checks catch)."""
    for line in session.bar_lines:
        assert len(line) <= columns
        assert BAR_LINE.match(line), f"a bar broke across lines: {line!r}"


@pytest.fixture
def slow_config(tmp_path: Path) -> Path:
    # 256 steps an epoch: long enough for the live display to draw several frames
    return write_config(tmp_path / "live.yaml", data={"train_subset": 2048}, train={"epochs": 3, "batch_size": 8})


@pytest.mark.parametrize("columns", WIDTHS)
def test_run_shows_live_bars_epoch_lines_and_the_table(tmp_path, slow_config, columns):
    session = in_terminal(bnbench("run", slow_config, "--seeds", "0,1", "--out-dir", "runs"), tmp_path, columns)
    assert session.code == 0, session.text
    assert statuses(tmp_path / "runs") == ["completed", "completed"]
    assert_fits(session, columns)
    bars = "\n".join(session.bar_lines)
    # each run's bar was seen (which epoch a frame caught depends on how fast the machine is: the screen is read
    # once per chunk of output, and a fast run draws several frames into one chunk); every epoch's line is below
    assert re.search(r"live-s0 epoch [1-3]/3", bars) and re.search(r"live-s1 epoch [1-3]/3", bars)
    assert "all runs" in bars and " left" in bars  # time left for the whole set of runs
    assert not any(BAR in line and not TABLE.search(line) for line in session.screen)  # bars gone at the end
    for seed in (0, 1):
        epoch_lines = [line for line in session.screen if line.startswith(f"live-s{seed}  epoch ")]
        assert [line.split()[2] for line in epoch_lines] == ["1/3", "2/3", "3/3"]
        assert all(re.search(r"test (loss \d\.\d{4} )?acc \d\.\d{4}", line) for line in epoch_lines)
    table = [line for line in session.screen if line.startswith("│ live-s")]
    assert len(table) == 2 and all("completed" in line for line in table)
    assert "IndexError" not in session.text and "failed" not in session.text


@pytest.mark.parametrize("columns", WIDTHS)
def test_sweep_with_two_jobs_shows_the_sweep_and_each_worker(tmp_path, slow_config, columns):
    command = bnbench(
        "sweep", slow_config, "--grid", "norm.kind=none,scratch", "--seeds", "0,1", "--jobs", "2", "--epochs", "2"
    )
    session = in_terminal(command, tmp_path, columns)
    assert session.code == 0, session.text
    assert statuses(tmp_path / "runs/live") == ["completed"] * 4
    assert_fits(session, columns)
    bars = "\n".join(session.bar_lines)
    assert re.search(r"^sweep +.*\d/4 runs", bars, re.M) and " left" in bars
    assert re.search(r"^kind=\S+ epoch [12]/2", bars, re.M)  # a worker line: its run, epoch and steps
    assert "summary: 4 completed" in session.text
    assert sum(line.startswith("completed   kind=") for line in session.screen) == 4


@pytest.mark.parametrize("columns", WIDTHS)
def test_a_failed_run_is_one_line_and_debug_prints_its_traceback(tmp_path, columns):
    # the synthetic test split has 512 examples: an evaluation batch that is not a number fails mid-run
    config = write_config(tmp_path / "bad.yaml", train={"epochs": 1})
    saved = tmp_path / "runs/bad/traceback.txt"
    hook = tmp_path / "sitecustomize.py"  # fail inside the trainer, as a bug would, in the real process
    hook.write_text(
        "from bnbench.training import train\n"
        "def broken(self, epoch):\n    raise RuntimeError('boom in the loop')\n"
        "train.Trainer.run_epoch = broken\n"
    )
    prefix = f"PYTHONPATH={shlex.quote(str(tmp_path))} "
    session = in_terminal(prefix + bnbench("run", config, "--out-dir", "runs"), tmp_path, columns)
    assert session.code == 1
    assert "RuntimeError: boom in the loop" in session.text and "Traceback (most" not in session.text
    assert "in broken" in saved.read_text()
    session = in_terminal(prefix + bnbench("--debug", "run", config, "--out-dir", "runs"), tmp_path, columns)
    unwrapped = "".join(session.screen)  # a long traceback line wraps on the screen (its space at the edge)
    assert session.code == 1 and "Traceback (most recent call last)" in unwrapped
    assert re.search(r"line 3, in ?broken", unwrapped)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A small finished study, run once (piped) for the read-only commands below."""
    import subprocess

    folder = tmp_path_factory.mktemp("study")
    config = write_config(folder / "base.yaml", train={"epochs": 2})
    subprocess.run(
        [sys.executable, "-m", "bnbench", "sweep", str(config), "--grid", "norm.kind=none,scratch", "--seeds", "0,1",
         "--jobs", "1", "--out-dir", str(folder / "runs")],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder


READ_COMMANDS = {
    "compare": (["compare", "runs/base", "--baseline", "kind=none"], "kind=scratch"),
    "compare with a plot": (["compare", "runs/base", "--plot", "compare.png"], "figure written to compare.png"),
    "ls": (["ls", "runs"], "completed"),
    "plot": (["plot", "runs/base", "--out", "curves.png"], "figure written to curves.png"),
    "report": (["report", "runs/base", "--out", "report"], "report: report/README.md"),
    "bench": (["bench", "--models", "mlp", "--norms", "none", "--rounds", "1", "--no-reference"], "mlp"),
    "config list": (["config", "list"], "mlp_lr"),
    "dry run": (["sweep", "mlp_lr", "--epochs", "1", "--dry-run"], "estimated wall time"),
}


@pytest.mark.parametrize("columns", WIDTHS)
@pytest.mark.parametrize("command", list(READ_COMMANDS))
def test_every_command_works_in_a_terminal(study, command, columns):
    args, expected = READ_COMMANDS[command]
    session = in_terminal(bnbench(*args), study, columns)
    assert session.code == 0, session.text
    assert expected in session.text
    assert "Traceback" not in session.text and "error" not in session.text.lower()
    for line in session.screen:  # tables fit: a table row is whole on its line
        if line.startswith(("┃", "│")):
            assert line.endswith(("┃", "│")), f"a table row was wider than {columns} columns: {line!r}"


def quickstart_commands() -> list[str]:
    """The bnbench commands of the README's Quickstart, as written."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quickstart", 1)[1].split("```", 2)[1]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip().startswith("bnbench ")]


def shortened(command: str) -> str:
    """The Quickstart command on tiny synthetic data, one epoch, so that CI runs every one of them."""
    words = command.split()
    if words[1] in ("run", "sweep"):
        return f"{command} --epochs 1 --set data.dataset=synthetic --set data.train_subset=512"
    return command


def trains(command: str) -> bool:
    return command.split()[1] in ("run", "sweep")


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    """Every Quickstart command, typed in order at the narrow width (where bars and tables are hardest to
    fit); the folder is then read again at the wide one."""
    folder = tmp_path_factory.mktemp("quickstart")
    for command in quickstart_commands():
        session = in_terminal(shortened(command), folder, min(WIDTHS), timeout=300)
        assert session.code == 0, f"{command}\n{session.text}"
        assert_fits(session, min(WIDTHS))
        assert "Traceback" not in session.text
    return folder


@pytest.mark.parametrize("columns", WIDTHS)
def test_the_quickstart_as_written_in_a_terminal(quickstart, columns):
    """The Quickstart in a terminal: trained once (at 60 columns, in the fixture); at each width every
    command that reads the runs is typed again and fits."""
    commands, tmp_path = quickstart_commands(), quickstart
    assert len(commands) >= 4 and commands[0].startswith("bnbench run")
    for command in commands if columns != min(WIDTHS) else []:
        if not trains(command):
            session = in_terminal(shortened(command), tmp_path, columns, timeout=300)
            assert session.code == 0, f"{command}\n{session.text}"
            assert_fits(session, columns)
            assert "Traceback" not in session.text
    assert statuses(tmp_path / "runs") and set(statuses(tmp_path / "runs")) == {"completed"}
    # Typed after all of them, each compare still reads exactly its own runs: one folder, no warning of a mix.
    compares = [c for c in commands if c.startswith("bnbench compare")]
    assert len(compares) >= 3
    for command in compares:
        words = shlex.split(command)[2:]
        inputs = [w for w in words[: next((i for i, w in enumerate(words) if w.startswith("-")), len(words))]]
        result = subprocess.run([sys.executable, "-m", "bnbench", "compare", *inputs, "--format", "json"],
                                cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, result.stderr
        folders = {str(Path(run["path"]).parent) for run in json.loads(result.stdout)["runs"]}
        assert len(folders) == 1, f"{command} read runs from {sorted(folders)}"
        assert "mix" not in result.stderr, result.stderr


COMMANDS = ["run", "sweep", "compare", "ls", "report", "plot", "check", "bench", "config list", "config show"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example_and_no_bool_metavar(cli, command):
    result = cli(*command.split(), "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout and "bnbench " in result.stdout.split("Example", 1)[1]
    assert "<bool>" not in result.stdout


def test_the_command_list_says_whole_sentences(cli):
    text = cli("--help").stdout
    listed = [line for line in text.splitlines() if line.startswith("│ ") and "  " in line.strip("│ ")]
    assert len(listed) >= len(COMMANDS) - 1
    for line in listed:  # one line per command, ending its sentence: nothing cut mid-way
        assert line.rstrip("│ ").endswith("."), line
    assert "where to check" in cli("check", "--help").stdout.lower()


@pytest.fixture(scope="module")
def quickstart_runs(tmp_path_factory) -> Path:
    """The Quickstart's first command (3 seeds of mlp_none and mlp_bn, 3 epochs, into runs/quickstart) on tiny
    synthetic data."""
    import subprocess

    folder = tmp_path_factory.mktemp("quickstart")
    subprocess.run(
        [sys.executable, "-m", "bnbench", "run", "mlp_none", "mlp_bn", "--seeds", "0,1,2", "--epochs", "3",
         "--out-dir", "runs/quickstart", "--set", "data.dataset=synthetic", "--set", "data.train_subset=512"],
        cwd=folder, check=True, capture_output=True,
    )  # fmt: skip
    return folder


DELTA_CELL = re.compile(r"[+-]\d\.\d{4} \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\]")


@pytest.mark.parametrize("columns", WIDTHS)
def test_the_quickstart_compare_answer_is_on_one_screen(quickstart_runs, columns):
    session = in_terminal("bnbench compare runs/quickstart --baseline mlp_none", quickstart_runs, columns)
    assert session.code == 0, session.text
    screen = session.screen[-29:]  # what a 30-line terminal still shows, above the prompt
    text = "\n".join(screen)
    header = next(line for line in screen if "Δ vs mlp_none [95% CI]" in line)
    assert re.search(r"┃ *p *┃", header) and "group" in header and (columns < 100 or "final test acc" in header)
    bn = next(line for line in screen if line.startswith("│ mlp_bn "))
    assert DELTA_CELL.search(bn) and re.search(r"│ +(\d\.\d+(e-\d+)?|-) │", bn)  # Δ [CI] and p
    if columns >= 100:  # mean ± std beside it
        assert re.search(r"\d\.\d{4} ± \d\.\d{4}", bn)
    hidden = [line for line in screen if "hidden to fit" in line]  # only incidental columns were hidden
    names = [name.strip() for line in hidden for name in line.split(":", 1)[-1].split(",")]
    assert hidden and not any(name.startswith("Δ") or name == "p" for name in names)
    assert "Welch" in text.split("└", 1)[-1]  # the footer under the tables says what Δ and p are
    for line in session.screen:
        if line.startswith(("┃", "│")):
            assert line.endswith(("┃", "│")), line


def test_wide_draws_every_column_whole_however_narrow_the_terminal(quickstart_runs):
    session = in_terminal("bnbench compare runs/quickstart --baseline mlp_none --wide", quickstart_runs, 60)
    assert session.code == 0, session.text
    text = "".join(session.screen)  # the terminal wraps the wide lines: read them joined
    assert "…" not in text and "hidden to fit" not in text
    for column in ("ex/s", "wall s", "Δ vs mlp_none [95% CI]", "steps (examples) to"):
        assert column in text
    assert re.search(r"┃ *p *┃", text)
    assert DELTA_CELL.search(text)


def test_footers_describe_only_columns_on_screen(quickstart_runs):
    narrow = in_terminal("bnbench compare runs/quickstart --baseline mlp_none", quickstart_runs, 100)
    wide = in_terminal("bnbench compare runs/quickstart --baseline mlp_none --wide", quickstart_runs, 100)
    shown_target = any(re.search(r"┃.*epochs to", line) for line in narrow.screen)
    assert ("target " in narrow.text) == shown_target
    assert "target " in wide.text and "completed runs that learned (above 0.2)" in wide.text


@pytest.fixture(scope="module")
def claimed_study(tmp_path_factory) -> Path:
    """A user's own study file with a claim, swept once (piped)."""
    import subprocess

    import yaml

    folder = tmp_path_factory.mktemp("claimed")
    write_config(folder / "base.yaml", train={"epochs": 1})
    claim = {"id": "bn_ends_higher", "says": "BN ends with a higher test accuracy than no norm",
             "compare": {"norm.kind": "scratch"}, "against": {"norm.kind": "none"},
             "metric": {"column": "test_acc", "at": "final"}, "expect": "greater", "margin": 0.01}  # fmt: skip
    study = {"name": "mine", "base": "base.yaml", "matrix": {"norm.kind": ["none", "scratch"]}, "seeds": "0-1",
             "claims": [claim]}  # fmt: skip
    (folder / "mine.yaml").write_text(yaml.safe_dump(study))
    subprocess.run([sys.executable, "-m", "bnbench", "sweep", "mine.yaml", "--jobs", "1"], cwd=folder, check=True,
                   capture_output=True)  # fmt: skip
    return folder


@pytest.mark.parametrize("columns", WIDTHS)
def test_report_shows_the_verdicts_then_the_path(claimed_study, columns):
    session = in_terminal(bnbench("report", "runs/mine", "--out", f"report{columns}"), claimed_study, columns)
    assert session.code == 0, session.text
    row = next(line for line in session.screen if line.startswith("│ bn_ends_higher"))
    assert re.search(r"│ (supported|contradicted|inconclusive) +│", row)
    assert re.search(r"[-+]?\d\.\d{4} \[[-+]?\d\.\d{4}, [-+]?\d\.\d{4}\]", row)  # effect [95% CI]
    assert "1 claims:" in session.text or "1 claim" in session.text
    assert session.screen[-1] == f"report: report{columns}/README.md"  # the path comes last
    for line in session.screen:
        if line.startswith(("┃", "│")):
            assert line.endswith(("┃", "│")), line
    text = (claimed_study / f"report{columns}/README.md").read_text()
    assert f"regenerate: `bnbench report runs/mine --out report{columns}`" in text and "make results" not in text
