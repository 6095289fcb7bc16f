"""How long a set of runs will take on this machine, for `sweep --dry-run`.

Seconds per epoch come from runs already recorded in the study folder with the same shape (model,
norm, data, batch), else from timing a few training steps and one evaluation on synthetic data of the
configured size, with the threads each worker will have. Runs are then packed onto `jobs` workers,
longest first. Diagnostics and precise statistics are not timed: the estimate is a floor for those.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from bnbench.config import RunConfig, config_from_dict
from bnbench.errors import UsageError
from bnbench.runs.sweep import Engine, default_jobs
from bnbench.training.data import SYNTHETIC_SIZES, Data, Split, synthetic, to_inputs, val_count

FULL_SIZES = {"mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000)}
TIMED_STEPS, WARMUP_STEPS, TIMED_EVAL = 8, 2, 2048


def shape_of(cfg: RunConfig) -> str:
    """What an epoch's duration depends on (not the learning rate, seed or epochs)."""
    d = cfg.to_dict()
    train = {k: d["train"][k] for k in ("batch_size", "accumulate", "eval_batch_size", "eval_bn", "optimizer")}
    return json.dumps([d["model"], d["norm"], d["data"], train], sort_keys=True, default=str)


def sizes(cfg: RunConfig) -> tuple[int, int]:
    n_train, n_test = FULL_SIZES.get(cfg.data.dataset, (SYNTHETIC_SIZES["train"], SYNTHETIC_SIZES["test"]))
    n = min(n_train, cfg.data.train_subset or n_train)
    held = val_count(n, cfg.data)  # evaluated each epoch like the test set
    return n - held, n_test + held


def recorded_epoch_seconds(folder: Path | None) -> dict[str, list[float]]:
    """Epoch durations of the runs already in `folder`, by shape (read as `compare` reads runs: damaged
    files are skipped, never waited on)."""
    from bnbench.evidence.compare import find_runs

    found: dict[str, list[float]] = {}
    if folder is None or not folder.is_dir():
        return found
    for run in find_runs([folder])[0]:
        try:
            cfg = config_from_dict(run.config, str(run.path / "config.yaml"))
        except UsageError:  # a config this version no longer reads gives no figure
            continue
        found.setdefault(shape_of(cfg), []).extend(run.table.get("epoch_seconds", []))
    return found


def measured_epoch_seconds(cfg: RunConfig, device: torch.device) -> float:
    """Time a few steps and an evaluation on synthetic data of this config's sizes; scale to an epoch."""
    from bnbench.training.train import Trainer, batch_bounds, has_running_stats

    n_train, n_test = sizes(cfg)
    steps = TIMED_STEPS + WARMUP_STEPS
    n = min(n_train, steps * cfg.train.batch_size)
    images, labels = synthetic(max(n, 2), seed=0)
    test_images, test_labels = synthetic(min(n_test, TIMED_EVAL), seed=1)
    data = Data(
        Split(to_inputs(images, cfg.data.normalize, device), labels.to(device)),
        Split(to_inputs(test_images, cfg.data.normalize, device), test_labels.to(device)),
    )
    timed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, on_nan="continue"))
    trainer = Trainer.create(timed, data, device)  # a config that diverges still takes the time it takes
    trainer.train_epoch(1, max_steps=WARMUP_STEPS)
    started = time.perf_counter()
    trainer.train_epoch(2, max_steps=TIMED_STEPS)
    step_seconds = (time.perf_counter() - started) / min(TIMED_STEPS, len(batch_bounds(n, cfg.train.batch_size)))
    started = time.perf_counter()
    trainer.evaluate(data.test, batch_stats=False)
    eval_seconds = (time.perf_counter() - started) * n_test / len(data.test)
    evaluations = 2 if has_running_stats(trainer.model) else 1  # BN runs evaluate with both statistics
    return step_seconds * len(batch_bounds(n_train, cfg.train.batch_size)) + evaluations * eval_seconds


def makespan(durations: list[float], workers: int) -> float:
    """Wall time of running `durations` on `workers`, longest first, each on the least-loaded worker."""
    loads = [0.0] * max(1, workers)
    for seconds in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += seconds
    return max(loads)


def estimate_wall_seconds(jobs: list, engine: Engine, folder: Path | None) -> tuple[float, str]:
    """(seconds, how the figure was made) for `jobs` (runs.Job) under `engine`."""
    from bnbench.runs.execute import job_threads
    from bnbench.runs.rundir import read_meta
    from bnbench.training.train import pick_device

    workers = min(engine.jobs or default_jobs(engine.device), len(jobs))
    threads = job_threads(engine.threads_per_job)
    recorded = recorded_epoch_seconds(folder)
    measured: dict[str, float] = {}
    device = pick_device(engine.device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        durations = []
        for job in jobs:
            shape = shape_of(job.cfg)
            if shape in recorded:
                per_epoch = sum(recorded[shape]) / len(recorded[shape])
            else:
                if shape not in measured:
                    measured[shape] = measured_epoch_seconds(job.cfg, device)
                per_epoch = measured[shape]
            done = 0
            if job.resume and job.path is not None:
                try:
                    done = int(read_meta(job.path).get("epochs_completed") or 0)
                except (OSError, ValueError):
                    done = 0
            durations.append(per_epoch * max(0, job.cfg.train.epochs - done))
    finally:
        torch.set_num_threads(previous_threads)
    sources = []
    if len(measured) < len({shape_of(j.cfg) for j in jobs}):
        sources.append("runs recorded in the study folder")
    if measured:
        sources.append(f"{len(measured)} run shapes timed now on {device} with {threads} thread(s) each")
    how = f"{workers} at once; from {' and '.join(sources)}"
    return makespan(durations, workers), how
