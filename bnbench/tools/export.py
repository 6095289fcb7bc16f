"""`bnbench export`: recorded runs into the trackers researchers already use, after the fact (training is
untouched). TensorBoard: one sub-folder per run with every metrics.csv column per epoch and every steps.csv
column per step, wall times from the records, the resolved config as hyperparameters. MLflow: a study is a
parent run, each run a child run with its config as params, metrics per epoch and per step, and the run
directory as artifacts. Both libraries are optional extras.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from pathlib import Path

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
    taken = [str(t) for t in targets if t.exists()]
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


def _artifacts_beside(tracking_uri: str) -> str | None:
    """For a SQLite store, artifacts go in `mlartifacts/` beside the database file, not into whatever folder
    the command ran in (MLflow's default, `./mlruns`); other stores keep MLflow's default."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.resolve().parent / "mlartifacts").as_uri()


def to_mlflow(runs: list[Run], tracking_uri: str, experiment: str,
              warn: Callable[[str], None] = lambda message: None) -> dict[str, str]:  # fmt: skip
    """Runs as MLflow runs (children of their study's parent run); returns run name -> MLflow run id.
    A param longer than MLflow's limit is cut and marked ("…", tag bnbench.cut_params), with one `warn`
    per key; the full resolved config is the run's config.yaml artifact."""
    import logging

    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines about database tables say nothing

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        experiment_id = client.create_experiment(experiment, artifact_location=_artifacts_beside(tracking_uri))
    else:
        experiment_id = found.experiment_id
    parents: dict[Path, str] = {}
    ids = {}
    limit, warned = mlflow_param_limit(), set()
    for run in runs:
        study = run.path.parent if (run.path.parent / STUDY_FILE).is_file() else None
        tags = {"bnbench.path": str(run.path.resolve()), "bnbench.status": run.status}
        if study is not None:
            if study not in parents:
                parent = client.create_run(experiment_id, run_name=study.name, tags={"bnbench.study": str(study)})
                client.log_artifact(parent.info.run_id, str(study / STUDY_FILE))
                client.set_terminated(parent.info.run_id)
                parents[study] = parent.info.run_id
            tags["mlflow.parentRunId"] = parents[study]
        child = client.create_run(experiment_id, run_name=run.name, tags=tags, start_time=int(_start(run) * 1000))
        run_id = child.info.run_id
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
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        client.log_artifacts(run_id, str(run.path))
        client.set_terminated(run_id, status=MLFLOW_STATUS.get(run.status, "FAILED"))
        ids[run.name] = run_id
    return ids
