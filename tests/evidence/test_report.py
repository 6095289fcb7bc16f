"""`bnbench report`: every shipped study, expanded from its real study file into small hand-made run
directories with known numbers, and one real tiny sweep through the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bnbench.config import BATCH_STATISTICS_KINDS
from bnbench.records import METRIC_COLUMNS, metrics_schema
from bnbench.runs.study import SHIPPED_CONFIGS, dump_study, load_study

from conftest import write_config

STUDIES = sorted(p.stem for p in (SHIPPED_CONFIGS / "studies").glob("*.yaml"))
REPO = Path(__file__).resolve().parents[2]
MAKEFILE = (REPO / "Makefile").read_text()
REPORTED = re.search(r"^STUDIES := ((?:.*\\\n)*.*)$", MAKEFILE, flags=re.M).group(1).split()
REPORTED = [name for name in REPORTED if name != "\\"]  # the studies `make results` runs
REPORTED += re.search(r"^STUDIES_FULL := \$\(STUDIES\) (.*)$", MAKEFILE, flags=re.M).group(1).split()  # results-full
BN_GAIN = 0.05  # the fabricated runs: BN adds this to the test accuracy


def fake_study(root: Path, name: str, seeds: tuple[int, ...] = (0, 1, 2), epochs: int = 3) -> Path:
    """The shipped study's runs (two or three seeds, a few epochs) with known numbers: accuracy 0.8 + BN_GAIN
    for BN kinds, plus 0.001 * seed; diagnostics where the study records them."""
    study = load_study(SHIPPED_CONFIGS / "studies" / f"{name}.yaml")
    study = dataclasses.replace(study, seeds=seeds, fixed=(*study.fixed, ("train.epochs", epochs)))
    folder = root / study.name
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(dump_study(study))
    for planned in study.runs():
        cfg = planned.config
        path = folder / planned.name
        path.mkdir()
        (path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        meta = {
            "status": "completed",
            "hostname": "elsewhere",
            "pid": 1,
            "device_name": "test CPU",
            "started_at": "2026-01-01T00:00:00+00:00",
            "ended_at": "2026-01-01T00:01:00+00:00",
        }
        (path / "meta.json").write_text(json.dumps(meta))
        bn = cfg.norm.kind in BATCH_STATISTICS_KINDS
        schema = metrics_schema(bn, "running", cfg.data.val_split > 0)
        acc = 0.8 + (BN_GAIN + 0.0003 * cfg.train.seed**2 if bn else 0.0) + 0.001 * cfg.train.seed  # gains vary
        rows = [
            {
                "epoch": e,
                "train_loss": 1 / e,
                "train_acc": acc,
                "test_loss": 0.5,
                "test_acc": acc - 0.1 / e,
                "lr": cfg.train.lr,
                "epoch_seconds": 1.0,
                "examples_per_second": 100.0,
                "test_acc_batch_stats": acc + 0.01,
                "val_loss": 0.5,
                "val_acc": acc - 0.1 / e + 0.01 * (cfg.train.lr == 0.1),  # the tutorial's rate validates best
            }
            for e in range(1, epochs + 1)
        ]
        pd.DataFrame(rows)[list(schema.columns)].to_csv(path / "metrics.csv", index=False)
        steps = [
            {"step": 10 * e, "epoch": e, "examples_seen": 100 * e, "train_loss": 1 / e, "train_acc": acc}
            for e in range(1, epochs + 1)
        ]
        pd.DataFrame(steps).to_csv(path / "steps.csv", index=False)
        if cfg.train.diagnostics:
            diag = [
                {"step": 10 * e, "epoch": e, "layer": layer, "quantity": q, "value": v * (e + 1)}
                for e in range(0, epochs + 1)
                for layer in ("norm1", "norm2", "norm3")
                for q, v in (
                    ("unit_p15", -1.0),
                    ("unit_p50", 0.1),
                    ("unit_p85", 1.0),
                    ("lag_mean", 0.2),
                    ("grad_weight_norm", 0.5),
                    ("units_path", 0.3),
                )
            ]
            smooth = 0.5 if bn else 1.0  # the landscape probe: BN smoother, 10 probes
            diag += [
                {"step": 10 * e, "epoch": e, "layer": "model", "quantity": q, "value": smooth * (1 + 0.01 * e)}
                for e in range(10)
                for q in ("landscape_loss_range", "grad_change_max", "beta_smoothness", "grad_curvature")
            ]
            pd.DataFrame(diag).sort_values("step", kind="stable").to_csv(path / "diagnostics.csv", index=False)
    return folder


def test_make_results_runs_every_shipped_study_that_declares_claims():
    assert len(REPORTED) == len(set(REPORTED))
    assert set(REPORTED) <= set(STUDIES)
    with_claims = {name for name in STUDIES if load_study(SHIPPED_CONFIGS / "studies" / f"{name}.yaml").claims}
    assert with_claims <= set(REPORTED) and len(with_claims) >= 8


@pytest.mark.parametrize("name", STUDIES)
def test_each_shipped_study_expands_and_validates_in_a_dry_run(name, tmp_path, cli, mnist_dir, monkeypatch):
    import bnbench.tools.estimate as estimate  # the estimate's timing of each shape: tested in tests/tools

    monkeypatch.setattr(estimate, "measured_epoch_seconds", lambda cfg, device: 1.0)
    result = cli("sweep", SHIPPED_CONFIGS / "studies" / f"{name}.yaml", "--dry-run", "--out-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    runs = load_study(SHIPPED_CONFIGS / "studies" / f"{name}.yaml").runs()
    assert f"{name}: {len(runs)} runs; {len(runs)} to run, 0 to skip" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("name", "seeds"), [("mlp_norms", 10), ("ioffe_mnist", 10), ("lenet_norms", 8)])
def test_studies_keep_the_seeds_their_effects_need(name, seeds):
    assert len(load_study(SHIPPED_CONFIGS / "studies" / f"{name}.yaml").seeds) == seeds


def test_report_engine_knows_no_study_by_name():
    source = (REPO / "bnbench" / "evidence" / "report.py").read_text()
    assert not [name for name in STUDIES if name in source]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("studies")
    folders = [fake_study(root, name) for name in REPORTED]
    out = root / "results"
    from typer.testing import CliRunner

    from bnbench.cli.app import app

    result = CliRunner().invoke(app, ["report", *map(str, folders), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, (out / "README.md").read_text()


def section_of(text: str, name: str) -> str:
    return text.split(f"\n## {name}\n")[1].split("\n## ")[0]


def test_report_has_a_section_per_study_with_command_and_claims(full_report):
    out, text = full_report
    for name in REPORTED:
        section = section_of(text, name)
        # its runs have other seeds and epochs than the shipped file: the command re-runs its own folder
        assert f"```\nbnbench sweep {out.parent / name}\n```" in section
        study = load_study(SHIPPED_CONFIGS / "studies" / f"{name}.yaml")
        if study.question:
            assert f"*{study.question}*" in section
        for claim in study.claims:  # every declared claim gets one of the three verdicts
            row = next(line for line in section.splitlines() if line.startswith(f"| **{claim.id}**"))
            assert re.search(r"\| (supported|\*\*contradicted\*\*|inconclusive) \|", row), row


def test_every_linked_figure_exists_and_is_a_png(full_report):
    out, text = full_report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) >= len(REPORTED)
    for link in links:
        assert (out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in out.glob("*.png")} == set(links)  # nothing stale, nothing unlinked


def test_tables_parse_with_a_constant_column_count(full_report):
    _, text = full_report
    tables = re.findall(r"((?:^\|.*\|\n)+)", text, flags=re.M)
    assert len(tables) >= len(REPORTED)
    for block in tables:
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in block.strip().splitlines()}
        assert len(widths) == 1, block


def test_numbers_and_verdicts_come_from_the_runs(full_report):
    _, text = full_report
    lenet = section_of(text, "lenet_norms")
    # no norm: 0.8 + 0.001 * seed over seeds 0-2 -> 0.801 ± 0.001; BN: +0.05 and a little more per seed
    assert "| no norm | 3 | 3 completed | 0.333 ± 0.000 | 0.801 ± 0.001 | 0.768 ± 0.001 |" in lenet
    row = next(line for line in lenet.splitlines() if line.startswith("| **bn_higher_final**"))
    assert "| supported |" in row and "paired t, n 3 pairs" in row
    # BN read with batch statistics (acc + 0.01) against no norm's running accuracy, mean of the last 3 epochs
    gain = statistics.fmean(
        0.05 + 0.0003 * s**2 + 0.01 + statistics.fmean(0.1 / e for e in (1, 2, 3)) for s in range(3)
    )
    assert f"{gain:.4f} [" in row
    # scratch and torch are one computation: identical numbers, equivalent within the margin
    row = next(line for line in lenet.splitlines() if line.startswith("| **scratch_is_torch**"))
    assert "| supported |" in row
    assert "hand-written BN and nn.BatchNorm coincide" in lenet  # one axis for the norms: the caption names them
    assert "hand-written BN and nn.BatchNorm coincide" in section_of(text, "mlp_norms")  # the caption says so
    verdicts = text.split("\n## Verdicts\n")[1].split("\n## ")[0]
    assert "lenet_norms" in verdicts and "bn_higher_final" in verdicts


def test_published_figures_and_deviations_come_from_the_study_file(full_report):
    _, text = full_report
    lenet = section_of(text, "lenet_norms")
    study = load_study(SHIPPED_CONFIGS / "studies" / "lenet_norms.yaml")
    assert "[Dive into Deep Learning 0.17 (the pre-1.0 release" in lenet and "d2l-en/blob/v0.17.6/" in lenet
    for item in study.published.figures:
        name = {"scratch": "hand-written BN", "torch": "nn.BatchNorm"}[dict(item.arm)["norm.kind"]]
        assert f"| {name} | {item.column} | {item.value:.3f} |" in lenet
    # the fabricated runs train 3 epochs where the published setup trains 10: beside every verdict
    assert "train.epochs: 3 here, 10 published" in lenet
    row = next(line for line in lenet.splitlines() if line.startswith("| **bn_higher_final**"))
    assert "train.epochs: 3 here, 10 published" in row
    ioffe = section_of(text, "ioffe_mnist")
    assert "the paper names no optimizer" in ioffe


def test_report_from_a_real_tiny_sweep(tmp_path, cli, mnist_dir):
    base = write_config(tmp_path / "tiny.yaml", data={"dataset": "mnist"}, train={"epochs": 2})
    result = cli(
        "sweep",
        base,
        "--grid",
        "norm.kind=none,torch",
        "--seeds",
        "0-1",
        "--name",
        "tiny",
        "--data-dir",
        mnist_dir,
        "--out-dir",
        tmp_path / "runs",
        "--jobs",
        "1",
    )
    assert result.exit_code == 0, result.output
    result = cli("report", tmp_path / "runs" / "tiny", "--out", tmp_path / "results")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "results" / "README.md").read_text()
    assert "## tiny" in text and "| no norm | 2 | 2 completed |" in text and "| nn.BatchNorm | 2 |" in text
    assert (tmp_path / "results" / "tiny_curves_by_epoch.png").is_file()


def test_a_users_own_study_file_with_claims_gets_verdicts(tmp_path, cli, mnist_dir):
    base = write_config(tmp_path / "tiny.yaml", data={"dataset": "mnist"}, train={"epochs": 2})
    study = {
        "name": "mine",
        "question": "Does my BN help my tiny net?",
        "base": str(base),
        "matrix": {"norm.kind": ["none", "torch"]},
        "seeds": "0-2",
        "published": {"setup": {"train.epochs": 20}, "notes": ["my paper used a bigger net"]},
        "figures": [{"plot": "curves", "x": "step", "columns": ["train_loss"]}],
        "claims": [
            {"id": "bn_helps", "says": "BN lowers the final train loss", "compare": {"norm.kind": "torch"},
             "against": {"norm.kind": "none"}, "metric": {"column": "train_loss", "at": "final"}, "expect": "less",
             "margin": 0.01},
            {"id": "same_as_itself", "says": "no norm equals itself", "compare": {"norm.kind": "none"},
             "against": {"norm.kind": "none"}, "metric": {"column": "test_acc"}, "expect": "equivalent",
             "margin": 0.01},
        ],
    }  # fmt: skip
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(study))
    args = ["--data-dir", mnist_dir, "--out-dir", tmp_path / "runs", "--jobs", "1"]
    assert cli("sweep", tmp_path / "mine.yaml", *args).exit_code == 0
    result = cli("report", tmp_path / "runs" / "mine")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "runs" / "mine" / "report" / "README.md").read_text()
    assert "*Does my BN help my tiny net?*" in text and "my paper used a bigger net" in text
    assert "train.epochs: 2 here, 20 published" in text
    row = next(line for line in text.splitlines() if line.startswith("| **same_as_itself**"))
    assert "| supported |" in row and "0.0000 [0.0000, 0.0000]" in row
    row = next(line for line in text.splitlines() if line.startswith("| **bn_helps**"))
    assert re.search(r"\| (supported|\*\*contradicted\*\*|inconclusive) \|", row)
    assert (tmp_path / "runs" / "mine" / "report" / "mine_curves_by_step_train_loss.png").is_file()


def test_bad_report_inputs_are_one_line_exit_2(tmp_path, cli):
    result = cli("report", tmp_path / "nothing")
    assert result.exit_code == 2 and "not a study folder" in result.output
    assert len(result.output.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "study.yaml").write_text((SHIPPED_CONFIGS / "studies" / "mlp_norms.yaml").read_text())
    assert cli("report", empty).exit_code == 2
    folder = fake_study(tmp_path, "mlp_norms", seeds=(0,))
    (tmp_path / "file").write_text("")
    result = cli("report", folder, "--out", tmp_path / "file")
    assert result.exit_code == 2 and "not a folder" in result.output
    result = cli("report", folder, folder, "--out", tmp_path / "r")
    assert result.exit_code == 2 and "same study" in result.output
    assert not (tmp_path / "r").exists()


def test_metric_columns_fabricated_match_the_schema():
    assert set(METRIC_COLUMNS) <= set(metrics_schema(True, "running").columns)


def test_the_readme_block_is_generated_from_the_report(full_report, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_results", REPO / "scripts" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, text = full_report
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{module.BEGIN}\nhand-written, stale\n{module.END}\n\n## Commands\n")
    module.main(out / "README.md", readme)
    written = readme.read_text()
    assert "hand-written" not in written and written.endswith("## Commands\n")
    table = (out / "README.md").read_text().split("## Verdicts", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| [")]
    assert [line for line in table.splitlines() if line.strip()][0] in written  # the headline counts
    not_supported = [row[1].split(":")[0] for row in rows if row[2].strip("*") != "supported"]
    assert not_supported and all(f" {claim} (" in written for claim in not_supported)
    supported = [row[1].split(":")[0] for row in rows if row[2].strip("*") == "supported"]
    assert supported and not any(f" {claim} (" in written for claim in supported)  # the report has them
    for name in REPORTED:
        assert f"[{name}](docs/results/README.md#{name})" in written


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels, from the PNG's IHDR chunk."""
    data = path.read_bytes()[16:24]
    return int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big")


def test_lenet_norms_draws_the_norms_on_one_axis_with_no_empty_panel(tmp_path, cli):
    study = fake_study(tmp_path, "lenet_norms")
    result = cli("report", study, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    (figure,) = (tmp_path / "out").glob("lenet_norms_curves_*.png")
    width, height = png_size(figure)
    # One column of panels (the norms as lines on one axis), a row per metric: taller than wide. Before,
    # a column per norm, with "no norm: test accuracy, batch statistics" drawn empty.
    assert height > width


def test_one_colour_per_norm_and_the_band_is_named_only_with_several_seeds():
    from bnbench.evidence.plots import NORM_COLOURS, _style, band_note

    for kind, colour in NORM_COLOURS.items():  # whatever position a series takes, its norm keeps its colour
        assert {_style(i, kind)["color"] for i in range(12)} == {colour}
    assert len(set(NORM_COLOURS.values())) == len(NORM_COLOURS)
    assert band_note([3, 3]) == "line: mean over seeds, band: ± 1 std over seeds (n=3)"
    assert band_note([1, 1]) == ""  # one run per series: no band, no "mean over seeds"


def test_a_run_from_another_config_and_a_linked_file_are_left_out_and_said(tmp_path, cli):
    """A received study folder: a run copied in from another config (lr 0.3) would stand in for a cell's seed
    as its most recent run; a metrics.csv that is a link would bring another run's numbers. Both are left
    out, each named on the terminal and under Skipped; the cell's own runs count."""
    folder = fake_study(tmp_path, "mlp_norms")
    stray = folder / "kind=none-s0-x"
    shutil.copytree(folder / "kind=none-s0", stray)
    config = yaml.safe_load((stray / "config.yaml").read_text())
    (stray / "config.yaml").write_text(yaml.safe_dump({**config, "train": {**config["train"], "lr": 0.3}}))
    meta = json.loads((stray / "meta.json").read_text())
    (stray / "meta.json").write_text(json.dumps({**meta, "ended_at": "2027-01-01T00:00:00+00:00"}))
    linked = folder / "kind=torch-s1" / "metrics.csv"
    linked.unlink()
    linked.symlink_to(folder / "kind=torch-s2" / "metrics.csv")
    result = cli("report", folder, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert "kind=none-s0-x: not a run of study mlp_norms (its config differs in train.lr); left out" in result.stderr
    assert "metrics.csv: a link; links in run folders are not followed" in result.stderr
    text = (tmp_path / "report" / "README.md").read_text()
    assert "## Skipped" in text and "ran 2 times" not in text
    saved = folder / "study.yaml"
    saved.rename(tmp_path / "elsewhere.yaml")
    saved.symlink_to(tmp_path / "elsewhere.yaml")  # another study's file, linked in
    linked_study = cli("report", folder, "--out", tmp_path / "report")
    assert linked_study.exit_code == 2 and "study.yaml: a link" in linked_study.stderr


def test_each_arm_is_judged_at_the_rate_it_chose_on_validation(full_report):
    text = section_of(full_report[1], "best_lr")
    row = next(line for line in text.splitlines() if "**bn_better_at_own_best_lr**" in line)
    assert "lr 0.1 vs no norm, lr 0.1" in row  # the planted validation bonus at 0.1, for both arms
    assert "chosen on validation: compare at train.lr 0.1 (mean final val_acc: 0.01 " in row


def test_a_replicate_sets_its_verdicts_beside_the_studys_it_repeats(full_report):
    text = full_report[1].split("\n## mlp_norms_momentum: mlp_norms with SGD momentum 0.9")[1].split("\n## ")[0]
    ids = [c.id for c in load_study(SHIPPED_CONFIGS / "studies" / "mlp_norms.yaml").claims]
    assert all(f"| {cid} |" in text for cid in ids)
    assert re.search(r"\d+ of \d+ verdicts change with SGD momentum 0.9", text)


def test_wall_time_counts_the_minutes_a_run_was_running_not_the_gap_between_sessions():
    """Two runs side by side 10:00-10:10, one more 10:05-10:20, then a run resumed the next day (its first
    start is a day earlier) 09:00-09:05: 20 + 5 minutes, not the 24 hours from first start to last end."""
    from bnbench.evidence.compare import Run
    from bnbench.evidence.report import wall_minutes

    def run(start: str, end: str, resumed: list[str] | None = None) -> Run:
        meta = {"started_at": start, "ended_at": end} | ({"resumed_at": resumed} if resumed else {})
        return Run(Path("r"), {}, meta, {})

    day = "2026-12-01T"
    runs = [run(f"{day}10:00:00+00:00", f"{day}10:10:00+00:00"), run(f"{day}10:00:00+00:00", f"{day}10:10:00+00:00"),
            run(f"{day}10:05:00+00:00", f"{day}10:20:00+00:00"),
            run(f"{day}10:15:00+00:00", "2026-12-02T09:05:00+00:00", ["2026-12-02T09:00:00+00:00"])]  # fmt: skip
    assert wall_minutes(runs) == pytest.approx(25.0)
    assert wall_minutes(runs[:1]) == pytest.approx(10.0)
    assert math.isnan(wall_minutes([run("never", f"{day}10:00:00+00:00")]))
