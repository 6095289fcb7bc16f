"""A study as a SLURM job array: `sweep --shard i/N` runs a deterministic, disjoint part of a study, and
the parts together are the study. SLURM itself cannot run here: its script is run with the array's
environment and --dry-run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import write_config

ROOT = Path(__file__).resolve().parents[2]
TIMING = ["epoch_seconds", "examples_per_second"]


def _study(tmp_path: Path) -> Path:
    base = write_config(tmp_path / "base.yaml", data={"train_subset": 256}, train={"epochs": 2})
    path = tmp_path / "st.yaml"
    path.write_text(yaml.safe_dump({"name": "st", "base": str(base), "matrix": {"norm.kind": ["none", "scratch"]},
                                    "seeds": "0-2"}))  # fmt: skip
    return path


def _planned(output: str) -> list[str]:
    return [line.split()[1] for line in output.splitlines() if line.startswith("start ")]


def test_shards_are_disjoint_and_together_are_the_study(tmp_path, cli):
    study = _study(tmp_path)
    whole = _planned(cli("sweep", study, "--dry-run", "--out-dir", tmp_path / "runs").stdout)
    parts = []
    for i in (1, 2, 3):
        result = cli("sweep", study, "--shard", f"{i}/3", "--dry-run", "--out-dir", tmp_path / "runs")
        assert result.exit_code == 0 and f"shard {i}/3: 2 of the study's 6 runs" in result.stdout
        parts.append(_planned(result.stdout))
    assert len(whole) == 6 and sorted(n for p in parts for n in p) == sorted(whole)
    assert all(len(p) == 2 for p in parts)  # seeds interleave: each shard gets its share
    again = _planned(cli("sweep", study, "--shard", "2/3", "--dry-run", "--out-dir", tmp_path / "x").stdout)
    assert again == parts[1]  # the same split on every machine


def test_a_study_run_as_three_shards_equals_it_run_whole(tmp_path, cli):
    study = _study(tmp_path)
    for i in (1, 2, 3):
        assert cli("sweep", study, "--shard", f"{i}/3", "--jobs", "1", "--out-dir", tmp_path / "sharded").exit_code == 0
    assert cli("sweep", study, "--jobs", "1", "--out-dir", tmp_path / "whole").exit_code == 0
    sharded = sorted(p.name for p in (tmp_path / "sharded/st").iterdir() if (p / "meta.json").exists())
    whole = sorted(p.name for p in (tmp_path / "whole/st").iterdir() if (p / "meta.json").exists())
    assert sharded == whole and len(whole) == 6
    for name in whole:
        a = pd.read_csv(tmp_path / "sharded/st" / name / "metrics.csv").drop(columns=TIMING)
        b = pd.read_csv(tmp_path / "whole/st" / name / "metrics.csv").drop(columns=TIMING)
        pd.testing.assert_frame_equal(a, b)
    assert "6 already done or skipped" in cli("sweep", tmp_path / "sharded/st", "--jobs", "1").stdout


@pytest.mark.parametrize("bad", ["0/3", "4/3", "1", "a/b", "1/0"])
def test_bad_shards_are_one_line(tmp_path, cli, bad):
    result = cli("sweep", _study(tmp_path), "--shard", bad, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "expected i/N with 1 <= i <= N" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_the_slurm_script_runs_its_array_task_shard(tmp_path):
    study = _study(tmp_path)
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_CPUS_PER_TASK": "1",
           "BNBENCH": str(Path(sys.executable).parent / "bnbench"), "OUT_DIR": str(tmp_path / "runs")}  # fmt: skip
    result = subprocess.run(["bash", str(ROOT / "scripts/slurm_sweep.sh"), str(study), "--dry-run"],
                            capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "shard 2/3: 2 of the study's 6 runs" in result.stdout and len(_planned(result.stdout)) == 2
    plain = {k: v for k, v in env.items() if not k.startswith("SLURM_ARRAY")}
    outside = subprocess.run(["bash", str(ROOT / "scripts/slurm_sweep.sh"), str(study)], capture_output=True,
                             text=True, env=plain)  # fmt: skip
    assert outside.returncode != 0 and "run as a SLURM array task" in outside.stderr
