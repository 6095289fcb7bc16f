"""`bnbench sweep STUDY --until-decided` through the real CLI: looks add seeds only where claims are undecided,
a re-run trains nothing, an interrupted one continues, and every bad input is one line (exit 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import bnbench
from bnbench.cli import app as cli_app
from bnbench.evidence.report import load_study_runs
from bnbench.evidence.sequential import judge_study

from conftest import write_config

SAME = {"id": "same", "says": "scratch equals itself", "compare": {"norm.kind": "scratch"},
        "against": {"norm.kind": "scratch"}, "expect": "equivalent", "margin": 0.1}  # fmt: skip
BN = {"id": "bn", "says": "BN is higher", "compare": {"norm.kind": "torch"}, "against": {"norm.kind": "none"},
      "expect": "greater", "margin": 1e-6}  # fmt: skip


def _study(tmp_path: Path, claims: list | None = None, sequential: dict | None = None,
           kinds: tuple = ("none", "torch", "scratch"), seeds: str = "0-1") -> Path:  # fmt: skip
    write_config(tmp_path / "base.yaml", model={"hidden": [8]}, data={"train_subset": 128}, train={"epochs": 1})
    study = {"name": "st", "base": "base.yaml", "matrix": {"norm.kind": list(kinds)}, "seeds": seeds,
             "claims": [SAME, BN] if claims is None else claims}  # fmt: skip
    if sequential is not None:
        study["sequential"] = sequential
    (tmp_path / "st.yaml").write_text(yaml.safe_dump(study))
    return tmp_path / "st.yaml"


def _seeds(folder: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for run in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        cell, seed = run.rsplit("-s", 1)
        out.setdefault(cell, []).append(int(seed))
    return {cell: sorted(seeds) for cell, seeds in out.items()}


def test_looks_add_seeds_only_to_undecided_claims_and_a_rerun_trains_nothing(tmp_path, cli):
    study = _study(tmp_path, sequential={"max_seeds": 5})
    out = tmp_path / "runs"
    result = cli("sweep", study, "--until-decided", "--out-dir", out, "--jobs", "2", "--threads-per-job", "1")
    assert result.exit_code == 0, result.output
    assert "looks at 3, 5 seeds" in result.stdout and "claims" in result.stdout
    seeds = _seeds(out / "st")
    assert seeds["kind=scratch"] == [0, 1, 2]  # `same` (identical arms) is decided at the first look
    s, _ = load_study_runs(out / "st")
    judged = {j.claim.id: j for j in judge_study(s.study, s.runs)}
    assert judged["same"].verdict == "supported" and judged["same"].look == 1
    bn = judged["bn"]  # decided at its look, or at the budget: its cells hold exactly that look's seeds
    assert seeds["kind=torch"] == seeds["kind=none"] == list(range([3, 5][bn.look - 1]))
    assert bn.verdict != "inconclusive" or bn.at_budget
    again = cli("sweep", study, "--until-decided", "--out-dir", out, "--jobs", "2")
    assert again.exit_code == 0 and " to run (" not in again.stdout
    assert _seeds(out / "st") == seeds
    report = cli("report", out / "st", "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    text = (tmp_path / "report/README.md").read_text()
    assert "decided at look 1" in text and "Seeds until decided" in text


def test_max_seeds_on_the_command_line_is_recorded_with_the_study(tmp_path, cli):
    study = _study(tmp_path, claims=[SAME], kinds=("scratch",))
    out = tmp_path / "runs"
    dry = cli("sweep", study, "--until-decided", "--max-seeds", "4", "--out-dir", out, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "at most 4 runs" in dry.stdout and "start   kind=scratch-s3" in dry.stdout
    assert not out.exists()  # a dry run writes nothing
    result = cli("sweep", study, "--until-decided", "--max-seeds", "4", "--out-dir", out, "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert _seeds(out / "st") == {"kind=scratch": [0, 1, 2]}  # decided at the first look
    saved = yaml.safe_load((out / "st/study.yaml").read_text())
    assert saved["sequential"] == {"max_seeds": 4, "min_seeds": 3, "spending": "pocock"}
    # the rule and what the claims decide are fixed once looks were taken: a new budget or margin is refused
    bigger = cli("sweep", study, "--until-decided", "--max-seeds", "6", "--out-dir", out)
    assert bigger.exit_code == 2 and "sequential would change what its looks decided" in bigger.stderr
    _study(tmp_path, claims=[SAME | {"margin": 0.5}], kinds=("scratch",))
    moved = cli("sweep", study, "--out-dir", out)
    assert moved.exit_code == 2 and "claim same would change" in moved.stderr
    verdicts = bnbench.judge(out / "st")
    assert verdicts["look"].tolist() == [1] and verdicts["at_budget"].tolist() == [False]
    assert 0.90 < verdicts["ci_level"][0] < 1  # TOST at the first look's nominal level: wider than 90%


@pytest.mark.parametrize(
    ("args", "sequential", "claims", "message"),
    [
        (["--max-seeds", "5"], None, None, "--max-seeds goes with --until-decided"),
        (["--until-decided"], None, None, "declares no `sequential: {max_seeds: N}`; give --max-seeds N"),
        (["--until-decided"], None, [], "declares no claims"),
        (["--until-decided", "--shard", "1/2"], {"max_seeds": 5}, None, "cannot run as a --shard"),
        (["--until-decided", "--max-seeds", "2"], None, None, "max_seeds 2 is below the first look's 3 seeds"),
        (["--until-decided", "--max-seeds", "x"], None, None, "Invalid value for '--max-seeds'"),
        ([], {"max_seeds": 5, "spending": "pokock"}, None, "spending: 'pokock' is not one of pocock"),
        ([], {"max_seed": 5}, None, "sequential: max_seed"),
        ([], {"min_seeds": 5}, None, "max_seeds is missing"),
        ([], {"max_seeds": True}, None, "max_seeds: expected a whole number"),
        (["--seeds-high"], {"max_seeds": 4}, None, "would pass 4294967295, the largest seed"),
    ],
)
def test_bad_inputs_are_one_line_before_any_work(tmp_path, cli, args, sequential, claims, message):
    high = args == ["--seeds-high"]  # the seeds a look adds would pass numpy's largest seed
    study = _study(tmp_path, claims=claims, sequential=sequential, seeds="4294967294-4294967295" if high else "0-1")
    result = cli("sweep", study, "--out-dir", tmp_path / "runs", *([] if high else args))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists()


def test_an_interrupted_sweep_continues_the_same_sequence(tmp_path, cli):
    """Ctrl-C during a look: exit 130; the same command again continues: the interrupted run resumes (no
    second folder for it) and the claim's cells end with exactly the seeds of the look that decided it."""
    study = _study(tmp_path, claims=[BN], sequential={"max_seeds": 3}, kinds=("none", "torch"))
    out = tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-m", "bnbench", "sweep", str(study), "--until-decided", "--out-dir", str(out),
               "--jobs", "1", "--threads-per-job", "1"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (out / "st/kind=none-s2").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first look's own seeds (2) start after the declared ones
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=300)[0]
    if process.returncode == 0:  # finished before the signal arrived: nothing was interrupted
        pytest.skip("the sweep finished before it could be interrupted")
    assert process.returncode == 130, output
    again = cli("sweep", study, "--until-decided", "--out-dir", out, "--jobs", "2", "--threads-per-job", "1")
    assert again.exit_code == 0, again.output
    s, _ = load_study_runs(out / "st")
    (bn,) = judge_study(s.study, s.runs)
    assert bn.verdict != "inconclusive" or bn.at_budget
    expected = [0, 1, 2]  # one look: the declared seeds and the first look's own
    assert _seeds(out / "st") == {"kind=none": expected, "kind=torch": expected}
    assert all(r.status == "completed" for r in s.runs)


@pytest.mark.parametrize(("code", "said"), [(130, ""), (0, "ran and left no finished run")])
def test_a_stop_between_looks_or_a_run_that_leaves_nothing_ends_the_sequence(tmp_path, cli, monkeypatch, code, said):
    """A stop that lands between runs (the engine says 130, no run interrupted) starts no further look; a
    run that ends without any record cannot loop forever: the look is named and the command ends, exit 1."""
    calls = []
    monkeypatch.setattr(cli_app, "_run_engine", lambda jobs, *a: calls.append(jobs) or ([], code))
    study = _study(tmp_path, claims=[SAME], sequential={"max_seeds": 4}, kinds=("scratch",))
    result = cli("sweep", study, "--until-decided", "--out-dir", tmp_path / "runs")
    assert result.exit_code == (130 if code else 1), result.output
    assert len(calls) == 1 and said in result.stderr
