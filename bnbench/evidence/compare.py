"""`bnbench compare`: run directories side by side, seed groups with mean ± std, tests paired by seed, plots.

Reads what `bnbench run` writes (config.yaml, meta.json, metrics.csv, steps.csv) and writes nothing
into run directories.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from bnbench.config import flat
from bnbench.errors import UsageError
from bnbench.evidence.stats import Effect, effect, one_per_seed, pair_by_seed
from bnbench.evidence.tables import Rows, without_controls
from bnbench.naming import cell_name, format_value, short_keys
from bnbench.records import (
    MAX_SMALL_FILE,
    ONE_ROW_EACH,
    STEPS,
    TEXT_COLUMNS,
    DamagedFile,
    check_rows,
    read_run_file,
)
from bnbench.runs.rundir import (
    config_sha256,
    has_recorded_rows,
    is_alive,
    is_run_dir,
    never_recorded,
    read_meta,
    run_dirs_under,
)
from bnbench.runs.study import STUDY_FILE

if TYPE_CHECKING:  # DataFrames for the Python API and plots only: compare's tables are plain rows
    import pandas as pd

SEED_SUFFIX = re.compile(r"-s\d+(-\d+)?$")
TEST_NAME = "paired t on the seeds both groups share (Welch's t where they share fewer than 2), two-sided"


@dataclass
class Run:
    """One run as recorded. Its CSVs are kept as columns of plain values (compare's summaries read them
    directly: building two DataFrames per run was most of compare's time over 1,000 runs); `metrics` and
    `steps` give DataFrames on first use, for plots and reports."""

    path: Path
    config: dict
    meta: dict
    table: dict[str, list]  # metrics.csv, column -> values
    step_table: dict[str, list] = field(default_factory=dict)  # steps.csv
    name: str = ""  # the directory name; parent/name where two compared runs share one

    def __post_init__(self) -> None:
        self.name = self.name or self.path.name

    @cached_property
    def real_path(self) -> Path:
        """The run's directory with links and `..` resolved: its identity (the same run named twice is one)."""
        return self.path.resolve()

    @cached_property
    def flat_config(self) -> dict:
        """The config as dotted keys (`train.lr`): read many times over, flattened once."""
        return flat(self.config)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.table)

    @cached_property
    def steps(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.step_table)

    @property
    def status(self) -> str:
        status = self.meta.get("status", "unknown")
        return "stale" if status == "running" and not is_alive(self.meta) else status

    @property
    def diagnostics(self) -> pd.DataFrame:
        """diagnostics.csv (step, epoch, layer, quantity, value), empty when the run recorded none."""
        import pandas as pd

        path = self.path / "diagnostics.csv"
        empty = pd.DataFrame(columns=["step", "epoch", "layer", "quantity", "value"])
        return pd.DataFrame(_columns(path)) if path.exists() else empty

    def group_key(self) -> str:
        """Runs that differ only in seed and name share this key."""
        config = {k: v for k, v in self.config.items() if k != "name"}
        config["train"] = {k: v for k, v in config.get("train", {}).items() if k != "seed"}
        return json.dumps(config, sort_keys=True)


def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys (dotted) whose values differ between the runs; the name never counts."""
    flats = [r.flat_config for r in runs]
    keys = [k for k in dict.fromkeys(k for f in flats for k in f) if k != "name"]
    written = [tuple(map(repr, map(f.get, keys))) for f in flats]  # each run's values, as written
    return [k for k, values in zip(keys, zip(*written, strict=True), strict=False) if len(set(values)) > 1]


SECTIONS = ("model", "norm", "data", "train")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader: most of compare's time otherwise


def _columns(path: Path) -> dict[str, list]:
    """A run CSV as columns of numbers (text columns stay text), read once and checked (check_rows' rules).
    The fast path parses plain rows column by column; anything odd (a number that does not parse, a row of
    another length, an epoch that goes back) is read again row by row, for check_rows to name file and line."""
    text = read_run_file(path)
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r]  # blank lines skipped, as DictReader does
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    ordered = ONE_ROW_EACH.get(path.name)
    if all(len(r) == len(header) for r in body):
        try:
            cells = list(zip(*body, strict=True)) if body else [()] * len(header)
            pairs = zip(header, cells, strict=True)
            columns = {c: list(v) if c in TEXT_COLUMNS else list(map(float, v)) for c, v in pairs}
        except ValueError:
            pass
        else:
            if all(_forward(columns.get(k, []), k == ordered) for k in ("epoch", "step")):
                return columns
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records = list(reader)
    check_rows(path, records)  # raises, naming the file, line and value
    return {c: [r[c] if c in TEXT_COLUMNS else float(r[c]) for r in records] for c in reader.fieldnames or ()}


def _forward(values: list[float], strictly: bool) -> bool:
    """check_rows' rule for an epoch or step column, on numbers already parsed."""
    last = float("-inf")
    for value in values:
        if value < last or (strictly and value == last):
            return False
        last = value
    return True


def load_run(path: Path) -> Run:
    """A run's files, each read only if it is a regular file of sane size and the shape bnbench writes;
    anything else is a DamagedFile naming the file. The config is meta.json's copy (what the run started
    with, which resume holds config.yaml to); config.yaml only for runs that have none."""
    try:
        meta = read_meta(path)
    except ValueError as exc:
        raise DamagedFile(path / "meta.json", None, str(exc).removeprefix("meta.json: ")) from None
    text = read_run_file(path / "config.yaml", MAX_SMALL_FILE)  # read even when meta.json holds the config:
    started = meta.get("config") if isinstance(meta.get("config"), dict) else None  # a damaged one is a damaged run
    if started is not None and meta.get("config_sha256") == config_sha256(text):
        saved = started  # the very file bnbench wrote from this config: no need to parse it (most of the time)
    else:
        try:
            saved = yaml.load(text, Loader=_YAML_LOADER)
        except yaml.YAMLError:
            raise DamagedFile(path / "config.yaml", None, "not YAML") from None
    config = started if started is not None else saved
    for read in (saved, config):
        if not isinstance(read, dict) or not all(isinstance(read.get(k, {}), dict) for k in SECTIONS):
            raise DamagedFile(path / "config.yaml", None, "not a config (a mapping of model, norm, data, train)")
    metrics = _columns(path / "metrics.csv")
    missing = [c for c in ("epoch", "test_acc", "train_loss") if c not in metrics]
    if missing:
        raise DamagedFile(path / "metrics.csv", 1, f"no {', '.join(missing)} column")
    if meta.get("status") == "completed" and not metrics["epoch"]:
        raise DamagedFile(path / "metrics.csv", None, "no epochs, though meta.json says the run completed")
    steps: dict[str, list] = {}
    if (path / "steps.csv").exists():
        steps = _columns(path / "steps.csv")
        if tuple(steps) != STEPS.columns:
            raise DamagedFile(path / "steps.csv", 1, f"columns {', '.join(map(str, steps))}; expected "
                              f"{', '.join(STEPS.columns)}")  # fmt: skip
    return Run(path, config, meta, metrics, steps)


def _without_meta(path: Path) -> str | None:
    """Why a folder without meta.json is worth a warning (a run that never recorded anything, or one with run
    files but no meta.json), or None (a folder that is no run: plots, notes)."""
    if (path / "meta.json").exists() or not path.is_dir():
        return None
    if never_recorded(path) and not has_recorded_rows(path):
        return "started but never recorded anything; nothing to compare"
    if any((path / f).exists() for f in ("config.yaml", "metrics.csv")):
        return "run files but no meta.json (not a run bnbench recorded whole); skipped"
    return None


def find_runs(paths: list[Path]) -> tuple[list[Run], list[str]]:
    """Runs named directly or found at any depth below a folder; anything else is a one-line warning and
    the rest are still compared."""
    candidates: list[Path] = []
    warnings: list[str] = []
    for path in paths:
        if is_run_dir(path):
            candidates.append(path)
        elif (why := _without_meta(path)) is not None:
            warnings.append(f"{path}: {why}")
        elif path.is_dir():
            inside = run_dirs_under(path)
            runs_inside = {p: is_run_dir(p) for p in inside}
            candidates += [p for p, ok in runs_inside.items() if ok]
            damaged = [p for p, ok in runs_inside.items() if not ok]
            warnings += [f"{p}: no readable config.yaml and meta.json; skipped" for p in damaged]
            children = [p for p in path.iterdir() if p not in runs_inside and not p.name.startswith(".")]
            children = sorted(p for p in children if p.is_dir())
            named = {p: why for p in children if (why := _without_meta(p)) is not None}
            warnings += [f"{p}: {why}" for p, why in named.items()]
            if not inside and not named:
                warnings.append(f"{path}: not a run directory and contains none; skipped")
        else:
            warnings.append(f"{path}: not a directory; skipped")
    runs, folders = [], {}
    for real, path in {_resolved(p, folders): p for p in reversed(candidates)}.items():  # one run, however named
        try:
            runs.append(load_run(path))
            runs[-1].real_path = real
        except DamagedFile as exc:
            warnings.append(f"{exc}; skipped")
        except (OSError, ValueError, TypeError, KeyError) as exc:
            warnings.append(f"{path}: unreadable run files ({type(exc).__name__}); skipped")
    order = {path: i for i, path in reversed(list(enumerate(candidates)))}  # first place each was named
    runs.sort(key=lambda r: order[r.path])
    for run, name in zip(runs, distinct_names([r.real_path for r in runs]), strict=True):
        run.name = name
    return runs, warnings


def _resolved(path: Path, folders: dict[Path, Path]) -> Path:
    """`path` with links and `..` resolved; a run folder that is not a link (as `run_dirs_under` finds them)
    costs one lstat, not one per path component: its parent is resolved once (`folders` keeps them)."""
    if path.name in ("", ".", "..") or path.is_symlink():
        return path.resolve()
    if path.parent not in folders:
        folders[path.parent] = path.parent.resolve()
    return folders[path.parent] / path.name


def distinct_names(paths: list[Path]) -> list[str]:
    """Each run's directory name (`paths` resolved), lengthened by parent folders only as far as needed to tell
    it apart from the others (a/runs/x and b/runs/x become a/runs/x and b/runs/x, not runs/x twice)."""
    parts = [p.parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(ps[-d:]) for ps, d in zip(parts, depth, strict=True)]
        counts = Counter(names)
        clashes = [i for i, n in enumerate(names) if counts[n] > 1 and depth[i] < len(parts[i])]
        if not clashes:
            return names
        for i in clashes:
            depth[i] += 1


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else math.nan


def _best(values: list[float]) -> tuple[float, int | None]:
    """The largest value (NaN left out) and its index; (NaN, None) when there is none."""
    finite = [(v, i) for i, v in enumerate(values) if v == v]
    if not finite:
        return math.nan, None
    best = max(v for v, _ in finite)
    return best, next(i for v, i in finite if v == best)


def summarize(run: Run, metric: str, target: float | None) -> dict:
    m, steps = run.table, run.step_table
    acc, n = m["test_acc"], len(m["test_acc"])
    best, at = _best(acc)
    row = {
        "name": run.name,
        "path": str(run.real_path),
        "model": run.config.get("model", {}).get("name"),
        "norm": run.config.get("norm", {}).get("kind"),
        "dataset": run.config.get("data", {}).get("dataset"),
        "status": run.status,
        "epochs": n,
        "final_test_acc": acc[-1] if n else math.nan,
        "best_test_acc": best,
        "best_epoch": int(m["epoch"][at]) if at is not None else None,
        "final_train_loss": m["train_loss"][-1] if n else math.nan,
        f"final_{metric}": m[metric][-1] if n and metric in m else math.nan,
        "epochs_to_target": None,
        "steps_to_target": None,
        "examples_to_target": None,
        "examples_per_second": _mean(m.get("examples_per_second", [])),
        "wall_seconds": sum(v for v in m.get("epoch_seconds", []) if v == v),
    }
    if target is not None and n:
        reached = next((i for i, v in enumerate(acc) if v >= target), None)
        if reached is not None:
            epoch = int(m["epoch"][reached])
            row["epochs_to_target"] = epoch
            last = [i for i, e in enumerate(steps.get("epoch", [])) if e == epoch]
            if last:
                row["steps_to_target"] = int(steps["step"][last[-1]])
                row["examples_to_target"] = int(steps["examples_seen"][last[-1]])
    return row


def dataset_of(run: Run) -> str:
    return str(run.config.get("data", {}).get("dataset"))


CHANCE = 0.2  # 10 classes: a run whose accuracy stays at or below this has not learned (chance is 0.1)


def default_target(runs: list[Run]) -> float | None:
    """The accuracy every completed run that learned reached by its end (floored to 0.01): a fair finish
    line. None when no completed run left chance: "epochs to 0.1" would say nothing."""
    finals = [r.table["test_acc"][-1] for r in runs if r.status == "completed" and r.table["test_acc"]]
    finals = [f for f in finals if math.isfinite(f) and f > CHANCE]  # a hand-edited inf is no finish line
    return math.floor(min(finals) * 100) / 100 if finals else None


def mixed(runs: list[Run]) -> list[str]:
    """What differs in kind between the runs (datasets, models): comparing those is rarely meant."""
    out = []
    for what, key in (("datasets", "data.dataset"), ("models", "model.name")):
        values = sorted({str(r.flat_config.get(key)) for r in runs})
        if len(values) > 1:
            out.append(f"{what} {', '.join(values)}")
    return out


def _shared_name(members: list[Run]) -> str | None:
    """The name a seed group's runs share without their seed suffix: their configs' `name`, else their
    folders' name; None when they share neither."""
    for names in ({SEED_SUFFIX.sub("", str(r.config.get("name") or r.path.name)) for r in members},
                  {SEED_SUFFIX.sub("", r.path.name) for r in members}):  # fmt: skip
        if len(names) == 1:
            return names.pop()
    return None


def _keys_name(members: list[Run], keys: list[str]) -> str:
    values = members[0].flat_config  # one group: these keys have one value across its runs
    return cell_name({k: values.get(k) for k in keys})


def mixed_studies(runs: list[Run]) -> str | None:
    """One warning line when the runs come from several studies (folders `bnbench sweep` wrote, holding
    study.yaml), or from a study and runs outside it (a glob that caught more than was meant); None else."""
    studies = sorted({str(r.path.parent) for r in runs if (r.path.parent / STUDY_FILE).is_file()})
    loose = sum(not (r.path.parent / STUDY_FILE).is_file() for r in runs)
    if len(studies) + (loose > 0) < 2:
        return None
    plural = "study" if len(studies) == 1 else "studies"
    outside = f" and {loose} run{'s' * (loose != 1)} from no study" if loose else ""
    return (f"these runs mix {len(studies)} {plural} ({', '.join(studies)}){outside}; "
            "name one study's folder to compare only its runs")  # fmt: skip


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Seed groups: runs whose configs differ only in seed and name. A group is named by what its runs
    share: their name without the seed suffix (the config's `name`, else the folder's), else the config
    keys that tell the groups apart; where two groups would share a name, the keys that differ between
    them are added in brackets. A name never depends on one member or on the order of `runs`."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.group_key(), []).append(run)
    members_of = list(by_key.values())
    keys = [k for k in differing_keys(runs) if k != "train.seed"]
    names, member_names = [], []
    for members in members_of:
        everyone = sorted({SEED_SUFFIX.sub("", str(r.config.get("name") or r.path.name)) for r in members})
        shared = _shared_name(members)
        if shared is None:  # runs named differently (a renamed or resumed run): name what they share
            shared = _keys_name(members, keys) if keys else "+".join(everyone)
        names.append(shared)
        member_names.append(everyone)
    groups = {}
    holders: dict[str, set[int]] = {}  # a name -> the groups named so or holding a run of that name
    for j, (name, everyone) in enumerate(zip(names, member_names, strict=True)):
        for held in {name, *everyone}:
            holders.setdefault(held, set()).add(j)
    for i, (name, members) in enumerate(zip(names, members_of, strict=True)):
        # another group with this name, or holding a run of this name: the name alone would mislead
        rivals = [r for j in sorted(holders[name] - {i}) for r in members_of[j]]
        if rivals:
            name = f"{name}[{_keys_name(members, [k for k in differing_keys(rivals + members) if k != 'train.seed'])}]"
        groups[name] = members
    return groups


def seed_groups(runs: list[Run]) -> tuple[dict[str, list[Run]], list[str]]:
    """`group_runs`, each group keeping one run per seed (the seed is the unit: the most recent run,
    `one_per_seed`), and the warnings naming the runs left out that way."""
    groups, notes = group_runs(runs), []
    for name, members in groups.items():
        kept, repeated = one_per_seed(members)
        groups[name] = [r for r in members if r in kept.values()]
        notes += [f"{name}: {note}" for note in repeated]
    return groups, notes


GROUP_FIGURES = (
    "final_test_acc",
    "best_test_acc",
    "final_train_loss",
    "epochs_to_target",
    "examples_to_target",
    "examples_per_second",
    "wall_seconds",
)


def _stdev(values: list[float]) -> float:
    """The sample standard deviation (n - 1), in floats: statistics.stdev's exact fractions were a quarter of
    compare's time over 1,000 runs, for digits no table shows."""
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize_groups(groups: dict[str, list[Run]], summaries: dict[str, dict], metric: str) -> Rows:
    figures_of = list(dict.fromkeys((*GROUP_FIGURES, f"final_{metric}")))
    rows = []
    for name, members in groups.items():
        figures = [summaries[r.name] for r in members]
        row = {
            "group": name,
            "n": len(members),
            "runs": " ".join(r.name for r in members),
            "reached_target": sum(f["epochs_to_target"] is not None for f in figures),
        }
        for figure in figures_of:
            values = [float(v) for f in figures if (v := f[figure]) is not None and v == v]
            row[f"{figure}_mean"] = statistics.fmean(values) if values else math.nan
            row[f"{figure}_std"] = _stdev(values) if len(values) > 1 else math.nan
        rows.append(row)
    columns = ("group", "n", "runs", "reached_target", *(f"{f}_{s}" for f in figures_of for s in ("mean", "std")))
    return Rows(columns, rows)  # the columns even with no group (no run completed)


def add_baseline(
    groups_rows: Rows, groups: dict[str, list[Run]], summaries: dict[str, dict], baseline: str, metric: str
) -> tuple[Rows, str]:
    """Each group against the baseline group on the final metric (`versus`): the difference with its 95%
    interval, the p-value and the test that gave them; and the baseline group's name (`baseline` may
    name one of its runs)."""

    if not groups:
        raise UsageError(f"--baseline {baseline}: no run has completed, so there is no seed group to compare")
    if baseline not in groups:
        owner = [g for g, members in groups.items() if baseline in {r.name for r in members}]
        if not owner:
            raise UsageError(f"--baseline {baseline}: no such run or group; choose one of {', '.join(groups)}")
        baseline = owner[0]
    delta = f"delta_final_{metric}"
    added = (delta, f"{delta}_ci95_low", f"{delta}_ci95_high", "p_value", "test")
    rows = []
    for row in groups_rows.rows:
        if row["group"] == baseline:
            rows.append({**row, **dict(zip(added, (0.0, math.nan, math.nan, math.nan, ""), strict=True))})
            continue
        e = versus(groups[row["group"]], groups[baseline], summaries, metric)
        rows.append({**row, **dict(zip(added, (e.estimate, e.low, e.high, e.p, e.test), strict=True))})
    return Rows((*groups_rows.columns, *added), rows), baseline


def _by_seed(runs: list[Run], summaries: dict[str, dict], metric: str) -> dict:
    values = {r.config.get("train", {}).get("seed"): summaries[r.name][f"final_{metric}"] for r in runs}
    return {seed: float(v) for seed, v in values.items() if v is not None and math.isfinite(v)}


def versus(group: list[Run], base: list[Run], summaries: dict[str, dict], metric: str) -> Effect:
    """The final `metric` of one seed group minus another's, as the claims engine compares arms: paired by
    seed on the seeds both have (paired t; an exact signed-rank test where the differences have no spread),
    Welch's t where they share fewer than two. One run per seed (the groups come from `one_per_seed`)."""
    a, b = _by_seed(group, summaries, metric), _by_seed(base, summaries, metric)
    pairs, _ = pair_by_seed(a, b)
    if len(pairs) >= 2:
        return effect([], [], pairs, rank_based=False)
    return effect(list(a.values()), list(b.values()), None, rank_based=False)


def welch_p(a: list[float], b: list[float]) -> float:
    """Welch's two-sided t-test p-value (NaN values left out); NaN where a side has no spread at all."""
    import warnings

    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical values: scipy warns, the p-value is NaN
        return float(stats.ttest_ind(a, b, equal_var=False, nan_policy="omit").pvalue)


def per_epoch(runs: list[Run], metric: str) -> Rows:
    """`metric` per epoch (rows: an `epoch` column) and run (a column each); NaN where a run has no such epoch."""
    epochs = sorted({int(e) for r in runs if metric in r.table for e in r.table["epoch"]})
    columns = {}
    for r in runs:
        if metric in r.table:
            by_epoch = dict(zip((int(e) for e in r.table["epoch"]), r.table[metric], strict=True))
            columns[r.name] = [by_epoch.get(e, math.nan) for e in epochs]
    rows = [{"epoch": e, **{name: values[i] for name, values in columns.items()}} for i, e in enumerate(epochs)]
    return Rows(("epoch", *columns), rows)


@dataclass
class Comparison:
    """Runs side by side as plain tables (`Rows`): the runs, their seed groups, the metric per epoch and,
    with --pivot, the grid. `runs`, `groups`, `per_epoch` and `pivot` give them as DataFrames."""

    metric: str
    target: float | None  # None with several datasets: see targets
    target_is_default: bool
    run_rows: Rows
    group_rows: Rows
    epoch_rows: Rows
    baseline: str | None
    keys: list[str] = field(default_factory=list)  # config keys that differ between the runs
    targets: dict[str, float | None] = field(default_factory=dict)  # per dataset
    pivot_rows: Rows | None = None  # long form: one row per (pivot value, by value)
    pivot_keys: tuple[str, str] | None = None
    left_out: list[str] = field(default_factory=list)  # runs not in the seed groups: "name (status)"
    repeated: list[str] = field(default_factory=list)  # a seed run more than once in a group: which run counts

    @property
    def has_target(self) -> bool:
        """A target to count epochs to: given, or the default of at least one dataset."""
        return self.target is not None or any(t is not None for t in self.targets.values())

    @cached_property
    def runs(self) -> pd.DataFrame:
        return self.run_rows.frame()

    @cached_property
    def groups(self) -> pd.DataFrame:
        return self.group_rows.frame()

    @cached_property
    def per_epoch(self) -> pd.DataFrame:
        return self.epoch_rows.frame().set_index("epoch")

    @cached_property
    def pivot(self) -> pd.DataFrame | None:
        return None if self.pivot_rows is None else self.pivot_rows.frame()


def compare(
    runs: list[Run],
    metric: str = "test_acc",
    target: float | None = None,
    baseline: str | None = None,
    pivot: str | None = None,
    by: str | None = None,
) -> Comparison:
    if not runs:
        raise UsageError("no runs to compare")
    known = sorted(set().union(*(set(r.table) for r in runs)) - {"epoch"})
    if metric not in known:
        raise UsageError(f"--metric {metric}: not a metrics.csv column; choose one of {', '.join(known)}")
    target_is_default = target is None
    datasets = sorted({dataset_of(r) for r in runs})
    if target is None:  # per dataset: a finish line on MNIST says nothing about Fashion-MNIST
        targets = {d: default_target([r for r in runs if dataset_of(r) == d]) for d in datasets}
    else:
        targets = dict.fromkeys(datasets, target)
    keys = differing_keys(runs)
    summaries = {r.name: summarize(r, metric, targets[dataset_of(r)]) for r in runs}
    for run in runs:
        values = run.flat_config
        summaries[run.name].update({f"config.{k}": _plain(values.get(k)) for k in keys})
    pivot_rows = None
    group_baseline = baseline
    if pivot is not None or by is not None:
        if pivot is None or by is None:
            raise UsageError("--pivot and --by go together: --pivot train.lr --by norm.kind")
        pivot_rows, repeated = pivot_table(runs, summaries, pivot, by, metric, baseline)
        group_baseline = None
    else:
        repeated = []
    # Means over seeds take completed runs only: a failed or stopped run's last epoch is not a result.
    groups, notes = seed_groups([r for r in runs if r.status == "completed"])
    repeated += notes
    group_rows = summarize_groups(groups, summaries, metric)
    shown_baseline = baseline if pivot_rows is not None else None
    if group_baseline is not None:
        group_rows, shown_baseline = add_baseline(group_rows, groups, summaries, group_baseline, metric)
    return Comparison(
        metric,
        targets[datasets[0]] if len(datasets) == 1 else None,
        target_is_default,
        Rows(tuple(dict.fromkeys(k for row in summaries.values() for k in row)), list(summaries.values())),
        group_rows,
        per_epoch(runs, metric),
        shown_baseline,
        keys,
        targets,
        pivot_rows,
        (pivot, by) if pivot_rows is not None else None,
        [f"{r.name} ({r.status})" for r in runs if r.status != "completed"],
        repeated,
    )


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def pivot_table(
    runs: list[Run], summaries: dict[str, dict], pivot: str, by: str, metric: str, baseline: str | None
) -> tuple[Rows, list[str]]:
    """Final `metric` per (pivot value, by value): n, mean, std, diverged; with `baseline` ('key=value' of
    the --by key), each cell's difference from the baseline column in its row and its p-value (`versus`:
    paired by seed where the cells share seeds). A seed counts once per cell (the most recent run); the
    warnings name the runs left out that way, and the cells whose runs differ in more than the two keys."""

    flats = {r.name: r.flat_config for r in runs}
    for option, key in (("--pivot", pivot), ("--by", by)):
        if not any(key in f for f in flats.values()):
            raise UsageError(f"{option} {key}: not a config key of these runs (e.g. train.lr, norm.kind)")
    if pivot == by:
        raise UsageError(f"--pivot and --by both name {pivot}: the grid needs two keys, e.g. --pivot train.lr "
                         "--by norm.kind")  # fmt: skip
    base_value = None
    if baseline is not None:
        key, sep, text = baseline.partition("=")
        if not sep or key != by:
            raise UsageError(f"--baseline {baseline}: with --pivot, name a column of the grid: --baseline {by}=VALUE")
        values = {repr(f.get(by)): f.get(by) for f in flats.values()}
        matches = [v for v in values.values() if cell_name({by: v}).split("=", 1)[1] == text]
        if not matches:
            shown = ", ".join(cell_name({by: v}).split("=", 1)[1] for v in values.values())
            raise UsageError(f"--baseline {baseline}: {by} has no value {text}; it has {shown}")
        base_value = matches[0]
    by_cell: dict[tuple, list[Run]] = {}
    for run in runs:
        f = flats[run.name]
        by_cell.setdefault((repr(f.get(pivot)), repr(f.get(by))), []).append(run)
    kept_runs, notes = {}, []
    for (pv, bv), members in by_cell.items():  # a seed counts once per cell
        kept, repeated = one_per_seed(members)
        kept_runs[(pv, bv)] = list(kept.values())
        first = flats[members[0].name]
        name = cell_name({pivot: first.get(pivot), by: first.get(by)})
        other = [k for k in differing_keys(members) if k not in ("train.seed", pivot, by)]
        if other:
            notes.append(f"grid cell {name}: its runs also differ in {', '.join(other)}, and a seed counts once "
                         f"per cell; compare a folder where only {pivot}, {by} and the seed vary")  # fmt: skip
        notes += [f"grid cell {name}: {note}" for note in repeated]
    cells: dict[tuple, list[tuple[float, str]]] = {
        key: [(summaries[r.name][f"final_{metric}"], r.status) for r in members] for key, members in kept_runs.items()
    }
    label = {repr(f.get(k)): f.get(k) for f in flats.values() for k in (pivot, by)}
    rows = []
    for (pv, bv), members in cells.items():
        finals = [v for v, status in members if status != "diverged" and v == v]
        row = {
            "pivot": _plain(label[pv]),
            "by": _plain(label[bv]),
            "n": len(members),
            "mean": statistics.fmean(finals) if finals else math.nan,
            "std": _stdev(finals) if len(finals) > 1 else math.nan,
            "diverged": sum(status == "diverged" for _, status in members),
            "delta": math.nan,
            "delta_ci95_low": math.nan,
            "delta_ci95_high": math.nan,
            "p_value": math.nan,
        }
        if base_value is not None and bv != repr(base_value):
            base = [v for v, status in cells.get((pv, repr(base_value)), []) if status != "diverged" and v == v]
            if finals and base:
                row["delta"] = row["mean"] - statistics.fmean(base)
            if len(finals) >= 2 and len(base) >= 2:
                ok = lambda members: [r for r in members if r.status != "diverged"]  # noqa: E731
                e = versus(ok(kept_runs[(pv, bv)]), ok(kept_runs[(pv, repr(base_value))]), summaries, metric)
                row["delta"], row["p_value"] = e.estimate, e.p
                row["delta_ci95_low"], row["delta_ci95_high"] = e.low, e.high
        rows.append(row)
    order = lambda v: (isinstance(v, str), v if not isinstance(v, (list, type(None))) else str(v))  # noqa: E731
    rows.sort(key=lambda row: (order(row["pivot"]), order(row["by"])))
    columns = ("pivot", "by", "n", "mean", "std", "diverged", "delta", "delta_ci95_low", "delta_ci95_high", "p_value")
    return Rows(columns, rows), notes


def pivot_display(comp: Comparison) -> Rows:
    """The grid: rows are pivot values, columns --by values, cells 'mean ± std (n)' and, against a baseline,
    on their own lines 'Δ [95% CI]' and 'p'. The baseline's column is hidden first on a narrow terminal: the
    others hold the answer."""
    pivot, by = comp.pivot_keys
    rows = comp.pivot_rows.rows
    columns = list(dict.fromkeys(format_value(row["by"]) for row in rows))
    grid: dict[str, dict[str, str]] = {}
    for row in rows:
        mean, std, n = row["mean"], row["std"], row["n"]
        text = f"{_num(mean)} ± {_num(std)} (n={n})" if std == std else f"{_num(mean)} (n={n})"
        if row["diverged"]:
            text += f", {row['diverged']} diverged"
        if row["delta"] == row["delta"]:
            text += f"\nΔ {_delta(row['delta'], row['delta_ci95_low'], row['delta_ci95_high'])}"
            text += f"\np {row['p_value']:.3g}" if row["p_value"] == row["p_value"] else ""
        grid.setdefault(format_value(row["pivot"]), {})[format_value(row["by"])] = text
    header = (pivot, *(f"{by}={c}" for c in columns))
    out = [{pivot: p, **{f"{by}={c}": cells.get(c, "-") for c in columns}} for p, cells in grid.items()]
    return Rows(header, out, (comp.baseline,) if comp.baseline in header else ())


def _num(value: object, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and abs(value) >= 1e9:  # a diverged run's loss: not 40 digits of false precision
        return f"{value:.3g}"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def _mean_std(row: dict, figure: str, digits: int = 4) -> str:
    mean, std = row[f"{figure}_mean"], row[f"{figure}_std"]
    if isinstance(std, float) and math.isnan(std):
        return _num(float(mean), digits)
    return f"{_num(float(mean), digits)} ± {_num(float(std), digits)}"


def label(metric: str) -> str:
    """A metrics.csv column as a person reads it, naming its split: test_acc -> test acc."""
    return metric.replace("_", " ")


def _delta(delta: float, low: float, high: float) -> str:
    return f"{delta:+.4f}" + (f" [{low:+.4f}, {high:+.4f}]" if low == low and high == high else "")


def _known(value: object) -> bool:
    return value is not None and value == value  # neither None nor NaN


MANY_RUNS = 40  # above this, the terminal shows the seed groups, not a row per run and a column per run


def display_tables(comp: Comparison, which: str | None = None, brief: bool = False) -> list[tuple[str, Rows]]:
    """The comparison as titled tables of strings, for the Rich and markdown outputs (`which`: only that one).
    The answer comes last, where a terminal keeps it on screen: runs, per epoch, seed groups, the grid. Each
    table's `drop_first` names its incidental columns, hidden first on a narrow terminal; what the user
    asked for (Δ against the baseline with its CI, p, n, mean ± std) is hidden last. `brief` (the
    terminal): over MANY_RUNS runs with seed groups, the per-run and per-epoch tables are left to --table."""
    target = ("-" if not comp.targets else "target") if comp.target is None else f"{comp.target:g}"
    to_target, steps_to = f"epochs to {target}", f"steps (examples) to {target}"
    figures = ("status", "epochs", "final test acc", "best test acc (epoch)", "final train loss", to_target, steps_to,
               "ex/s", "wall s")  # fmt: skip
    names = short_keys([k for k in comp.keys if k != "train.seed"] + ["train.seed"] * ("train.seed" in comp.keys))
    names = {k: k if name in ("run", *figures) else name for k, name in names.items()}  # train.epochs, not epochs
    if comp.keys:  # the config keys that differ between the runs
        described = {names[k]: lambda r, k=k: format_value(r[f"config.{k}"]) for k in names}
    else:
        described = {"model": lambda r: r["model"], "norm": lambda r: r["norm"], "data": lambda r: r["dataset"]}
    runs = [
        {
            "run": r["name"],
            **{column: str(value(r)) for column, value in described.items()},
            "status": r["status"],
            "epochs": str(r["epochs"]),
            "final test acc": _num(r["final_test_acc"]),
            "best test acc (epoch)": f"{_num(r['best_test_acc'])} ({r['best_epoch']})" if _known(r["best_epoch"])
            else "-",
            "final train loss": _num(r["final_train_loss"]),
            to_target: str(r["epochs_to_target"]) if _known(r["epochs_to_target"])
            else "not reached" if comp.has_target else "-",
            steps_to: f"{r['steps_to_target']:,} ({r['examples_to_target'] or 0:,})" if r["steps_to_target"] else "-",
            "ex/s": _num(float(r["examples_per_second"]), 0),
            "wall s": _num(float(r["wall_seconds"]), 1),
        }
        for r in comp.run_rows.rows
    ]  # fmt: skip
    header = ("run", *described, *figures)
    incidental = ("ex/s", "wall s", steps_to, "best test acc (epoch)", to_target, "epochs", "final train loss")
    side = [{c: str(v) if c == "epoch" else _num(v) for c, v in row.items()} for row in comp.epoch_rows.rows]
    tables = [("runs", "runs", Rows(header, runs, incidental)),
              ("epochs", f"{comp.metric} per epoch", Rows(comp.epoch_rows.columns, side))]  # fmt: skip
    rows = comp.group_rows.rows
    if rows and (any(r["n"] > 1 for r in rows) or comp.baseline is not None or which == "groups"):
        title = "seed groups (mean ± std over seeds)"
        delta = f"delta_final_{comp.metric}"
        against = f"Δ vs {comp.baseline} [95% CI]"
        has_delta = delta in comp.group_rows.columns
        if has_delta:
            title = f"seed groups: mean ± std over seeds; Δ final {label(comp.metric)} vs {comp.baseline}, p"
        groups = []
        for r in rows:
            row = {"group": r["group"], "n": str(r["n"]), "final test acc": _mean_std(r, "final_test_acc")}
            if has_delta:
                row[against] = ("baseline" if r["group"] == comp.baseline
                                else _delta(r[delta], r[f"{delta}_ci95_low"], r[f"{delta}_ci95_high"]))  # fmt: skip
                row["p"] = "-" if math.isnan(r["p_value"]) else f"{r['p_value']:.3g}"
            row["best test acc"] = _mean_std(r, "best_test_acc")
            row["final train loss"] = _mean_std(r, "final_train_loss")
            row[to_target] = f"{_mean_std(r, 'epochs_to_target', 2)} ({r['reached_target']}/{r['n']} reached)"
            row["ex/s"] = _mean_std(r, "examples_per_second", 0)
            groups.append(row)
        header = ("group", "n", "final test acc", *((against, "p") if has_delta else ()), "best test acc",
                  "final train loss", to_target, "ex/s")  # fmt: skip
        incidental = ("ex/s", to_target, "best test acc", "final train loss", "final test acc", "n")
        tables.append(("groups", title, Rows(header, groups, incidental)))
    if comp.pivot_rows is not None:
        pivot, by = comp.pivot_keys
        title = f"final {comp.metric} by {pivot} and {by}: mean ± std over seeds (n)"
        if comp.baseline is not None:
            title += f"; Δ and p against {comp.baseline} in the same row (paired by seed where they share seeds)"
        tables.append(("pivot", title, pivot_display(comp)))
    if which == "pivot" and comp.pivot_rows is None:
        raise UsageError("--table pivot: give --pivot KEY --by KEY as well")
    if brief and which is None and len(comp.run_rows) > MANY_RUNS and any(kind == "groups" for kind, _, _ in tables):
        tables = [t for t in tables if t[0] not in ("runs", "epochs")]
    return [(title, table) for kind, title, table in tables if which in (None, kind)]


def footnotes(comp: Comparison, shown: set[str] | None = None) -> list[str]:
    """Notes under the tables, each about a column shown (`shown`: the column names on screen or written;
    None: every column)."""

    def on_screen(prefix: str) -> bool:
        return shown is None or any(column.startswith(prefix) for column in shown)

    notes = []
    about_target = on_screen("epochs to ") or on_screen("steps (examples) to ")
    lowest = "the lowest final test acc of the completed runs that learned (above 0.2)"
    if about_target and comp.target is not None and comp.target_is_default:
        notes.append(f"target {comp.target:g}: {lowest} (set it with --target)")
    elif about_target and comp.target is None and comp.has_target:
        per = ", ".join(f"{d} {'-' if t is None else f'{t:g}'}" for d, t in comp.targets.items())
        notes.append(f"targets per dataset: {per}" + (f" ({lowest} there)" if comp.target_is_default else ""))
    if comp.baseline is not None and comp.pivot_rows is None and (on_screen("p") or on_screen("Δ vs ")):
        used = sorted({str(x) for x in comp.group_rows.column("test") if x})
        notes.append(f"Δ: final {label(comp.metric)} minus {comp.baseline}'s with its 95% interval, paired by seed on "
                     f"the seeds both groups share, Welch's where they share fewer than 2; p two-sided; "
                     f"test{'s' if len(used) > 1 else ''}: {', '.join(used) or '-'}")  # fmt: skip
        base = [r for r in comp.group_rows.rows if r["group"] == comp.baseline]
        if base and base[0]["final_test_acc_mean"] <= CHANCE:
            notes.append(f"warning: the baseline {comp.baseline} never left chance (final test acc "
                         f"{base[0]['final_test_acc_mean']:.4f}); a difference from it says little")  # fmt: skip
    if shown is not None and len(comp.run_rows) > MANY_RUNS and not on_screen("run"):
        notes.append(f"{len(comp.run_rows):,} runs: their seed groups above; a row per run with --table runs, "
                     "every epoch with --table epochs (or --format csv)")  # fmt: skip
    if comp.left_out:
        notes.append(f"not in the seed groups (not completed): {', '.join(comp.left_out)}")
    if about_target and comp.target_is_default and comp.targets and all(t is None for t in comp.targets.values()):
        notes.append("no epochs-to-target: no completed run left chance (set one with --target)")
    return notes


def to_markdown(comp: Comparison, which: str | None = None) -> str:
    def cell(value: object) -> str:  # a name is data: a `|` or a line break must not make a new column or row
        return without_controls(str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " "))

    parts, written = [], set()
    for title, table in display_tables(comp, which):
        header, cells = table.cells()
        written.update(header)
        rule = "|" + "|".join("---" for _ in header) + "|"
        body = ["| " + " | ".join(map(cell, row)) + " |" for row in cells]
        heading = f"### {without_controls(title)}"  # a baseline's name is in it
        parts.append("\n".join([heading, "", "| " + " | ".join(map(cell, header)) + " |", rule, *body]))
    parts += [f"_{cell(note)}_" for note in footnotes(comp, written)]
    return "\n\n".join(parts) + "\n"


TABLES = ("runs", "groups", "pivot", "epochs")
# Counts that pandas turns into floats as soon as one is missing; the API's DataFrames keep them integers.
INTEGER_COLUMNS = {"epochs", "best_epoch", "epochs_to_target", "steps_to_target", "examples_to_target", "n",
                   "reached_target", "epoch"}  # fmt: skip


def with_integers(frame: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    out = frame.copy()
    for column in out.columns:
        whole = pd.to_numeric(out[column], errors="coerce")
        is_count = column in INTEGER_COLUMNS or str(column).startswith("config.")
        if is_count and whole.notna().sum() == out[column].notna().sum() and (whole.dropna() % 1 == 0).all():
            if out[column].notna().any() and out[column].map(lambda v: not isinstance(v, bool)).all():
                out[column] = whole.astype("Int64")
    return out


def raw_table(comp: Comparison, which: str) -> Rows:
    """One table with its numbers as numbers: runs, groups (seed groups), pivot (with --pivot) or epochs."""
    if which == "runs":
        return comp.run_rows
    if which == "groups":
        return comp.group_rows
    if which == "epochs":
        return comp.epoch_rows
    if comp.pivot_rows is None:
        raise UsageError("--table pivot: give --pivot KEY --by KEY as well")
    pivot, by = comp.pivot_keys
    renamed = {"pivot": pivot, "by": by}
    return Rows(tuple(renamed.get(c, c) for c in comp.pivot_rows.columns),
                [{renamed.get(c, c): v for c, v in row.items()} for row in comp.pivot_rows.rows])  # fmt: skip


def _missing_as_none(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def _json_number(value: object) -> object:
    """JSON has no NaN or infinity: a missing number and a diverged run's inf are both null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def to_csv(comp: Comparison, which: str | None = None) -> str:
    """One table (CSV has one header): the runs by default, the grid with --pivot, or --table's choice. A
    missing number (None, NaN) is an empty cell; a float is written as Python's repr (every digit)."""
    table = raw_table(comp, which or ("pivot" if comp.pivot_rows is not None else "runs"))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow(["" if (v := _missing_as_none(row.get(c))) is None else v for c in table.columns])
    return out.getvalue()


def to_json(comp: Comparison, configs: dict[str, dict] | None = None) -> str:
    """Every table; each run with its path and, given `configs` (name -> resolved config), its config. A
    missing or infinite number is null."""

    def records(table: Rows) -> list[dict]:
        return [{c: _json_number(row.get(c)) for c in table.columns} for row in table.rows]

    runs = records(comp.run_rows)
    for run in runs:
        run["config"] = (configs or {}).get(run["name"])
    epochs = {str(row["epoch"]): {c: _json_number(v) for c, v in row.items() if c != "epoch"}
              for row in comp.epoch_rows.rows}  # fmt: skip
    pivot = None if comp.pivot_rows is None else {"keys": list(comp.pivot_keys), "cells": records(comp.pivot_rows)}
    return json.dumps(
        {
            "metric": comp.metric,
            "target": comp.target,
            "baseline": comp.baseline,
            "test": TEST_NAME,
            "runs": runs,
            "groups": records(comp.group_rows),
            "per_epoch": epochs,
            "differing_keys": comp.keys,
            "targets": comp.targets,
            "pivot": pivot,
        },
        indent=2,
    )
