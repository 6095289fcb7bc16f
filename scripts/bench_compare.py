"""Time `bnbench compare` over many runs: N copies of one small real run (2 seeds x N/2 configs), read and
compared in this process (find_runs + compare), then the whole `compare` and `ls` commands as a person types them.

    python scripts/bench_compare.py --runs 1000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bnbench.runs.rundir import config_sha256


def make_runs(folder: Path, count: int) -> Path:
    config = folder / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "mlp", "hidden": [16]}, "data": {"dataset": "synthetic",
                      "train_subset": 256}, "train": {"epochs": 3, "batch_size": 32}}))  # fmt: skip
    subprocess.run([sys.executable, "-m", "bnbench", "run", str(config), "--out-dir", str(folder / "one")],
                   check=True, capture_output=True)  # fmt: skip
    template, runs = folder / "one/c", folder / "runs"
    runs.mkdir()
    for i in range(count):
        target = runs / f"lr{i // 2}-s{i % 2}"
        shutil.copytree(template, target, ignore=shutil.ignore_patterns("*.pt"))
        cfg = yaml.safe_load((target / "config.yaml").read_text())
        cfg["train"]["lr"], cfg["train"]["seed"], cfg["name"] = 0.001 * (i // 2 + 1), i % 2, target.name
        text = yaml.safe_dump(cfg, sort_keys=False)
        (target / "config.yaml").write_text(text)
        meta = json.loads((target / "meta.json").read_text())
        meta |= {"config": cfg, "name": target.name, "config_sha256": config_sha256(text)}  # as bnbench writes
        (target / "meta.json").write_text(json.dumps(meta))
    return runs


def _seconds(command: list[str], repeats: int) -> float:
    """The median wall time of a command, run `repeats` times (the first also warms the file cache)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from bnbench.evidence import compare as cmp

    with tempfile.TemporaryDirectory() as tmp:
        runs = make_runs(Path(tmp), args.runs)
        bnbench = [sys.executable, "-m", "bnbench"]
        whole = _seconds([*bnbench, "compare", str(runs), "--format", "csv", "--table", "groups"], args.repeats)
        table = _seconds([*bnbench, "compare", str(runs)], args.repeats)  # the table, to a pipe
        ls_seconds = _seconds([*bnbench, "ls", str(runs), "--format", "json"], args.repeats)
        startup = _seconds([*bnbench, "--version"], args.repeats)
        pandas = _seconds([sys.executable, "-c", "import pandas"], args.repeats)
        start = time.perf_counter()
        found, _ = cmp.find_runs([runs])
        loaded = time.perf_counter()
        cmp.compare(found)
        done = time.perf_counter()
    print(json.dumps({"runs": len(found), "read_seconds": round(loaded - start, 3),
                      "compare_seconds": round(done - loaded, 3), "command_csv_seconds": round(whole, 3),
                      "command_table_seconds": round(table, 3), "ls_seconds": round(ls_seconds, 3),
                      "python_startup_seconds": round(startup, 3),
                      "import_pandas_seconds": round(pandas, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
