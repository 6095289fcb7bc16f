"""`bnbench export`: recorded runs into the trackers researchers already use, after the fact (training is
untouched). TensorBoard: one sub-folder per run with every metrics.csv column per epoch and every steps.csv
column per step, wall times from the records, the resolved config as hyperparameters. MLflow: a study is a
parent run, each run a child run with its config as params, metrics per epoch and per step, and the run
directory as artifacts. Both libraries are optional extras.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnbench.errors import UsageError
from bnbench.evidence.compare import Run, flat
from bnbench.runs.study import STUDY_FILE

FINALS = ("test_acc", "test_loss", "train_loss", "train_acc")  # shown beside the hyperparameters
MLFLOW_STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "stale": "KILLED"}
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}  # target: (module, extra)


def require(target: str) -> None:
    import importlib.util

    module, extra = EXTRAS[target]
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"--to {target}: {module} is not installed; pip install 'bnbench[{extra}]'")


def _start(run: Run) -> float:
    try:
        when = dt.datetime.fromisoformat(str(run.meta.get("started_at")))
    except ValueError:
        return 0.0
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()


def epoch_times(run: Run) -> list[float]:
    """Wall time (Unix seconds) at the end of each recorded epoch: the start plus the epochs' durations."""
    start, total, times = _start(run), 0.0, []
    for seconds in run.table.get("epoch_seconds", [0.0] * len(run.table["epoch"])):
        total += seconds if seconds == seconds else 0.0
        times.append(start + total)
    return times


def step_times(run: Run) -> list[float]:
    """Wall time of each steps.csv row, placed within its epoch in proportion to its step."""
    ends = dict(zip((int(e) for e in run.table["epoch"]), epoch_times(run), strict=True))
    steps, epochs = run.step_table.get("step", []), run.step_table.get("epoch", [])
    first = {int(e): s for s, e in reversed(list(zip(steps, epochs, strict=True)))}
    last = {int(e): s for s, e in zip(steps, epochs, strict=True)}
    times = []
    for step, epoch in zip(steps, epochs, strict=True):
        e = int(epoch)
        begin = ends.get(e - 1, _start(run))
        end = ends.get(e, begin)
        span = (last[e] - first[e]) or 1
        times.append(begin + (end - begin) * (step - first[e] + 1) / (span + 1))
    return times


def hyperparameters(run: Run) -> dict[str, object]:
    """The resolved config flattened to scalars (lists as text), as trackers take them."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(list(v) if isinstance(v, tuple) else v))
            for k, v in flat(run.config).items() if v is not None}  # fmt: skip


def mlflow_params(run: Run, limit: int) -> tuple[dict[str, str], list[str]]:
    """The hyperparameters as MLflow params, each whole up to `limit` characters (MLflow's
    MAX_PARAM_VAL_LENGTH); a longer one ends in "…" within the limit. Returns (params, the keys cut)."""
    params, cut = {}, []
    for key, value in hyperparameters(run).items():
        text = str(value)
        if len(text) > limit:
            text, cut = text[: limit - 1] + "…", [*cut, key]
        params[key] = text
    return params, cut


def mlflow_param_limit() -> int:
    """The longest param value the installed MLflow accepts (its MAX_PARAM_VAL_LENGTH: 6,000 characters in
    MLflow 3; 500, the old limit, where the constant is not found). A remote server of another version may
    accept less: it then refuses the batch with its own error."""
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
    except ImportError:
        return 500
    return int(MAX_PARAM_VAL_LENGTH)


def _finite(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) or isinstance(value, int)


def to_tensorboard(runs: list[Run], out: Path) -> list[Path]:
    """One event-file folder per run under `out`, named like the run; refused if one exists already."""
    from torch.utils.tensorboard import SummaryWriter

    targets = [out / run.name for run in runs]
    taken = [str(t) for t in targets if t.exists() or t.is_symlink()]  # a link, even dangling, is never followed
    if taken:
        raise UsageError(f"--out {out}: {', '.join(taken[:3])} exists already; export into a new folder")
    for run, target in zip(runs, targets, strict=True):
        writer = SummaryWriter(log_dir=str(target))
        try:
            for i, when in enumerate(epoch_times(run)):
                epoch = int(run.table["epoch"][i])
                for column, values in run.table.items():
                    if column != "epoch" and _finite(values[i]):
                        writer.add_scalar(f"epoch/{column}", values[i], global_step=epoch, walltime=when)
            for i, when in enumerate(step_times(run)):
                step = int(run.step_table["step"][i])
                for column, values in run.step_table.items():
                    if column not in ("step", "epoch") and _finite(values[i]):
                        writer.add_scalar(f"step/{column}", values[i], global_step=step, walltime=when)
            finals = {f"hparam/final_{c}": v[-1] for c, v in run.table.items()
                      if c in FINALS and v and _finite(v[-1])}  # fmt: skip
            writer.add_hparams(hyperparameters(run), finals, run_name=".")
        finally:
            writer.close()
    return targets


SQL_SCHEMES = ("postgresql", "mysql", "mssql")  # MLflow's other database stores (with a driver: mysql+pymysql)
SQL_DRIVERS = {"postgresql": ["psycopg2", "psycopg"], "mysql": ["MySQLdb", "pymysql"], "mssql": ["pyodbc"]}


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Refuse, before anything is created, a tracking URI MLflow could not use: `sqlite:///` without a
    file, a folder, or a file that is not a SQLite database, or whose folder is missing; a server that
    does not answer within `timeout` seconds; the file store (a folder, MLflow 3 deprecates it); an unknown
    scheme. Raises UsageError (one line, exit 2)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    scheme = urllib.parse.urlparse(uri).scheme.lower()
    where = f"--tracking-uri {uri}"
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.lower().startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise UsageError(f"{where}: name the database file, e.g. sqlite:///mlflow.db")
        database = Path(path)
        if database.is_dir():
            raise UsageError(f"{where}: {database} is a folder, not a database file")
        if database.exists():
            if not database.is_file():  # a FIFO would block, /dev/null reads empty
                raise UsageError(f"{where}: {database} is not a regular file")
            try:
                with open(database, "rb") as f:
                    header = f.read(16)
            except OSError as exc:
                raise UsageError(f"{where}: cannot read {database} ({exc.strerror})") from None
            if header and header != b"SQLite format 3\x00":
                raise UsageError(f"{where}: {database} is not a SQLite database")
        elif not database.parent.is_dir():
            raise UsageError(f"{where}: no such folder {database.parent}")
        else:
            import tempfile

            try:  # MLflow would retry a database it cannot create for minutes
                tempfile.TemporaryFile(dir=database.parent).close()
            except OSError as exc:
                raise UsageError(f"{where}: cannot create a file in {database.parent} ({exc.strerror})") from None
    elif scheme in ("http", "https"):
        probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            with urllib.request.urlopen(probe, timeout=timeout) as answer:
                json.loads(answer.read(1 << 20))
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise UsageError(f"{where}: the server refused (HTTP {exc.code}); set MLflow's credentials "
                                 "(MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN)") from None  # fmt: skip
            raise UsageError(f"{where}: not an MLflow server (HTTP {exc.code} for its REST API)") from None
        except ValueError:
            raise UsageError(f"{where}: not an MLflow server (its REST API did not answer JSON)") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UsageError(f"{where}: no MLflow server answers there ({reason})") from None
    elif uri == "databricks" or scheme == "databricks":
        pass
    elif scheme in ("", "file") or len(scheme) == 1:  # a plain path (C: on Windows)
        raise UsageError(f"{where}: MLflow 3 deprecates the file store (a folder); use a database, "
                         "e.g. sqlite:///mlflow.db")  # fmt: skip
    elif scheme.split("+")[0] not in SQL_SCHEMES:
        raise UsageError(f"{where}: unknown scheme {scheme!r}; use sqlite:///FILE, http(s)://HOST:PORT, "
                         "or a database URL (postgresql://, mysql://, mssql://)")  # fmt: skip
    else:
        import importlib.util

        base, _, driver = scheme.partition("+")
        drivers = [driver] if driver else SQL_DRIVERS[base]
        if not any(importlib.util.find_spec(d) is not None for d in drivers):
            raise UsageError(f"{where}: no {base} driver is installed (pip install {drivers[0]})")


def run_key(run: Run) -> str:
    """A run's identity in a tracker, the same wherever its folder is copied: its name, its start time and
    its config."""
    identity = json.dumps([run.path.name, str(run.meta.get("started_at")), run.config], sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


def run_fingerprint(run: Run) -> str:
    """What an export of the run holds: its status and every recorded value. Equal: nothing to update."""
    content = json.dumps([run.status, run.table, run.step_table], sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()[:24]


def _artifacts_beside(tracking_uri: str) -> str | None:
    """For a SQLite store, artifacts go in `mlartifacts/` beside the database file, not into whatever folder
    the command ran in (MLflow's default, `./mlruns`); other stores keep MLflow's default."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.resolve().parent / "mlartifacts").as_uri()


# The files bnbench writes in a run directory: the only ones uploaded as artifacts.
RUN_ARTIFACTS = ("config.yaml", "meta.json", "metrics.csv", "steps.csv", "diagnostics.csv", "checkpoint.pt",
                 "model.pt", "traceback.txt")  # fmt: skip


def run_artifacts(run_dir: Path) -> tuple[list[Path], list[str]]:
    """The regular files bnbench wrote in `run_dir`, and the names of everything else there (a link, a
    FIFO, a folder, a file of the user's): those are never opened, read or followed."""
    import stat

    files, other = [], []
    for entry in sorted(run_dir.iterdir()):
        try:
            regular = stat.S_ISREG(entry.lstat().st_mode)
        except OSError:
            regular = False
        if regular and entry.name in RUN_ARTIFACTS:
            files.append(entry)
        elif not (regular and entry.name.startswith(".")):  # bnbench's own .lock and temporary files
            other.append(entry.name)
    return files, other


def to_mlflow(runs: list[Run], tracking_uri: str, experiment: str,
              warn: Callable[[str], None] = lambda message: None) -> dict[str, tuple[str, str]]:  # fmt: skip
    """Runs as MLflow runs (children of their study's parent run); returns run name -> (what was done:
    "exported", "updated" or "unchanged", MLflow run id). Idempotent: each run carries tags bnbench.key (its
    identity) and bnbench.fingerprint (its status and values); a run already exported unchanged is skipped,
    a changed one (resumed, finished since) replaces its old MLflow run. A run still training is skipped
    with a `warn`. An export that fails midway deletes the MLflow run it was writing (none is left RUNNING).
    A param longer than MLflow's limit is cut and marked ("…", tag bnbench.cut_params), with one `warn` per
    key; the full resolved config is the run's config.yaml artifact. Only the regular files bnbench wrote
    are uploaded; anything else in a run directory is one `warn`."""
    import logging

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a server that goes away: fail, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines about database tables say nothing
    logging.getLogger("alembic").setLevel(logging.WARNING)

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        experiment_id = client.create_experiment(experiment, artifact_location=_artifacts_beside(tracking_uri))
    elif found.lifecycle_stage != "active":
        raise UsageError(f"--experiment {experiment}: deleted in MLflow; restore it there or name another")
    else:
        experiment_id = found.experiment_id
    earlier, studies, orphans = _exported(client, experiment_id)
    for run_id in orphans:  # runs an export killed outright (SIGKILL) left half-written: replaced below
        _discard(client, run_id)
    from bnbench.runs.execute import stop_on_signals

    with stop_on_signals() as stop:  # Ctrl-C, SIGTERM, a closed terminal: finish the MLflow call, clean up
        export = _MlflowExport(client, experiment_id, earlier, studies, mlflow_param_limit(), warn, stop)
        for run in runs:
            if stop():
                raise KeyboardInterrupt
            export.one(run)
    return export.done


@dataclass
class _MlflowExport:
    """One `to_mlflow` call's state: what the store held before, and what this call has done so far."""

    client: Any
    experiment_id: str
    earlier: dict  # bnbench.key -> the MLflow run a previous export made
    studies: dict  # study folder -> its parent MLflow run id
    limit: int  # MLflow's longest param value
    warn: Callable[[str], None]
    stop: Callable[[], bool]
    parents: dict[Path, str] = field(default_factory=dict)
    done: dict[str, tuple[str, str]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # bnbench.key -> the path exported under it
    warned: set = field(default_factory=set)

    def one(self, run: Run) -> None:
        """One run into MLflow: skipped, exported, or replacing its earlier export."""
        if run.status == "running":
            self.warn(f"{run.path}: still training; not exported (export it again when it has ended)")
            return
        key, fingerprint = run_key(run), run_fingerprint(run)
        if key in self.keys:
            self.warn(f"{run.path}: the same run as {self.keys[key]} (a copy); exported once")
            return
        self.keys[key] = str(run.path)
        old = self.earlier.get(key)
        if old is not None and old.data.tags.get("bnbench.fingerprint") == fingerprint:
            self.done[run.name] = ("unchanged", old.info.run_id)
            return
        saved = run.path.parent / STUDY_FILE
        study = run.path.parent if saved.is_file() and not saved.is_symlink() else None
        tags = {"bnbench.path": str(run.path.resolve()), "bnbench.status": run.status, "bnbench.key": key}
        if study is not None:
            if study not in self.parents:
                self.parents[study] = _study_parent(self.client, self.experiment_id, study, self.studies)
            tags["mlflow.parentRunId"] = self.parents[study]
        child = self.client.create_run(self.experiment_id, run_name=run.name, tags=tags,
                                       start_time=int(_start(run) * 1000))  # fmt: skip
        try:
            _log_run(self.client, child.info.run_id, run, self.limit, self.warned, self.warn, self.stop)
            self.client.set_tag(child.info.run_id, "bnbench.fingerprint", fingerprint)  # last: the export is whole
            self.client.set_terminated(child.info.run_id, status=MLFLOW_STATUS.get(run.status, "FAILED"))
        except BaseException:
            _discard(self.client, child.info.run_id)
            raise
        if old is not None:
            _discard(self.client, old.info.run_id)
        self.done[run.name] = ("updated" if old is not None else "exported", child.info.run_id)


def _exported(client, experiment_id: str) -> tuple[dict, dict, list]:
    """What bnbench exported to the experiment before: the whole runs by bnbench.key (a key twice: the
    newest), the studies' parent runs by study folder, and the ids of half-written runs (a key, no
    fingerprint: an export killed outright)."""
    runs, parents, orphans, token = {}, {}, [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, order_by=["attributes.start_time ASC"],
                                  page_token=token)  # fmt: skip
        for run in page:
            tags = run.data.tags
            if tags.get("bnbench.key") and tags.get("bnbench.fingerprint") is not None:  # written last: whole
                runs[tags["bnbench.key"]] = run
            elif tags.get("bnbench.key"):
                orphans.append(run.info.run_id)
            elif tags.get("bnbench.study") and run.info.status == "FINISHED":
                parents[tags["bnbench.study"]] = run.info.run_id
        token = page.token
        if not token:
            return runs, parents, orphans


def _study_parent(client, experiment_id: str, study: Path, parents: dict) -> str:
    """The parent run of a study's runs: the one an earlier export made, else a new one."""
    where = str(study.resolve())  # the folder, however it was typed
    if where in parents:
        return parents[where]
    parent = client.create_run(experiment_id, run_name=study.name, tags={"bnbench.study": where})
    try:
        client.log_artifact(parent.info.run_id, str(study / STUDY_FILE))
        client.set_terminated(parent.info.run_id)
    except BaseException:
        _discard(client, parent.info.run_id)
        raise
    return parent.info.run_id


def _discard(client, run_id: str) -> None:
    """Ends and deletes an MLflow run an export could not finish (or one a newer export replaces)."""
    try:
        client.set_terminated(run_id, status="FAILED")
        client.delete_run(run_id)
    except Exception:  # noqa: BLE001 - the store is gone too: nothing more can be done from here
        pass


def _log_run(client, run_id: str, run: Run, limit: int, warned: set, warn: Callable[[str], None],
             stop: Callable[[], bool] = lambda: False) -> None:  # fmt: skip
    """A run's params, metrics per epoch and per step, and artifacts, in MLflow's batch limits."""
    from mlflow.entities import Metric, Param

    values, cut = mlflow_params(run, limit)
    params = [Param(k, v) for k, v in values.items()]
    for key in cut:
        if key not in warned:
            warned.add(key)
            warn(f"{key}: longer than MLflow's {limit:,} characters, cut and marked '…' (tag bnbench.cut_params); "
                 "the full config is each run's config.yaml artifact")  # fmt: skip
    if cut:
        client.set_tag(run_id, "bnbench.cut_params", ",".join(cut))
    metrics = []
    for i, when in enumerate(epoch_times(run)):
        epoch = int(run.table["epoch"][i])
        metrics += [Metric(c, float(v[i]), int(when * 1000), epoch) for c, v in run.table.items()
                    if c != "epoch" and _finite(v[i])]  # fmt: skip
    for i, when in enumerate(step_times(run)):
        step = int(run.step_table["step"][i])
        metrics += [Metric(f"step_{c}", float(v[i]), int(when * 1000), step) for c, v in run.step_table.items()
                    if c not in ("step", "epoch") and _finite(v[i])]  # fmt: skip
    for start in range(0, len(params), 100):  # MLflow's limits per batch: 100 params, 1,000 metrics
        client.log_batch(run_id, params=params[start : start + 100])
    for start in range(0, len(metrics), 1000):
        if stop():  # between MLflow calls: the store is never left mid-write (SQLite would stay locked)
            raise KeyboardInterrupt
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    files, other = run_artifacts(run.path)
    if other:
        warn(f"{run.path}: not uploaded (not a regular file bnbench wrote): {', '.join(other[:5])}")
    for file in files:
        if stop():
            raise KeyboardInterrupt
        client.log_artifact(run_id, str(file))
