"""Run directories: claiming them, writing their files safely, executing and resuming a run.

Files are never half-written: CSV rows are appended and flushed per epoch; meta.json, config.yaml,
model.pt and checkpoint.pt are written to a temporary file and renamed over the old one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

import bnbench
from bnbench.config import DataConfig, RunConfig, config_from_dict, load_config, shorten
from bnbench.errors import UsageError
from bnbench.nn.models import MODELS, build_run_model
from bnbench.nn.norms import NORMS
from bnbench.plugins import PluginError
from bnbench.records import DamagedFile, atomic_write, check_run_files, read_run_file
from bnbench.runs.rundir import (
    LockHeld,
    RunDir,
    RunLock,
    check_writable,
    claim_run_dir,
    config_changes,
    config_sha256,
    differences,
    is_alive,
    is_run_dir,
    now,
    read_meta,
)
from bnbench.training.data import Data, data_dir_from, load_data, train_size
from bnbench.training.train import (
    Diverged,
    Interrupted,
    Reporter,
    Trainer,
    check_precision,
    device_name,
    pick_device,
)

EXIT_FAILED, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 3, 130


def atomic_torch_save(obj: object, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(bnbench.__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def create_run(cfg: RunConfig, path: Path, trainer: Trainer, device: torch.device, data_dir: Path,
               invocation: dict | None = None) -> RunDir:  # fmt: skip
    """Write a new run's config, empty CSVs and meta.json into `path` (created and locked by the caller);
    `invocation` ({key, id}) ties it to the `bnbench run` command that started it (see `plan_continuation`)."""
    config_text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(path / "config.yaml", config_text)
    for schema in trainer.records:
        schema.create(path)
    run = RunDir(path, {})
    run.update_meta(
        name=path.name,
        status="running",
        started_at=now(),
        ended_at=None,
        command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        seed=cfg.train.seed,
        device=str(device),
        device_name=device_name(device),
        versions={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": _torchvision_version(),
            "bnbench": bnbench.__version__,
        },
        git_commit=git_commit(),
        data_dir=str(data_dir.resolve()) if cfg.data.dataset != "synthetic" else None,
        epochs=cfg.train.epochs,
        epochs_completed=0,
        config=cfg.to_dict(),  # what config.yaml said at the start: resume refuses an edited one
        config_sha256=config_sha256(config_text),  # lets a reader trust config.yaml without parsing it
        error=None,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        threads=torch.get_num_threads(),  # torch's intra-op threads: the numbers can depend on them
        **({"invocation": invocation} if invocation else {}),
    )
    return run


def _torchvision_version() -> str | None:
    try:
        import torchvision
    except ImportError:
        return None
    return torchvision.__version__


CHECKPOINT_KEYS = ("model", "optimizer", "order", "rng", "epoch")
OLD_FORMAT_GLOBALS = {"numpy.dtype", "numpy.ndarray", "numpy._core.multiarray._reconstruct",
                      "numpy.core.multiarray._reconstruct", "numpy.dtypes.UInt32DType"}  # fmt: skip


class DamagedCheckpoint(Exception):
    """checkpoint.pt cannot be resumed from: the message names the file and what is wrong."""


def read_checkpoint(run_dir: Path, cfg: RunConfig) -> dict | None:
    """checkpoint.pt, loaded with `weights_only=True` (tensors and plain types only: a file someone sent
    can never run code here) and checked to be a whole bnbench checkpoint of this config's model; None:
    there is none yet. Anything else raises DamagedCheckpoint."""
    from bnbench.nn.models import build_run_model

    path = run_dir / "checkpoint.pt"
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise DamagedCheckpoint(f"{path}: not a regular file (a link or a special file is never read)")
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a truncated, garbage or unsafe file raises many kinds
        raise DamagedCheckpoint(_why_unloadable(path, exc)) from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise DamagedCheckpoint(f"{path}: not a bnbench checkpoint (expected {', '.join(CHECKPOINT_KEYS)})")
    rng = state["rng"]
    if not isinstance(rng, dict) or not isinstance(rng.get("numpy"), dict) or not isinstance(rng.get("python"), dict):
        raise DamagedCheckpoint(f"{path}: not a bnbench checkpoint (its random-number state is not bnbench's)")
    model = build_run_model(cfg)
    want = {k: tuple(getattr(v, "shape", ())) for k, v in model.state_dict().items()}  # noise: a dict
    have = state["model"] if isinstance(state["model"], dict) else {}
    got = {k: tuple(getattr(v, "shape", ())) for k, v in have.items()}
    if got != want:
        first = next((k for k in sorted(want.keys() | got.keys()) if want.get(k) != got.get(k)), "?")
        raise DamagedCheckpoint(f"{path}: the checkpoint is of a different model ({first})")
    epochs_done = state["epoch"]
    if not isinstance(epochs_done, int) or not 0 <= epochs_done <= cfg.train.epochs:
        raise DamagedCheckpoint(f"{path}: the checkpoint's epoch {shorten(repr(epochs_done))} is not of this run")
    recorded = _recorded_epochs(run_dir)
    if recorded is not None and recorded < epochs_done:
        raise DamagedCheckpoint(
            f"{path}: the checkpoint is at epoch {epochs_done} but metrics.csv records {recorded} "
            "(the run's files disagree)"
        )
    return state


def _recorded_epochs(run_dir: Path) -> int | None:
    """The last epoch metrics.csv records (0: none); None when there is no readable metrics.csv."""
    import csv

    try:
        text = read_run_file(run_dir / "metrics.csv")
    except DamagedFile:
        return None
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    try:
        return max((int(float(r["epoch"])) for r in rows), default=0)
    except (KeyError, TypeError, ValueError):
        return None


def _why_unloadable(path: Path, exc: Exception) -> str:
    """Why `path` does not load safely: an old bnbench checkpoint (numpy random state) or a damaged file."""
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not even a readable pickle: damaged
        unsafe = set()
    if unsafe and unsafe <= OLD_FORMAT_GLOBALS:
        return (
            f"{path}: written by an older bnbench (its numpy random state needs an unsafe load, which bnbench "
            "never does); it cannot be resumed: start the run again"
        )
    if unsafe:
        named = ", ".join(sorted(unsafe)[:3])
        return f"{path}: damaged checkpoint (it holds code, not only tensors: {shorten(named)}); never loaded"
    return f"{path}: damaged checkpoint ({type(exc).__name__})"


def load_checkpoint(run_dir: Path, cfg: RunConfig) -> dict | None:
    """read_checkpoint for `run --resume`: anything wrong is one UsageError naming the file."""
    try:
        return read_checkpoint(run_dir, cfg)
    except DamagedCheckpoint as exc:
        raise UsageError(f"--resume {exc}; start a new run") from None


def prepare_resume(run: RunDir, cfg: RunConfig, trainer: Trainer) -> int:
    """Load the last checkpoint into `trainer`, drop CSV rows past it; return the epoch it ends."""
    state = load_checkpoint(run.path, cfg)
    epoch = trainer.load_state(state) if state is not None else 0
    for schema in trainer.records:
        schema.rewrite(run.path, [r for r in schema.read(run.path) if int(r["epoch"]) <= epoch])
    resumes = run.meta.get("resumed_at", []) + [now()]
    run.update_meta(
        status="running",
        ended_at=None,
        error=None,
        epochs_completed=epoch,
        resumed_at=resumes,
        pid=os.getpid(),
        hostname=socket.gethostname(),
    )
    return epoch


def saved_config(run: RunDir) -> RunConfig:
    path = run.path / "config.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: unreadable ({exc})") from None
    return config_from_dict(raw, str(path))


FORWARDED_STOP = getattr(signal, "SIGUSR1", signal.SIGTERM)  # what a sweep sends its busy workers to stop


class StopRequest:
    """SIGINT/SIGTERM/SIGHUP handler: the first asks the loop to stop after the current step; the second
    raises KeyboardInterrupt at once (files stay consistent: every write is atomic or a flushed append).
    FORWARDED_STOP (a sweep passing its own stop on to its workers) only asks, never escalates: closing a
    terminal sends SIGHUP to the sweep *and* its workers, and the sweep's forward must not count as a second."""

    def __init__(self, requested: bool = False) -> None:
        self.requested = requested
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.requested

    def handle(self, signum: int, frame: object) -> None:
        if self.requested and signum != FORWARDED_STOP:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self.signum = True, signum


@contextmanager
def stop_on_signals(interrupt: bool = True, requested: bool = False) -> Iterator[StopRequest]:
    """Stop requests from SIGTERM, SIGHUP and (with `interrupt`) SIGINT; without `interrupt` (a sweep's
    worker) also FORWARDED_STOP. A sweep's workers leave SIGINT to the sweep, which forwards one
    FORWARDED_STOP: a terminal's Ctrl-C and a `kill -INT` of the sweep stop alike. `requested`: a stop that
    arrived before (a worker asked to stop while it waited for this job)."""
    stop = StopRequest(requested)
    if threading.current_thread() is not threading.main_thread():  # e.g. a Ray task: the host handles signals
        yield stop
        return
    signals = [signal.SIGINT] if interrupt else ([FORWARDED_STOP] if FORWARDED_STOP != signal.SIGTERM else [])
    signals += [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.signal(sig, stop.handle) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def execute(run: RunDir, trainer: Trainer, first_epoch: int = 1) -> int:
    """Train from `first_epoch` to the end, writing as it goes; return the exit code."""
    cfg = trainer.cfg
    epoch = first_epoch - 1
    try:
        for epoch in range(first_epoch, cfg.train.epochs + 1):
            row, rows = trainer.run_epoch(epoch)
            for schema, logged in rows.items():
                schema.append(run.path, logged)
            trainer.metrics.append(run.path, [row])
            if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs:
                atomic_torch_save(trainer.state(epoch), run.path / "checkpoint.pt")
            run.update_meta(epochs_completed=epoch)
            if trainer.should_stop():  # a stop asked for during this epoch's evaluation still stops the run
                raise Interrupted
        atomic_torch_save(trainer.model.state_dict(), run.path / "model.pt")
        run.update_meta(status="completed", ended_at=now())
        return 0
    except Diverged as exc:
        for schema, logged in exc.rows.items():
            schema.append(run.path, logged)
        run.update_meta(status="diverged", ended_at=now(), error=str(exc))
        return EXIT_DIVERGED
    except (Interrupted, KeyboardInterrupt):
        run.update_meta(status="interrupted", ended_at=now(), error=f"interrupted during epoch {epoch}")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - any failure is recorded in meta.json, then reported
        run.update_meta(status="failed", ended_at=now(), error=f"{type(exc).__name__}: {exc}")
        raise
    except SystemExit as exc:  # a plugin norm or model called sys.exit while training: a failed run, not an exit
        plugins = [s for s in (cfg.norm.kind, cfg.model.name) if s not in NORMS and s not in MODELS]
        error = f"{' or '.join(plugins) or 'the run'} called sys.exit({exc.code!r}) during epoch {epoch}"
        run.update_meta(status="failed", ended_at=now(), error=error)
        raise RuntimeError(error) from None


@dataclass
class Job:
    cfg: RunConfig
    run_name: str
    source: str  # where the config came from, for error messages
    path: Path | None = None  # an exact run directory (resumes, sweeps); None: claim out_dir/run_name[-k]
    resume: bool = False
    lock: RunLock | None = None  # taken while planning a resume, so no second writer slips in
    invocation: dict | None = None  # the `bnbench run` command it belongs to ({key, id}), kept in meta.json


@dataclass
class RunResult:
    path: Path
    status: str
    epochs_completed: int
    final_test_acc: float | None
    exit_code: int
    error: str | None
    traceback: Path | None = None  # a failed run's traceback, saved in its directory

    @property
    def name(self) -> str:
        return self.path.name


def plan_jobs(configs: list[Path], overrides: list[str], seeds: list[int] | None) -> list[Job]:
    """Validate every config before anything runs, so a typo in the last one costs nothing."""
    from bnbench.runs.study import run_configs

    jobs = []
    for path, cfg in zip(configs, run_configs(configs, overrides), strict=True):
        if seeds is None:
            jobs.append(Job(cfg, cfg.name, str(path)))
        else:
            jobs += [Job(cfg.with_seed(s), f"{cfg.name}-s{s}", str(path)) for s in seeds]
    return jobs


DEFAULT_THREADS = 1


def job_threads(option: int | None) -> int:
    """The torch threads of one run: `--threads-per-job`, else 1, whether the run is alone (`run`) or one of
    several (`sweep`, `--jobs`, a shard). One default everywhere gives the same numbers for the same config
    and seed from every command (a matrix product's rounding depends on how it is split over threads), and
    one thread does not collapse when other work shares the cores: with 2 threads on 2 busy cores, OpenMP's
    threads wait on each other and an epoch took 10x longer than with one."""
    return option or DEFAULT_THREADS


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or a cgroup), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class Step:
    """What a `bnbench run` will do with one of its jobs: start (in `where`), resume `where`, or skip it."""

    action: str  # start, resume, skip
    job: Job
    where: Path
    why: str = ""


def invocation_key(jobs: list[Job]) -> str:
    """The identity of a `bnbench run` command: its run names and resolved configs, in order."""
    blob = json.dumps([[job.run_name, job.cfg.to_dict()] for job in jobs], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _free_dir(out_dir: Path, name: str, taken: set[Path]) -> Path:
    """Where `claim_run_dir` would put a new run named `name` (nothing is created)."""
    for k in range(1, 10_000):
        path = out_dir / (name if k == 1 else f"{name}-{k}")
        if not path.exists() and path not in taken:
            return path
    raise UsageError(f"{out_dir}: too many runs named {name}")


def plan_continuation(jobs: list[Job], out_dir: Path) -> list[Step]:
    """A re-typed `bnbench run` continues what the same command started, as `sweep` does: when the last
    invocation of this exact command (same run names and configs, in `out_dir`) did not finish, its
    interrupted runs resume, its completed, diverged or failed ones are skipped and the runs it never
    started start. When it finished (or there is none), every job starts in a new folder, as before: a
    command typed again after it completed is a new set of runs, and another config under a taken name
    gets `<name>-2`. Every job gets the invocation ({key, id}) to record in its meta.json."""
    key = invocation_key(jobs)
    earlier: dict[str, list[tuple[Path, dict]]] = {}
    for path in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if not is_run_dir(path):
            continue
        try:
            meta = read_meta(path)
        except (OSError, ValueError):
            continue
        mark = meta.get("invocation")
        if isinstance(mark, dict) and mark.get("key") == key and isinstance(mark.get("id"), str):
            earlier.setdefault(mark["id"], []).append((path, meta))
    last_id = max(earlier, key=lambda i: max(str(m.get("started_at")) for _, m in earlier[i]), default=None)
    unclaimed = list(earlier.get(last_id, []))
    matched: list[tuple[Path, dict] | None] = []
    for job in jobs:  # each job's run in the last invocation, matched by its config (seeds differ)
        wanted = json.loads(json.dumps(job.cfg.to_dict(), default=str))  # as meta.json keeps it
        found = next((r for r in unclaimed if r[1].get("config") == wanted), None)
        if found is not None:
            unclaimed.remove(found)
        matched.append(found)

    def resumable(meta: dict) -> bool:
        status = meta.get("status")
        return status == "interrupted" or (status == "running" and not is_alive(meta))

    unfinished = last_id is not None and any(m is None or resumable(m[1]) for m in matched)
    invocation = {"key": key, "id": last_id if unfinished else uuid.uuid4().hex[:12]}
    steps: list[Step] = []
    taken: set[Path] = set()
    for job, found in zip(jobs, matched, strict=True):
        job.invocation = invocation
        if not unfinished or found is None:
            where = _free_dir(out_dir, job.run_name, taken)
            taken.add(where)
            steps.append(Step("start", job, where))
            continue
        path, meta = found
        status = meta.get("status")
        if resumable(meta):
            steps.append(Step("resume", Job(job.cfg, path.name, job.source, path=path, resume=True,
                                            invocation=invocation), path))  # fmt: skip
        elif status == "running":
            steps.append(Step("skip", job, path, f"running in pid {meta.get('pid')}"))
        else:
            steps.append(Step("skip", job, path, f"already {status}"))
    return steps


def plan_resume(path: Path, config: Path | None, overrides: list[str]) -> Job:
    run = RunDir.open(path)
    status = run.meta.get("status")
    if status == "completed":
        raise UsageError(f"--resume {path}: the run is already completed; start a new run instead")
    if status == "running" and is_alive(run.meta):
        raise UsageError(f"--resume {path}: the run is still running (pid {run.meta.get('pid')})")
    try:
        check_run_files(path)
    except DamagedFile as exc:
        raise UsageError(f"--resume {exc}; the run's files are damaged, start a new run") from None
    saved = saved_config(run)
    started_with = run.meta.get("config")
    if isinstance(started_with, dict) and started_with != saved.to_dict():
        edited = differences(started_with, saved.to_dict())
        raise UsageError(
            f"--resume {path}: config.yaml was edited after the run started ({', '.join(edited)}); "
            "put it back or start a new run"
        )
    if config is not None or overrides:
        wanted = load_config(config, overrides, base=saved if config is None else None)
        changed = differences(saved.to_dict(), wanted.to_dict())
        if changed:
            raise UsageError(
                f"--resume {path}: the config differs from the run's saved config.yaml in {', '.join(changed)}; "
                "resume without a config, or start a new run"
            )
    load_checkpoint(path, saved)  # a damaged checkpoint is refused before anything is changed
    try:
        lock = RunLock(path).acquire()
    except LockHeld as exc:
        raise UsageError(f"--resume {exc}; wait for it or stop it") from None
    return Job(saved, path.name, str(path / "config.yaml"), path=path, resume=True, lock=lock)


def decide(path: Path, cfg: RunConfig) -> tuple[str, str]:
    """start, resume or skip a planned run directory, with the reason; read under its lock."""
    from bnbench.runs.rundir import has_recorded_rows

    if not is_run_dir(path):
        if has_recorded_rows(path):
            return "skip", f"{path / 'metrics.csv'} holds epochs but the run has no meta.json; not touched"
        return "start", ""
    try:
        meta = read_meta(path)
    except (OSError, ValueError) as exc:
        return "skip", f"{path / 'meta.json'} is unreadable ({exc}); not touched"
    status = meta.get("status")
    if status in ("completed", "diverged"):
        return "skip", f"already {status}"
    if status == "running" and is_alive(meta):
        return "skip", f"running in pid {meta.get('pid')} on {meta.get('hostname')}"
    changed = config_changes(meta, cfg.to_dict())
    if changed:
        return "skip", f"started with another config ({', '.join(changed)}); not resumed"
    return "resume", ""


TRACEBACK_FILE = "traceback.txt"


def save_traceback(run_dir: Path) -> Path | None:
    """The exception being handled, written to the run directory for `--debug` and bug reports."""
    path = run_dir / TRACEBACK_FILE
    try:
        atomic_write(path, traceback.format_exc())
    except OSError:  # e.g. the disk is full: the one-line error still says what failed
        return None
    return path


def exit_code_of(results: list[RunResult]) -> int:
    codes = {r.exit_code for r in results}
    for code in (EXIT_INTERRUPTED, EXIT_FAILED, EXIT_DIVERGED):
        if code in codes:
            return code
    return 0


def check_jobs(jobs: list[Job], root: Path) -> None:
    """What can only be checked against the data: the batch fits the training set; and a plugin norm or
    model builds a module (built once per distinct model and norm, on the CPU)."""
    built: set[str] = set()
    for job in jobs:
        cfg = job.cfg
        key = repr((cfg.model, cfg.norm, cfg.train.init))
        if key not in built and (cfg.norm.kind not in NORMS or cfg.model.name not in MODELS):
            built.add(key)
            try:
                build_run_model(cfg)
            except PluginError as exc:
                raise UsageError(f"{job.source}: {exc}") from None
        n_train = train_size(job.cfg.data, root)
        if job.cfg.train.batch_size > n_train:
            raise UsageError(
                f"{job.source}: train.batch_size: {job.cfg.train.batch_size} is larger than the training set "
                f"({n_train} examples)"
            )


def data_root(jobs: list[Job], data_dir: Path | None) -> Path:
    saved_dir = RunDir.open(jobs[0].path).meta.get("data_dir") if jobs and jobs[0].resume else None
    if data_dir is None and not os.environ.get("BNBENCH_DATA_DIR") and saved_dir:
        data_dir = Path(saved_dir)  # a resumed run reads the data it started with
    return data_dir_from(data_dir)


def run_job(
    job: Job,
    data: Data,
    device: torch.device,
    root: Path,
    out_dir: Path,
    make_reporter: Callable[[str, int], Reporter],
    stop: Callable[[], bool],
) -> RunResult:
    """Run one job to its end, holding its directory's lock throughout; return what happened."""
    trainer = Trainer.create(job.cfg, data, device, should_stop=stop)
    path = job.path or claim_run_dir(out_dir, job.run_name)
    if not job.resume:
        path.mkdir(parents=True, exist_ok=True)
    lock = job.lock or RunLock(path).acquire(wait_seconds=5)
    try:
        # What to do is decided again under the lock: another sweep may have run it since it was planned.
        action, why = decide(path, job.cfg) if job.path is not None else ("start", "")
        if action == "skip":
            return RunResult(path, "skipped", 0, None, 0, why)
        if action == "resume":
            run = RunDir.open(path)
            first_epoch = prepare_resume(run, job.cfg, trainer) + 1
        else:
            try:
                for stale in ("checkpoint.pt", "model.pt"):  # bnbench's own files from a run that never recorded
                    (path / stale).unlink(missing_ok=True)
                run, first_epoch = create_run(job.cfg, path, trainer, device, root, job.invocation), 1
            except BaseException:  # e.g. a full disk: no half-created run directory stays behind
                if job.path is None:
                    shutil.rmtree(path, ignore_errors=True)
                raise
        trainer.reporter = make_reporter(run.path.name, job.cfg.train.epochs)
        asked = out_dir / job.run_name
        note = f"resuming from epoch {first_epoch}" if action == "resume" else (
            f"{asked} was taken" if job.path is None and run.path != asked else "")  # fmt: skip
        trainer.reporter.started(run.path, note, job.cfg.train.batch_size)
        error, saved = None, None
        try:
            code = execute(run, trainer, first_epoch)
        except Exception as exc:  # noqa: BLE001 - recorded as 'failed'; the other runs go on
            code, error = EXIT_FAILED, f"{type(exc).__name__}: {exc}"
            saved = save_traceback(run.path)
        rows = trainer.metrics.read(run.path)
        return RunResult(
            run.path,
            run.meta["status"],
            run.meta["epochs_completed"],
            float(rows[-1]["test_acc"]) if rows else None,
            code,
            error or run.meta.get("error"),
            saved,
        )
    finally:
        lock.release()


def run_jobs(
    jobs: list[Job],
    device_option: str,
    data_dir: Path | None,
    out_dir: Path,
    make_reporter: Callable[[str, int], Reporter],
    on_loading: Callable[[str], None] = lambda message: None,
    threads: int | None = None,
) -> tuple[list[RunResult], int]:
    """Check every job's data, device and output folder, then run the jobs one after another with
    `job_threads(threads)` torch threads."""
    device = pick_device(device_option)
    check_precision((job.cfg.train.precision for job in jobs), device)  # float16 is CUDA's only
    torch.set_num_threads(job_threads(threads))
    root = data_root(jobs, data_dir)
    check_jobs(jobs, root)
    if any(not job.resume for job in jobs):
        check_writable(out_dir)
    results: list[RunResult] = []
    loaded: dict[DataConfig, Data] = {}
    with stop_on_signals() as stop:
        for job in jobs:
            if stop():  # a stop between two runs: the next one is not even created
                return results, EXIT_INTERRUPTED
            if job.cfg.data not in loaded:
                synthetic = job.cfg.data.dataset == "synthetic"
                on_loading(f"loading data: {job.cfg.data.dataset}" + ("" if synthetic else f" from {root}"))
                loaded = {job.cfg.data: load_data(job.cfg.data, root, device)}  # keep one dataset in memory
            results.append(run_job(job, loaded[job.cfg.data], device, root, out_dir, make_reporter, stop))
            if results[-1].exit_code == EXIT_INTERRUPTED:
                break
    return results, exit_code_of(results)
