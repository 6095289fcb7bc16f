"""The sweep engine: many runs at once, in local worker processes or as Ray tasks, resumably.

Planning (which runs to start, resume or skip) happens in the parent from the run directories'
states; each run is then `runs.run_job` in a worker, which holds the run directory's lock for the
run's whole life, so two sweeps over one study never write the same run. Workers are spawned
processes with `torch.set_num_threads(threads_per_job)`, so N jobs never oversubscribe the cores.
On Linux a worker is sent SIGTERM when the sweep process dies (even by SIGKILL): its run stops
as `interrupted` with its checkpoint, and the next sweep resumes it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from bnbench.errors import UsageError
from bnbench.records import atomic_write
from bnbench.runs.rundir import LockHeld, check_writable, config_changes, read_meta, status_of
from bnbench.runs.study import (
    STUDY_FILE,
    Study,
    dump_study,
    in_shard,
    saved_study,
    sequential_changes,
    study_differences,
)

# A progress update from a worker: (worker pid, run name, epoch, epochs, steps done, steps, loss).
Progress = tuple[int, str, int, int, int, int, float]
FINAL = ("completed", "diverged")


@dataclass
class Plan:
    jobs: list  # runs.Job: runs to start or resume
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run name, why)
    folder: Path | None = None
    study: Study | None = None
    failed: list[str] = field(default_factory=list)  # runs that failed earlier and are not retried


MAX_RUNS = 100_000


def plan_study(
    study: Study,
    out_dir: Path,
    retry_failed: bool,
    folder: Path | None = None,
    shard: tuple[int, int] | None = None,
    planned: list | None = None,
) -> Plan:
    """Validate every cell, compare with a saved study, and decide per run: start, resume or skip.
    `folder` is a saved study's own folder (re-run where it is); by default OUT_DIR/<study name>. With
    `shard` (i, N), only the i-th of N disjoint parts of the study is planned (see study.in_shard).
    `planned`: the study's runs to consider (study.PlannedRun), where not all of them: a sequential look."""
    from bnbench.runs.execute import DamagedCheckpoint, Job, read_checkpoint
    from bnbench.runs.rundir import has_recorded_rows, is_run_dir

    count = study.run_count()
    if count > MAX_RUNS:
        raise UsageError(f"study {study.name}: {count:,} runs; a study has at most {MAX_RUNS:,}")
    folder = folder or out_dir / study.name
    if (folder / "meta.json").exists() or is_run_dir(folder):
        raise UsageError(f"{folder} holds a run, not a study: give the study another --name or another --out-dir")
    if planned is None:
        planned = [run for position, run in enumerate(study.runs()) if in_shard(position, shard)]
    saved = saved_study(folder) if folder.is_dir() else None
    if saved is not None:
        changed = study_differences(saved, study)
        if changed:
            raise UsageError(
                f"{folder / STUDY_FILE}: the study differs from the one saved there in {', '.join(changed)}; "
                f"give it another --name or another --out-dir"
            )
    if saved is not None and (decided := sequential_changes(saved, study)):
        raise UsageError(
            f"{folder / STUDY_FILE}: the study runs under a sequential rule, and {', '.join(decided)} would change "
            f"what its looks decided (the error rates hold only for a rule fixed in advance); give it another --name"
        )
    if saved is not None and study.sequential is None and saved.sequential is not None:
        study = replace(study, sequential=saved.sequential)  # its extra seeds stay judged by its rule
    plan = Plan([], folder=folder, study=study)
    for run in planned:
        path = folder / run.name
        try:
            status = status_of(path)
        except (OSError, ValueError) as exc:
            plan.skipped.append((run.name, f"unreadable {path / 'meta.json'} ({type(exc).__name__}); not touched"))
            continue
        source = f"study {study.name}, run {run.name}"
        if status in FINAL:
            plan.skipped.append((run.name, status))
        elif status == "failed" and not retry_failed:
            plan.skipped.append((run.name, "failed earlier (--retry-failed runs it again)"))
            plan.failed.append(run.name)
        elif status == "running":
            meta = read_meta(path)
            plan.skipped.append((run.name, f"running in pid {meta.get('pid')} on {meta.get('hostname')}"))
        elif status in ("interrupted", "stale", "failed"):
            changed = config_changes(read_meta(path), run.config.to_dict())
            if changed:
                raise UsageError(
                    f"{path}: the run started with another config than the study now asks for "
                    f"({', '.join(changed)}); put {folder / STUDY_FILE} back, or start the study under another name"
                )
            try:  # loaded safely (weights only) before anything runs: a damaged or crafted file stops here
                read_checkpoint(path, run.config)
            except DamagedCheckpoint as exc:
                raise UsageError(
                    f"{exc}; the run cannot be resumed: move {path} away and the sweep starts it again"
                ) from None
            plan.jobs.append(Job(run.config, run.name, source, path=path, resume=True))
        elif has_recorded_rows(path):  # epochs on disk but no meta.json: never start over them
            plan.skipped.append((run.name, f"{path / 'metrics.csv'} holds epochs but no meta.json; not touched"))
        else:  # new, or a directory whose run never recorded anything: start it there
            plan.jobs.append(Job(run.config, run.name, source, path=path))
    return plan


def save_study(plan: Plan) -> None:
    check_writable(plan.folder)
    atomic_write(plan.folder / STUDY_FILE, dump_study(plan.study))


def _die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


_PARENT: list[int] = []  # the sweep process that started this worker


def _watch_parent(parent: int) -> None:
    """A second guard beside PR_SET_PDEATHSIG (which fires when the parent *thread* exits, and not at all
    off Linux): once the sweep is gone, stop the run (SIGTERM: it ends `interrupted`), then exit."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(20.0)  # time to write the checkpoint and meta.json of an interrupted run
    os._exit(130)


_STOP_PENDING: list[int] = []  # stops (signal numbers) a worker was asked for while it held no run


def _stop_while_idle(signum: int, frame: object) -> None:
    """A worker between runs keeps a stop for the run it may be handed next (a sweep hands it one in the
    same instant a terminal closes), rather than dying by the signal's default action."""
    _STOP_PENDING.append(signum)


def _init_worker(threads: int) -> None:
    import torch

    from bnbench.runs.execute import FORWARDED_STOP

    _PARENT.append(os.getppid())
    _die_with_parent()
    threading.Thread(target=_watch_parent, args=(_PARENT[0],), daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an idle worker ignores Ctrl-C; a run handles its own
    for sig in {FORWARDED_STOP, getattr(signal, "SIGHUP", FORWARDED_STOP)}:  # SIGTERM still ends an idle worker
        signal.signal(sig, _stop_while_idle)
    torch.set_num_threads(threads)


class _PipeReporter:
    """Sends progress to the parent's display over the worker's own pipe; prints nothing (workers share
    the terminal). A parent that is gone is not the run's failure: the update is dropped."""

    def __init__(self, send: Callable[[object], None], name: str, epochs: int) -> None:
        self.send, self.name, self.epochs = send, name, epochs
        self.epoch, self.steps = 0, 0

    def _put(self, update: Progress) -> None:
        try:
            self.send(("progress", update))
        except (OSError, EOFError, ValueError):
            pass

    def started(self, path: Path, note: str, batch_size: int) -> None:
        pass

    def epoch_start(self, epoch: int, steps: int) -> None:
        self.epoch, self.steps = epoch, steps
        self._put((os.getpid(), self.name, epoch, self.epochs, 0, steps, float("nan")))

    def progress(self, steps_done: int, loss: float, acc: float) -> None:
        self._put((os.getpid(), self.name, self.epoch, self.epochs, steps_done, self.steps, loss))

    def evaluating(self) -> None:
        pass

    def epoch_end(self, row: dict) -> None:
        pass


_DATA: dict = {}  # one dataset per worker process, kept between its runs


def run_in_worker(job, device_option: str, root: Path, out_dir: Path, send: Callable[[object], None] | None = None):
    """One run in a worker process (or Ray task); never raises for the run's own failures."""
    from bnbench.runs.execute import EXIT_FAILED, RunResult, run_job, stop_on_signals
    from bnbench.training.data import load_data
    from bnbench.training.train import SilentReporter, pick_device

    device = pick_device(device_option)
    key = (job.cfg.data, str(root), str(device))
    with stop_on_signals(interrupt=not _PARENT, requested=bool(_STOP_PENDING)) as stop:  # local: the sweep forwards
        try:
            if key not in _DATA:
                _DATA.clear()
                _DATA[key] = load_data(job.cfg.data, root, device)
            make_reporter = (
                (lambda n, e: _PipeReporter(send, n, e)) if send is not None else (lambda n, e: SilentReporter())
            )
            return run_job(job, _DATA[key], device, root, out_dir, make_reporter, stop)
        except LockHeld as exc:
            return RunResult(job.path, "skipped", 0, None, 0, str(exc))
        except KeyboardInterrupt:  # a second stop before the run's loop began (loading data, creating the run)
            return _stopped_before_training(job, out_dir)
        except Exception as exc:  # noqa: BLE001 - a run that could not even start is a failed run
            return RunResult(job.path or out_dir / job.run_name, "failed", 0, None, EXIT_FAILED,
                             f"{type(exc).__name__}: {exc}")  # fmt: skip
        finally:
            if _PARENT and os.getppid() != _PARENT[0]:  # the sweep died: nobody waits for this result
                os._exit(130)


def _stopped_before_training(job, out_dir: Path):
    """The result of a run stopped twice before its training loop could record the stop itself."""
    from bnbench.runs.execute import EXIT_INTERRUPTED, RunResult
    from bnbench.runs.rundir import RunDir, is_run_dir

    path, epochs = job.path or out_dir / job.run_name, 0
    if is_run_dir(path):
        try:
            run = RunDir(path, read_meta(path))
            if run.meta.get("status") == "running":
                run.update_meta(status="interrupted", error="interrupted before training began")
            epochs = int(run.meta.get("epochs_completed") or 0)
        except (OSError, ValueError):
            pass
    return RunResult(path, "interrupted", epochs, None, EXIT_INTERRUPTED, "interrupted before training began")


def _worker_main(conn, threads: int, progress: bool) -> None:
    """A worker process: runs the jobs the sweep sends over `conn`, one at a time, until told to stop."""
    _init_worker(threads)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the sweep is gone
            return
        if message is None:  # done: every run's files are written and synced; skip the interpreter's
            sys.stdout.flush()  # teardown of torch (a second or more per worker on a busy machine)
            sys.stderr.flush()
            os._exit(0)
        job, device_option, root, out_dir = message
        result = run_in_worker(job, device_option, root, out_dir, conn.send if progress else None)
        try:
            conn.send(("result", result))
        except (OSError, ValueError):
            return


class _Worker:
    """One spawned worker process and its pipe. Spawned, not forked: forking a process whose OpenMP
    threads have run can deadlock the child, and the worker's parent-death signal needs this parent."""

    def __init__(self, context, threads: int, progress: bool) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, threads, progress), daemon=True)
        self.process.start()
        child.close()
        self.job = None

    def send(self, job, *args: object) -> None:
        self.job = job
        self.conn.send((job, *args))

    def ask_to_stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass

    def close(self, grace: float) -> None:
        """Wait for the worker asked to stop (`ask_to_stop`) to end; after `grace` seconds end it."""
        self.process.join(grace)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


def _died(job, out_dir: Path, exitcode: int | None, stopped: bool = False):
    """The result of a run whose worker process died under it (killed from outside, out of memory): the
    run is marked failed in its meta.json, so the next sweep or --retry-failed sees it; the rest go on.
    `stopped`: the sweep forwarded a stop; a worker it ended before its handlers were set is interrupted."""
    from bnbench.runs.execute import EXIT_FAILED, FORWARDED_STOP, RunResult
    from bnbench.runs.rundir import RunDir, is_run_dir

    if stopped and exitcode == -FORWARDED_STOP:
        return _stopped_before_training(job, out_dir)
    path = job.path or out_dir / job.run_name
    how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    error = f"the worker process died ({how}) during this run"
    epochs = 0
    if is_run_dir(path):
        try:
            run = RunDir(path, read_meta(path))
            if run.meta.get("status") == "running":
                run.update_meta(status="failed", error=error)
            epochs = int(run.meta.get("epochs_completed") or 0)
        except (OSError, ValueError):
            pass
    return RunResult(path, "failed", epochs, None, EXIT_FAILED, error)


def run_local(
    jobs: list,
    device_option: str,
    root: Path,
    out_dir: Path,
    workers: int,
    threads: int,
    on_result: Callable,
    on_progress: Callable[[Progress], None] | None = None,
) -> tuple[list, bool]:
    """Run `jobs` on `workers` worker processes; `on_result(result)` as each finishes. A job is handed to a
    worker only when one is free, so a stop (signal) starts nothing new; a worker that dies fails only its
    own run and is replaced. Returns the results and whether a signal stopped the sweep."""
    from multiprocessing.connection import wait as wait_for

    from bnbench.runs.execute import FORWARDED_STOP, stop_on_signals

    context = multiprocessing.get_context("spawn")
    todo, idle, busy = list(jobs), [], []
    results: list = []
    with stop_on_signals() as stop:
        forwarded = False
        try:
            while todo or busy:
                while todo and not stop() and len(busy) < workers:
                    worker = idle.pop() if idle else _Worker(context, threads, on_progress is not None)
                    worker.send(todo.pop(0), device_option, root, out_dir)
                    busy.append(worker)
                if not busy:  # stopped: nothing runs, nothing more starts
                    break
                ready = wait_for([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=0.5)
                for worker in list(busy):
                    result = None
                    try:
                        while worker.conn in ready and worker.conn.poll():
                            kind, payload = worker.conn.recv()
                            if kind == "progress" and on_progress is not None:
                                on_progress(payload)
                            elif kind == "result":
                                result = payload
                                break
                    except (EOFError, OSError):
                        pass
                    if result is None and not worker.process.is_alive():
                        worker.process.join()
                        result = _died(worker.job, out_dir, worker.process.exitcode, stopped=forwarded)
                        busy.remove(worker)
                    elif result is not None:
                        busy.remove(worker)
                        idle.append(worker)
                    if result is not None:
                        results.append(result)
                        on_result(result)
                if stop() and not forwarded:  # let the running runs stop cleanly, with their checkpoints
                    forwarded = True
                    for worker in busy:  # workers ignore SIGINT: one stop each, whatever stopped the sweep; a
                        if worker.process.is_alive():  # worker that got the same SIGHUP does not take it as a second
                            os.kill(worker.process.pid, FORWARDED_STOP)
        finally:
            for worker in idle + busy:  # all at once: the idle ones exit while the others are joined
                worker.ask_to_stop()
            for worker in idle + busy:
                worker.close(grace=30 if worker in busy else 5)
    return results, stop()


def run_in_ray_task(job, device_option: str, root: Path, out_dir: Path, threads: int):
    import torch

    torch.set_num_threads(threads)
    return run_in_worker(job, device_option, root, out_dir)


def run_ray(
    jobs: list,
    device_option: str,
    root: Path,
    out_dir: Path,
    address: str | None,
    cpus_per_run: float,
    gpus_per_run: float,
    on_result: Callable,
) -> list:
    """Each run as a Ray task; `address` joins a cluster started with `ray start`, None starts a local one."""
    try:
        import ray
    except ImportError:
        raise UsageError("--backend ray: Ray is not installed; pip install 'bnbench[ray]'") from None
    from bnbench.runs.execute import EXIT_FAILED, RunResult

    if not ray.is_initialized():
        kwargs = {} if address else {"num_cpus": os.cpu_count()}
        # Ray's workers do not inherit this process's import path: a plugin norm or model in the current
        # folder (see plugins.py) or on PYTHONPATH must be importable there too.
        paths = [p for p in (os.environ.get("PYTHONPATH"), os.getcwd()) if p]
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="error", **kwargs)
    task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run)(run_in_ray_task)
    threads = max(1, int(cpus_per_run))
    pending = {task.remote(job, device_option, root, out_dir, threads): job for job in jobs}
    results = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(done[0])
        try:
            result = ray.get(done[0])
        except ray.exceptions.RayError as exc:
            result = RunResult(job.path or out_dir / job.run_name, "failed", 0, None, EXIT_FAILED, f"Ray: {exc}")
        if result.status != "skipped" and not Path(result.path).is_dir():
            result.status, result.exit_code = "failed", EXIT_FAILED
            result.error = (
                f"{result.path} was written on another node and is not visible here: "
                "--out-dir must be a folder every node sees (a shared file system)"
            )
        results.append(result)
        on_result(result)
    return results


def default_jobs(device_option: str) -> int:
    """One job per core on a CPU; one on an accelerator unless --jobs asks for more."""
    from bnbench.runs.execute import usable_cores

    return 1 if device_option in ("cuda", "mps") else usable_cores()


@dataclass(frozen=True)
class Engine:
    """How runs are executed: where, how many at once, on which backend."""

    device: str = "auto"
    data_dir: Path | None = None
    jobs: int | None = None  # None: default_jobs(device)
    threads_per_job: int | None = None  # None: runs.execute.job_threads (1)
    backend: str = "local"  # local | ray
    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0


def check_ray_address(address: str | None, wait_seconds: float = 5.0) -> None:
    """A cluster address must answer within `wait_seconds` (Ray itself retries for minutes, logging each
    try): refused here, before anything is written."""
    import socket

    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address}: expected host:port, as `ray start --head` prints it")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=wait_seconds).close()
    except OSError as exc:
        raise UsageError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
            "`ray start --head`, or leave --address out for a local Ray"
        ) from None


def prepare(jobs: list, engine: Engine) -> Path:
    """Every check that can fail on bad input, before anything is written: the backend, the device, the
    data for every job. Returns the data folder."""
    from bnbench.runs.execute import check_jobs, data_root
    from bnbench.training.train import check_precision, pick_device

    if engine.backend not in ("local", "ray"):
        raise UsageError(f"--backend {engine.backend}: choose local or ray")
    if engine.backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError("--backend ray: Ray is not installed; pip install 'bnbench[ray]'") from None
        check_ray_address(engine.address)
    device = pick_device(engine.device)  # an unavailable device is bad input, before any work
    check_precision((job.cfg.train.precision for job in jobs), device)
    root = data_root(jobs, engine.data_dir)
    check_jobs(jobs, root)
    return root


def execute(
    jobs: list, engine: Engine, out_dir: Path, root: Path, on_result: Callable, on_progress: Callable | None = None
) -> tuple[list, int]:
    """Run every job (checked by `prepare`); return the results and the exit code: 0 when every run
    completed or diverged, 1 when any failed, 130 when the sweep was stopped."""
    from bnbench.runs.execute import EXIT_FAILED, EXIT_INTERRUPTED, job_threads

    check_writable(out_dir)
    root, out_dir = root.resolve(), out_dir.resolve()  # workers, and Ray nodes, get absolute paths
    workers = engine.jobs or default_jobs(engine.device)
    threads = job_threads(engine.threads_per_job)  # as `run` alone: the same numbers from any --jobs
    stopped = False
    if not jobs:
        results = []
    elif engine.backend == "ray":
        results = run_ray(jobs, engine.device, root, out_dir, engine.address, engine.cpus_per_run,
                          engine.gpus_per_run, on_result)  # fmt: skip
    else:
        results, stopped = run_local(jobs, engine.device, root, out_dir, min(workers, len(jobs)), threads,
                                     on_result, on_progress)  # fmt: skip
    codes = {r.exit_code for r in results}
    if stopped or EXIT_INTERRUPTED in codes:
        return results, EXIT_INTERRUPTED
    return results, EXIT_FAILED if EXIT_FAILED in codes else 0
