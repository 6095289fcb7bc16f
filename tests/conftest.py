"""Shared fixtures: tiny datasets in torchvision's layout and a CLI runner. No network, no ../shared."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner, Result

from bnbench.cli.app import main
from bnbench.training.data import synthetic


def write_idx(path: Path, tensor: torch.Tensor, magic: int) -> None:
    """An IDX file as MNIST ships it: big-endian magic, dimension sizes, then uint8 data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    path.write_bytes(header + tensor.to(torch.uint8).numpy().tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 256, n_test: int = 64) -> Path:
    raw = root / folder / "raw"
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 2051)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 2049)
    return root


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")


def write_config(path: Path, **sections: dict) -> Path:
    """A small, fast config; sections override the defaults below key by key."""
    config = {
        "model": {"name": "mlp", "hidden": [16]},
        "norm": {"kind": "scratch"},
        "data": {"dataset": "synthetic", "train_subset": 256},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.1, "eval_batch_size": 256},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def cli():
    """The real entry point, `bnbench.cli.app.main`, in-process: one-line errors and exit codes as a user sees
    them (CliRunner.invoke would bypass main and show Click's own error box)."""
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        code, error = 0, None
        with runner.isolation() as (stdout, stderr, output):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
                error = exc if code else None
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                captured = stdout.getvalue(), stderr.getvalue(), output.getvalue()
        return Result(runner, *captured, None, code, error)

    return invoke


def read_run(path: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    return (
        json.loads((path / "meta.json").read_text()),
        pd.read_csv(path / "metrics.csv"),
        pd.read_csv(path / "steps.csv"),
    )
