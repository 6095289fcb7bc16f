"""The manual backward's speed, old against new, in interleaved rounds (A B A B ...) in one process.

    python scripts/bench_manual_backward.py [--old ef4b407] [--rounds 7] [--threads 1]

The old implementation is `bnbench/nn/norms.py` at the `--old` commit (`git show`), imported as a temporary
module; the new one is the working tree's. Each round times forward + backward of a training step of
BatchNorm (affine), LayerNorm and GroupNorm with `backward="manual"` on LeNet-sized and MLP-sized
activations, float32, CPU. Prints the median time per step of each and the ratio new / old (below 1: faster).
A benchmark, not a test: on a shared machine only the interleaved ratio means anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bnbench.nn import norms as new_norms

ROOT = Path(__file__).resolve().parent.parent


def old_module(commit: str):
    source = subprocess.run(["git", "show", f"{commit}:bnbench/nn/norms.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "old_norms.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_norms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = {  # name: (builder(norms module), input shape)
    "BatchNorm (256,6,28,28)": (lambda n: n.BatchNorm(6, backward="manual"), (256, 6, 28, 28)),
    "BatchNorm (256,100)": (lambda n: n.BatchNorm(100, backward="manual"), (256, 100)),
    "LayerNorm (256,16,10,10)": (lambda n: n.LayerNorm((16, 10, 10), backward="manual"), (256, 16, 10, 10)),
    "GroupNorm (256,16,10,10)": (lambda n: n.GroupNorm(4, 16, backward="manual"), (256, 16, 10, 10)),
}


def time_step(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        xr = x.detach().requires_grad_()
        module(xr).backward(dy)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="ef4b407", help="the commit whose norms.py is the old implementation")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per round and variant")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    old = old_module(args.old)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} interleaved rounds x {args.steps} steps")
    for name, (build, shape) in CASES.items():
        x, dy = torch.randn(shape, generator=gen) * 3 + 2, torch.randn(shape, generator=gen)
        variants = {"old": build(old), "new": build(new_norms)}
        for module in variants.values():
            time_step(module, x, dy, 3)  # warm-up
        times: dict[str, list[float]] = {"old": [], "new": []}
        for r in range(args.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for key in order:
                times[key].append(time_step(variants[key], x, dy, args.steps))
        ratios = [n / o for n, o in zip(times["new"], times["old"], strict=True)]
        print(f"{name:26s} old {statistics.median(times['old']) * 1e3:7.2f} ms  new "
              f"{statistics.median(times['new']) * 1e3:7.2f} ms  new/old {statistics.median(ratios):.2f}")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
