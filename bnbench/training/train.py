"""The training loop: whole dataset on the device, batches by index, metrics accumulated on device.

The host reads device values only through `read_back`, at log points (~20 per epoch) and at the
end of an epoch, so a CUDA step never waits for the host.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnbench.config import RunConfig, TrainConfig
from bnbench.errors import UsageError
from bnbench.nn.models import NormAct, build_run_model
from bnbench.nn.norms import batch_stats_eval, is_batch_norm, precise_statistics
from bnbench.records import DIAGNOSTICS, STEPS, Schema, metrics_schema
from bnbench.training.data import Data, Split
from bnbench.training.diagnostics import Diagnostics

LOG_POINTS_PER_EPOCH = 20


class Diverged(Exception):
    """The training loss became NaN or infinite; carries the rows the abandoned epoch logged."""

    def __init__(self, message: str, rows: dict[Schema, list[dict]]) -> None:
        super().__init__(message)
        self.rows = rows


class Interrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM); the current epoch is abandoned."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name not in available:
        raise UsageError(f"--device {name}: unknown device; choose auto, cpu, cuda or mps")
    if not available[name]:
        raise UsageError(f"--device {name}: {name} is not available on this machine (use --device auto or cpu)")
    return torch.device(name)


PRECISION_DEVICES = {"float32": None, "bfloat16": ("cpu", "cuda"), "float16": ("cuda",)}


def check_precision(precisions: Iterable[str], device: torch.device) -> None:
    """train.precision against the device the runs will use (known only once it is picked): bfloat16 autocast
    runs on the CPU and CUDA, float16 (with its grad scaler) on CUDA only. UsageError otherwise, before any
    run folder exists."""
    for precision in dict.fromkeys(precisions):
        devices = PRECISION_DEVICES[precision]
        if devices is not None and device.type not in devices:
            why = " (its grad scaler is CUDA's); use bfloat16 or float32" if precision == "float16" else ""
            where = " and ".join(devices)
            raise UsageError(f"train.precision {precision}: runs on {where} only, not {device.type}{why}")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a forward pass and its loss run in: torch.autocast to the reduced precision, or nothing."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, precision))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        import platform

        try:  # Linux names the CPU model here; platform.processor() is often empty
            with open("/proc/cpuinfo") as f:
                model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
        except OSError:
            model = ""
        return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return device.type


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_back(*values: torch.Tensor) -> list[float]:
    """The one place the loop copies device values to the host (a sync on CUDA); tests count calls."""
    return torch.stack([v.float() for v in values]).tolist()


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch; a trailing batch of one example joins the previous one,
    because BatchNorm cannot normalize a single example."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def has_batch_norm(model: nn.Module) -> bool:
    return any(is_batch_norm(m) for m in model.modules())


def has_running_stats(model: nn.Module) -> bool:
    """A BN that keeps running statistics: only then is there a second evaluation mode to record."""
    return any(is_batch_norm(m) and getattr(m, "track_running_stats", True) for m in model.modules())


def lr_at(step: int, tc: TrainConfig, total_steps: int) -> float:
    """The learning rate of step `step` (0 = the first): constant, tc.lr * tc.lr_factor ** step, or a cosine
    from tc.lr to 0 over the run. Computed from the step alone, so a resumed run continues it exactly."""
    if tc.schedule == "exponential":
        try:
            return tc.lr * tc.lr_factor**step
        except OverflowError:  # a growing rate past float's range: the run diverges, honestly
            return math.inf
    if tc.schedule == "cosine":
        return tc.lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    return tc.lr


def restrict_training(model: nn.Module, which: str, seed: int) -> int:
    """Frankle, Schwab & Morcos 2021: train only the norms' scale and shift (`norm`), those and the output
    layer (`norm_output`), or as many randomly chosen other values as the norms have (`random`: the rest
    frozen by a gradient mask drawn from the seed); `all_but_output` freezes the output layer (what makes a
    BN network scale-invariant, van Laarhoven 2017); `all` trains everything. Returns the trainable count."""
    params = list(model.parameters())
    if which == "all":
        return sum(p.numel() for p in params)
    norms = {id(p) for m in model.modules() if isinstance(m, NormAct) for p in m.norm.parameters()}
    output = {id(p) for p in [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1].parameters()}
    keep = {"norm": norms, "norm_output": norms | output, "all_but_output": {id(p) for p in params} - output}.get(which)
    if keep is not None:
        for p in params:
            p.requires_grad_(id(p) in keep)
        return sum(p.numel() for p in params if id(p) in keep)
    others = [p for p in params if id(p) not in norms]
    count = sum(p.numel() for p in params if id(p) in norms)
    total = sum(p.numel() for p in others)
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count]
    flat_mask = torch.zeros(total)
    flat_mask[chosen] = 1.0
    start = 0
    for p in params:
        if id(p) in norms:
            p.requires_grad_(False)
            continue
        mask = flat_mask[start : start + p.numel()].view_as(p).to(p.device)
        start += p.numel()
        p.register_hook(lambda grad, mask=mask: grad * mask)
    return count


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or Adam over every parameter. Weight decay reaches all of them (PyTorch's default: weights, biases
    and the norms' scale γ and shift β) unless `norm_weight_decay` is set: the norms' γ/β and every bias then
    form a second parameter group with that decay (timm's `no_weight_decay` rule: the 1-D parameters)."""
    params: list = list(model.parameters())
    if cfg.norm_weight_decay is not None and cfg.norm_weight_decay != cfg.weight_decay:
        norms = {id(p) for m in model.modules() if isinstance(m, NormAct) for p in m.norm.parameters()}
        norms |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
        groups = [
            {"params": [p for p in params if id(p) not in norms], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if id(p) in norms], "weight_decay": cfg.norm_weight_decay},
        ]
        params = [g for g in groups if g["params"]]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def accumulate_gradients(
    step_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    micro_batches: int,
    precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of one batch as `micro_batches` forward/backward passes (gradient accumulation).
    Each micro-batch's mean loss is weighted by its share of the batch, so the summed gradient is the
    whole batch's: exactly so for a model without BN, which sees each micro-batch alone. Returns the
    batch's summed loss and its count of correct predictions, on the device (no host sync). Forward and
    loss run inside `precision()` (autocast); with a `scaler` the loss is scaled before backward (float16)."""
    n = len(y)
    micro_batches = max(1, min(micro_batches, n // 2))  # never a micro-batch of one example
    loss_sum = correct = None
    for xm, ym in zip(x.tensor_split(micro_batches), y.tensor_split(micro_batches), strict=True):
        with precision():
            logits = step_fn(xm)
            loss = F.cross_entropy(logits, ym) * (len(ym) / n)
        (loss if scaler is None else scaler.scale(loss)).backward()
        with torch.no_grad():
            summed, hits = loss.detach() * n, (logits.argmax(1) == ym).sum()
            loss_sum, correct = (summed, hits) if loss_sum is None else (loss_sum + summed, correct + hits)
    return loss_sum, correct


class Reporter(Protocol):
    def started(self, path: Path, note: str, batch_size: int) -> None: ...  # where the run writes, and why
    def epoch_start(self, epoch: int, steps: int) -> None: ...
    def progress(self, steps_done: int, loss: float, acc: float) -> None: ...
    def evaluating(self) -> None: ...
    def epoch_end(self, row: dict[str, float]) -> None: ...


class SilentReporter:
    def started(self, path: Path, note: str, batch_size: int) -> None:
        pass

    def epoch_start(self, epoch: int, steps: int) -> None:
        pass

    def evaluating(self) -> None:
        pass

    def progress(self, steps_done: int, loss: float, acc: float) -> None:
        pass

    def epoch_end(self, row: dict[str, float]) -> None:
        pass


@dataclass
class Trainer:
    cfg: RunConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: Data
    order: torch.Generator  # draws each epoch's permutation; its state is checkpointed
    step_fn: Callable[[torch.Tensor], torch.Tensor]  # the model, or its torch.compile'd version
    reporter: Reporter = field(default_factory=SilentReporter)
    should_stop: Callable[[], bool] = lambda: False
    diagnostics: Diagnostics | None = None
    scaler: torch.amp.GradScaler | None = None  # float16 training's loss scaling (CUDA)

    @classmethod
    def create(cls, cfg: RunConfig, data: Data, device: torch.device, **kwargs) -> Trainer:
        seed_everything(cfg.train.seed)
        model = build_run_model(cfg).to(device)
        step_fn = model
        if cfg.train.compile:
            # CUDA graphs (reduce-overhead) replay the step with no launch overhead; every epoch has
            # the same batch shapes, so there are at most two graphs (full and last batch).
            mode = "reduce-overhead" if device.type == "cuda" else "default"
            step_fn = torch.compile(model, mode=mode, dynamic=False)
        restrict_training(model, cfg.train.trainable, cfg.train.seed)
        order = torch.Generator().manual_seed(cfg.train.seed)
        check_precision([cfg.train.precision], device)
        trainer = cls(cfg, model, make_optimizer(model, cfg.train), data, order, step_fn, **kwargs)
        if cfg.train.precision == "float16":
            trainer.scaler = torch.amp.GradScaler(device.type)
        if cfg.train.diagnostics:
            trainer.diagnostics = Diagnostics(model, data.train, cfg, trainer.steps_per_epoch)
        return trainer

    @property
    def metrics(self) -> Schema:
        """metrics.csv's schema for this model and evaluation mode."""
        return metrics_schema(has_running_stats(self.model), self.cfg.train.eval_bn, self.data.val is not None)

    @property
    def records(self) -> tuple[Schema, ...]:
        """Every CSV file this run writes."""
        return (self.metrics, STEPS, DIAGNOSTICS) if self.cfg.train.diagnostics else (self.metrics, STEPS)

    @property
    def steps_per_epoch(self) -> int:
        return len(batch_bounds(len(self.data.train), self.cfg.train.batch_size))

    def train_epoch(self, epoch: int, max_steps: int | None = None) -> tuple[dict[str, float], dict[Schema, list]]:
        """One pass over a fresh permutation; returns (train_loss/acc/examples, rows logged per file)."""
        train, tc = self.data.train, self.cfg.train
        device = train.x.device
        bounds = batch_bounds(len(train), tc.batch_size)[:max_steps]
        log_every = tc.log_every or -(-len(bounds) // LOG_POINTS_PER_EPOCH)  # ceil: at most 20 log points
        perm = torch.randperm(len(train), generator=self.order).to(device, non_blocking=True)
        window_loss = torch.zeros((), device=device)
        window_correct = torch.zeros((), device=device, dtype=torch.long)
        window_n = total_n = 0
        total_loss = total_correct = 0.0
        step_rows: list[dict] = []
        diag_rows: list[dict] = []
        rows = {STEPS: step_rows, DIAGNOSTICS: diag_rows} if self.diagnostics else {STEPS: step_rows}
        first_step = (epoch - 1) * self.steps_per_epoch
        lr = self.optimizer.param_groups[0]["lr"]
        if self.diagnostics and epoch == 1:
            diag_rows += self.diagnostics.record(0, epoch, lr)  # the network as initialized
        self.model.train()
        self.reporter.epoch_start(epoch, len(bounds))
        for i, (start, end) in enumerate(bounds):
            if self.should_stop():
                raise Interrupted
            idx = perm[start:end]
            if tc.schedule != "constant":
                lr = lr_at(first_step + i, tc, tc.epochs * self.steps_per_epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum, correct = accumulate_gradients(
                self.step_fn,
                train.x.index_select(0, idx),
                train.y.index_select(0, idx),
                tc.accumulate,
                lambda: autocast(tc.precision, device),
                self.scaler,
            )
            if self.scaler is None:
                self.optimizer.step()
            else:  # float16: unscale, skip the step if a gradient overflowed, adapt the scale
                self.scaler.step(self.optimizer)
                self.scaler.update()
            if self.diagnostics and self.diagnostics.due(first_step + i + 1):
                diag_rows += self.diagnostics.record(first_step + i + 1, epoch, lr)
            window_loss += loss_sum
            window_correct += correct
            window_n += end - start
            if (i + 1) % log_every == 0 or i + 1 == len(bounds):
                loss_sum, correct = read_back(window_loss, window_correct)
                total_loss, total_correct, total_n = total_loss + loss_sum, total_correct + correct, total_n + window_n
                row = STEPS.row(
                    step=first_step + i + 1,
                    epoch=epoch,
                    examples_seen=(epoch - 1) * len(train) + end,
                    train_loss=loss_sum / window_n,
                    train_acc=correct / window_n,
                )
                step_rows.append(row)
                self.reporter.progress(i + 1, row["train_loss"], row["train_acc"])
                if not math.isfinite(loss_sum) and tc.on_nan == "stop":
                    raise Diverged(
                        f"training loss is {loss_sum / window_n} at step {row['step']} (epoch {epoch})", rows
                    )
                window_loss.zero_()
                window_correct.zero_()
                window_n = 0
        stats = {"train_loss": total_loss / total_n, "train_acc": total_correct / total_n, "examples": total_n}
        return stats, rows

    @torch.no_grad()
    def evaluate(self, split: Split, batch_stats: bool) -> tuple[float, float]:
        """(mean loss, accuracy) over `split` with running (eval mode) or per-batch BN statistics. The batches
        hold the examples as stored, shuffled (i.i.d., fixed by the seed) or sorted by class (each batch one or
        two classes: the non-i.i.d. batches of Wu & Johnson 2021, §4), per train.eval_order."""
        self.model.eval()
        x, y = split.x, split.y
        if self.cfg.train.eval_order == "shuffled":
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.cfg.train.seed)).to(y.device)
            x, y = x.index_select(0, order), y.index_select(0, order)
        elif self.cfg.train.eval_order == "class_sorted":
            order = torch.argsort(y, stable=True)
            x, y = x.index_select(0, order), y.index_select(0, order)
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device, dtype=torch.long)
        with batch_stats_eval(self.model) if batch_stats else contextlib.nullcontext():
            for start, end in batch_bounds(len(y), self.cfg.train.eval_batch_size):
                with autocast(self.cfg.train.precision, x.device):  # evaluated in the precision it trained in
                    logits = self.model(x[start:end])
                loss_sum += F.cross_entropy(logits, y[start:end], reduction="sum")
                correct += (logits.argmax(1) == y[start:end]).sum()
        loss_total, correct_total = read_back(loss_sum, correct)
        return loss_total / len(split), correct_total / len(split)

    def precise_statistics(self, batches: int, epoch: int) -> None:
        """Exact BN running statistics from `batches` training batches. They come from their own
        generator, so the training order (and a resumed run) is the same with or without this."""
        train = self.data.train
        order = torch.Generator().manual_seed(self.cfg.train.seed + 1_000_003 * epoch)
        perm = torch.randperm(len(train), generator=order).to(train.x.device)
        bounds = batch_bounds(len(train), self.cfg.train.batch_size)[:batches]
        precise_statistics(self.model, (train.x.index_select(0, perm[start:end]) for start, end in bounds))

    def run_epoch(self, epoch: int) -> tuple[dict[str, float], dict[Schema, list]]:
        """Train one epoch and evaluate; returns the metrics.csv row and the other files' rows."""
        started = time.perf_counter()
        stats, rows = self.train_epoch(epoch)
        train_seconds = time.perf_counter() - started
        self.reporter.evaluating()
        if self.cfg.train.precise_bn:
            self.precise_statistics(self.cfg.train.precise_bn, epoch)
        batch_mode = self.cfg.train.eval_bn == "batch"
        test_loss, test_acc = self.evaluate(self.data.test, batch_stats=batch_mode)
        values = dict(
            epoch=epoch,
            train_loss=stats["train_loss"],
            train_acc=stats["train_acc"],
            test_loss=test_loss,
            test_acc=test_acc,
            lr=self.optimizer.param_groups[0]["lr"],
        )
        if has_running_stats(self.model):
            other = "test_acc_running_stats" if batch_mode else "test_acc_batch_stats"
            single = not batch_mode and self.cfg.train.eval_batch_size < 2  # one image: no batch statistics
            values[other] = math.nan if single else self.evaluate(self.data.test, batch_stats=not batch_mode)[1]
        if self.data.val is not None:  # the held-out training examples, evaluated as the test set is
            values["val_loss"], values["val_acc"] = self.evaluate(self.data.val, batch_stats=batch_mode)
        row = self.metrics.row(
            **values,
            epoch_seconds=time.perf_counter() - started,
            examples_per_second=stats["examples"] / train_seconds,
        )
        self.reporter.epoch_end(row)
        return row, rows

    def state(self, epoch: int) -> dict:
        """Everything a resume needs to continue exactly as if never stopped."""
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "order": self.order.get_state(),
            "rng": rng_state(),
            # units_path is a running sum over probes: a resumed run goes on from it, not from 0
            "diagnostics": self.diagnostics.state() if self.diagnostics else {},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
        }

    def load_state(self, state: dict) -> int:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.order.set_state(state["order"])
        set_rng_state(state["rng"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.diagnostics and state.get("diagnostics"):
            self.diagnostics.load_state(state["diagnostics"])
        return state["epoch"]


def rng_state() -> dict:
    """Every random-number generator's state as tensors and plain types, so a checkpoint loads with
    `torch.load(..., weights_only=True)` (numpy's own state tuple would need an unsafe, code-running load)."""
    version, python_state, gauss = random.getstate()
    key, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": int(version), "state": torch.tensor(python_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "key": str(key),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["key"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
