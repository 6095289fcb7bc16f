"""The verdict engine on planted data (a user's own study through `bnbench report`: test_report.py)."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from bnbench.errors import UsageError
from bnbench.evidence.claims import deviations, effect, holm, judge, verdict
from bnbench.evidence.compare import Run
from bnbench.runs.specs import Claim, Metric, parse_claims, parse_published

from conftest import write_config


def _claim(expect: str = "greater", margin: float | None = None, metric: Metric | None = None) -> Claim:
    return Claim("c", "planted", (("norm.kind", "torch"),), (("norm.kind", "none"),), metric or Metric(), expect,
                 margin)  # fmt: skip


def _runs(values: dict[str, list[float]], steps: dict[str, list[list[float]]] | None = None) -> list[Run]:
    """Completed runs whose final test_acc is the planted value, one per (kind, seed)."""
    runs = []
    for kind, finals in values.items():
        for seed, final in enumerate(finals):
            config = {"norm": {"kind": kind}, "train": {"seed": seed}, "model": {}, "data": {}}
            table = {"epoch": [1.0, 2.0], "test_acc": [final - 0.1, final], "train_loss": [1.0, 0.5]}
            step_table = {}
            if steps:
                acc = steps[kind][seed]
                step_table = {"step": [float(10 * (i + 1)) for i in range(len(acc))], "train_acc": acc}
            runs.append(Run(Path(f"/x/{kind}-s{seed}"), config, {"status": "completed"}, table, step_table))
    return runs


def _verdict(values: dict[str, list[float]], expect: str = "greater", margin: float | None = None) -> str:
    (judged,) = judge((_claim(expect, margin),), _runs(values))
    return judged.verdict


def test_identical_arms_are_never_a_difference_and_are_equivalent_within_a_margin():
    same = [0.91, 0.93, 0.92, 0.95, 0.90]
    assert _verdict({"torch": same, "none": same}) == "inconclusive"
    assert _verdict({"torch": same, "none": same}, "less") == "inconclusive"
    assert _verdict({"torch": same, "none": same}, "equivalent", 0.005) == "supported"


def test_a_large_planted_effect_is_supported_and_its_opposite_contradicted():
    rng = random.Random(1)
    base = [0.80 + rng.gauss(0, 0.01) for _ in range(5)]
    better = [b + 0.05 + rng.gauss(0, 0.005) for b in base]
    assert _verdict({"torch": better, "none": base}) == "supported"
    assert _verdict({"torch": better, "none": base}, "less") == "contradicted"
    assert _verdict({"torch": better, "none": base}, "equivalent", 0.01) == "contradicted"
    assert _verdict({"torch": better, "none": base}, "not_worse", 0.01) == "supported"


def test_a_small_effect_at_three_seeds_is_inconclusive_with_the_detectable_effect():
    base, noisy = [0.90, 0.93, 0.88], [0.905, 0.925, 0.895]
    (judged,) = judge((_claim(),), _runs({"torch": noisy, "none": base}))
    assert judged.verdict == "inconclusive"
    assert judged.effect.detectable > abs(judged.effect.estimate)  # the design could not have seen it


def test_holm_adjusts_as_the_published_example():
    # Holm (1979)'s procedure on four p-values: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, kept monotone
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, float("nan")])[0] == 0.5


def test_holm_can_turn_a_nominal_difference_inconclusive():
    e = effect([0.0], [0.0], [(0.52, 0.50), (0.53, 0.50), (0.51, 0.50), (0.525, 0.5)], rank_based=False)
    assert e.low > 0 and e.p < 0.05
    assert verdict(_claim(), e, e.p) == "supported"
    assert verdict(_claim(), e, min(1.0, e.p * 10)) == "inconclusive"


def test_steps_to_a_target_is_rank_based_and_paired_by_seed():
    fast = [[0.5, 0.96, 0.99]] * 4
    slow = [[0.5, 0.8, 0.96], [0.4, 0.7, 0.97], [0.5, 0.9, 0.96], [0.3, 0.6, 0.98]]
    metric = Metric("train_acc", None, "final", 1, 0.95)
    claim = Claim("c", "faster", (("norm.kind", "torch"),), (("norm.kind", "none"),), metric, "less", 1.0)
    (judged,) = judge((claim,), _runs({"torch": [0.9] * 4, "none": [0.9] * 4}, {"torch": fast, "none": slow}))
    assert judged.effect.test == "Wilcoxon signed-rank" and judged.effect.paired and judged.effect.estimate == -10


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("x", "claims: expected a list"),
        ([{"id": "a"}], "claims[0]: says is missing"),
        ([{"id": "a", "says": "s", "compare": {"norm.kind": "torch"}, "against": {"norm.kind": "none"},
           "expect": "bigger"}], "expect: 'bigger' is not one of"),
        ([{"id": "a", "says": "s", "compare": {"norm.kind": "torch"}, "against": {"norm.kind": "none"},
           "expect": "equivalent"}], "needs a margin > 0"),
        ([{"id": "a", "says": "s", "compare": {"kind": "torch"}, "against": {"norm.kind": "none"},
           "expect": "greater"}], "compare: 'kind': unknown key"),
        ([{"id": "a", "says": "s", "compare": {"norm.kind": "torch"}, "against": {"norm.kind": "none"},
           "expect": "greater", "metric": {"at": {"epoch": 0}}}], "at.epoch: expected an integer >= 1"),
    ],
)  # fmt: skip
def test_bad_claims_are_one_line_naming_the_claim(raw, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_claims(raw, "st.yaml")


def test_different_is_supported_beyond_its_margin_and_contradicted_within_it():
    rng = random.Random(2)
    base = [0.80 + rng.gauss(0, 0.01) for _ in range(6)]
    assert _verdict({"torch": [b + 0.05 for b in base], "none": base}, "different", 0.01) == "supported"
    assert _verdict({"torch": [b - 0.05 for b in base], "none": base}, "different", 0.01) == "supported"
    assert _verdict({"torch": base, "none": base}, "different", 0.01) == "contradicted"
    noisy = [b + rng.gauss(0, 0.03) for b in base[:3]]
    assert _verdict({"torch": noisy, "none": base[:3]}, "different", 0.01) == "inconclusive"


def test_against_column_sets_two_columns_of_the_same_runs_against_each_other():
    runs = _runs({"torch": [0.90, 0.92, 0.91, 0.93, 0.89, 0.94]})  # 6 seeds: an exact rank test can reach 0.05
    for run in runs:
        run.table["test_acc_batch_stats"] = [v + 0.02 for v in run.table["test_acc"]]
    (claim,) = parse_claims([{"id": "b", "says": "s", "compare": {"norm.kind": "torch"},
                              "against": {"norm.kind": "torch"}, "expect": "greater", "margin": 0.001,
                              "metric": {"column": "test_acc_batch_stats", "against_column": "test_acc"}}],
                            "st")  # fmt: skip
    (judged,) = judge((claim,), runs)
    assert judged.effect.paired and judged.effect.estimate == pytest.approx(0.02)
    assert judged.verdict == "supported" and "test_acc_batch_stats vs test_acc" in claim.metric.describe()


def test_a_diagnostic_is_read_from_the_layer_named_or_the_deepest(tmp_path):
    runs = []
    for kind, path_length in (("torch", 1.0), ("none", 3.0)):
        for seed in range(6):
            folder = tmp_path / f"{kind}-s{seed}"
            folder.mkdir()
            rows = ["step,epoch,layer,quantity,value"]
            for step in (0, 50, 100):  # norm10 is deeper than norm2
                for layer, scale in (("norm2", 1.0), ("norm10", 10.0)):
                    rows.append(f"{step},1,{layer},units_path,{scale * path_length * step / 100 + 0.01 * seed}")
            (folder / "diagnostics.csv").write_text("\n".join(rows) + "\n")
            config = {"norm": {"kind": kind}, "train": {"seed": seed}, "model": {}, "data": {}}
            runs.append(Run(folder, config, {"status": "completed"}, {"epoch": [1.0], "test_acc": [0.9]}, {}))
    for layer, expected in (("norm2", -2.0), ("last", -20.0)):
        (claim,) = parse_claims([{"id": "d", "says": "s", "compare": {"norm.kind": "torch"},
                                  "against": {"norm.kind": "none"}, "expect": "less", "margin": 0.1,
                                  "metric": {"diagnostic": "units_path", "layer": layer, "at": "final"}}],
                                "st")  # fmt: skip
        (judged,) = judge((claim,), runs)
        assert judged.effect.estimate == pytest.approx(expected) and judged.verdict == "supported"
    with pytest.raises(UsageError, match="a diagnostic takes a layer"):
        parse_claims([{"id": "d", "says": "s", "compare": {"norm.kind": "torch"}, "against": {"norm.kind": "none"},
                       "expect": "less", "metric": {"diagnostic": "units_path"}}], "st")  # fmt: skip


def test_published_setup_deviations_are_named_per_claim():
    published = parse_published({"setup": {"train.epochs": 10, "norm.kind": "torch"}, "notes": ["other data"]}, "st")
    runs = _runs({"torch": [0.9, 0.91], "none": [0.8, 0.81]})
    for run in runs:
        run.config["train"]["epochs"] = 3
    lines = deviations(published, _claim(), runs)
    assert lines == ["train.epochs: 3 here, 10 published", "norm.kind: none here, torch published", "other data"]
    (own,) = parse_claims([{"id": "o", "says": "s", "compare": {"norm.kind": "torch"}, "against": {"norm.kind": "none"},
                            "expect": "greater", "margin": 0.01,
                            "source": {"cite": "p", "deviates": "their net was deeper"}}], "st")  # fmt: skip
    assert deviations(None, own, runs) == ["their net was deeper"]
    assert deviations(published, own, runs)[-2:] == ["other data", "their net was deeper"]
    for raw, message in (({"setup": {"train.nope": 1}}, "unknown key"), ({"figures": [{"arm": {"norm.kind": "x"}}]},
                         "expected {arm"), ({"colour": 1}, "colour: unknown key")):  # fmt: skip
        with pytest.raises(UsageError, match=message):
            parse_published(raw, "st")


def test_a_claim_whose_arm_matches_no_cell_is_refused_when_the_study_loads(tmp_path):
    from bnbench.runs.study import load_study

    base = write_config(tmp_path / "base.yaml", train={"epochs": 1})
    study = {"name": "st", "base": str(base), "matrix": {"norm.kind": ["none", "torch"]}, "seeds": "0-1",
             "claims": [{"id": "typo", "says": "s", "compare": {"norm.kind": "torhc"}, "against": {"norm.kind": "none"},
                         "expect": "greater", "margin": 0.01}]}  # fmt: skip
    (tmp_path / "st.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(UsageError, match=r"claim typo: compare \{norm.kind: torhc\} matches no cell"):
        load_study(tmp_path / "st.yaml")


def test_a_target_no_run_reached_is_nothing_to_compare_and_one_arm_never_reaching_is_said():
    """steps_to a target: no run of either arm reached it: no effect, never "contradicted" by a [0, 0]
    interval; one arm never reaching it: the rank test decides and the row says how many never did."""
    metric = Metric(column="train_acc", steps_to=0.99)
    low = {kind: [[0.2, 0.3, 0.4]] * 6 for kind in ("torch", "none")}
    (nobody,) = judge((_claim("less", 1.0, metric),), _runs({"torch": [0.9] * 6, "none": [0.9] * 6}, low))
    assert nobody.verdict == "inconclusive" and nobody.effect is None and "reached by no run" in nobody.note
    reach = {"torch": [[0.2, 0.995, 0.999]] * 6, "none": [[0.2, 0.3, 0.4]] * 6}
    (one,) = judge((_claim("less", 1.0, metric),), _runs({"torch": [0.9] * 6, "none": [0.9] * 6}, reach))
    assert one.effect is not None and one.effect.rank_based
    assert "6 of 12 values never reached" in one.note and one.arms["against"] == [float("inf")] * 6


def _lr_runs(val: dict[tuple[str, float], float], test: dict[tuple[str, float], float], seeds: int = 4) -> list[Run]:
    """Completed runs per (kind, lr) with planted final val_acc and test_acc (+0.001 * seed)."""
    runs = []
    for (kind, lr), v in val.items():
        for seed in range(seeds):
            config = {"norm": {"kind": kind}, "train": {"seed": seed, "lr": lr}, "model": {}, "data": {}}
            spread = 0.001 * seed + 0.0005 * seed**2 * (kind == "torch")
            table = {"epoch": [1.0], "val_acc": [v + 0.001 * seed], "test_acc": [test[kind, lr] + spread],
                     "train_acc": [0.99]}  # fmt: skip
            runs.append(Run(Path(f"/x/{kind}-{lr}-s{seed}"), config, {"status": "completed"}, table, {}))
    return runs


def test_tune_judges_each_arm_at_its_own_best_validation_value_and_never_looks_at_the_test_set():
    tune = {"key": "train.lr", "by": {"column": "val_acc"}}
    arms = {"compare": {"norm.kind": "torch"}, "against": {"norm.kind": "none"}}
    (claim,) = parse_claims([{"id": "c", "says": "s", **arms, "tune": tune, "metric": {"column": "test_acc"},
                              "expect": "greater", "margin": 0.01}], "study.yaml")  # fmt: skip
    val = {("torch", 0.1): 0.90, ("torch", 1.0): 0.95, ("none", 0.1): 0.93, ("none", 1.0): 0.80}
    # the test set favours the other rates: a choice made on it would flip both arms
    test = {("torch", 0.1): 0.99, ("torch", 1.0): 0.94, ("none", 0.1): 0.90, ("none", 1.0): 0.97}
    (judged,) = judge((claim,), _lr_runs(val, test))
    assert dict(judged.claim.compare)["train.lr"] == 1.0 and dict(judged.claim.against)["train.lr"] == 0.1
    assert judged.effect.estimate == pytest.approx(0.04, abs=0.005) and judged.verdict == "supported"
    assert "chosen on validation: compare at train.lr 1.0" in judged.note and "against at train.lr 0.1" in judged.note
    runs = _lr_runs(val, test)
    for run in runs:  # one seed of no norm diverged at 0.1: that rate is never chosen, however high its mean
        if run.config["norm"]["kind"] == "none" and run.config["train"] == {"seed": 3, "lr": 0.1}:
            run.meta["status"] = "diverged"
    (diverging,) = judge((claim,), runs)
    assert dict(diverging.claim.against)["train.lr"] == 1.0 and "0.1 (1 diverged)" in diverging.note
    (nothing,) = judge((claim,), [r for r in _lr_runs(val, test) if r.config["norm"]["kind"] == "torch"])
    assert nothing.verdict == "inconclusive" and "against: no run measured final val_acc" in nothing.note


def test_minus_measures_a_gap_within_each_run():
    metric = parse_claims([{"id": "c", "says": "s", "compare": {"norm.kind": "torch"}, "against": {"norm.kind": "none"},
                            "metric": {"column": "train_acc", "minus": "test_acc"}, "expect": "less", "margin": 0.01}],
                          "study.yaml")[0].metric  # fmt: skip
    assert metric.describe() == "final train_acc - test_acc"
    runs = _runs({"torch": [0.9, 0.91, 0.92], "none": [0.8, 0.81, 0.82]})
    for run in runs:
        run.table["train_acc"] = [1.0, 1.0]
    (judged,) = judge((replace(_claim("less", 0.01), metric=metric),), runs)
    assert judged.effect.estimate == pytest.approx(-0.1) and judged.verdict == "supported"


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        ({"tune": {"key": "train.lr", "by": {"column": "test_acc"}}}, "by: test_acc: a choice made on the test set"),
        ({"tune": {"key": "train.rate", "by": {"column": "val_acc"}}}, "tune: key: 'train.rate'"),
        (
            {"tune": {"key": "train.lr", "by": {"column": "val_acc"}, "best": "top"}},
            "best: 'top' is not one of max, min",
        ),
        ({"tune": {"key": "train.lr"}}, "tune: expected key (a config key, e.g. train.lr) and by"),
        ({"metric": {"diagnostic": "lag_mean", "layer": "norm1", "minus": "test_acc"}}, "minus: subtracts one"),
        ({"tune": {"key": "train.lr", "by": {"column": "val_acc", "minus": "test_acc"}}}, "by: one validation column"),
        (
            {"tune": {"key": "train.lr", "by": {"column": "val_acc", "against_column": "test_acc"}}},
            "by: one validation column",
        ),
        ({"tune": {"key": "train.lr", "by": {"column": "val_acc", "steps_to": 0.5}}}, "by: one validation column"),
        ({"metric": {"column": "test_accc"}}, "metric: column: 'test_accc' is not a column bnbench records"),
        ({"metric": {"column": "train_acc", "minus": "3"}}, "metric: minus: '3' is not a column bnbench records"),
    ],
)
def test_bad_tune_and_minus_are_one_line(claim, message):
    raw = {"id": "c", "says": "s", "compare": {"norm.kind": "torch"}, "against": {"norm.kind": "none"},
           "expect": "greater", "margin": 0.01, **claim}  # fmt: skip
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_claims([raw], "study.yaml")
