"""`bnbench bench`: bnbench's training step and data path against the tutorials' DataLoader loop.

Both train the same model on the same data in the same process, alternating, for a fixed number
of steps after a warm-up; the median of the rounds is reported.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bnbench.config import NORM_KINDS, SHIPPED_CONFIGS, RunConfig, load_config
from bnbench.nn.norms import COUNTERPARTS
from bnbench.training.data import load_data, load_images, raw_files, torchvision_class
from bnbench.training.train import Trainer, make_optimizer

# Every registered norm, plus the hand-written ones that have one with their manual backward.
NORMS = {kind: (kind, "autograd") for kind in NORM_KINDS} | {
    f"{kind}_manual": (kind, "manual") for kind in ("scratch", "layer", "group", "ghost")
}
EXAMPLES_PER_ROUND = 12_800  # per pipeline and round: about 1 s of LeNet on 2 CPU cores
WARMUP_STEPS = 5


def bench_norm(norm: str) -> tuple[str, str]:
    """(kind, backward) of a --norms entry: a registered norm, NAME_manual, or a plugin (plugins.py)."""
    return NORMS.get(norm, (norm, "autograd"))


def counterpart(norm: str) -> str:
    """The norm a bench row's step time is compared with: a hand-written norm's PyTorch counterpart;
    nn.BatchNorm for the BN variants without one (ghost, renorm) and for no norm."""
    kind = bench_norm(norm)[0]
    return COUNTERPARTS.get(kind, kind if kind.startswith("torch") else "torch")


@dataclass
class BenchRow:
    model: str
    norm: str
    device: str
    dataset: str
    batch_size: int
    steps: int
    rounds: int
    reference_examples_per_second: float | None
    reference_num_workers: int | None
    bnbench_examples_per_second: float
    ratio: float | None
    counterpart: str  # what the step time is compared with: the PyTorch counterpart, else nn.BatchNorm
    step_time_vs_counterpart: float | None
    eval_seconds: float
    epoch_seconds: float
    peak_rss_mb: float
    cuda_max_allocated_mb: float | None
    bnbench_rounds: list[float]
    reference_rounds: list[float]


def bench_config(model: str, norm: str, root: Path, compile: bool) -> RunConfig:
    """The shipped tutorial config of `model` with the norm swapped, on synthetic data if files are missing."""
    kind, backward = bench_norm(norm)
    cfg = load_config(SHIPPED_CONFIGS / f"{model}_none.yaml", [f"norm.kind={kind}", f"norm.backward={backward}"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=compile))
    if not all(p.is_file() for p in raw_files(cfg.data.dataset, root).values()):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset="synthetic"))
    return cfg


class _TutorialDataset(torch.utils.data.Dataset):
    """What torchvision's MNIST does per sample: a PIL image, then the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i].numpy(), mode="L")), int(self.labels[i])


def reference_loader(cfg: RunConfig, root: Path, num_workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    from torchvision import transforms

    steps = [transforms.ToTensor()] + ([transforms.Normalize((0.5,), (0.5,))] if cfg.data.normalize else [])
    transform = transforms.Compose(steps)
    if cfg.data.dataset == "synthetic":
        images, labels = load_images("synthetic", root)["train"]
        dataset = _TutorialDataset(images, labels, transform)
    else:
        dataset = torchvision_class(cfg.data.dataset)(str(root), train=True, transform=transform, download=False)
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg.train.batch_size, shuffle=True, num_workers=num_workers, pin_memory=pin_memory
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_reference(trainer: Trainer, loader, steps: int, device: torch.device) -> float:
    """Examples/s of the tutorial loop: batches from the DataLoader, copied to the device, loss.item() per step."""
    model, optimizer = trainer.model, make_optimizer(trainer.model, trainer.cfg.train)
    model.train()
    seen, started = 0, 0.0
    for step, (x, y) in enumerate(loader):
        if step == WARMUP_STEPS:  # workers started (a new iterator per epoch, as tutorials do): start the clock
            _sync(device)
            seen, started = 0, time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _ = loss.item()  # the tutorials accumulate the running loss on the host each step
        seen += len(y)
        if step + 1 == WARMUP_STEPS + steps:
            break
    _sync(device)
    return seen / (time.perf_counter() - started)


def time_bnbench(trainer: Trainer, steps: int, device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    stats, _ = trainer.train_epoch(1, max_steps=steps)
    _sync(device)
    return stats["examples"] / (time.perf_counter() - started)


def run_bench(
    models: list[str],
    norms: list[str],
    device: torch.device,
    root: Path,
    rounds: int = 3,
    compile: bool = False,
    with_reference: bool = True,
    on_row: Callable[[BenchRow], None] = lambda row: None,
) -> list[BenchRow]:
    """Per model, every norm and its reference loop take turns within each round, so a machine whose
    speed drifts (shared VMs do) slows all of them alike and the ratios stay comparable."""
    rows: list[BenchRow] = []
    for model in models:
        data = load_data(bench_config(model, "none", root, compile).data, root, device)  # same for every norm
        trainers = {norm: Trainer.create(bench_config(model, norm, root, compile), data, device) for norm in norms}
        batch_size = trainers[norms[0]].cfg.train.batch_size
        steps = min(EXAMPLES_PER_ROUND // batch_size, trainers[norms[0]].steps_per_epoch - WARMUP_STEPS)
        worker_counts = (0, 2) if with_reference else ()
        loaders = {
            n: {w: reference_loader(t.cfg, root, w, device.type == "cuda") for w in worker_counts}
            for n, t in trainers.items()
        }
        ours: dict[str, list[float]] = {n: [] for n in norms}
        reference: dict[str, dict[int, list[float]]] = {n: {w: [] for w in worker_counts} for n in norms}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for trainer in trainers.values():
            trainer.train_epoch(1, max_steps=WARMUP_STEPS)
        for round_ in range(rounds):
            for norm, trainer in trainers.items():
                ours[norm].append(time_bnbench(trainer, steps, device))
                for workers, loader in loaders[norm].items():
                    reference[norm][workers].append(time_reference(trainer, loader, steps, device))
                if round_ == 0 and with_reference:  # keep the faster worker count for the remaining rounds
                    best = max(reference[norm], key=lambda w: reference[norm][w][0])
                    loaders[norm] = {best: loaders[norm][best]}
        for norm, trainer in trainers.items():
            workers = next(iter(loaders[norm]), None)
            ref_speed = statistics.median(reference[norm][workers]) if workers is not None else None
            our_speed = statistics.median(ours[norm])
            other = counterpart(norm)
            other_speed = statistics.median(ours[other]) if other in ours else None
            _sync(device)
            started = time.perf_counter()
            trainer.evaluate(data.test, batch_stats=False)
            _sync(device)
            row = BenchRow(
                model=model,
                norm=norm,
                device=str(device),
                dataset=trainer.cfg.data.dataset,
                batch_size=batch_size,
                steps=steps,
                rounds=rounds,
                reference_examples_per_second=ref_speed,
                reference_num_workers=workers,
                bnbench_examples_per_second=our_speed,
                ratio=our_speed / ref_speed if ref_speed else None,
                counterpart=other,
                step_time_vs_counterpart=other_speed / our_speed if other_speed else None,
                eval_seconds=time.perf_counter() - started,
                epoch_seconds=len(data.train) / our_speed,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                cuda_max_allocated_mb=torch.cuda.max_memory_allocated(device) / 2**20
                if device.type == "cuda"
                else None,
                bnbench_rounds=ours[norm],
                reference_rounds=reference[norm][workers] if workers is not None else [],
            )
            rows.append(row)
            on_row(row)
    return rows


BENCH_COLUMNS = ("model", "norm", "data", "reference", "bnbench", "ratio", "step time vs", "eval s", "epoch s",
                 "peak RSS MB")  # fmt: skip


def bench_cells(row: BenchRow) -> list[str]:
    """One row of the bench table, as text (BENCH_COLUMNS)."""
    return [
        row.model,
        row.norm,
        row.dataset,
        f"{row.reference_examples_per_second:,.0f}" if row.reference_examples_per_second else "-",
        f"{row.bnbench_examples_per_second:,.0f}",
        f"{row.ratio:.2f}x" if row.ratio else "-",
        f"{row.step_time_vs_counterpart:.2f}x {row.counterpart}" if row.step_time_vs_counterpart else "-",
        f"{row.eval_seconds:.2f}",
        f"{row.epoch_seconds:.2f}",
        f"{row.peak_rss_mb:,.0f}",
    ]
