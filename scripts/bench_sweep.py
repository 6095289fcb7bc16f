"""Wall time of one study with --jobs 1, --jobs 2 and (optionally) --backend ray, alternating rounds.

    python scripts/bench_sweep.py configs/studies/bench_mlp.yaml --data-dir ../shared/data --rounds 3 --ray

Each round runs the whole study from nothing into a fresh temporary folder with each mode in turn, so
a machine whose speed drifts slows every mode alike; the medians and their ratios are printed, and
every round's figure goes to --out as JSON. Ray's overhead per run is (ray - local) / (runs / slots),
with as many slots as --jobs 2 has workers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also time --backend ray (2 CPUs, 1 per run)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    modes = {"jobs 1": ["--jobs", "1"], "jobs 2": ["--jobs", "2"]}
    if args.ray:
        modes["ray"] = ["--backend", "ray", "--cpus-per-run", "1"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    runs = 0
    for round_ in range(args.rounds):
        for mode, options in modes.items():
            with tempfile.TemporaryDirectory() as out:
                cmd = [sys.executable, "-m", "bnbench", "sweep", str(args.study), "--out-dir", out, "--device", "cpu"]
                cmd += ["--data-dir", str(args.data_dir)] if args.data_dir else []
                started = time.perf_counter()
                done = subprocess.run(cmd + options, capture_output=True, text=True)
                times[mode].append(time.perf_counter() - started)
                if done.returncode != 0:
                    sys.exit(f"{mode} failed:\n{done.stderr}")
                runs = sum(1 for p in Path(out).glob("*/*/metrics.csv"))
            print(f"round {round_ + 1} {mode}: {times[mode][-1]:.1f} s", flush=True)
    median = {m: statistics.median(t) for m, t in times.items()}
    print(f"{args.study.name}: {runs} runs, median of {args.rounds} rounds")
    for mode, value in median.items():
        print(f"  {mode}: {value:.1f} s ({value / median['jobs 1']:.2f}x jobs 1)")
    if "ray" in median:
        print(f"  ray overhead per run: {(median['ray'] - median['jobs 2']) / (runs / 2):+.2f} s")
    if args.out:
        args.out.write_text(json.dumps({"study": str(args.study), "runs": runs, "rounds": times}, indent=2) + "\n")


if __name__ == "__main__":
    main()
