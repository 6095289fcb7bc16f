"""The verdict engine on planted data, and a user's own study with declared claims through `bnbench report`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from bnbench.claims import Claim, Metric, effect, holm, judge, parse_claims, verdict
from bnbench.compare import Run
from bnbench.errors import UsageError

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
    e = effect([0.0], [0.0], [(0.52, 0.50), (0.53, 0.50), (0.51, 0.50), (0.525, 0.5)], discrete=False)
    assert e.low > 0 and e.p < 0.05
    assert verdict(_claim(), e, e.p) == "supported"
    assert verdict(_claim(), e, min(1.0, e.p * 10)) == "inconclusive"


def test_steps_to_a_target_is_rank_based_and_paired_by_seed():
    fast = [[0.5, 0.96, 0.99]] * 4
    slow = [[0.5, 0.8, 0.96], [0.4, 0.7, 0.97], [0.5, 0.9, 0.96], [0.3, 0.6, 0.98]]
    metric = Metric("train_acc", None, "final", 1, 0.95)
    claim = Claim("c", "faster", (("norm.kind", "torch"),), (("norm.kind", "none"),), metric, "less")
    (judged,) = judge((claim,), _runs({"torch": [0.9] * 4, "none": [0.9] * 4}, {"torch": fast, "none": slow}))
    assert judged.effect.test == "Wilcoxon" and judged.effect.paired and judged.effect.estimate == -10


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


def test_a_users_own_study_with_claims_gets_verdicts_from_report(tmp_path, cli):
    base = write_config(tmp_path / "base.yaml", data={"train_subset": 256}, train={"epochs": 2})
    study = {
        "name": "mine", "base": str(base), "matrix": {"norm.kind": ["none", "torch"]}, "seeds": "0-2",
        "claims": [
            {"id": "bn_better", "says": "BN ends higher", "compare": {"norm.kind": "torch"},
             "against": {"norm.kind": "none"}, "metric": {"column": "test_acc", "at": "final"}, "expect": "greater",
             "source": {"cite": "Ioffe & Szegedy 2015", "url": "https://arxiv.org/abs/1502.03167"}},
            {"id": "same_loss", "says": "the first epoch's loss is the same", "compare": {"norm.kind": "torch"},
             "against": {"norm.kind": "none"}, "metric": {"column": "train_loss", "at": {"epoch": 1}},
             "expect": "equivalent", "margin": 0.001},
        ],
    }  # fmt: skip
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(study))
    assert cli("sweep", tmp_path / "mine.yaml", "--jobs", "1", "--out-dir", tmp_path / "runs").exit_code == 0
    result = cli("report", tmp_path / "runs/mine")
    assert result.exit_code == 0, result.stderr
    text = (tmp_path / "runs/mine/report/README.md").read_text()
    assert "### Declared claims" in text and "**bn_better**: BN ends higher" in text
    assert "[Ioffe & Szegedy 2015](https://arxiv.org/abs/1502.03167)" in text
    rows = [line for line in text.splitlines() if line.startswith("| **")]
    assert len(rows) == 2 and all(any(f"**{v}**" in r for v in ("supported", "contradicted", "inconclusive"))
                                  for r in rows)  # fmt: skip
    assert "paired t, n 3 pairs" in text
    # editing the claims is not another study: the re-run is allowed and skips every run
    study["claims"][0]["says"] = "BN ends higher, edited"
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(study))
    again = cli("sweep", tmp_path / "mine.yaml", "--jobs", "1", "--out-dir", tmp_path / "runs")
    assert again.exit_code == 0 and "6 already done or skipped" in again.stdout
