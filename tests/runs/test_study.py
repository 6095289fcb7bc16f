"""Studies as data: grid expansion, names, seeds, validation of every cell, saved studies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bnbench.errors import UsageError
from bnbench.runs.study import cell_name, load_study, parse_seeds, study_from_options

from conftest import write_config


def test_cell_names_use_last_key_components_and_escape_unsafe_characters():
    assert cell_name({"norm.kind": "none", "train.lr": 0.1}) == "kind=none,lr=0.1"
    clash = cell_name({"norm.momentum": 0.9, "train.momentum": 0.5, "model.hidden": [100, 100]})
    assert clash == "norm.momentum=0.9,train.momentum=0.5,hidden=100x100"
    assert cell_name({"name": "a/b c"}) == "name=a%2Fb%20c"
    assert (
        cell_name({"norm.momentum": None, "train.compile": True, "train.lr": 1.0}) == "momentum=none,compile=true,lr=1"
    )


@pytest.mark.parametrize(
    ("text", "seeds"), [("0-4", (0, 1, 2, 3, 4)), ("3", (3,)), ("0,2,5", (0, 2, 5)), ([1, 7], (1, 7)), (4, (4,))]
)
def test_seed_forms(text, seeds):
    assert parse_seeds(text, "--seeds") == seeds


@pytest.mark.parametrize("text", ["a-b", "1,1", "-1", "4294967296", [1, True], "", "0-x"])
def test_bad_seeds_are_one_clear_error(text):
    with pytest.raises(UsageError, match="--seeds: expected"):
        parse_seeds(text, "--seeds")


def test_grid_times_seeds_with_fixed_overrides(tmp_path):
    base = write_config(tmp_path / "base.yaml")
    study = study_from_options(base, ["norm.kind=none,torch", "train.lr=0.1,1"], "0-2", "grid", ["train.epochs=1"])
    runs = study.runs()
    assert len(runs) == 2 * 2 * 3
    assert runs[0].name == "kind=none,lr=0.1-s0" and runs[-1].name == "kind=torch,lr=1-s2"
    assert {r.config.train.epochs for r in runs} == {1}
    assert runs[-1].config.train.seed == 2 and runs[-1].config.norm.kind == "torch" and runs[-1].config.train.lr == 1
    lists = study_from_options(base, ["model.hidden=[[8],[8,8]]"], "0", None, [])
    assert [r.name for r in lists.runs()] == ["hidden=8-s0", "hidden=8x8-s0"]


def test_every_cell_is_validated_before_anything_runs(tmp_path, cli):
    base = write_config(tmp_path / "base.yaml")
    with pytest.raises(UsageError, match=r"cell lr=-1: --grid train.lr=-1: train.lr: must be > 0"):
        study_from_options(base, ["train.lr=0.1,-1"], "0", "bad", []).runs()
    result = cli("sweep", base, "--grid", "train.lr=0.1,0.5,-1", "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "cell lr=-1" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    unknown = cli("sweep", base, "--grid", "train.lrr=0.1", "--out-dir", tmp_path / "runs")
    assert unknown.exit_code == 2 and "unknown key (did you mean 'lr'?)" in unknown.stderr


def test_study_file_with_relative_and_shipped_bases(tmp_path):
    write_config(tmp_path / "base.yaml")
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump({"name": "s", "base": "base.yaml", "matrix": {"norm.kind": ["none"]}, "seeds": "0-1"})
    )
    study = load_study(tmp_path / "s.yaml")
    assert study.name == "s" and study.seeds == (0, 1) and study.base["data"]["dataset"] == "synthetic"
    (tmp_path / "shipped.yaml").write_text(yaml.safe_dump({"base": "mlp_bn", "seeds": 0}))
    assert load_study(tmp_path / "shipped.yaml").base["model"]["name"] == "mlp"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"base": "nowhere.yaml"}))
    with pytest.raises(UsageError, match="base: nowhere.yaml: no such config"):
        load_study(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"base": "mlp_bn", "matrx": {}}))
    with pytest.raises(UsageError, match="matrx: unknown key"):
        load_study(tmp_path / "typo.yaml")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs" / "studies").glob("*.yaml")))
def test_shipped_studies_expand_and_validate(path):
    assert load_study(path).runs()


def test_keys_that_vary_together_make_one_cell_per_value(tmp_path):
    base = write_config(tmp_path / "base.yaml")
    study = tmp_path / "s.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "base": "base.yaml",
                "matrix": {"norm.kind": ["none", "torch"], "train.batch_size,train.lr": [[16, 0.05], [32, 0.1]]},
            }
        )
    )
    runs = load_study(study).runs()
    assert [r.name for r in runs] == [
        f"kind={kind},batch_size={b},lr={lr}-s0" for kind in ("none", "torch") for b, lr in ((16, 0.05), (32, 0.1))
    ]
    assert {(r.config.train.batch_size, r.config.train.lr) for r in runs} == {(16, 0.05), (32, 0.1)}
    matrix = {"train.batch_size,train.lr": [[16, 0.05], [32]]}
    study.write_text(yaml.safe_dump({"base": str(base), "matrix": matrix}))
    with pytest.raises(UsageError, match=r"keys that vary together take lists of 2 .* got \[32\]"):
        load_study(study)


FOLDER = "cannot be a folder name"


@pytest.mark.parametrize(
    ("name", "message"), [("a\0b", FOLDER), ("n" * 300, "longer than 200 bytes"), ("../up", FOLDER)]
)
def test_study_names_that_cannot_be_folders_are_refused(tmp_path, name, message):
    base = write_config(tmp_path / "base.yaml")
    with pytest.raises(UsageError, match=message):
        study_from_options(base, ["train.lr=0.1"], "0", name, [])
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"name": name, "base": "base.yaml"}))
    with pytest.raises(UsageError, match=message):
        load_study(study)


def test_a_study_file_with_a_duplicated_key_is_refused(tmp_path):
    write_config(tmp_path / "base.yaml")
    study = tmp_path / "s.yaml"
    study.write_text("base: base.yaml\nseeds: 0-2\nseeds: 3\n")
    with pytest.raises(UsageError, match="duplicate key 'seeds'"):
        load_study(study)


def test_two_spellings_of_one_value_are_refused_naming_both(tmp_path, cli):
    """1e-5 (a string to YAML, a float once validated) and 0.00001 are one run: planning both would train it
    twice and pool each seed twice in one group. Refused in one line, in a --grid and in a study file."""
    base = write_config(tmp_path / "base.yaml", norm={"kind": "torch"})
    out = tmp_path / "runs"
    grid = cli("sweep", base, "--grid", "norm.eps=1e-5,0.00001,1e-3", "--seeds", "0-1", "--out-dir", out)
    assert grid.exit_code == 2 and len(grid.stderr.splitlines()) == 1, grid.output
    assert "1e-5 and 0.00001 are the same value" in grid.stderr
    listed = cli("sweep", base, "--grid", "norm.eps=[1e-5, 0.00001]", "--out-dir", out)
    assert listed.exit_code == 2 and "are the same value" in listed.stderr
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"base": "base.yaml", "matrix": {"norm.eps": ["1e-5", 1e-5], "train.lr": [0.1]}}))
    matrix = cli("sweep", study, "--out-dir", out, "--dry-run")
    assert matrix.exit_code == 2 and len(matrix.stderr.splitlines()) == 1, matrix.output
    assert "cells eps=1e-5,lr=0.1 and eps=1e-05,lr=0.1 are one run" in matrix.stderr
    assert "norm.eps=1e-5 and norm.eps=1.0e-05" in matrix.stderr
    assert not out.exists()
    distinct = cli("sweep", base, "--grid", "norm.eps=1e-5,1e-3", "--seeds", "0-1", "--out-dir", out, "--dry-run")
    assert distinct.exit_code == 0 and "4 runs" in distinct.output


def test_a_fixed_override_of_a_matrix_key_is_refused(tmp_path, cli):
    """--set of a key the grid varies would be lost silently (each cell's value wins)."""
    base = write_config(tmp_path / "base.yaml", norm={"kind": "torch"})
    result = cli("sweep", base, "--grid", "norm.eps=1e-3,1e-4", "--set", "norm.eps=1e-4", "--dry-run")
    assert result.exit_code == 2 and "--set norm.eps=1e-4: norm.eps varies in the matrix" in result.stderr
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"base": "base.yaml", "matrix": {"norm.eps": [1e-3, 1e-4]}}))
    result = cli("sweep", study, "--set", "norm.eps=1e-4", "--dry-run")
    assert result.exit_code == 2 and "norm.eps varies in the matrix" in result.stderr


def test_grid_keys_that_vary_together(tmp_path, cli):
    """Comma-joined keys, as in a study file's matrix: one list per cell; the flat form is one clear line."""
    base = write_config(tmp_path / "base.yaml")
    out = tmp_path / "runs"
    joined = "norm.kind,norm.virtual_batch_size=[[ghost, 8], [ghost, 16]]"
    result = cli("sweep", base, "--grid", joined, "--grid", "train.lr=0.1,0.2", "--out-dir", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "kind=ghost,virtual_batch_size=16,lr=0.2-s0" in result.output and "4 runs" in result.output
    flat_form = cli("sweep", base, "--grid", "norm.kind,norm.virtual_batch_size=ghost,16", "--dry-run")
    assert flat_form.exit_code == 2 and len(flat_form.stderr.splitlines()) == 1
    assert "keys that vary together take a YAML list with one list per cell" in flat_form.stderr
    assert "did you mean" not in flat_form.stderr
    typo = cli("sweep", base, "--grid", "norm.kind,norm.virtul=[[ghost, 8]]", "--dry-run")
    assert typo.exit_code == 2 and "'norm.virtul': unknown key" in typo.stderr


@pytest.mark.parametrize(
    ("tune_key", "arms", "message"),
    [
        (
            "train.lr",
            {"compare": {"norm.kind": "torch", "train.lr": 0.1}},
            "compare fixes train.lr, which tune chooses",
        ),
        ("train.momentum", {}, "tune: train.momentum does not vary among the cells of compare"),
    ],
)
def test_a_tuned_claim_needs_its_key_to_vary_and_left_to_the_choice(tmp_path, tune_key, arms, message):
    write_config(tmp_path / "base.yaml")
    tune = {"key": tune_key, "by": {"column": "val_acc"}}
    claim = {"id": "c", "says": "s", "compare": {"norm.kind": "torch"}, "against": {"norm.kind": "none"},
             "tune": tune, "expect": "greater", "margin": 0.01, **arms}  # fmt: skip
    study = {"name": "st", "base": "base.yaml", "matrix": {"norm.kind": ["none", "torch"], "train.lr": [0.1, 1.0]},
             "seeds": "0-1", "set": {"data.val_split": 0.25}, "claims": [claim]}  # fmt: skip
    (tmp_path / "st.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(UsageError, match=re.escape(message)):
        load_study(tmp_path / "st.yaml")
