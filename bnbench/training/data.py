"""Datasets as whole tensors on the training device; batching is indexing.

MNIST and Fashion-MNIST come through torchvision's dataset classes (torchvision layout under the
data directory); `synthetic` is generated in memory for smoke runs and tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from bnbench.config import DataConfig
from bnbench.errors import UsageError

FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
SYNTHETIC_SIZES = {"train": 2048, "test": 512}
IDX_MAGIC = {"images": 2051, "labels": 2049}
NUM_CLASSES = 10


class DataError(UsageError):
    pass


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, 1, 28, 28) float32, on the training device
    y: torch.Tensor  # (N,) int64, on the training device

    def __len__(self) -> int:
        return self.y.shape[0]


@dataclass(frozen=True)
class Data:
    train: Split
    test: Split
    val: Split | None = None  # data.val_split > 0: held out of the training examples, never trained on


def val_count(n: int, cfg: DataConfig) -> int:
    """Examples of `n` training examples held out for validation (data.val_split, rounded down)."""
    return int(n * cfg.val_split)


def data_dir_from(option: Path | None) -> Path:
    return option or Path(os.environ.get("BNBENCH_DATA_DIR") or "data")


def raw_files(dataset: str, root: Path) -> dict[str, Path]:
    raw = root / FOLDERS[dataset] / "raw"
    return {
        f"{split}-{kind}": raw
        / f"{'train' if split == 'train' else 't10k'}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        for split in ("train", "test")
        for kind in ("images", "labels")
    }


def _check_idx(path: Path, kind: str) -> int:
    """Check an IDX file's magic number and size; return its item count."""
    with open(path, "rb") as f:
        header = f.read(16 if kind == "images" else 8)
    size = path.stat().st_size
    if len(header) < 8 or int.from_bytes(header[:4], "big") != IDX_MAGIC[kind]:
        raise DataError(f"{path}: not an IDX {kind} file (wrong magic number); replace it with the original file")
    count = int.from_bytes(header[4:8], "big")
    expected = 16 + count * 28 * 28 if kind == "images" else 8 + count
    if kind == "images" and header[8:16] != (28).to_bytes(4, "big") * 2:
        raise DataError(f"{path}: images are not 28x28; replace it with the original file")
    if size != expected:
        raise DataError(
            f"{path}: {size} bytes, expected {expected} for {count} {kind}; the file is truncated or corrupt"
        )
    if kind == "labels":  # 60 KB at most: cheap to read whole, and a label of 10 or more fails only mid-epoch
        labels = path.read_bytes()[8:]
        bad = next((i for i, label in enumerate(labels) if label >= NUM_CLASSES), None)
        if bad is not None:
            raise DataError(
                f"{path}: label {labels[bad]} at item {bad} is outside the classes 0-{NUM_CLASSES - 1}; "
                "replace it with the original file"
            )
    return count


def _ensure_files(dataset: str, root: Path) -> None:
    files = raw_files(dataset, root)
    missing = [p for p in files.values() if not p.is_file()]
    if missing:
        _try_download(dataset, root)
        missing = [p for p in files.values() if not p.is_file()]
    if missing:
        names = ", ".join(p.name for p in missing)
        raise DataError(
            f"{dataset}: missing {names} in {files['train-images'].parent} and the download failed; "
            f"put the files there or point --data-dir / BNBENCH_DATA_DIR at a folder that has {FOLDERS[dataset]}/raw/"
        )
    for split in ("train", "test"):
        n_images = _check_idx(files[f"{split}-images"], "images")
        n_labels = _check_idx(files[f"{split}-labels"], "labels")
        if n_images != n_labels:
            raise DataError(f"{files[f'{split}-images'].parent}: {split} has {n_images} images but {n_labels} labels")


def torchvision_class(dataset: str) -> type:
    from torchvision import datasets

    return datasets.MNIST if dataset == "mnist" else datasets.FashionMNIST


def _try_download(dataset: str, root: Path) -> None:
    """Let torchvision download the files; if that fails, remove whatever the attempt created: every folder
    it made (up to the outermost missing one above the data directory) and every new file in raw/."""
    import socket

    cls = torchvision_class(dataset)
    raw = root / FOLDERS[dataset] / "raw"
    created = None  # the outermost folder the download will create (`../shared` for ../shared/data), if any
    for folder in (raw.absolute(), *raw.absolute().parents):
        if folder.exists() or folder.is_symlink():
            break
        created = folder
    before = set(raw.iterdir()) if raw.is_dir() else set()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # no network must fail quickly, not hang
    import signal
    import threading

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # SIGTERM, SIGHUP: clean up as for Ctrl-C

    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)} if main else {}
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except BaseException as exc:  # noqa: BLE001 - any failure (or Ctrl-C, SIGTERM) removes what it created
        _remove_created(created, raw, before)
        if not isinstance(exc, Exception):
            raise  # an interrupt stays an interrupt; other failures are reported as missing files by the caller
    finally:
        socket.setdefaulttimeout(previous)
        for s, handler in handlers.items():
            signal.signal(s, handler)


def _remove_created(created: Path | None, raw: Path, before: set[Path]) -> None:
    import shutil

    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
    elif raw.is_dir():
        for path in set(raw.iterdir()) - before:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def train_size(cfg: DataConfig, root: Path) -> int:
    """Training examples the config will use; checks the files (and tries a download) first."""
    if cfg.dataset == "synthetic":
        n = SYNTHETIC_SIZES["train"]
    else:
        _ensure_files(cfg.dataset, root)
        n = _check_idx(raw_files(cfg.dataset, root)["train-labels"], "labels")
    n = min(n, cfg.train_subset or n)
    return n - val_count(n, cfg)


def load_images(dataset: str, root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{'train': (uint8 images (N, 28, 28), int64 labels), 'test': ...} on the CPU."""
    if dataset == "synthetic":
        return {split: synthetic(n, seed=i) for i, (split, n) in enumerate(SYNTHETIC_SIZES.items())}
    _ensure_files(dataset, root)
    cls = torchvision_class(dataset)
    splits = {}
    for split in ("train", "test"):
        ds = cls(str(root), train=split == "train", download=False)
        splits[split] = (ds.data, ds.targets.long())
    return splits


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic, learnable 10-class 28x28 set: very noisy copies of 10 fixed blurry prototypes
    (hard enough that sigmoid LeNet without BN stays near chance for a few epochs, as on real data)."""
    protos = torch.rand(10, 1, 7, 7, generator=torch.Generator().manual_seed(1234))
    protos = torch.nn.functional.interpolate(protos, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=gen)
    images = protos[labels] + 1.2 * torch.randn(n, 28, 28, generator=gen)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def to_inputs(images: torch.Tensor, normalize: bool, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) on `device`, in [0, 1] or, normalized, [-1, 1]."""
    x = images.to(device).unsqueeze(1).float().div_(255)
    return x.mul_(2).sub_(1) if normalize else x


def load_data(cfg: DataConfig, root: Path, device: torch.device) -> Data:
    splits = load_images(cfg.dataset, root)
    images, labels = splits["train"]
    if cfg.train_subset is not None:
        images, labels = images[: cfg.train_subset], labels[: cfg.train_subset]
    held = val_count(len(labels), cfg)  # the last examples: the same ones for every seed
    keep = len(labels) - held
    return Data(
        train=Split(to_inputs(images[:keep], cfg.normalize, device), labels[:keep].to(device)),
        test=Split(to_inputs(splits["test"][0], cfg.normalize, device), splits["test"][1].to(device)),
        val=Split(to_inputs(images[keep:], cfg.normalize, device), labels[keep:].to(device)) if held else None,
    )
