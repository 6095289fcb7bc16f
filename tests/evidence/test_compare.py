"""`bnbench compare` on run directories made by real tiny runs, plus hand-written ones for edge cases."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bnbench.evidence.compare import compare, find_runs, group_runs
from bnbench.records import METRIC_COLUMNS

from conftest import write_config


def fake_run(
    root: Path,
    name: str,
    test_acc: list[float],
    seed: int = 0,
    status: str = "completed",
    norm: str = "torch",
    lr: float = 0.1,
) -> Path:
    """A run directory with known numbers: 100 training examples, 10 steps per epoch."""
    path = root / name
    path.mkdir(parents=True)
    config = {
        "name": name.split("-s")[0],
        "model": {"name": "mlp"},
        "norm": {"kind": norm},
        "data": {"dataset": "mnist"},
        "train": {"seed": seed, "lr": lr},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "meta.json").write_text(json.dumps({"status": status, "hostname": "elsewhere", "pid": 1}))
    epochs = range(1, len(test_acc) + 1)
    pd.DataFrame(
        {
            "epoch": epochs,
            "train_loss": [1 / e for e in epochs],
            "train_acc": test_acc,
            "test_loss": 0.5,
            "test_acc": test_acc,
            "lr": lr,
            "epoch_seconds": 2.0,
            "examples_per_second": 50.0,
        }
    )[list(METRIC_COLUMNS)].to_csv(path / "metrics.csv", index=False)
    steps = [
        {"step": 10 * e, "epoch": e, "examples_seen": 100 * e, "train_loss": 1 / e, "train_acc": a}
        for e, a in zip(epochs, test_acc, strict=True)
    ]
    pd.DataFrame(steps).to_csv(path / "steps.csv", index=False)
    return path


def test_summary_figures_on_known_data(tmp_path):
    fake_run(tmp_path, "a", [0.5, 0.8, 0.9, 0.85])
    runs, warnings = find_runs([tmp_path])
    comp = compare(runs, target=0.8)
    row = comp.runs.iloc[0]
    assert warnings == []
    assert (row["final_test_acc"], row["best_test_acc"], row["best_epoch"]) == (0.85, 0.9, 3)
    assert (row["epochs_to_target"], row["steps_to_target"], row["examples_to_target"]) == (2, 20, 200)
    assert row["final_train_loss"] == 0.25 and row["wall_seconds"] == 8.0
    assert math.isnan(compare(runs, target=0.95).runs.iloc[0]["epochs_to_target"] or math.nan)


def test_default_target_is_the_lowest_final_accuracy_of_completed_runs(tmp_path):
    fake_run(tmp_path, "a", [0.5, 0.934])
    fake_run(tmp_path, "b", [0.7, 0.99])
    fake_run(tmp_path, "c", [0.1], status="diverged")
    comp = compare(find_runs([tmp_path])[0])
    assert comp.target == 0.93 and comp.target_is_default
    assert comp.runs["epochs_to_target"].tolist()[:2] == [2, 2] and pd.isna(comp.runs["epochs_to_target"][2])


def test_seed_groups_mean_std_and_welch_test_when_they_share_no_seed(tmp_path):
    for seed, acc in enumerate([0.90, 0.91, 0.92]):
        fake_run(tmp_path, f"mlp_none-s{seed}", [acc], seed=seed, norm="none")
    for seed, acc in enumerate([0.95, 0.96, 0.97], start=3):
        fake_run(tmp_path, f"mlp_bn-s{seed}", [acc], seed=seed, norm="torch")
    runs, _ = find_runs([tmp_path])
    assert sorted(group_runs(runs)) == ["mlp_bn", "mlp_none"]
    comp = compare(runs, baseline="mlp_none")
    groups = comp.groups.set_index("group")
    assert groups.loc["mlp_bn", "n"] == 3
    assert groups.loc["mlp_bn", "final_test_acc_mean"] == pytest.approx(0.96)
    assert groups.loc["mlp_bn", "final_test_acc_std"] == pytest.approx(0.01)
    assert groups.loc["mlp_bn", "delta_final_test_acc"] == pytest.approx(0.05)
    # By hand: t = 0.05 / sqrt(2 * 0.01**2 / 3) = 6.124 with Welch-Satterthwaite df = 4, two-sided p = 0.0036
    assert groups.loc["mlp_bn", "p_value"] == pytest.approx(0.0036, rel=0.01)
    assert groups.loc["mlp_bn", "test"] == "Welch t"
    assert math.isnan(groups.loc["mlp_none", "p_value"])


def test_groups_that_share_seeds_are_compared_paired_by_seed(tmp_path):
    for seed, (none, bn) in enumerate([(0.90, 0.95), (0.91, 0.97), (0.92, 0.96)]):
        fake_run(tmp_path, f"mlp_none-s{seed}", [none], seed=seed, norm="none")
        fake_run(tmp_path, f"mlp_bn-s{seed}", [bn], seed=seed, norm="torch")
    groups = compare(find_runs([tmp_path])[0], baseline="mlp_none").groups.set_index("group")
    # By hand: differences 0.05, 0.06, 0.04: mean 0.05, sd 0.01, t = 0.05 / (0.01 / sqrt 3) = 8.66, df 2
    assert groups.loc["mlp_bn", "test"] == "paired t"
    assert groups.loc["mlp_bn", "p_value"] == pytest.approx(0.01307, rel=0.01)
    assert groups.loc["mlp_bn", "delta_final_test_acc_ci95_low"] > 0


def test_a_repeated_seed_counts_once_with_a_warning_naming_the_runs(tmp_path, cli):
    config = write_config(tmp_path / "x.yaml", train={"epochs": 1})
    for _ in range(2):  # the same command twice into one folder: x-s0 and x-s0-2
        assert cli("run", config, "--seed", "0", "--out-dir", tmp_path / "runs").exit_code == 0
    assert cli("run", config, "--seed", "1", "--out-dir", tmp_path / "runs").exit_code == 0
    result = cli("compare", tmp_path / "runs", "--table", "groups", "--format", "csv")
    assert result.exit_code == 0, result.output
    groups = pd.read_csv(io.StringIO(result.stdout))
    assert groups["n"].tolist() == [2]  # seeds 0 and 1, each once
    (warning,) = [line for line in result.stderr.splitlines() if "seed 0" in line]
    assert "ran 2 times" in warning and "counts" in warning


def test_runs_differing_in_more_than_seed_are_separate_groups(tmp_path):
    fake_run(tmp_path, "x-s0", [0.9], seed=0, lr=0.1)
    fake_run(tmp_path, "x-s1", [0.9], seed=1, lr=0.2)
    assert len(group_runs(find_runs([tmp_path])[0])) == 2


def renamed(path: Path, name: str) -> Path:
    """Give a fake run's config another `name` (as `--name`, or as a sweep names its runs: cell-sSEED)."""
    config = yaml.safe_load((path / "config.yaml").read_text())
    (path / "config.yaml").write_text(yaml.safe_dump({**config, "name": name}))
    return path


def group_names(cli, *paths: Path) -> list[str]:
    result = cli("compare", *paths, "--table", "groups", "--format", "csv")
    assert result.exit_code == 0, result.output
    return sorted(pd.read_csv(io.StringIO(result.stdout))["group"])


def test_a_group_is_named_by_what_its_runs_share_whatever_the_order(tmp_path, cli):
    # mlp_bn-s0..2 and a run of the same config under another name (`--name ctrlc_test`, resumed): one group,
    # named by the key that tells it from the other group, not after whichever member came first.
    for seed in range(3):
        fake_run(tmp_path / "a", f"mlp_bn-s{seed}", [0.9], seed=seed, norm="torch")
        fake_run(tmp_path / "b", f"mlp_none-s{seed}", [0.8], seed=seed, norm="none")
    fake_run(tmp_path / "a", "ctrlc_test", [0.9], seed=3, norm="torch")
    names = group_names(cli, tmp_path / "a", tmp_path / "b")
    assert names == group_names(cli, tmp_path / "b", tmp_path / "a") == ["kind=torch", "mlp_none"]
    assert group_names(cli, *sorted((tmp_path / "a").iterdir())) == group_names(
        cli, *sorted((tmp_path / "a").iterdir(), reverse=True)
    )  # one group, the same name either way: what its runs share ("ctrlc_test+mlp_bn"), no member's name
    assert group_names(cli, tmp_path / "a") == ["ctrlc_test+mlp_bn"]


def test_a_cell_swept_into_two_folders_is_named_without_a_seed(tmp_path, cli):
    # A sweep names its runs cell-sSEED: the group is the cell, never "position=after-s0".
    for folder in ("one", "two"):
        for seed in range(3):
            run = fake_run(tmp_path / folder, f"position=after-s{seed}", [0.9], seed=seed + 3 * (folder == "two"))
            renamed(run, f"position=after-s{seed}")
    assert group_names(cli, tmp_path / "one", tmp_path / "two") == ["position=after"]
    assert group_names(cli, tmp_path / "two", tmp_path / "one") == ["position=after"]


def test_two_groups_sharing_a_name_are_told_apart_by_their_keys_in_any_order(tmp_path, cli):
    for seed in range(2):
        fake_run(tmp_path / "slow", f"x-s{seed}", [0.9], seed=seed, lr=0.1)
        fake_run(tmp_path / "fast", f"x-s{seed}", [0.9], seed=seed, lr=1.0)
    expected = ["x[lr=0.1]", "x[lr=1]"]
    assert group_names(cli, tmp_path / "slow", tmp_path / "fast") == expected
    assert group_names(cli, tmp_path / "fast", tmp_path / "slow") == expected


def test_compare_says_in_one_line_when_its_inputs_mix_studies(tmp_path, cli):
    study = tmp_path / "runs" / "mlp_lr"
    for seed in range(2):
        fake_run(study, f"kind=none-s{seed}", [0.8], seed=seed, norm="none")
        fake_run(tmp_path / "runs", f"mlp_none-s{seed}", [0.8], seed=seed, norm="none")
    (study / "study.yaml").write_text("name: mlp_lr\n")
    everything = cli("compare", *sorted((tmp_path / "runs").glob("mlp_*")))  # the glob catches the study too
    assert everything.exit_code == 0, everything.output
    (line,) = [line for line in everything.stderr.splitlines() if "mix" in line]
    assert "1 study" in line and "mlp_lr" in line and "2 runs from no study" in line
    for alone in ([study], sorted((tmp_path / "runs").glob("mlp_none-s*"))):
        result = cli("compare", *alone)
        assert result.exit_code == 0 and "mix" not in result.stderr, result.output
    other = tmp_path / "runs" / "other"
    fake_run(other, "kind=none-s0", [0.8], norm="none")
    (other / "study.yaml").write_text("name: other\n")
    two = cli("compare", study, other)
    assert [line for line in two.stderr.splitlines() if "mix 2 studies" in line], two.stderr


def test_broken_partial_and_foreign_directories(tmp_path, cli):
    fake_run(tmp_path, "good", [0.5, 0.6])
    fake_run(tmp_path, "partial", [0.4], status="running")  # pid 1 on another host: shown as running
    broken = fake_run(tmp_path, "broken", [0.5])
    (broken / "metrics.csv").write_text("this,is\nnot,metrics\n")
    (tmp_path / "notes").mkdir()
    result = cli("compare", tmp_path / "good", tmp_path / "partial", broken, tmp_path / "notes", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {r["name"]: r["status"] for r in data["runs"]} == {"good": "completed", "partial": "running"}
    assert "broken/metrics.csv, line 2: this is 'not', not a number; skipped" in result.stderr
    assert "notes: not a run directory" in result.stderr
    assert not (tmp_path / "good" / "compare").exists()


def test_no_runs_is_an_error(tmp_path, cli):
    result = cli("compare", tmp_path)
    assert result.exit_code == 2 and "no bnbench runs found" in result.stderr


def test_bad_options(tmp_path, cli):
    fake_run(tmp_path, "a", [0.5])
    assert "--metric nope: not a metrics.csv column" in cli("compare", tmp_path, "--metric", "nope").stderr
    assert "--baseline zzz: no such run or group" in cli("compare", tmp_path, "--baseline", "zzz").stderr
    assert (
        "'xml' is not one of 'table', 'markdown', 'csv', 'json'" in cli("compare", tmp_path, "--format", "xml").stderr
    )


def test_formats_parse_and_the_plot_is_a_png(tmp_path, cli):
    out = tmp_path / "runs"
    config = write_config(tmp_path / "tiny.yaml", train={"epochs": 2})
    assert cli("run", config, "--out-dir", out, "--seeds", "0,1").exit_code == 0
    none = write_config(tmp_path / "plain.yaml", norm={"kind": "none"}, train={"epochs": 2})
    assert cli("run", none, "--out-dir", out, "--seeds", "0,1").exit_code == 0

    table = cli("compare", out, "--baseline", "plain", "--target", "0.3")
    assert table.exit_code == 0, table.output
    assert "seed groups" in table.stdout and "paired by seed" in table.stdout and "tiny-s1" in table.stdout
    text = cli("compare", out, "--format", "csv", "--target", "0.01").stdout
    csv = pd.read_csv(io.StringIO(text))
    assert len(csv) == 4 and "tiny-s1" in set(csv["name"])  # one table: the runs
    header, first = text.splitlines()[:2]
    row = dict(zip(header.split(","), first.split(","), strict=True))
    assert row["epochs"] == "2" and row["best_epoch"] in ("1", "2") and row["epochs_to_target"] == "1"
    groups = pd.read_csv(io.StringIO(cli("compare", out, "--format", "csv", "--table", "groups").stdout))
    assert len(groups) == 2 and set(groups["n"]) == {2}
    epochs = pd.read_csv(io.StringIO(cli("compare", out, "--format", "csv", "--table", "epochs").stdout))
    assert list(epochs["epoch"]) == [1, 2] and len(epochs.columns) == 5
    assert cli("compare", out, "--format", "csv", "--table", "pivot").exit_code == 2
    data = json.loads(cli("compare", out, "--format", "json", "--baseline", "plain").stdout)
    assert data["baseline"] == "plain" and len(data["groups"]) == 2 and set(data["per_epoch"]) == {"1", "2"}
    first = data["runs"][0]
    assert Path(first["path"]).is_absolute() and Path(first["path"]).name == first["name"]
    assert first["config"]["train"]["epochs"] == 2 and isinstance(first["config"]["model"]["hidden"], list)
    assert isinstance(first["epochs"], int)
    only = cli("compare", out, "--table", "groups").stdout
    assert "seed groups" in only and "per epoch" not in only
    markdown = cli("compare", out, "--format", "markdown", "--metric", "train_loss").stdout
    assert "### train_loss per epoch" in markdown and "| tiny-s0 |" in markdown

    png = tmp_path / "curves.png"
    assert cli("compare", out, "--plot", png).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_same_named_runs_from_different_folders_stay_apart(tmp_path):
    fake_run(tmp_path / "sweep_a", "mlp_bn", [0.9])
    fake_run(tmp_path / "sweep_b", "mlp_bn", [0.8])
    runs, _ = find_runs([tmp_path / "sweep_a", tmp_path / "sweep_b"])
    comp = compare(runs)
    assert sorted(comp.runs["name"]) == ["sweep_a/mlp_bn", "sweep_b/mlp_bn"]
    assert sorted(comp.runs["final_test_acc"]) == [0.8, 0.9]
    assert list(comp.per_epoch.columns) == ["sweep_a/mlp_bn", "sweep_b/mlp_bn"]


def test_runs_are_keyed_by_resolved_path_and_named_by_the_shortest_distinguishing_path(tmp_path, cli, monkeypatch):
    fake_run(tmp_path / "a/runs", "x", [0.9])
    fake_run(tmp_path / "b/runs", "x", [0.8])
    fake_run(tmp_path / "b/runs", "y", [0.7])
    monkeypatch.chdir(tmp_path)
    runs, _ = find_runs([Path("a/runs"), Path("b/runs"), Path("./b/runs/y"), tmp_path / "a/runs/x"])
    assert [r.name for r in runs] == ["a/runs/x", "b/runs/x", "y"]  # each run once, none lost
    assert sorted(compare(runs).runs["final_test_acc"]) == [0.7, 0.8, 0.9]


def test_compare_lists_a_run_that_never_recorded(tmp_path, cli):
    fake_run(tmp_path, "done", [0.9])
    (tmp_path / "started").mkdir()
    (tmp_path / "started/config.yaml").write_text("name: started\n")
    result = cli("compare", tmp_path)
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'started'}: started but never recorded anything; nothing to compare" in result.stderr


def test_the_command_line_choices_are_the_tables_compare_has():
    from bnbench.cli.app import CompareTable
    from bnbench.evidence.compare import TABLES

    assert [t.value for t in CompareTable] == list(TABLES)


def test_a_group_never_takes_the_name_of_a_run_in_another_group(tmp_path, cli):
    # ctrlc_test-s0,1 and mlp_bn-s2 (one config), mlp_bn-s0,1 with another lr (--set): the second group is
    # not "mlp_bn", a name the first group's mlp_bn-s2 also has; it is told apart by its key.
    for seed in range(2):
        renamed(fake_run(tmp_path, f"ctrlc_test-s{seed}", [0.9], seed=seed, lr=0.1), f"ctrlc_test-s{seed}")
        renamed(fake_run(tmp_path, f"mlp_bn-s{seed}", [0.9], seed=seed, lr=1.0), f"mlp_bn-s{seed}")
    renamed(fake_run(tmp_path, "mlp_bn-s2", [0.9], seed=2, lr=0.1), "mlp_bn-s2")
    assert group_names(cli, tmp_path) == ["lr=0.1", "mlp_bn[lr=1]"]


def test_many_runs_show_their_seed_groups_and_say_where_each_run_is(tmp_path, cli):
    # 42 runs: a row per run and a column per run (the per-epoch table) would bury the answer on a terminal
    for i in range(42):
        fake_run(tmp_path, f"x{i // 2}-s{i % 2}", [0.9], seed=i % 2, lr=0.01 * (i // 2 + 1))
    result = cli("compare", tmp_path)
    assert result.exit_code == 0, result.output
    assert "seed groups" in result.stdout and "42 runs: their seed groups above" in result.stdout
    assert "x0-s1" not in result.stdout  # no row per run
    every = cli("compare", tmp_path, "--table", "runs")
    assert every.exit_code == 0 and "x0-s1" in every.stdout


@pytest.mark.parametrize(
    "text",
    [
        "epoch,test_acc,train_loss\n1,0.5,1.0\n2,0.6,0.9\n",
        "epoch,test_acc,train_loss\n\n1,0.5,1.0\n\n2,nan,inf\n",  # blank lines; NaN and inf are numbers
        "epoch,test_acc,train_loss\n",  # a run before its first epoch
        "epoch,test_acc,train_loss\n1,0.5\n",  # a short row
        "epoch,test_acc,train_loss\n1,0.5,1.0,7\n",  # a long row
        "epoch,test_acc,train_loss\n1,0.5,x\n",  # not a number
        "epoch,test_acc,train_loss\n2,0.5,1.0\n1,0.6,0.9\n",  # an epoch goes back
        "epoch,test_acc,train_loss\n1,0.5,1.0\n1,0.6,0.9\n",  # a duplicated epoch
        "epoch,test_acc,test_acc\n1,0.5,0.7\n",  # a repeated header: the last wins, as csv.DictReader does
    ],
)
def test_the_fast_csv_reader_agrees_with_check_rows_on_every_shape(tmp_path, text):
    """compare reads plain CSVs column by column; whatever it returns or refuses must be what the row-by-row
    reader with check_rows (the rules every other reader uses) returns or refuses."""
    from bnbench.evidence.compare import _columns
    from bnbench.records import TEXT_COLUMNS, DamagedFile, check_rows

    path = tmp_path / "metrics.csv"
    path.write_text(text)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        check_rows(path, rows)
        expected = {c: [r[c] if c in TEXT_COLUMNS else float(r[c]) for r in rows] for c in reader.fieldnames or ()}
    except DamagedFile as exc:
        with pytest.raises(DamagedFile) as got:
            _columns(path)
        assert str(got.value) == str(exc)
    else:
        assert repr(_columns(path)) == repr(expected)  # repr: NaN equals NaN


def test_an_untouched_config_yaml_is_not_parsed_and_a_touched_one_is(tmp_path, cli, monkeypatch):
    """meta.json keeps config.yaml's digest: compare parses config.yaml only when it changed since the run
    wrote it (parsing was half of reading 1,000 runs), and an edit that damages it still skips the run."""
    import bnbench.evidence.compare as cmp

    cli("run", str(write_config(tmp_path / "r.yaml", train={"epochs": 1})), "--out-dir", str(tmp_path / "runs"))
    run = tmp_path / "runs" / "r"
    assert len(json.loads((run / "meta.json").read_text())["config_sha256"]) == 64
    parsed = []
    real_load = cmp.yaml.load
    monkeypatch.setattr(cmp.yaml, "load", lambda *a, **k: parsed.append(1) or real_load(*a, **k))
    assert [r.name for r in find_runs([run])[0]] == ["r"] and parsed == []
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "# a note\n")  # still a config
    assert [r.name for r in find_runs([run])[0]] == ["r"] and parsed == [1]
    (run / "config.yaml").write_text("model: [unclosed\n")
    runs, warnings = find_runs([run])
    assert runs == [] and warnings == [f"{run / 'config.yaml'}: not YAML; skipped"]


def test_the_tables_are_written_without_pandas_and_say_what_the_dataframes_say(tmp_path):
    """compare's CSV and JSON come from plain rows (pandas costs `bnbench compare` about 0.7 s to import): a
    missing number is an empty cell or null, a count stays an integer, and each table reads back as the
    DataFrame the Python API gives."""
    import subprocess
    import sys

    from bnbench.evidence import compare as cmp

    root = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(root, f"bn-s{seed}", [0.5, 0.9 + seed / 100], seed=seed)
        fake_run(root, f"plain-s{seed}", [0.3, 0.4 + seed / 100], seed=seed, norm="none")
    fake_run(root, "short-s0", [0.6], lr=0.5)  # one epoch: missing from the second row of the epochs table
    code = ("import sys; from bnbench.cli.app import main\n"
            "try:\n    main(['compare', sys.argv[1], '--format', sys.argv[2], '--table', 'groups'])\n"
            "finally:\n    assert 'pandas' not in sys.modules, 'compare imported pandas'")  # fmt: skip
    for format in ("csv", "json", "table", "markdown"):
        result = subprocess.run([sys.executable, "-c", code, str(root), format], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    runs, _ = find_runs([root])
    comp = compare(runs, target=0.45)
    for which in ("runs", "groups", "epochs"):
        read = pd.read_csv(io.StringIO(cmp.to_csv(comp, which)))
        expected = cmp.raw_table(comp, which).frame()
        pd.testing.assert_frame_equal(read, expected, check_dtype=False)
    text = cmp.to_csv(comp, "runs")
    rows = list(csv.DictReader(io.StringIO(text)))
    short = next(r for r in rows if r["name"] == "short-s0")
    plain = next(r for r in rows if r["name"] == "plain-s0")
    assert short["epochs"] == "1" and plain["epochs_to_target"] == "" and short["epochs_to_target"] == "1"
    data = json.loads(cmp.to_json(comp))
    assert data["per_epoch"]["2"]["short-s0"] is None and data["per_epoch"]["2"]["bn-s1"] == 0.91
    assert {g["group"]: g["n"] for g in data["groups"]} == {"bn": 2, "plain": 2, "short": 1}
    assert all(isinstance(r["epochs"], int) for r in data["runs"])
    assert next(g for g in data["groups"] if g["group"] == "short")["final_test_acc_std"] is None  # one seed: NaN


def test_what_a_review_found_in_the_tables_without_pandas(tmp_path, cli):
    """A diverged run's inf is null in JSON (strict parsers refuse `Infinity`); a config key named like a
    column keeps its dotted name; a grid needs two keys and says which runs a cell left out; the markdown
    notes are about the tables written; a 40-digit loss is not shown digit by digit."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(root, f"bn-s{seed}", [0.5, 0.9], seed=seed)
        fake_run(root, f"bnfast-s{seed}", [0.6, 0.8], seed=seed, lr=0.5)
    metrics = root / "bn-s0/metrics.csv"
    rows = metrics.read_text().splitlines()
    cells = rows[-1].split(",")
    cells[rows[0].split(",").index("test_loss")] = "inf"  # the last epoch's test loss
    rows[-1] = ",".join(cells)
    metrics.write_text("\n".join(rows) + "\n")
    text = cli("compare", root, "--format", "json", "--metric", "test_loss").stdout

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    data = json.loads(text, parse_constant=refuse)  # no NaN, Infinity or -Infinity
    assert data["per_epoch"]["2"]["bn-s0"] is None and data["per_epoch"]["1"]["bn-s0"] == 0.5
    long = fake_run(root, "long-s0", [0.5, 0.9, 0.91])
    (long / "config.yaml").write_text((long / "config.yaml").read_text().replace("lr: 0.1", "lr: 0.1\n  epochs: 9"))
    header = cli("compare", root, "--format", "markdown", "--table", "runs").stdout.splitlines()[2]
    assert "| train.epochs |" in header and header.count("epochs |") == 2  # the config's and the epochs run
    same = cli("compare", root, "--pivot", "train.lr", "--by", "train.lr")
    assert same.exit_code == 2 and "--pivot and --by both name train.lr" in same.stderr
    mixed = cli("compare", root, "--pivot", "norm.kind", "--by", "model.name", "--format", "csv")
    assert mixed.exit_code == 0 and "its runs also differ in train.lr" in mixed.stderr
    assert "seed 0 ran 3 times" in mixed.stderr  # bn-s0, bnfast-s0, long-s0: one counts
    epochs = cli("compare", root, "--format", "markdown", "--table", "epochs").stdout
    assert "target" not in epochs and "### test_acc per epoch" in epochs
    from bnbench.evidence.compare import _num

    assert _num(2.5e28) == "2.5e+28" and _num(123456.0) == "123,456" and _num(0.5) == "0.5000"


def test_a_received_folder_name_never_reaches_the_terminal_as_a_command_and_c_locale_tables_align(tmp_path):
    """A real `bnbench compare` process: a folder named with an escape sequence is shown as `\\x1b`, in the
    warning and in the table; under LC_ALL=C every line of a table is as wide as its border (`±` is spelled
    `+/-` before the columns are measured, a non-ASCII name as its escape)."""
    import subprocess
    import sys

    root = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(root, f"esc\x1b[31mred-s{seed}", [0.5, 0.9], seed=seed)
        fake_run(root, f"ünï-s{seed}", [0.4, 0.7 + seed / 10], seed=seed, norm="none")
    (root / "broken\x1b]0;title\x07").mkdir()
    (root / "broken\x1b]0;title\x07" / "meta.json").write_text("{}")
    env = {**os.environ, "LC_ALL": "C", "COLUMNS": "100"}
    for args in (["--table", "runs"], ["--table", "groups", "--baseline", "ünï"]):
        result = subprocess.run([sys.executable, "-m", "bnbench", "compare", str(root), *args], capture_output=True,
                                env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert b"\x1b" not in result.stdout + result.stderr and b"\x07" not in result.stderr
        out = result.stdout.decode("ascii")  # ASCII only
        assert "esc\\x1b[31mred" in out and "\\xfcn\\xef" in out
        table = [line for line in out.splitlines() if line.startswith(("|", "+"))]
        assert table and len({len(line) for line in table}) == 1, out
    assert "+/-" in out and "broken\\x1b]0;title\\x07" in result.stderr.decode("ascii")


def test_what_a_review_found_in_received_folders_and_plots(tmp_path, cli):
    """A completed run with no epochs is damaged; a folder of run files without meta.json is named, not
    silently left out; a repeated seed counts once in a figure's groups, as in the tables."""
    from bnbench.evidence.compare import seed_groups

    root = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(root, f"bn-s{seed}", [0.5, 0.9], seed=seed)
    again = fake_run(root, "bn-s0-2", [0.5, 0.8], seed=0)  # seed 0 again
    empty = fake_run(root, "hollow-s0", [0.5])
    (empty / "metrics.csv").write_text((empty / "metrics.csv").read_text().splitlines()[0] + "\n")
    orphan = fake_run(root, "orphan-s0", [0.5])
    (orphan / "meta.json").unlink()
    (orphan / "checkpoint.pt").write_bytes(b"")
    result = cli("compare", root, "--format", "csv")
    assert result.exit_code == 0
    assert f"{empty / 'metrics.csv'}: no epochs, though meta.json says the run completed" in result.stderr
    assert f"{orphan}: run files but no meta.json" in result.stderr and "hollow" not in result.stdout
    runs, _ = find_runs([root])
    groups, notes = seed_groups(runs)
    assert [len(members) for members in groups.values()] == [2] and "seed 0 ran 2 times" in notes[0]
    assert again.name in notes[0]


def test_a_hand_edited_inf_or_a_folder_without_meta_is_data_never_a_crash(tmp_path, cli):
    """`inf` where an accuracy belongs (a file someone edited) neither sets the default target nor enters a
    paired test: strict JSON, exit 0. A folder whose run recorded epochs but has no meta.json is named so."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(root, f"bn-s{seed}", [0.15, 0.18], seed=seed)
        fake_run(root, f"plain-s{seed}", [0.12, 0.14], seed=seed, norm="none")
    metrics = root / "bn-s0/metrics.csv"
    rows = metrics.read_text().splitlines()
    cells = rows[-1].split(",")
    cells[rows[0].split(",").index("test_acc")] = "inf"
    metrics.write_text("\n".join([*rows[:-1], ",".join(cells)]) + "\n")
    orphan = fake_run(root, "orphan-s0", [0.5])
    (orphan / "meta.json").unlink()

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    for extra in ([], ["--baseline", "plain", "--target", "0.13"]):
        result = cli("compare", root, "--format", "json", *extra)
        assert result.exit_code == 0, result.stderr
        json.loads(result.stdout, parse_constant=refuse)
    assert f"{orphan}: run files but no meta.json" in result.stderr and "never recorded" not in result.stderr


def test_csv_on_a_terminal_writes_control_characters_out_and_a_dumb_terminal_keeps_its_width(tmp_path):
    """On a terminal (a pty), CSV names with an escape sequence are written out; to a file they stay as they
    are (data). Under TERM=dumb, Rich would assume 80 columns: tables fit the terminal's 60."""
    import subprocess
    import sys

    import pexpect

    root = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(root, f"esc\x1b[31mred-s{seed}", [0.5, 0.9], seed=seed)
        fake_run(root, f"plain-with-a-rather-long-name-s{seed}", [0.4, 0.7], seed=seed, norm="none")
    command = f"{sys.executable} -m bnbench compare {root}"
    child = pexpect.spawn(f"{command} --format csv", dimensions=(40, 100), timeout=120)
    shown = child.read()
    assert b"esc\\x1b[31mred" in shown and b"\x1b[31m" not in shown
    to_file = subprocess.run([*command.split(), "--format", "csv"], capture_output=True)
    assert b"esc\x1b[31mred" in to_file.stdout
    env = {**os.environ, "TERM": "dumb"}
    env.pop("COLUMNS", None)
    child = pexpect.spawn(f"{command} --table runs", dimensions=(40, 60), timeout=120, env=env)
    lines = child.read().decode().splitlines()
    assert lines and max(len(line.rstrip()) for line in lines) <= 60, lines
