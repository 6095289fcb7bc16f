"""The `bnbench` command: typed commands over the modules below; what a person sees is in `display`."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from bnbench import plugins
from bnbench.cli import display, streams
from bnbench.config import convention_warnings, shorten
from bnbench.errors import UsageError
from bnbench.runs.sweep import Engine

# Where a person reaches for an option that lives elsewhere: (command, option) -> the pointer.
MISPLACED_OPTIONS = {
    ("run", "--grid"): "--grid makes a grid of runs: bnbench sweep CONFIG --grid train.lr=0.1,1 --seeds 0-2",
    ("sweep", "--seed"): "--seeds 0-2 (or 0,1,2) gives a sweep its seeds",
    ("sweep", "--resume"): "a sweep resumes by itself: bnbench sweep runs/STUDY re-runs what is not done",
    ("compare", "--out"): "compare writes a figure with --plot FILE.png",
}

# --debug of the invocation under way (set by the root callback on every invocation: nothing leaks).
_DEBUG: ContextVar[bool] = ContextVar("bnbench_debug", default=False)


def Flag(*names: str, **options: Any) -> Any:
    """An on/off option: its help shows no `<bool>` (a flag takes no value), through Typer's `metavar`."""
    return typer.Option(*names, metavar="", **options)


def _flag_help(option: Any) -> Any:
    if option is not None:
        option.metavar = ""  # a flag takes no value: no `<bool>` beside -h/--help
    return option


class _Command(TyperCommand):
    """A command whose help shows no `<bool>` beside -h/--help either (Click's `get_help_option` hook)."""

    def get_help_option(self, ctx: Any) -> Any:
        return _flag_help(super().get_help_option(ctx))


class _Group(TyperGroup):
    """The same for the groups (`bnbench -h`, `bnbench config -h`)."""

    def get_help_option(self, ctx: Any) -> Any:
        return _flag_help(super().get_help_option(ctx))


def _command_line_error(exc: typer.TyperException) -> str:
    """Click's usage errors (a bad value, an unknown option, a missing argument: exit code 2) as one line,
    pointing at the command's help or at the command where a misplaced option lives."""
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    message = exc.format_message().replace("Value error, ", "")  # pydantic's prefix says nothing
    hint = MISPLACED_OPTIONS.get((ctx.info_name if ctx is not None else "", getattr(exc, "option_name", None) or ""))
    return f"{message}: {hint}" if hint else f"{message}{where}"


app = typer.Typer(
    cls=_Group,
    help="What does Batch Normalization do to training? Run experiments from YAML configs and compare them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
WideOption = Annotated[bool, Flag("--wide", help="Show every column, however narrow the terminal.")]


def _jobs(text: str | None, device: str) -> int | None:
    """--jobs N or auto (one per core on a CPU, see sweep.default_jobs); None when not given."""
    if text is None:
        return None
    if text.strip() == "auto":
        from bnbench.runs.sweep import default_jobs

        return default_jobs(device)
    if not (text.strip().isascii() and text.strip().isdigit()) or not 1 <= int(text) <= 1024:
        raise UsageError(f"--jobs {shorten(text)}: expected a number of runs at once (1 to 1024), or auto")
    return int(text)


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


class CheckReference(str, Enum):
    torch = "torch"
    layer = "layer"
    group = "group"


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
ThreadsOption = Annotated[
    Optional[int], typer.Option(min=1, max=1024, help="torch threads per run (default 1: the same numbers everywhere).")
]
BackendOption = Annotated[Backend, typer.Option(help="local worker processes, or ray tasks.")]
AddressOption = Annotated[Optional[str], typer.Option(help="Ray cluster address (ray start); default: local Ray.")]
CpusOption = Annotated[float, typer.Option(min=0.01, help="Ray: CPUs per run.")]
GpusOption = Annotated[float, typer.Option(min=0, help="Ray: GPUs per run, e.g. 0.25.")]
DataDirOption = Annotated[
    Optional[Path], typer.Option(help="Dataset folder (default: env BNBENCH_DATA_DIR, else ./data).")
]


@app.callback()
def _options(
    debug: Annotated[bool, Flag("--debug", help="Show tracebacks (or BNBENCH_DEBUG=1).")] = False,
    version: Annotated[
        bool, Flag("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    _DEBUG.set(debug or os.environ.get("BNBENCH_DEBUG") == "1")


def _debug() -> bool:
    return _DEBUG.get()


@contextmanager
def reported_errors() -> Iterator[None]:
    """Bad input: one line, exit 2. Anything else: one line, exit 1. --debug shows the traceback."""
    try:
        yield
    except UsageError as exc:
        if _debug():
            traceback.print_exc()
        display.error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if _debug():
            traceback.print_exc()
        display.error(f"{type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None


def _say_failure(result) -> None:
    """One line naming the error and the saved traceback, or with --debug the traceback itself."""
    saved = result.traceback
    if saved is not None and _debug() and saved.is_file():
        display.note(saved.read_text().rstrip())
    where = f" (traceback: {saved}; --debug prints it)" if saved is not None and not _debug() else ""
    display.error(f"{result.name}: {result.error}{where}", label=result.status)


def _report_results(results: list) -> None:
    """The runs table, then per failed run one line (or, with --debug, its traceback) and per stopped run
    the command that continues it."""
    cells = [
        [r.name, r.status, str(r.epochs_completed), "-" if r.final_test_acc is None else f"{r.final_test_acc:.4f}",
         str(r.path)]
        for r in results
    ]  # fmt: skip
    display.show_table("runs", ["run", "status", "epochs", "final test_acc", "directory"], cells)
    for result in results:
        if result.error and result.status != "interrupted":
            _say_failure(result)
        if result.status == "interrupted":
            display.note(f"to continue: bnbench run --resume {result.path}")


@app.command(cls=_Command, short_help="Train from YAML configs: one run per config and seed.")
def run(
    configs: Annotated[
        Optional[list[Path]], typer.Argument(help="YAML config files or shipped config names, one run each.")
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set train.lr=0.5 (value is YAML).")] = [],
    epochs: Annotated[Optional[int], typer.Option(help="Shortcut for --set train.epochs=N.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Shortcut for --set train.seed=N.")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Run each config once per seed: --seeds 0,1,2 or 0-4.")] = None,
    device: DeviceOption = Device.auto,
    data_dir: DataDirOption = None,
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
    dry_run: Annotated[bool, Flag("--dry-run", help="Check the configs and list the runs; train nothing.")] = False,
) -> None:
    """Train from YAML configs; each run writes runs/<name>/ (config.yaml, metrics.csv, steps.csv, meta.json,
    model.pt).

    \b
    Examples:
      bnbench run configs/mlp_bn.yaml --epochs 2
      bnbench run mlp_none mlp_bn --seeds 0,1 --set train.lr=0.5
      bnbench run --resume runs/lenet_bn
    """
    from bnbench.runs.study import parse_seeds, run_configs

    with reported_errors():
        workers = _jobs(jobs, device.value)
        if seed is not None and seeds is not None:
            raise UsageError("--seed and --seeds: give one (--seeds runs each config once per seed)")
        overrides = list(set_)
        for key, value in (("train.epochs", epochs), ("train.seed", seed), ("name", name)):
            if value is not None:  # JSON is YAML: the name stays a string ('exp #3', '2024')
                overrides.append(f"{key}={json.dumps(value, ensure_ascii=False)}")
        seed_list = list(parse_seeds(seeds, "--seeds")) if seeds is not None else None
        if resume is None and configs:
            run_configs(configs, overrides)  # bad input is reported before torch is imported
        from bnbench.runs.execute import Job, Step, exit_code_of, plan_continuation, plan_jobs, plan_resume, run_jobs

        if resume is not None:
            if seed_list is not None or len(configs or []) > 1:
                raise UsageError("--resume continues one run: give at most one config and no --seeds")
            job = plan_resume(resume, (configs or [None])[0], overrides)
            steps = [Step("resume", job, resume)]
        else:
            if not configs:
                raise UsageError("no config given: bnbench run CONFIG.yaml [CONFIG.yaml ...] (bnbench config list)")
            # The same command typed again continues what it started: interrupted runs resume, done ones skip.
            steps = plan_continuation(plan_jobs(configs, overrides, seed_list), out_dir)
        for line in convention_warnings(step.job.cfg for step in steps):
            display.warn(line)
        if dry_run:
            for step in steps:
                display.say(f"{step.action:<7} {step.job.run_name}  ->  {step.where}" +
                            (f"  ({step.why})" if step.why else ""))  # fmt: skip
            counts = {a: sum(s.action == a for s in steps) for a in ("start", "resume", "skip")}
            tally = ", ".join(f"{n} to {a}" for a, n in counts.items() if n)
            display.say(f"{display.plural(len(steps), 'run')} ({tally}); nothing trained (--dry-run)")
            return
        for step in steps:
            if step.action == "skip":
                display.say(f"skip {step.job.run_name}: {step.why} ({step.where})")
        planned: list[Job] = [step.job for step in steps if step.action != "skip"]
        if not planned:
            display.say(f"nothing to do: all {display.plural(len(steps), 'run')} of this command are done")
            raise typer.Exit(0)
        if (workers or 1) > 1 or backend is Backend.ray:
            engine = Engine(
                device.value, data_dir, workers, threads_per_job, backend.value, address, cpus_per_run, gpus_per_run
            )
            results, _ = _run_engine(planned, engine, out_dir)
            exit_code = exit_code_of(results)
        elif display.live():
            with display.RunDisplay(len(planned)) as live:
                results, exit_code = run_jobs(planned, device.value, data_dir, out_dir, live.reporter, display.say,
                                              threads_per_job)  # fmt: skip
        else:
            say = lambda m: print(m, flush=True)  # noqa: E731
            results, exit_code = run_jobs(planned, device.value, data_dir, out_dir, display.PlainReporter, say,
                                          threads_per_job)  # fmt: skip
        _report_results(results)
        if exit_code == EXIT_INTERRUPTED and resume is None:
            display.note(f"to continue every run of this command (interrupted ones resume, finished ones are "
                         f"skipped, the rest start), type it again: {_command_line()}")  # fmt: skip
        raise typer.Exit(exit_code)


def _run_engine(jobs: list, engine: Engine, out_dir: Path, root: Optional[Path] = None) -> tuple[list, int]:
    from bnbench.runs.sweep import execute, prepare

    root = root or prepare(jobs, engine)
    with display.SweepDisplay(len(jobs), display.live() and engine.backend == "local") as shown:
        return execute(jobs, engine, out_dir, root, shown.result, shown.progress if shown.live else None)


@app.command(cls=_Command, short_help="Run a study (a grid x seeds) in parallel, resumably.")
def sweep(
    study: Annotated[
        Path,
        typer.Argument(help="A study file or shipped study name, a study folder (re-run), or a config with --grid."),
    ],
    grid: Annotated[list[str], typer.Option(help="A matrix key: --grid train.lr=0.1,1,3 (with a config).")] = [],
    seeds: Annotated[Optional[str], typer.Option(help="Seeds with a config: 0-4 or 0,1,2 (default 0).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Study name, its folder (default: the file's).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="A fixed override for every run: --set train.lr=0.5.")] = [],
    epochs: Annotated[Optional[int], typer.Option(help="Shortcut for --set train.epochs=N.")] = None,
    out_dir: Annotated[Path, typer.Option(help="Studies go to OUT_DIR/<study>/.")] = Path("runs"),
    jobs: Annotated[Optional[str], typer.Option(help="Runs at once: N, or auto (default: one per CPU core).")] = None,
    threads_per_job: ThreadsOption = None,
    backend: BackendOption = Backend.local,
    address: AddressOption = None,
    cpus_per_run: CpusOption = 1.0,
    gpus_per_run: GpusOption = 0.0,
    retry_failed: Annotated[bool, Flag("--retry-failed", help="Run failed runs again.")] = False,
    dry_run: Annotated[
        bool, Flag("--dry-run", help="List the runs, their count and an estimated wall time; run nothing.")
    ] = False,
    shard: Annotated[
        Optional[str], typer.Option(help="Run only part i of N of the study (i/N), e.g. one SLURM array task.")
    ] = None,
    device: DeviceOption = Device.auto,
    data_dir: DataDirOption = None,
    until_decided: Annotated[
        bool,
        Flag("--until-decided", help="Add seeds, in looks, to the cells of claims still undecided (docs/sweep.md)."),
    ] = False,
    max_seeds: Annotated[
        Optional[int], typer.Option(help="With --until-decided: the most seeds per claim (else the study's).")
    ] = None,
) -> None:
    """Run a grid x seeds in parallel, resumably: completed and diverged runs are skipped, interrupted ones
    resumed. Ends with a summary and the study's comparison; exit 1 if any run failed. With --until-decided,
    a study with claims runs in looks until each claim is decided or at its maximum of seeds.

    \b
    Examples:
      bnbench sweep mlp_lr --epochs 2 --dry-run
      bnbench sweep configs/studies/mlp_lr.yaml --jobs 2
      bnbench sweep mlp_bn --grid norm.kind=none,torch --grid train.lr=0.1,1 --seeds 0-2
      bnbench sweep runs/mlp_lr          (re-run a saved study: finishes what is not done)
      bnbench sweep mlp_lr --shard 2/4   (a quarter of the study: a SLURM array task, docs/cluster.md)
      bnbench sweep mlp_norms --until-decided --max-seeds 30
    """
    from bnbench.runs import study as studies
    from bnbench.runs.sweep import plan_study, prepare, save_study

    with reported_errors():
        workers = _jobs(jobs, device.value)
        part = studies.parse_shard(shard) if shard is not None else None
        fixed = list(set_) + ([f"train.epochs={epochs}"] if epochs is not None else [])
        wanted = studies.study_from_command_line(study, grid, seeds, name, fixed)
        folder = study if study.is_dir() else None
        engine = Engine(
            device.value, data_dir, workers, threads_per_job, backend.value, address, cpus_per_run, gpus_per_run
        )
        if until_decided or max_seeds is not None:
            _until_decided(wanted, until_decided, max_seeds, part, out_dir, folder, retry_failed, engine, dry_run)
            return
        plan = plan_study(wanted, out_dir, retry_failed, folder=folder, shard=part)
        total = len(plan.jobs) + len(plan.skipped)
        for line in convention_warnings(job.cfg for job in plan.jobs):
            display.warn(line)
        if part is not None:
            display.say(
                f"shard {part[0]}/{part[1]}: {total} of the study's {display.plural(wanted.run_count(), 'run')}"
            )
        if dry_run:
            _dry_run(plan, engine, total)
            return
        root = prepare(plan.jobs, engine)
        for run_name, why in plan.skipped:
            if why.endswith("not touched"):
                display.warn(f"{run_name} skipped: {why}")
        save_study(plan)
        display.say(f"{wanted.name}: {display.plural(total, 'run')} in {plan.folder}; {len(plan.jobs)} to run, "
                    f"{len(plan.skipped)} skipped")  # fmt: skip
        results, exit_code = _run_engine(plan.jobs, engine, plan.folder, root)
        _sweep_summary(plan, results)
        if plan.failed:  # failed runs stay visible until they are retried
            display.error(f"{len(plan.failed)} failed earlier: {', '.join(plan.failed)} (--retry-failed runs them "
                          "again)", label="failed")  # fmt: skip
            raise typer.Exit(exit_code or 1)
        raise typer.Exit(exit_code)


def _until_decided(wanted, until_decided: bool, max_seeds: int | None, part, out_dir: Path, folder: Path | None,
                   retry_failed: bool, engine: Engine, dry_run: bool) -> None:  # fmt: skip
    """`sweep --until-decided`: the study's declared runs, then looks (evidence/sequential.py) adding seeds to
    the cells of undecided claims, each look run like a sweep (resumable), until every claim is decided or
    at its maximum of seeds. A re-run continues the same sequence; a finished one trains nothing."""
    from dataclasses import replace

    from bnbench.evidence.compare import find_runs
    from bnbench.evidence.sequential import look_seeds, next_runs, own_runs, rule_text, worst_case
    from bnbench.runs.specs import parse_sequential
    from bnbench.runs.sweep import plan_study, prepare, save_study

    if not until_decided:
        raise UsageError("--max-seeds goes with --until-decided")
    if part is not None:
        raise UsageError("--until-decided decides from all of a study's runs; it cannot run as a --shard")
    if not wanted.claims:
        raise UsageError(f"study {wanted.name} declares no claims: --until-decided adds seeds until claims are decided")
    rule = wanted.sequential
    if max_seeds is not None:
        raw = (rule.to_dict() if rule else {}) | {"max_seeds": max_seeds}
        rule = parse_sequential(raw, "--max-seeds", wanted.seeds)
    if rule is None:
        raise UsageError(f"study {wanted.name} declares no `sequential: {{max_seeds: N}}`; give --max-seeds N")
    wanted = replace(wanted, sequential=rule)
    every = {run.name: run for run in replace(wanted, seeds=look_seeds(wanted.seeds, rule)[-1]).runs()}
    display.say(f"{wanted.name}: until decided, by {rule_text(rule, len(wanted.seeds))}")
    if dry_run:
        worst = worst_case(wanted)
        plan = plan_study(wanted, out_dir, retry_failed, folder, planned=[r for n, r in every.items() if n in worst])
        display.say(
            f"at most {display.plural(len(plan.jobs) + len(plan.skipped), 'run')} (every claim to its maximum of seeds)"
        )
        _dry_run(plan, engine, len(plan.jobs) + len(plan.skipped))
        return
    exit_code, looks_run, attempted, warned = 0, 0, set(), set()
    while True:
        target = folder or out_dir / wanted.name
        runs, found_warnings = find_runs([target]) if target.is_dir() else ([], [])
        runs, strays = own_runs(wanted, runs)
        for message in found_warnings + strays:  # a damaged or a stray run is named, once
            if message not in warned:
                display.warn(message)
                warned.add(message)
        names, judged = next_runs(wanted, runs)
        needed = [run for name, run in every.items() if name in names]  # the study's order: cell, then seed
        plan = plan_study(wanted, out_dir, retry_failed and looks_run == 0, folder, planned=needed)
        if looks_run == 0:
            save_study(plan)
        if not plan.jobs:
            break
        again = [job.run_name for job in plan.jobs if job.run_name in attempted]
        if again:  # ran in this command and still not finished: it failed before writing any record
            display.error(f"{', '.join(again[:3])}: ran and left no finished run; the look cannot complete")
            raise typer.Exit(1)
        attempted.update(job.run_name for job in plan.jobs)
        undecided = sum(j.verdict == "inconclusive" and not j.at_budget for j in judged)
        to_run, open_claims = display.plural(len(plan.jobs), "run"), display.plural(undecided, "claim")
        display.say(f"{wanted.name}: {to_run} to run ({open_claims} undecided), in {plan.folder}")
        results, code = _run_engine(plan.jobs, engine, plan.folder, prepare(plan.jobs, engine))
        looks_run += 1
        for result in results:
            if result.status == "failed":
                _say_failure(result)
        if code == EXIT_INTERRUPTED or any(r.status == "interrupted" for r in results):
            raise typer.Exit(EXIT_INTERRUPTED)  # a stop between runs starts no new look either
        exit_code = max(exit_code, code)
    _claims_summary(judged)
    for run_name, why in plan.skipped:
        if why.startswith("running in"):
            display.warn(f"{run_name}: {why}; the claims it feeds wait for it (run the command again later)")
    if plan.failed:  # as a plain sweep: failed runs stay visible until they are retried
        display.error(f"{display.plural(len(plan.failed), 'run')}: {', '.join(plan.failed)} (left out of their "
                      "claims; --retry-failed runs them again)", label="failed")  # fmt: skip
    raise typer.Exit(exit_code or (1 if plan.failed else 0))


def _claims_summary(judged: list) -> None:
    from bnbench.evidence.report import effect_text
    from bnbench.evidence.tables import Rows

    rows = [{"claim": j.claim.id, "verdict": j.verdict + (" at the budget" if j.at_budget else ""),
             "effect [interval]": effect_text(j), "seeds": j.effect.n if j.effect is not None else 0,
             "look": j.look or "–"} for j in judged]  # fmt: skip
    display.show_rows("claims", Rows(("claim", "verdict", "effect [interval]", "seeds", "look"), rows))


def _dry_run(plan, engine: Engine, total: int) -> None:
    from bnbench.tools.estimate import estimate_wall_seconds

    for job in plan.jobs:
        display.say(f"{'resume' if job.resume else 'start':<7} {job.run_name}")
    for run_name, why in plan.skipped:
        display.say(f"{'skip':<7} {run_name}  ({why})")
    display.say(
        f"{plan.study.name}: {display.plural(total, 'run')}; {len(plan.jobs)} to run, {len(plan.skipped)} to skip"
    )
    if plan.jobs:
        seconds, how = estimate_wall_seconds(plan.jobs, engine, plan.folder)
        display.say(f"estimated wall time: {display.duration(seconds)} ({how})")


def _sweep_summary(plan, results: list) -> None:
    from bnbench.evidence import compare as cmp

    counts = dict.fromkeys(("completed", "diverged", "interrupted", "failed", "skipped"), 0)
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    counts["already done or skipped"] = len(plan.skipped)
    display.say("summary: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n))
    for result in results:
        if result.status == "failed":
            _say_failure(result)
    runs, _ = cmp.find_runs([plan.folder])
    if runs:
        comparison = cmp.compare(runs)  # the seed groups; `bnbench compare` shows every run and epoch
        for title, rows in cmp.display_tables(comparison, "groups"):
            display.show_rows(title, rows)
        display.say(f"every run and epoch: bnbench compare {plan.folder}", style="dim")


config_app = typer.Typer(
    cls=_Group, help="List the shipped configs and studies; show one resolved.", no_args_is_help=True
)
app.add_typer(config_app, name="config")


@config_app.command("list", cls=_Command)
def config_list(wide: WideOption = False) -> None:
    """The configs and studies shipped with bnbench: `bnbench run NAME` and `bnbench sweep NAME` find them
    from any folder.

    \b
    Example:
      bnbench config list
    """
    from bnbench.config import SHIPPED_CONFIGS, load_config, shipped_configs
    from bnbench.runs.study import load_study, shipped_studies, study_path

    with reported_errors():
        rows = []
        for name in shipped_configs():
            cfg = load_config(SHIPPED_CONFIGS / f"{name}.yaml")
            rows.append([name, cfg.model.name, cfg.norm.kind, cfg.data.dataset, str(cfg.train.epochs)])
        header = ["config", "model", "norm", "dataset", "epochs"]
        display.show_table(f"shipped configs ({len(rows)}): bnbench run NAME", header, rows, wide)
        rows = []
        for name in shipped_studies():
            study = load_study(study_path(Path(name)))
            varies = ", ".join(key for key, _ in study.matrix) or "-"
            rows.append([name, str(study.run_count()), str(len(study.seeds)), varies])
        header = ["study", "runs", "seeds", "varies"]
        display.show_table(f"shipped studies ({len(rows)}): bnbench sweep NAME", header, rows, wide)


@config_app.command("show", cls=_Command)
def config_show(
    config: Annotated[Path, typer.Argument(help="A config file, or a shipped config's name (lenet_bn).")],
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set train.lr=0.5.")] = [],
) -> None:
    """Print the config as a run would use it: overrides applied, every default filled in.

    \b
    Example:
      bnbench config show lenet_bn --set train.lr=0.5
    """
    import yaml

    from bnbench.config import load_config

    with reported_errors():
        shown = load_config(config, set_).to_dict()
        if shown["model"]["name"] in ("lenet", "convnet"):  # their layers are fixed: model.hidden means nothing
            shown["model"].pop("hidden", None)
        sys.stdout.write(yaml.safe_dump(shown, sort_keys=False))


@app.command("ls", cls=_Command, short_help="One line per run: status, epochs, accuracy, age.")
def list_runs(
    folder: Annotated[Path, typer.Argument(help="A folder of runs (searched two levels down: studies too).")] = Path(
        "runs"
    ),
    format: Annotated[ListFormat, typer.Option("--format", help="A table, or JSON for scripts.")] = ListFormat.table,
    wide: WideOption = False,
) -> None:
    """One line per run: name, status, epochs, final test accuracy, age. Reads no torch, trains nothing.

    \b
    Examples:
      bnbench ls
      bnbench ls runs/mlp_lr --format json
    """
    from bnbench.runs.rundir import list_runs as find

    with reported_errors(), plugins.no_imports():  # recorded results are data, never code
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
        display.show_table(f"{display.plural(len(rows), 'run')} in {folder}", header, cells, wide)


@app.command(cls=_Command, short_help="Compare runs: tables, seed groups, tests, plots.")
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
        bool, Flag("--diagnostics", help="--plot draws the diagnostics figure instead (see `plot`).")
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
    """Compare runs side by side: summary, seed groups (mean ± std, Welch t-test), per-epoch table, plot.

    \b
    Examples:
      bnbench compare runs/mlp_none runs/mlp_bn --plot mlp.png
      bnbench compare runs/mlp_lr --pivot train.lr --by norm.kind --baseline norm.kind=none
    """
    from bnbench.evidence import compare as cmp

    with reported_errors(), plugins.no_imports():  # recorded results are data, never code
        if target is not None and not 0 < target <= 1:
            raise UsageError(f"--target {target}: a test accuracy as a fraction in (0, 1]")
        _check_figure_path("--plot", plot)
        runs = _found_runs(paths)
        for what in cmp.mixed(runs):
            display.warn(f"comparing runs on different {what}")
        if (studies := cmp.mixed_studies(runs)) is not None:
            display.warn(studies)
        comparison = cmp.compare(runs, metric, target, baseline, pivot, by)
        for note in comparison.repeated:  # a seed counts once: say which run did
            display.warn(note)
        which = table.value if table is not None else None
        if format is CompareFormat.markdown:
            sys.stdout.write(cmp.to_markdown(comparison, which))
        elif format is CompareFormat.csv:  # data for a file; on a terminal, names' control characters written out
            text = cmp.to_csv(comparison, which)
            sys.stdout.write(display.printable(text) if display.live() else text)
        elif format is CompareFormat.json:
            sys.stdout.write(cmp.to_json(comparison, {r.name: r.config for r in runs}))
        else:
            shown: set[str] = set()
            for title, rows in cmp.display_tables(comparison, which, brief=True):
                display.show_rows(title, rows, wide)
                shown.update(display.shown_headers(rows, wide))
            for note in cmp.footnotes(comparison, shown):  # wrapped at words, not mid-number
                display.show(Text(display.printable(note), style="dim"))
        if plot is not None:
            _write_figure("--plot", plot, runs, diagnostics)


@app.command(cls=_Command, short_help="Write the evidence report of one or more studies.")
def report(
    studies: Annotated[list[Path], typer.Argument(help="Study folders written by `bnbench sweep` (runs/<study>).")],
    out: Annotated[
        Optional[Path], typer.Option(help="Folder for README.md and its figures (default: STUDY/report).")
    ] = None,
) -> None:
    """Write the evidence report: per study, its cells over seeds, figures, the published setup and figures,
    and a verdict for every claim the study file declares (supported, contradicted or inconclusive). A
    folder is written only if it is new, empty, or holds a report bnbench wrote (only its files change).

    \b
    Examples:
      bnbench report runs/mlp_lr                 (writes runs/mlp_lr/report/README.md)
      bnbench report runs/lenet_norms runs/mlp_norms --out results
    """
    from bnbench.evidence import report as rep
    from bnbench.evidence.tables import Rows

    with reported_errors(), plugins.no_imports():  # recorded results are data, never code
        target = out or rep.default_output(studies)
        rep.claim_output(target)  # refused before any work: a folder bnbench did not write
        path, verdicts, left_out = rep.write_report(studies, target)
        for message in left_out:
            display.warn(message)
        if verdicts:  # the answer on the terminal, then where the whole report is
            counts = {v: sum(row[1] == v for row in verdicts) for v in ("supported", "contradicted", "inconclusive")}
            title = f"{len(verdicts)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items())
            header = tuple(rep.VERDICT_HEADER)
            rows = Rows(header, [dict(zip(header, row, strict=True)) for row in verdicts], ("says", "study"))
            display.show_rows(title, rows)
        else:
            display.say("no claims judged (the study files declare none)", style="dim")
        display.say(f"report: {path}")


class ExportTarget(str, Enum):
    tensorboard = "tensorboard"
    mlflow = "mlflow"


@app.command(cls=_Command, short_help="Export runs to TensorBoard or MLflow.")
def export(
    paths: Annotated[list[Path], typer.Argument(help="Run directories, or folders holding them (studies).")],
    to: Annotated[ExportTarget, typer.Option("--to", help="The tracker.")],
    out: Annotated[Optional[Path], typer.Option(help="TensorBoard: the log folder (one sub-folder per run).")] = None,
    tracking_uri: Annotated[
        Optional[str], typer.Option(help="MLflow: where runs go, e.g. sqlite:///mlflow.db or a server's URL.")
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow: the experiment's name.")] = "bnbench",
) -> None:
    """Export recorded runs, after the fact: metrics per epoch and per step, the config as hyperparameters;
    for MLflow a study is a parent run and each run a child run with its directory as artifacts.

    \b
    Examples:
      bnbench export runs/mlp_lr --to tensorboard --out tb && tensorboard --logdir tb
      bnbench export runs/mlp_lr --to mlflow --tracking-uri sqlite:///mlflow.db
    """
    from bnbench.tools import export as exp

    with reported_errors(), plugins.no_imports():  # recorded results are data, never code
        exp.require(to.value)
        if to is ExportTarget.tensorboard and out is None:
            raise UsageError("--to tensorboard needs --out DIR (the folder `tensorboard --logdir` reads)")
        if to is ExportTarget.mlflow and tracking_uri is None:
            raise UsageError("--to mlflow needs --tracking-uri, e.g. sqlite:///mlflow.db")
        if to is ExportTarget.tensorboard:
            above = next((p for p in (out, *out.parents) if p.exists() or p.is_symlink()), None)
            if above is not None and not above.is_dir():
                raise UsageError(f"--out {out}: {'not a folder' if above == out else f'{above} is not a folder'} "
                                 "(TensorBoard's log folder; one sub-folder per run)")  # fmt: skip
        if to is ExportTarget.mlflow:
            exp.check_tracking_uri(tracking_uri)
        runs = _found_runs(paths)
        if to is ExportTarget.tensorboard:
            exp.to_tensorboard(runs, out)
            display.say(f"{display.plural(len(runs), 'run')} written to {out}: tensorboard --logdir {out}")
        else:
            try:
                done = exp.to_mlflow(runs, tracking_uri, experiment, warn=display.warn)
            except KeyboardInterrupt:
                display.error("export stopped; the run it was writing was removed from MLflow, the ones before "
                              "are whole: the same command again completes it")  # fmt: skip
                raise typer.Exit(130) from None
            counts = Counter(what for what, _ in done.values())
            said = ", ".join(f"{counts[w]} {w}" for w in ("exported", "updated", "unchanged") if counts[w])
            display.say(f"MLflow at {tracking_uri}, experiment {experiment}: {said or 'nothing exported'}"
                        + (" (unchanged: exported before, skipped)" if counts["unchanged"] else ""))  # fmt: skip


def _found_runs(paths: list[Path]) -> list:
    """The runs under `paths`; each one that cannot be read is a warning; none at all is bad input."""
    from bnbench.evidence import compare as cmp

    runs, warnings = cmp.find_runs(paths)
    for warning in warnings:
        display.warn(warning)
    if not runs:
        raise UsageError(f"no bnbench runs found in {' '.join(map(str, paths))}")
    return runs


def _check_figure_path(option: str, path: Optional[Path]) -> None:
    from bnbench.evidence.plots import SUFFIXES

    if path is not None and path.suffix.lower() not in SUFFIXES:
        raise UsageError(f"{option} {path}: the file name must end in {', '.join(SUFFIXES)}")
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"{option} {path}: no such folder {path.parent}")


def _write_figure(
    option: str, path: Path, runs: list, diagnostics: bool, layers: Optional[list[str]] = None, dpi: int = 110
) -> None:
    from bnbench.evidence import plots

    try:
        if diagnostics:
            plots.diagnostics_figure(runs, path, layers, dpi)
        else:
            plots.training_curves(runs, path)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write ({exc.strerror})") from None
    except ValueError as exc:
        raise UsageError(f"{option} {path}: {exc}") from None
    display.note(f"figure written to {path}")


@app.command(cls=_Command, short_help="Plot training curves, or what the norm did inside.")
def plot(
    paths: Annotated[list[Path], typer.Argument(help="Run directories, or folders holding run directories.")],
    out: Annotated[Path, typer.Option(help="Figure file: .png, .svg or .pdf.")],
    diagnostics: Annotated[
        bool, Flag("--diagnostics", help="What the norm does inside the network (train.diagnostics runs).")
    ] = False,
    layer: Annotated[
        Optional[list[str]], typer.Option(help="Norm positions to show (norm1, norm2, ...); default: all.")
    ] = None,
    dpi: Annotated[int, typer.Option(min=30, max=600, help="Resolution of a .png diagnostics figure.")] = 110,
) -> None:
    """Plot runs side by side: training curves, or with --diagnostics the activation percentiles per norm
    position, gradient norms, the loss-landscape band, gradient predictiveness and running-statistics lag.

    \b
    Examples:
      bnbench plot runs/mlp_none runs/mlp_bn --out curves.png
      bnbench plot runs/ioffe --diagnostics --out inside.png
    """

    with reported_errors(), plugins.no_imports():  # recorded results are data, never code
        _check_figure_path("--out", out)
        runs = _found_runs(paths)
        _write_figure("--out", out, runs, diagnostics, layer, dpi)


@app.command(cls=_Command, short_help="Prove each hand-written norm equals its reference.")
def check(
    device: Annotated[Device, typer.Option(help="Where to check (auto: cuda, then mps, then cpu).")] = Device.auto,
    dtype: Annotated[Dtype, typer.Option(help="Precision of the comparison.")] = Dtype.float64,
    every_case: Annotated[bool, Flag("--all", help="One row per case instead of per family.")] = False,
    norm: Annotated[
        Optional[str], typer.Option(help="Check your own norm instead: module:attribute, or a plugin's name.")
    ] = None,
    reference: Annotated[
        Optional[CheckReference], typer.Option(help="With --norm: the PyTorch norm it must equal.")
    ] = None,
    wide: WideOption = False,
) -> None:
    """Prove each hand-written norm equals its reference (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, or the
    definition): outputs, gradients, running statistics, eval mode, state_dict; gradcheck; the families of
    PyTorch's own tests (batched gradients and vmap, second derivatives, input checks, empty batch, state
    dicts, low precision, channels_last), one row each naming a failing case; accumulation.

    \b
    Examples:
      bnbench check
      bnbench check --dtype float32 --all
      bnbench check --norm bnbench.examples.my_norms:MyBatchNorm --reference torch
    """
    import torch

    from bnbench.tools.check import run_check, run_contract_check
    from bnbench.training.train import pick_device

    with reported_errors():
        if reference is not None and norm is None:
            raise UsageError("--reference goes with --norm: bnbench check --norm module:Class --reference torch")
        dtypes = {"float32": torch.float32, "float64": torch.float64}
        where, width = str(pick_device(device.value)), display.terminal_width()
        if norm is not None:
            from bnbench import plugins

            plugins.resolve(norm, "norm", "--norm")
        if norm is not None and reference is None:
            renderables, failures = run_contract_check(norm, dtypes[dtype.value], where, width)
        else:
            plugin = (norm, reference.value) if norm is not None and reference is not None else None
            with display.counting("checking") as progress:  # a bar: the whole check takes a minute or more
                renderables, failures = run_check(dtypes[dtype.value], where, every_case, width, wide, plugin,
                                                  progress)  # fmt: skip
        for item in renderables:
            display.show(item)
        if failures:
            raise typer.Exit(1)


@app.command(cls=_Command, short_help="Throughput against the tutorials' loop, per norm.")
def bench(
    device: Annotated[Device, typer.Option(help="Where to benchmark (auto: cuda, then mps, then cpu).")] = Device.auto,
    models: Annotated[str, typer.Option(help="Comma-separated models.")] = "mlp,convnet,lenet",
    norms: Annotated[
        str, typer.Option(help="Comma-separated registered norms, or NAME_manual for the manual backward.")
    ] = "none,scratch,scratch_manual,torch",
    data_dir: Annotated[
        Optional[Path], typer.Option(help="Dataset folder; synthetic data if files are missing.")
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Alternating rounds; the median is reported.")] = 3,
    compile: Annotated[bool, Flag("--compile", help="torch.compile bnbench's model (train.compile).")] = False,
    reference: Annotated[
        bool, Flag("--reference/--no-reference", help="Also time the tutorials' DataLoader loop.")
    ] = True,
    out: Annotated[Optional[Path], typer.Option(help="Write the raw figures as JSON.")] = None,
    wide: WideOption = False,
) -> None:
    """Training throughput of bnbench vs the tutorials' DataLoader loop, and each norm's step time
    against its PyTorch counterpart (nn.BatchNorm for none, ghost and renorm), per model.

    \b
    Examples:
      bnbench bench --models mlp --norms none,torch --rounds 1
      bnbench bench --device cuda --out bench.json
    """
    import dataclasses
    import json

    from bnbench.nn.models import MODELS
    from bnbench.tools.bench import BENCH_COLUMNS, NORMS, bench_cells, run_bench
    from bnbench.training.data import data_dir_from
    from bnbench.training.train import device_name, pick_device

    with reported_errors():
        if out is not None and not out.parent.is_dir():  # found out now, not after minutes of benchmarking
            raise UsageError(f"--out {out}: no such folder {out.parent}")
        model_list, norm_list = models.split(","), norms.split(",")
        from bnbench import plugins

        plugin_norms = [n for n in norm_list if n not in NORMS and (plugins.is_import_path(n) or
                                                                   n in plugins.entry_points("norm"))]  # fmt: skip
        for spec in plugin_norms:  # a plugin norm: imported and checked like a config's
            plugins.resolve(spec, "norm", "--norms")
        for given, valid, option in ((model_list, MODELS, "--models"), (norm_list, [*NORMS, *plugin_norms], "--norms")):
            unknown = [x for x in given if x not in valid]
            if unknown:
                raise UsageError(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")
        target = pick_device(device.value)
        title = f"training throughput on {target} ({device_name(target)}), examples/s, median of {rounds}"

        def add(row) -> None:
            vs = f"{row.step_time_vs_counterpart:.2f}x {row.counterpart}" if row.step_time_vs_counterpart else "-"
            ratio = f"{row.ratio:.2f}x the reference, " if row.ratio else ""
            display.note(f"{row.model}/{row.norm}: {ratio}{vs}")

        rows = run_bench(model_list, norm_list, target, data_dir_from(data_dir), rounds, compile, reference, on_row=add)
        display.show_table(title, list(BENCH_COLUMNS), [bench_cells(r) for r in rows], wide)
        display.say(
            "reference: torchvision dataset + ToTensor (+Normalize) + DataLoader(shuffle), best of "
            "num_workers 0 and 2; step time vs X = this norm's step time / X's (timed only when X is benchmarked too)",
            style="dim",
        )
        if out is not None:
            out.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n")


EXIT_INTERRUPTED = 130
_ARGS: list[str] = []  # the command line main() was given, for "type it again" messages


def _command_line() -> str:
    import shlex

    return "bnbench " + shlex.join(_ARGS or sys.argv[1:])


def main(args: list[str] | None = None) -> None:
    """The `bnbench` entry point. Command-line mistakes (`--epochs abc`, an unknown option, a missing file)
    are one line and exit 2, like every other bad input, instead of Click's multi-line box; `--debug` counts
    anywhere on the line. Through Typer's documented `standalone_mode=False`: Click's exceptions come here."""
    streams.install()  # a closed stdout or stderr, a gone reader or an ASCII terminal never breaks a run
    try:
        _main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 0 and streams.stdout_lost():  # `bnbench ... | head -1`: the work is done, the output cut
            code = streams.EXIT_CLOSED_PIPE
        sys.stdout.flush()
        sys.exit(code)


def _main(args: list[str] | None) -> None:
    args = list(sys.argv[1:] if args is None else args)
    _ARGS[:] = args
    if "--debug" in args[1:] and "--" not in args[: args.index("--debug")]:
        args.remove("--debug")
        args.insert(0, "--debug")
    try:
        code = app(args, prog_name="bnbench", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):  # a Ctrl-C while Typer still builds the command, too
        sys.exit(130)
    except typer.TyperException as exc:  # Click's ClickException and its UsageError (exit code 2)
        message = _command_line_error(exc) if exc.exit_code == 2 else exc.format_message()
        if exc.format_message():  # no arguments: Click has shown the help, with nothing to add
            display.error(message)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
