"""bnbench from Python: `import bnbench`, then `bnbench.load`, `compare`, `judge`, `run`, `sweep`.

The same code paths as the CLI (no second implementation): `load` finds and reads runs as `compare` does,
`compare` and `judge` return the tables `bnbench compare` and `bnbench report` print, `run` and `sweep` plan
and train with the engine `bnbench run` and `bnbench sweep` use (resumable, locked). Bad input raises
`InputError` (a `ValueError`) whose message is the CLI's one line; a damaged run is a `warnings.warn` with
the CLI's warning, and the others still load. Above every layer, like the CLI (README "Development").
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

import pandas as pd

from bnbench.config import flat
from bnbench.errors import UsageError

PathLike = Union[str, Path]


class InputError(UsageError, ValueError):
    """Bad input to a bnbench function (a config, a path, an option): the message is the CLI's one line
    (what `bnbench` prints after `error:`); nothing was created or changed."""


@contextmanager
def _input() -> Iterator[None]:
    """The CLI's UsageError as the one exception type of the Python API."""
    try:
        yield
    except InputError:
        raise
    except UsageError as exc:
        raise InputError(str(exc)) from None


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


class Runs(list):
    """The runs `load` found (a list of `bnbench.evidence.compare.Run`: `.name`, `.path`, `.status`,
    `.config` (the resolved config as a dict), `.metrics` and `.steps` (DataFrames)), with tidy frames of
    them. Every frame starts with the run's `name` (its directory name, lengthened by parent folders only
    where two runs share one), `status`, `seed` and `path`, and ends with its resolved config as flat dotted
    columns (`norm.kind`, `train.lr`; the config's own name is `config.name`; lists are tuples), so
    `df.groupby(["norm.kind", "epoch"])` works."""

    def _frame(self, part: str) -> pd.DataFrame:
        frames, config_columns = [], {}
        for run in self:
            data = getattr(run, part).copy()
            for column in ("epoch", "step"):  # counts (read as floats with the rest of the CSV)
                if column in data and data[column].notna().all() and (data[column] % 1 == 0).all():
                    data[column] = data[column].astype("int64")
            ident = {"name": run.name, "status": run.status, "seed": run.config.get("train", {}).get("seed"),
                     "path": str(run.path)}  # fmt: skip
            config = {("config.name" if k == "name" else k): _hashable(v) for k, v in flat(run.config).items()}
            config_columns.update(dict.fromkeys(config))
            head = pd.DataFrame({k: [v] * len(data) for k, v in ident.items()}, index=data.index)
            tail = pd.DataFrame({k: [v] * len(data) for k, v in config.items() if k not in data}, index=data.index)
            frames.append(pd.concat([head, data, tail], axis=1))
        if not frames:
            return pd.DataFrame(columns=["name", "status", "seed", "path"])
        out = pd.concat(frames, ignore_index=True)
        data_columns = [c for c in out.columns if c not in config_columns]
        return out[data_columns + [c for c in config_columns if c in out.columns]]

    def epochs(self) -> pd.DataFrame:
        """One row per run and recorded epoch: metrics.csv's columns (epoch, train_loss, train_acc, test_loss,
        test_acc, ...; losses in nats, accuracies as fractions) between the run's identity and its config."""
        return self._frame("metrics")

    def steps(self) -> pd.DataFrame:
        """One row per logged step (about 20 per epoch): steps.csv's columns (step, epoch, train_loss,
        train_acc, lr, ...). Runs without steps.csv add no rows."""
        return self._frame("steps")

    def diagnostics(self) -> pd.DataFrame:
        """One row per diagnostics probe value: step, epoch, layer, quantity, value (docs/diagnostics.md).
        Only runs with `train.diagnostics: true` add rows."""
        return self._frame("diagnostics")

    def summary(self) -> pd.DataFrame:
        """One row per run, what `bnbench ls` shows: run, status, epochs_completed, epochs, final_test_acc,
        age, path; then the run's seed and config columns."""
        from bnbench.runs.rundir import run_row

        rows = []
        for run in self:
            row = run_row(run.path, run.name)
            row["seed"] = run.config.get("train", {}).get("seed")
            row.update({("config.name" if k == "name" else k): _hashable(v) for k, v in flat(run.config).items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return f"<Runs: {len(self)} runs{': ' if self else ''}{', '.join(r.name for r in self[:5])}" + (
            ", ...>" if len(self) > 5 else ">"
        )


def _path(path: object) -> Path:
    """A path given to the API; anything else (a number, None) is InputError, not a TypeError."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{path!r}: expected a path (str or pathlib.Path), got {type(path).__name__}")
    return Path(path)


def _paths(paths: Sequence[PathLike] | PathLike) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    if not isinstance(paths, Sequence):
        raise InputError(f"{paths!r}: expected a path or a list of paths, got {type(paths).__name__}")
    return [_path(p) for p in paths]


def load(*paths: PathLike) -> Runs:
    """The runs under `paths` (run directories, or folders holding them at any depth: studies too), as
    `bnbench compare` finds them; default `runs`. Each damaged or unreadable run is skipped with the CLI's
    one-line warning as a Python `UserWarning`. Raises InputError when no run is found at all."""
    from bnbench.evidence import compare as cmp

    given = [_path(p) for p in paths] or [Path("runs")]
    with _input():
        runs, found_warnings = cmp.find_runs(given)
        for message in found_warnings:
            _warn(message)
        if not runs:
            raise UsageError(f"no bnbench runs found in {' '.join(map(str, given))}")
    return Runs(runs)


def _runs_of(runs: Runs | Sequence[Any] | PathLike) -> list:
    if isinstance(runs, (str, Path)):
        return load(runs)
    items = list(runs)
    if items and all(isinstance(r, (str, Path)) for r in items):
        return load(*items)
    return items


def compare(
    runs: Runs | Sequence[Any] | PathLike,
    metric: str = "test_acc",
    target: float | None = None,
    baseline: str | None = None,
    pivot: str | None = None,
    by: str | None = None,
    table: str | None = None,
) -> pd.DataFrame:
    """The seed groups table of `bnbench compare` as a DataFrame: one row per group of runs that differ
    only in seed (completed runs, one per seed), with n, mean and std of the final `metric`, epochs and
    examples to `target`, and with `baseline` (a group or run name, or `key=value`) the effect against it,
    its 95% CI, p and the test used (paired by seed; `df.attrs["test"]` names it). Equals
    `bnbench compare RUNS --format csv --table groups`. With `pivot` and `by` (config keys, e.g. train.lr
    and norm.kind) the grid instead (`--pivot --by`); `table` picks any of runs, groups, pivot, epochs.
    `runs`: what `load` returned, or paths. Raises InputError on an unknown metric, baseline or key."""
    from bnbench.evidence import compare as cmp

    found = _runs_of(runs)
    with _input():
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                                   or not 0 < target <= 1):  # fmt: skip
            raise UsageError(f"--target {target}: a test accuracy as a fraction in (0, 1]")
        if table is not None and table not in cmp.TABLES:
            raise UsageError(f"--table {table}: choose one of {', '.join(cmp.TABLES)}")
        for what in cmp.mixed(found):
            _warn(f"comparing runs on different {what}")
        comparison = cmp.compare(found, metric, target, baseline, pivot, by)
        for note in comparison.repeated:
            _warn(note)
        rows = cmp.raw_table(comparison, table or ("pivot" if pivot is not None else "groups"))
        frame = cmp.with_integers(rows.frame())
    frame.attrs = {"test": cmp.TEST_NAME, "metric": comparison.metric, "target": comparison.target,
                   "baseline": comparison.baseline}  # fmt: skip
    return frame


JUDGE_COLUMNS = ["study", "claim", "says", "verdict", "effect", "ci_low", "ci_high", "ci_level", "p", "holm_p",
                 "test", "n", "paired", "dropped", "deviations", "look", "at_budget"]  # fmt: skip


def judge(*studies: PathLike) -> pd.DataFrame:
    """Every claim of the study folders (`bnbench sweep` output) judged as `bnbench report` judges it: one
    row per claim with its study, id, what it says, verdict (supported / contradicted / inconclusive), the
    effect (first arm minus second, in the metric's units), the interval that decides the verdict (95%,
    90% where TOST decides, a look's nominal level under a sequential rule: ci_level), p (two-sided), Holm
    p (within the study), the test, n (pairs, or the smaller arm), the seeds or runs left out and why, the
    deviations from the published setup, and under a sequential rule (docs/sweep.md) the look that decided
    (or the last judged) and whether it ended undecided at its budget of seeds.
    A claim with too few runs has NaN effect. Raises InputError for a folder that is not a study."""
    import math

    from bnbench.evidence.claims import deviations
    from bnbench.evidence.report import load_study_runs
    from bnbench.evidence.sequential import judge_study

    rows = []
    with _input():
        if not studies:
            raise UsageError("no study folder given: bnbench.judge('runs/STUDY')")
        for folder in studies:
            s, found_warnings = load_study_runs(Path(folder))
            for message in found_warnings:
                _warn(message)
            for j in judge_study(s.study, s.runs):
                e, (low, high, level) = j.effect, j.interval()
                rows.append({
                    "study": s.name, "claim": j.claim.id, "says": j.claim.says, "verdict": j.verdict,
                    "effect": math.nan if e is None else e.estimate,
                    "ci_low": low, "ci_high": high, "ci_level": level,
                    "p": math.nan if e is None else e.p, "holm_p": j.p_adjusted,
                    "test": "" if e is None else e.test, "n": 0 if e is None else e.n,
                    "paired": bool(e is not None and e.paired), "dropped": "; ".join(j.dropped),
                    "deviations": "; ".join(deviations(s.study.published, j.claim, s.runs)),
                    "look": j.look or None, "at_budget": j.at_budget,
                })  # fmt: skip
    return pd.DataFrame(rows, columns=JUDGE_COLUMNS)


def _override_list(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """{'train.lr': 0.5} -> ['train.lr=0.5'] (values as JSON, which is YAML); 'key=value' strings as given."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        return [overrides]
    return list(overrides)


def _results(results: list, code: int = 0) -> None:
    """A warning per failed or interrupted run; a stop (Ctrl-C, a notebook's "interrupt kernel", SIGTERM)
    then raises KeyboardInterrupt, as it would anywhere in Python, so a loop of calls stops too."""
    from bnbench.runs.execute import EXIT_INTERRUPTED

    for result in results:
        if result.status == "failed":
            where = f" (traceback: {result.traceback})" if result.traceback is not None else ""
            _warn(f"{result.name}: {result.error}{where}")
        elif result.status == "interrupted":
            _warn(f"{result.name}: interrupted; call again to resume it")
    if code == EXIT_INTERRUPTED:
        raise KeyboardInterrupt("stopped; the same call again resumes the interrupted runs")


def _jobs(jobs: int | str | None, device: str) -> int | None:
    from bnbench.runs.sweep import default_jobs

    if jobs is None:
        return None
    if jobs == "auto":
        return default_jobs(device)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 1024:
        raise UsageError(f"--jobs {jobs}: expected a number of runs at once (1 to 1024), or auto")
    return jobs


def run(
    configs: PathLike | Sequence[PathLike],
    seeds: Sequence[int] | str | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    out_dir: PathLike = "runs",
    epochs: int | None = None,
    device: str = "auto",
    data_dir: PathLike | None = None,
    jobs: int | str | None = None,
    threads_per_job: int | None = None,
) -> Runs:
    """Train like `bnbench run CONFIG... [--seeds] [--set k=v] [--epochs N]`: one run per config (a file or
    a shipped config's name) and seed, under `out_dir`. Called again after a stop it continues what it
    started (interrupted runs resume, finished ones are skipped); called again after it finished, it
    trains new runs beside them (c-s0-2), as `bnbench run` typed again does: `sweep` trains a set once.
    Every config is validated first; bad input raises InputError before anything is created. Progress: one
    line per epoch (several jobs: per run). Returns the runs of this call, loaded; a failed run is a
    warning and is returned with its status. A stop (Ctrl-C, "interrupt kernel") marks the runs
    interrupted, then raises KeyboardInterrupt."""
    from bnbench.cli import display
    from bnbench.config import convention_warnings
    from bnbench.runs.study import parse_seeds, run_configs

    given = _paths(configs)
    with _input():
        if not given:
            raise UsageError("no config given: bnbench.run('CONFIG.yaml') (bnbench config list)")
        if device not in ("auto", "cpu", "cuda", "mps"):
            raise UsageError(f"--device {device}: choose auto, cpu, cuda or mps")
        workers = _jobs(jobs, device)
        sets = _override_list(overrides) + ([f"train.epochs={json.dumps(epochs)}"] if epochs is not None else [])
        seed_list = list(parse_seeds(seeds, "--seeds")) if seeds is not None else None
        run_configs(given, sets)  # bad input is reported before torch is imported
        from bnbench.runs.execute import plan_continuation, plan_jobs, run_jobs
        from bnbench.runs.sweep import Engine, execute, prepare

        out, data = Path(out_dir), None if data_dir is None else Path(data_dir)
        steps = plan_continuation(plan_jobs(given, sets, seed_list), out)
        for line in convention_warnings(step.job.cfg for step in steps):
            _warn(line)
        planned = [step.job for step in steps if step.action != "skip"]
        for step in steps:
            if step.action == "skip":
                display.say(f"skip {step.job.run_name}: {step.why} ({step.where})")
        results: list = []
        code = 0
        if planned and (workers or 1) > 1:
            engine = Engine(device, data, workers, threads_per_job)
            root = prepare(planned, engine)
            with display.SweepDisplay(len(planned), False) as shown:
                results, code = execute(planned, engine, out, root, shown.result)
        elif planned:
            say = lambda m: print(m, flush=True)  # noqa: E731
            results, code = run_jobs(planned, device, data, out, display.PlainReporter, say, threads_per_job)
    _results(results, code)
    done = {r.path.resolve(): r.path for r in results}
    paths = [step.where for step in steps if step.action == "skip"] + list(done.values())
    order = {p.resolve(): i for i, p in enumerate(step.where for step in steps)}
    return load(*sorted(paths, key=lambda p: order.get(p.resolve(), len(order)))) if paths else Runs()


def sweep(
    study: PathLike,
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: Sequence[int] | str | None = None,
    name: str | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    epochs: int | None = None,
    out_dir: PathLike = "runs",
    jobs: int | str | None = None,
    device: str = "auto",
    data_dir: PathLike | None = None,
    retry_failed: bool = False,
    threads_per_job: int | None = None,
) -> Runs:
    """Run a study like `bnbench sweep`: `study` is a study file, a shipped study's name, a saved study
    folder (re-run as it is), or a config with `grid` ({'train.lr': [0.1, 1]}) and `seeds`. Resumable and
    locked as from the CLI: completed and diverged runs are skipped, interrupted ones resumed. `jobs`: runs
    at once in spawned worker processes (default one per CPU core; a script calling this with more than one
    needs `if __name__ == "__main__":`, as multiprocessing does); `jobs=1` trains in this process.
    Returns every run of the study folder (out_dir/<study>), loaded; bad input raises InputError before
    anything is written."""
    from bnbench.cli import display
    from bnbench.config import convention_warnings
    from bnbench.runs import study as studies
    from bnbench.runs.sweep import Engine, default_jobs, execute, plan_study, prepare, save_study

    given = Path(study)
    with _input():
        if device not in ("auto", "cpu", "cuda", "mps"):
            raise UsageError(f"--device {device}: choose auto, cpu, cuda or mps")
        workers = _jobs(jobs, device)
        for key, values in (grid or {}).items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise UsageError(f"--grid {key}: expected a list of values, e.g. {{{key!r}: [0.1, 1]}}")
        grid_args = [f"{key}={','.join(json.dumps(v) for v in values)}" for key, values in (grid or {}).items()]
        seed_text = seeds if seeds is None or isinstance(seeds, str) else ",".join(str(int(s)) for s in seeds)
        fixed = _override_list(overrides) + ([f"train.epochs={json.dumps(epochs)}"] if epochs is not None else [])
        wanted = studies.study_from_command_line(given, grid_args, seed_text, name, fixed)
        plan = plan_study(wanted, Path(out_dir), retry_failed, folder=given if given.is_dir() else None)
        for line in convention_warnings(job.cfg for job in plan.jobs):
            _warn(line)
        engine = Engine(device, None if data_dir is None else Path(data_dir), workers, threads_per_job)
        root = prepare(plan.jobs, engine)
        from bnbench.runs.execute import run_jobs

        for run_name, why in plan.skipped:
            if why.endswith("not touched"):
                _warn(f"{run_name} skipped: {why}")
        save_study(plan)
        display.say(f"{wanted.name}: {len(plan.jobs) + len(plan.skipped)} runs in {plan.folder}; "
                    f"{len(plan.jobs)} to run, {len(plan.skipped)} skipped")  # fmt: skip
        if (workers or default_jobs(device)) == 1:  # in this process, as `bnbench run` runs one job at a time
            say = lambda m: print(m, flush=True)  # noqa: E731
            results, code = run_jobs(plan.jobs, device, engine.data_dir, plan.folder, display.PlainReporter, say,
                                     threads_per_job)  # fmt: skip
        else:  # worker processes, spawned: a script that calls this needs `if __name__ == "__main__":`
            with display.SweepDisplay(len(plan.jobs), False) as shown:
                results, code = execute(plan.jobs, engine, plan.folder, root, shown.result)
    _results(results, code)
    return load(plan.folder)
