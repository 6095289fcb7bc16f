"""How `bnbench run` holds up on a busy machine: the seconds per epoch of a config alone, quiet and with N
busy background torch processes, for each thread count (1 is the default; the old default was torch's own,
one per core). Rounds alternate the thread counts (A B A B ...) so that a change in the machine's load
hits both alike. Prints a table and the ratios busy / quiet; JSON with --json FILE.

    python scripts/bench_threads.py                          # smoke, 2 busy processes, 1 vs 2 threads
    python scripts/bench_threads.py --config lenet_bn --epochs 1 --data-dir DATA --busy 2 --rounds 3

Do not take its figures as proof on a machine other people use: say that it was shared.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def busy(stop: mp.Event) -> None:
    """A background torch process that keeps one core (and its own OpenMP threads) busy."""
    import torch

    a = torch.randn(512, 512)
    while not stop.is_set():
        a = (a @ a).tanh()


def seconds_per_epoch(config: str, epochs: int, threads: int, data_dir: str | None) -> float:
    """One real `bnbench run`, piped; the mean epoch_seconds of its metrics.csv."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "bnbench", "run", config, "--epochs", str(epochs), "--out-dir", out,
               "--threads-per-job", str(threads), "--device", "cpu"]  # fmt: skip
        if data_dir:
            cmd += ["--data-dir", data_dir]
        subprocess.run(cmd, check=True, capture_output=True)
        (metrics,) = Path(out).glob("*/metrics.csv")
        lines = metrics.read_text().splitlines()
        column = lines[0].split(",").index("epoch_seconds")
        return statistics.fmean(float(line.split(",")[column]) for line in lines[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="smoke")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", default="1,2", help="thread counts to compare, e.g. 1,2")
    parser.add_argument("--busy", type=int, default=2, help="busy background processes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("BNBENCH_DATA_DIR"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    times: dict[tuple[str, int], list[float]] = {}
    for load in ("quiet", "busy"):
        stop = mp.Event()
        workers = [
            mp.Process(target=busy, args=(stop,), daemon=True) for _ in range(args.busy if load == "busy" else 0)
        ]
        for w in workers:
            w.start()
        time.sleep(2 if workers else 0)  # the busy processes import torch and start
        try:
            for _ in range(args.rounds):
                for threads in counts:  # interleaved: A B A B ...
                    times.setdefault((load, threads), []).append(
                        seconds_per_epoch(args.config, args.epochs, threads, args.data_dir)
                    )
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=10)
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "unknown CPU",
        )
        if Path("/proc/cpuinfo").exists()
        else "unknown CPU"
    )
    print(f"{args.config}, {args.epochs} epochs, {args.rounds} rounds; {cpu}, {os.cpu_count()} cores; "
          f"busy = {args.busy} background torch processes")  # fmt: skip
    print(f"{'threads':>8} {'quiet s/epoch':>14} {'busy s/epoch':>13} {'busy/quiet':>11}")
    rows = []
    for threads in counts:
        quiet, loaded = (statistics.median(times[(load, threads)]) for load in ("quiet", "busy"))
        rows.append({"threads": threads, "quiet": quiet, "busy": loaded, "ratio": loaded / quiet})
        print(f"{threads:>8} {quiet:>14.2f} {loaded:>13.2f} {loaded / quiet:>10.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "cpu": cpu, "rows": rows, "times": {
            f"{load}-{t}": v for (load, t), v in times.items()}}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
