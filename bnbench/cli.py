"""The `bnbench` command: run, compare, check, bench."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup
from typer.main import get_current_context

from bnbench.errors import UsageError
from bnbench.sweep import Engine
from bnbench.tables import fitted, frame_table

# Typer vendors Click; its usage-error class (bad value, unknown option, missing argument) is BadParameter's base.
CommandLineError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class OneLineErrors(TyperGroup):
    """Command-line mistakes (`--epochs abc`, an unknown option, a missing file) as one line and exit 2,
    like every other bad input, instead of Click's multi-line box; `--debug` anywhere on the line."""

    def main(self, args: list[str] | None = None, prog_name: str | None = None, **extra: object) -> None:
        del prog_name  # messages always say `bnbench ...` (the test runner would call it "root")
        args = list(sys.argv[1:] if args is None else args)
        if "--debug" in args[1:] and "--" not in args[: args.index("--debug")]:
            args.remove("--debug")
            args.insert(0, "--debug")
        extra.pop("standalone_mode", None)
        try:
            code = super().main(args, "bnbench", standalone_mode=False, **extra)
        except CommandLineError as exc:
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            message = exc.format_message().replace("Value error, ", "")  # pydantic's prefix says nothing
            err_console.print(f"[red]error:[/red] {escape(message)}{where}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except typer.TyperException as exc:
            err_console.print(f"[red]error:[/red] {escape(exc.format_message())}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    help="What does Batch Normalization do to training? Run experiments from YAML configs and compare them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Off a terminal (CI logs, pipes) Rich would wrap at 80 columns: there, lines are as long as they need to be.
console = Console(width=None if sys.stdout.isatty() else 100_000)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 100_000)
WideOption = Annotated[bool, typer.Option("--wide", help="Show every column, however narrow the terminal.")]


def _jobs(text: str | None, device: str) -> int | None:
    """--jobs N or auto (one per core on a CPU, see sweep.default_jobs); None when not given."""
    if text is None:
        return None
    if text.strip() == "auto":
        from bnbench.sweep import default_jobs

        return default_jobs(device)
    if not text.strip().isdigit() or int(text) < 1:
        raise UsageError(f"--jobs {text}: expected a number of runs at once (1 or more), or auto")
    return int(text)


def _terminal_width() -> int | None:
    """The width tables must fit, or None off a terminal (nothing is dropped in pipes and logs)."""
    return console.width if console.is_terminal else None


class Backend(str, Enum):
    local = "local"
    ray = "ray"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Dtype(str, Enum):
    float32 = "float32"
    float64 = "float64"


class CompareFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"


class CompareTable(str, Enum):
    runs = "runs"
    groups = "groups"
    pivot = "pivot"
    epochs = "epochs"


class ListFormat(str, Enum):
    table = "table"
    json = "json"


DeviceOption = Annotated[Device, typer.Option(help="Where to train (auto: cuda, then mps, then cpu).")]


def _version(value: bool) -> None:
    if value:
        import bnbench

        print(f"bnbench {bnbench.__version__}")
        raise typer.Exit()


# The engine's options, shared by `run` and `sweep`.
ThreadsOption = Annotated[Optional[int], typer.Option(min=1, help="torch threads per job.")]
BackendOption = Annotated[Backend, typer.Option(help="local worker processes, or ray tasks.")]
AddressOption = Annotated[Optional[str], typer.Option(help="Ray cluster address (ray start); default: local Ray.")]
CpusOption = Annotated[float, typer.Option(min=0.01, help="Ray: CPUs per run.")]
GpusOption = Annotated[float, typer.Option(min=0, help="Ray: GPUs per run, e.g. 0.25.")]


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (or BNBENCH_DEBUG=1).")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    ctx.obj = {"debug": debug or os.environ.get("BNBENCH_DEBUG") == "1"}  # per invocation: nothing leaks


def _debug() -> bool:
    ctx = get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and isinstance(root.obj, dict) and root.obj.get("debug"))


@contextmanager
def reported_errors() -> Iterator[None]:
    """Bad input: one line, exit 2. Anything else: one line, exit 1. --debug shows the traceback."""
    try:
        yield
    except UsageError as exc:
        if _debug():
            traceback.print_exc()
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if _debug():
            traceback.print_exc()
        err_console.print(
            f"[red]error:[/red] {type(exc).__name__}: {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None


def epoch_line(name: str, epochs: int, row: dict[str, float]) -> str:
    return (
        f"{name}  epoch {int(row['epoch'])}/{epochs}  train_loss {row['train_loss']:.4f}  "
        f"train_acc {row['train_acc']:.4f}  test_loss {row['test_loss']:.4f}  test_acc {row['test_acc']:.4f}  "
        f"{row['epoch_seconds']:.1f}s  {row['examples_per_second']:,.0f} ex/s"
    )


class PlainReporter:
    """One line per epoch: for pipes, CI and log files. (Not a train.SilentReporter subclass: that
    would import torch for every command, `--help` included.)"""

    def __init__(self, name: str, epochs: int) -> None:
        self.name, self.epochs = name, epochs
        self.batch_size = 1

    def started(self, path: Path, note: str, batch_size: int) -> None:
        self.batch_size = batch_size
        print(f"{self.name}: writing {path}" + (f" ({note})" if note else ""), flush=True)

    def epoch_start(self, epoch: int, steps: int) -> None:
        pass

    def progress(self, steps_done: int, loss: float, acc: float) -> None:
        pass

    def evaluating(self) -> None:
        pass

    def epoch_end(self, row: dict[str, float]) -> None:
        print(epoch_line(self.name, self.epochs, row), flush=True)


class LiveReporter(PlainReporter):
    """A Rich progress bar per epoch with the live loss and accuracy of the last log window."""

    def __init__(self, name: str, epochs: int, progress: Progress) -> None:
        super().__init__(name, epochs)
        self.bar, self.task = progress, None

    def started(self, path: Path, note: str, batch_size: int) -> None:
        self.batch_size = batch_size
        self.bar.console.print(f"{self.name}: writing {path}" + (f" ({note})" if note else ""), highlight=False)

    def epoch_start(self, epoch: int, steps: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(
            f"{self.name} {epoch}/{self.epochs}", total=steps, loss=float("nan"), acc=float("nan"), speed=""
        )

    def progress(self, steps_done: int, loss: float, acc: float) -> None:
        elapsed = self.bar.tasks[self.task].elapsed if self.task in self.bar.task_ids else None
        speed = f"{steps_done * self.batch_size / elapsed:,.0f} ex/s" if elapsed else ""
        self.bar.update(self.task, completed=steps_done, loss=loss, acc=acc, speed=speed)

    def evaluating(self) -> None:
        if self.task is not None:
            self.bar.update(self.task, description=f"{self.name} {self.bar.tasks[self.task].description.split()[-1]} "
                            "evaluating")  # fmt: skip

    def epoch_end(self, row: dict[str, float]) -> None:
        self.bar.console.print(epoch_line(self.name, self.epochs, row), highlight=False)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.4f}  {task.fields[speed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@app.command()
def run(
    configs: Annotated[Optional[list[Path]], typer.Argument(help="YAML config files, one run each.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set train.lr=0.5 (value is YAML).")] = [],
    epochs: Annotated[Optional[int], typer.Option(help="Shortcut for --set train.epochs=N.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Shortcut for --set train.seed=N.")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Run each config once per seed: --seeds 0,1,2 or 0-4.")] = None,
    device: DeviceOption = Device.auto,
    data_dir: Annotated[
        Optional[Path], typer.Option(help="Dataset folder (default: env BNBENCH_DATA_DIR, else ./data).")
    ] = None,
    out_dir: Annotated[Path, typer.Option(help="Where run directories go.")] = Path("runs"),
    name: Annotated[Optional[str], typer.Option(help="Shortcut for --set name=NAME.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run directory.")] = None,
    jobs: Annotated[
        Optional[str], typer.Option(help="Runs at once, in worker processes: N or auto (one per core); default 1.")
    ] = None,
    threads_per_job: ThreadsOption = None,
    backend: BackendOption = Backend.local,
    address: AddressOption = None,
    cpus_per_run: CpusOption = 1.0,
    gpus_per_run: GpusOption = 0.0,
) -> None:
    """Train from YAML configs; each run writes runs/<name>/ (config, metrics.csv, steps.csv, meta.json, model)."""
    from bnbench.runs import Job, exit_code_of, plan_jobs, plan_resume, run_jobs
    from bnbench.study import parse_seeds

    with reported_errors():
        workers = _jobs(jobs, device.value)
        overrides = list(set_)
        for key, value in (("train.epochs", epochs), ("train.seed", seed), ("name", name)):
            if value is not None:  # JSON is YAML: the name stays a string ('exp #3', '2024')
                overrides.append(f"{key}={json.dumps(value)}")
        seed_list = list(parse_seeds(seeds, "--seeds")) if seeds is not None else None
        if resume is not None:
            if seed_list is not None or len(configs or []) > 1:
                raise UsageError("--resume continues one run: give at most one config and no --seeds")
            planned: list[Job] = [plan_resume(resume, (configs or [None])[0], overrides)]
        else:
            if not configs:
                raise UsageError("no config given: bnbench run CONFIG.yaml [CONFIG.yaml ...] (see configs/)")
            planned = plan_jobs(configs, overrides, seed_list)
        live = sys.stdout.isatty()
        if (workers or 1) > 1 or backend is Backend.ray:
            engine = Engine(
                device.value, data_dir, workers, threads_per_job, backend.value, address, cpus_per_run, gpus_per_run
            )
            results, _ = _run_engine(planned, engine, out_dir, live)
            exit_code = exit_code_of(results)
        else:
            with _progress() if live else nullcontext() as progress:
                make_reporter = (lambda n, e: LiveReporter(n, e, progress)) if live else PlainReporter
                say = (lambda m: console.print(m, highlight=False)) if live else (lambda m: print(m, flush=True))
                results, exit_code = run_jobs(planned, device.value, data_dir, out_dir, make_reporter, say)
        cells = [
            [r.name, r.status, str(r.epochs_completed), "-" if r.final_test_acc is None else f"{r.final_test_acc:.4f}",
             str(r.path)]
            for r in results
        ]  # fmt: skip
        header = ["run", "status", "epochs", "final test_acc", "directory"]
        console.print(fitted("runs", header, cells, _terminal_width()))
        for result in results:
            if result.error:
                err_console.print(
                    f"[red]{result.status}:[/red] {result.name}: {result.error}", highlight=False, soft_wrap=True
                )
            if result.status == "interrupted":
                err_console.print(f"to continue: bnbench run --resume {result.path}", highlight=False, soft_wrap=True)
        raise typer.Exit(exit_code)


class SweepDisplay:
    """On a terminal: one overall bar (runs done / total, failures, ETA) and a line per busy worker.
    Off a terminal: one line per finished run."""

    def __init__(self, total: int, live: bool) -> None:
        self.live, self.total, self.done, self.failed = live, total, 0, 0
        self.bars = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.overall = self.bars.add_task("runs", total=total, info="")
        self.workers: dict[str, int] = {}

    def __enter__(self) -> SweepDisplay:
        if self.live:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bars.stop()

    def progress(self, update: tuple) -> None:
        _pid, name, epoch, epochs, done, steps, loss = update
        if name not in self.workers:
            self.workers[name] = self.bars.add_task(name, total=steps, info="")
        self.bars.update(self.workers[name], description=f"{name} {epoch}/{epochs}", completed=done, total=steps,
                         info=f"loss {loss:.4f}" if loss == loss else "")  # fmt: skip

    def result(self, result) -> None:
        self.done += 1
        self.failed += result.status == "failed"
        if result.name in self.workers:
            self.bars.remove_task(self.workers.pop(result.name))
        failures = f"{self.failed} failed" if self.failed else ""
        self.bars.update(self.overall, completed=self.done, info=failures)
        acc = f"test_acc {result.final_test_acc:.4f}" if result.final_test_acc is not None else ""
        line = f"{result.status:<11} {result.name}  epochs {result.epochs_completed}  {acc}"
        (self.bars.console.print if self.live else print)(line.rstrip(), **({"highlight": False} if self.live else {}))


def _run_engine(jobs: list, engine: Engine, out_dir: Path, live: bool, root: Optional[Path] = None) -> tuple[list, int]:
    from bnbench.sweep import execute, prepare

    root = root or prepare(jobs, engine)
    with SweepDisplay(len(jobs), live and engine.backend == "local") as display:
        return execute(jobs, engine, out_dir, root, display.result, display.progress if display.live else None)


@app.command()
def sweep(
    study: Annotated[Path, typer.Argument(help="A study file, a study folder (re-run), or a config with --grid.")],
    grid: Annotated[list[str], typer.Option(help="A matrix key: --grid train.lr=0.1,1,3 (with a config).")] = [],
    seeds: Annotated[Optional[str], typer.Option(help="Seeds with a config: 0-4 or 0,1,2 (default 0).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Study name with a config (default: the config's).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="A fixed override for every run (with a config).")] = [],
    out_dir: Annotated[Path, typer.Option(help="Studies go to OUT_DIR/<study>/.")] = Path("runs"),
    jobs: Annotated[Optional[str], typer.Option(help="Runs at once: N, or auto (default: one per CPU core).")] = None,
    threads_per_job: ThreadsOption = None,
    backend: BackendOption = Backend.local,
    address: AddressOption = None,
    cpus_per_run: CpusOption = 1.0,
    gpus_per_run: GpusOption = 0.0,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run failed runs again.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the runs it would start, run nothing.")] = False,
    device: DeviceOption = Device.auto,
    data_dir: Annotated[
        Optional[Path], typer.Option(help="Dataset folder (default: env BNBENCH_DATA_DIR, else ./data).")
    ] = None,
) -> None:
    """Run a grid x seeds in parallel, resumably: completed and diverged runs are skipped, interrupted ones
    resumed. Ends with a summary and the study's comparison; exit 1 if any run failed."""
    from bnbench import compare as cmp
    from bnbench import study as studies
    from bnbench.sweep import plan_study, prepare, save_study

    with reported_errors():
        workers = _jobs(jobs, device.value)
        if study.is_dir():
            if grid or seeds or name or set_:
                raise UsageError(
                    f"{study}: a saved study re-runs as it is; --grid, --seeds, --name, --set do not apply"
                )
            wanted = studies.load_study(study)
            out_dir = study.parent
        elif grid or seeds is not None:
            wanted = studies.study_from_options(study, grid, seeds, name, set_)
        else:
            if name or set_:
                raise UsageError("--name and --set go with a config and --grid; a study file names its own")
            wanted = studies.load_study(study)
        plan = plan_study(wanted, out_dir, retry_failed)
        total = len(plan.jobs) + len(plan.skipped)
        if dry_run:
            for job in plan.jobs:
                console.print(f"{'resume' if job.resume else 'start':<7} {job.run_name}", highlight=False)
            for run_name, why in plan.skipped:
                console.print(f"{'skip':<7} {run_name}  ({why})", highlight=False)
            console.print(f"{wanted.name}: {total} runs; {len(plan.jobs)} to run, {len(plan.skipped)} to skip")
            return
        engine = Engine(
            device.value, data_dir, workers, threads_per_job, backend.value, address, cpus_per_run, gpus_per_run
        )
        root = prepare(plan.jobs, engine)
        save_study(plan)
        console.print(f"{wanted.name}: {total} runs in {plan.folder}; {len(plan.jobs)} to run, "
                      f"{len(plan.skipped)} skipped", highlight=False)  # fmt: skip
        results, exit_code = _run_engine(plan.jobs, engine, plan.folder, sys.stdout.isatty(), root)
        counts = dict.fromkeys(("completed", "diverged", "interrupted", "failed", "skipped"), 0)
        for result in results:
            counts[result.status] = counts.get(result.status, 0) + 1
        counts["already done or skipped"] = len(plan.skipped)
        console.print("summary: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n), highlight=False)
        for result in results:
            if result.status == "failed":
                err_console.print(f"[red]failed:[/red] {result.name}: {result.error}", highlight=False, soft_wrap=True)
        runs, _ = cmp.find_runs([plan.folder])
        if runs:
            comparison = cmp.compare(runs)  # the seed groups; `bnbench compare` shows every run and epoch
            for title, frame in cmp.display_tables(comparison, "groups"):
                console.print(frame_table(title, frame, _terminal_width()))
            console.print(f"every run and epoch: bnbench compare {plan.folder}", style="dim", highlight=False)
        raise typer.Exit(exit_code)


config_app = typer.Typer(
    help="Configs: list the shipped ones, show one resolved with every default.", no_args_is_help=True
)
app.add_typer(config_app, name="config")


@config_app.command("list")
def config_list() -> None:
    """The configs shipped with bnbench: `bnbench run NAME` runs one from any folder."""
    from bnbench.config import SHIPPED_CONFIGS, load_config, shipped_configs

    with reported_errors():
        table = Table(title=f"shipped configs ({len(shipped_configs())})")
        for column in ("name", "model", "norm", "dataset", "epochs"):
            table.add_column(column, no_wrap=True)
        for name in shipped_configs():
            cfg = load_config(SHIPPED_CONFIGS / f"{name}.yaml")
            table.add_row(name, cfg.model.name, cfg.norm.kind, cfg.data.dataset, str(cfg.train.epochs))
        console.print(table)


@config_app.command("show")
def config_show(
    config: Annotated[Path, typer.Argument(help="A config file, or a shipped config's name (lenet_bn).")],
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set train.lr=0.5.")] = [],
) -> None:
    """Print the config as a run would use it: overrides applied, every default filled in."""
    import yaml

    from bnbench.config import load_config

    with reported_errors():
        sys.stdout.write(yaml.safe_dump(load_config(config, set_).to_dict(), sort_keys=False))


@app.command("ls")
def list_runs(
    folder: Annotated[Path, typer.Argument(help="A folder of runs (searched two levels down: studies too).")] = Path(
        "runs"
    ),
    format: Annotated[ListFormat, typer.Option("--format", help="A table, or JSON for scripts.")] = ListFormat.table,
    wide: WideOption = False,
) -> None:
    """One line per run: name, status, epochs, final test accuracy, age. Reads no torch, trains nothing."""
    from bnbench.rundir import list_runs as find

    with reported_errors():
        if not folder.is_dir():
            raise UsageError(f"{folder}: no such folder")
        rows = find(folder)
        if format is ListFormat.json:
            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        cells = [
            [row["run"], row["status"], f"{row['epochs_completed']}/{row['epochs']}",
             "-" if row["final_test_acc"] is None else f"{row['final_test_acc']:.4f}", row["age"]]
            for row in rows
        ]  # fmt: skip
        header = ["run", "status", "epochs", "final test_acc", "age"]
        console.print(fitted(f"{len(rows)} runs in {folder}", header, cells, _terminal_width(), wide))


@app.command()
def compare(
    paths: Annotated[list[Path], typer.Argument(help="Run directories, or folders holding run directories.")],
    metric: Annotated[str, typer.Option(help="metrics.csv column for the per-epoch table and the test.")] = "test_acc",
    target: Annotated[
        Optional[float], typer.Option(help="Test accuracy that counts as converged (default: the lowest final one).")
    ] = None,
    baseline: Annotated[Optional[str], typer.Option(help="Group or run the others are compared against.")] = None,
    plot: Annotated[
        Optional[Path], typer.Option(help="Write a figure (.png, .svg, .pdf) with loss and accuracy curves.")
    ] = None,
    diagnostics: Annotated[
        bool, typer.Option("--diagnostics", help="--plot draws the diagnostics figure instead (see `plot`).")
    ] = False,
    format: Annotated[CompareFormat, typer.Option("--format", help="Output format.")] = CompareFormat.table,
    table: Annotated[
        Optional[CompareTable],
        typer.Option(help="Only this table (CSV: one table per file; default runs, or pivot with --pivot)."),
    ] = None,
    wide: WideOption = False,
    pivot: Annotated[Optional[str], typer.Option(help="Grid rows: a config key, e.g. train.lr (with --by).")] = None,
    by: Annotated[Optional[str], typer.Option(help="Grid columns: a config key, e.g. norm.kind.")] = None,
) -> None:
    """Compare runs side by side: summary, seed groups (mean ± std, Welch t-test), per-epoch table, plot."""
    from bnbench import compare as cmp

    with reported_errors():
        if target is not None and not 0 < target <= 1:
            raise UsageError(f"--target {target}: a test accuracy as a fraction in (0, 1]")
        _check_figure_path("--plot", plot)
        runs, warnings = cmp.find_runs(paths)
        for warning in warnings:
            err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
        if not runs:
            raise UsageError(f"no bnbench runs found in {' '.join(map(str, paths))}")
        for what in cmp.mixed(runs):
            err_console.print(f"[yellow]warning:[/yellow] comparing runs on different {what}", highlight=False)
        comparison = cmp.compare(runs, metric, target, baseline, pivot, by)
        which = table.value if table is not None else None
        if format is CompareFormat.markdown:
            sys.stdout.write(cmp.to_markdown(comparison, which))
        elif format is CompareFormat.csv:
            sys.stdout.write(cmp.to_csv(comparison, which))
        elif format is CompareFormat.json:
            sys.stdout.write(cmp.to_json(comparison, {r.name: r.config for r in runs}))
        else:
            for title, frame in cmp.display_tables(comparison, which):
                console.print(frame_table(title, frame, _terminal_width(), wide))
            for note in cmp.footnotes(comparison):
                console.print(f"[dim]{note}[/dim]", highlight=False)
        if plot is not None:
            _write_figure("--plot", plot, runs, diagnostics)


@app.command()
def report(
    studies: Annotated[list[Path], typer.Argument(help="Study folders written by `bnbench sweep` (runs/<study>).")],
    out: Annotated[Path, typer.Option(help="Folder for README.md and its figures.")] = Path("docs/results"),
    published: Annotated[
        Optional[Path], typer.Option(help="Published figures to set beside the runs (default: the shipped file).")
    ] = None,
) -> None:
    """Write the evidence report: per study, tables over seeds, figures, published figures and verdicts."""
    from bnbench import report as rep

    with reported_errors():
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out}: exists and is not a folder")
        path = rep.report(studies, out, published or rep.PUBLISHED)
        console.print(f"report: {path}", highlight=False)


def _check_figure_path(option: str, path: Optional[Path]) -> None:
    from bnbench.plots import SUFFIXES

    if path is not None and path.suffix.lower() not in SUFFIXES:
        raise UsageError(f"{option} {path}: the file name must end in {', '.join(SUFFIXES)}")
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"{option} {path}: no such folder {path.parent}")


def _write_figure(
    option: str, path: Path, runs: list, diagnostics: bool, layers: Optional[list[str]] = None, dpi: int = 110
) -> None:
    from bnbench import plots

    try:
        if diagnostics:
            plots.diagnostics_figure(runs, path, layers, dpi)
        else:
            plots.training_curves(runs, path)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write ({exc.strerror})") from None
    except ValueError as exc:
        raise UsageError(f"{option} {path}: {exc}") from None
    err_console.print(f"figure written to {path}", highlight=False)


@app.command()
def plot(
    paths: Annotated[list[Path], typer.Argument(help="Run directories, or folders holding run directories.")],
    out: Annotated[Path, typer.Option(help="Figure file: .png, .svg or .pdf.")],
    diagnostics: Annotated[
        bool, typer.Option("--diagnostics", help="What the norm does inside the network (train.diagnostics runs).")
    ] = False,
    layer: Annotated[
        Optional[list[str]], typer.Option(help="Norm positions to show (norm1, norm2, ...); default: all.")
    ] = None,
    dpi: Annotated[int, typer.Option(min=30, max=600, help="Resolution of a .png diagnostics figure.")] = 110,
) -> None:
    """Plot runs side by side: training curves, or with --diagnostics the activation percentiles per norm
    position, gradient norms, the loss-landscape band, gradient predictiveness and running-statistics lag."""
    from bnbench import compare as cmp

    with reported_errors():
        _check_figure_path("--out", out)
        runs, warnings = cmp.find_runs(paths)
        for warning in warnings:
            err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
        if not runs:
            raise UsageError(f"no bnbench runs found in {' '.join(map(str, paths))}")
        _write_figure("--out", out, runs, diagnostics, layer, dpi)


@app.command()
def check(
    device: DeviceOption = Device.auto,
    dtype: Annotated[Dtype, typer.Option(help="Precision of the comparison.")] = Dtype.float64,
    every_case: Annotated[bool, typer.Option("--all", help="One row per case instead of per family.")] = False,
) -> None:
    """Prove each hand-written norm equals its reference (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, or the
    definition): outputs, gradients, running statistics, eval mode, state_dict; gradcheck; accumulation."""
    import torch

    from bnbench.check import run_check
    from bnbench.train import pick_device

    with reported_errors():
        dtypes = {"float32": torch.float32, "float64": torch.float64}
        renderables, failures = run_check(dtypes[dtype.value], str(pick_device(device.value)), every_case)
        for item in renderables:
            console.print(item, highlight=False)
        if failures:
            raise typer.Exit(1)


@app.command()
def bench(
    device: DeviceOption = Device.auto,
    models: Annotated[str, typer.Option(help="Comma-separated models.")] = "mlp,convnet,lenet",
    norms: Annotated[
        str, typer.Option(help="Comma-separated registered norms, or NAME_manual for the manual backward.")
    ] = "none,scratch,scratch_manual,torch",
    data_dir: Annotated[
        Optional[Path], typer.Option(help="Dataset folder; synthetic data if files are missing.")
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Alternating rounds; the median is reported.")] = 3,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile bnbench's model (train.compile).")] = False,
    reference: Annotated[
        bool, typer.Option("--reference/--no-reference", help="Also time the tutorials' DataLoader loop.")
    ] = True,
    out: Annotated[Optional[Path], typer.Option(help="Write the raw figures as JSON.")] = None,
    wide: WideOption = False,
) -> None:
    """Training throughput of bnbench vs the tutorials' DataLoader loop, and each norm's step time
    against its PyTorch counterpart (nn.BatchNorm for none, ghost and renorm), per model."""
    import dataclasses
    import json

    from bnbench.bench import BENCH_COLUMNS, NORMS, bench_cells, run_bench
    from bnbench.data import data_dir_from
    from bnbench.models import MODELS
    from bnbench.train import device_name, pick_device

    with reported_errors():
        if out is not None and not out.parent.is_dir():  # found out now, not after minutes of benchmarking
            raise UsageError(f"--out {out}: no such folder {out.parent}")
        model_list, norm_list = models.split(","), norms.split(",")
        for given, valid, option in ((model_list, MODELS, "--models"), (norm_list, NORMS, "--norms")):
            unknown = [x for x in given if x not in valid]
            if unknown:
                raise UsageError(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")
        target = pick_device(device.value)
        title = f"training throughput on {target} ({device_name(target)}), examples/s, median of {rounds}"

        def add(row) -> None:
            vs = f"{row.step_time_vs_counterpart:.2f}x {row.counterpart}" if row.step_time_vs_counterpart else "-"
            ratio = f"{row.ratio:.2f}x the reference, " if row.ratio else ""
            err_console.print(f"{row.model}/{row.norm}: {ratio}{vs}", highlight=False)

        rows = run_bench(model_list, norm_list, target, data_dir_from(data_dir), rounds, compile, reference, on_row=add)
        console.print(fitted(title, list(BENCH_COLUMNS), [bench_cells(r) for r in rows], _terminal_width(), wide))
        console.print(
            "reference: torchvision dataset + ToTensor (+Normalize) + DataLoader(shuffle), best of "
            "num_workers 0 and 2; step time vs X = this norm's step time / X's (timed only when X is benchmarked too)",
            style="dim",
        )
        if out is not None:
            out.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
