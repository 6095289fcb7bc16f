"""Evidence that holds on untidy folders: each fault of the trust issue as a planted case through the claims
engine, and the exact statistics it rests on against brute force and against their promised coverage."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
import yaml

from bnbench.errors import UsageError
from bnbench.evidence.claims import judge
from bnbench.evidence.compare import Run
from bnbench.evidence.report import headline
from bnbench.evidence.stats import detectable, effect, hodges_lehmann, rank_sum_p, signed_rank_p
from bnbench.runs.specs import Claim, Metric, parse_claims

from conftest import write_config


def _run(kind: str, seed: int, accs: list[float], status: str = "completed", ended: str = "2026-01-01T00:00:00",
         steps: dict | None = None, epochs: int | None = None, name: str = "") -> Run:  # fmt: skip
    config = {"norm": {"kind": kind}, "train": {"seed": seed, "epochs": epochs or len(accs)}, "model": {}, "data": {}}
    table = {"epoch": [float(i + 1) for i in range(len(accs))], "test_acc": list(accs),
             "train_loss": [1.0 / (i + 1) for i in range(len(accs))]}  # fmt: skip
    meta = {"status": status, "ended_at": ended}
    return Run(Path(f"/x/{name or f'{kind}-s{seed}'}"), config, meta, table, steps or {})


def _claim(expect: str = "greater", margin: float = 0.001, metric: Metric | None = None) -> Claim:
    return Claim("c", "planted", (("norm.kind", "torch"),), (("norm.kind", "none"),), metric or Metric(), expect,
                 margin)  # fmt: skip


def test_a_diverged_arm_counts_at_its_worst_value_never_at_its_last_good_epoch():
    # The against arm diverged in its third epoch after reaching 0.97: read at its last good epoch it would
    # "contradict" BN being higher; counted as diverged (chance from then on) it is the worse arm.
    runs = [_run("torch", s, [0.90, 0.91, 0.92]) for s in range(6)]
    runs += [_run("none", s, [0.90, 0.97], status="diverged", epochs=3) for s in range(6)]
    (j,) = judge((_claim(),), runs)
    assert j.diverged == 6 and j.effect.rank_based and j.effect.paired
    assert j.effect.estimate == pytest.approx(0.92 - 0.1)
    assert j.verdict == "supported"
    # a run that diverged in epoch 1 (no row at all) is counted too, not dropped
    runs[-1] = _run("none", 5, [], status="diverged", epochs=3)
    (j,) = judge((_claim(),), runs)
    assert j.n_against == 6 and not j.dropped


def test_one_failed_seed_leaves_the_claim_paired_on_the_seeds_both_arms_have():
    rng = random.Random(3)
    base = [0.90 + rng.gauss(0, 0.01) for _ in range(6)]
    runs = [_run("none", s, [b]) for s, b in enumerate(base)]
    runs += [_run("torch", s, [b + 0.004 + rng.gauss(0, 0.0003)]) for s, b in enumerate(base)]
    (j,) = judge((_claim(),), runs)
    assert j.effect.paired and j.effect.n == 6 and j.verdict == "supported"
    runs[0].meta["status"] = "failed"  # none, seed 0
    (j,) = judge((_claim(),), runs)
    assert j.effect.paired and j.effect.n == 5 and j.effect.test == "paired t" and j.effect.p < 1e-3
    assert j.verdict == "supported"
    assert any("none-s0: failed" in d for d in j.dropped) and any("seed 0: only in the compare arm" in d
                                                                  for d in j.dropped)  # fmt: skip


def test_a_repeated_seed_counts_once_the_most_recent_run():
    runs = [_run("torch", s, [0.95]) for s in range(3)] + [_run("none", s, [0.90]) for s in range(3)]
    runs.append(_run("torch", 0, [0.10], ended="2025-01-01T00:00:00", name="torch-s0-old"))  # older: ignored
    (j,) = judge((_claim(),), runs)
    assert j.n_compare == 3 and j.arms["compare"] == [0.95, 0.95, 0.95]
    assert any("seed 0 ran 2 times" in d and "torch-s0-old" in d for d in j.dropped)


def test_zero_spread_uses_an_exact_rank_test_and_all_zero_differences_are_a_clean_null():
    runs = [_run("torch", s, [0.5 + 0.0012 + s * 0.01]) for s in range(3)]
    runs += [_run("none", s, [0.5 + s * 0.01]) for s in range(3)]
    (j,) = judge((_claim(),), runs)
    assert j.effect.test.startswith("Wilcoxon") and j.effect.p == pytest.approx(0.25)  # 2 / 2^3: not p = 0
    assert j.verdict != "supported"
    same = [_run("torch", s, [0.5 + s * 0.01]) for s in range(3)] + [_run("none", s, [0.5 + s * 0.01])
                                                                      for s in range(3)]  # fmt: skip
    (j,) = judge((_claim(),), same)
    assert (j.effect.low, j.effect.high) == (0.0, 0.0) and j.verdict == "contradicted"


def test_a_true_null_is_contradicted_once_the_interval_lies_inside_the_margin():
    rng = random.Random(7)
    base = [0.90 + rng.gauss(0, 0.01) for _ in range(10)]
    runs = [_run("none", s, [b]) for s, b in enumerate(base)]
    runs += [_run("torch", s, [b + rng.gauss(0, 0.0005)]) for s, b in enumerate(base)]
    (j,) = judge((_claim(margin=0.005),), runs)
    assert j.effect.high < 0.005 and j.verdict == "contradicted"
    # the same runs with a margin the interval does not rule out stay inconclusive
    (j,) = judge((_claim(margin=0.0001),), runs)
    assert j.verdict == "inconclusive"


def test_a_point_the_runs_never_reached_is_not_read_from_a_neighbour():
    steps = {"step": [10.0, 20.0], "epoch": [1.0, 1.0], "examples_seen": [640.0, 1280.0],
             "train_loss": [1.0, 0.9], "train_acc": [0.5, 0.6]}  # fmt: skip
    runs = [_run(k, s, [0.9], steps=dict(steps)) for k in ("torch", "none") for s in range(3)]
    metric = Metric("train_loss", 5000, "step")
    (j,) = judge((_claim("less", 0.01, metric),), runs)
    assert j.effect is None and j.n_compare == 0 and j.verdict == "inconclusive"
    assert any("not reached" in d for d in j.dropped)


def test_directional_claims_without_a_margin_and_arms_matching_two_cells_are_refused_at_load(tmp_path):
    raw = {"id": "a", "says": "s", "compare": {"norm.kind": "torch"}, "against": {"norm.kind": "none"},
           "expect": "greater"}  # fmt: skip
    with pytest.raises(UsageError, match="needs a margin > 0 in the metric's units"):
        parse_claims([raw], "st")
    for bad in (0, -1, float("inf"), float("nan"), "x"):
        with pytest.raises(UsageError, match="margin: expected a positive finite number"):
            parse_claims([{**raw, "margin": bad}], "st")
    from bnbench.runs.study import load_study

    base = write_config(tmp_path / "base.yaml", train={"epochs": 1})
    study = {"name": "st", "base": str(base), "matrix": {"norm.kind": ["none", "torch"], "train.lr": [0.1, 1.0]},
             "seeds": "0-1", "claims": [{**raw, "margin": 0.01}]}  # fmt: skip
    (tmp_path / "st.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(UsageError, match=r"claim a: compare \{norm.kind: torch\} matches 2 cells"):
        load_study(tmp_path / "st.yaml")


def test_checks_are_counted_apart_from_findings():
    runs = [_run("torch", s, [0.95 + 0.001 * s]) for s in range(6)] + [_run("none", s, [0.90 + 0.001 * s])
                                                                        for s in range(6)]  # fmt: skip
    finding = _claim()
    check = Claim("k", "same", (("norm.kind", "torch"),), (("norm.kind", "torch"),), Metric(), "equivalent", 0.001,
                  kind="check")  # fmt: skip
    text = headline(judge((finding, check), runs))
    assert (
        text.startswith("1 findings (1 supported, 0 contradicted, 0 inconclusive") and "1 checks (1 supported" in text
    )


def test_the_exact_signed_rank_p_is_the_brute_force_sign_flip_distribution_with_ties_and_zeros():
    diffs = [0.0012, 0.0012, -0.0004, 0.0012, 0.0, 0.0008, -0.0004]
    nonzero = [d for d in diffs if d != 0]
    ranks = {d: r for d, r in zip(sorted({abs(d) for d in nonzero}), (1.5, 3.5, 5.5), strict=False)}
    # midranks of |d|: 0.0004 x2 -> 1.5, 0.0008 -> 3, 0.0012 x3 -> 5
    ranks = {0.0004: 1.5, 0.0008: 3.0, 0.0012: 5.0}
    r = [ranks[round(abs(d), 4)] for d in nonzero]
    observed = sum(x for x, d in zip(r, nonzero, strict=True) if d > 0)
    mean = sum(r) / 2
    flips = [sum(x for x, s in zip(r, signs, strict=True) if s) for signs in itertools.product((0, 1), repeat=len(r))]
    brute = sum(abs(f - mean) >= abs(observed - mean) - 1e-9 for f in flips) / len(flips)
    assert signed_rank_p(diffs) == pytest.approx(brute)
    assert signed_rank_p([0.0, 0.0]) == 1.0


def test_the_exact_rank_sum_p_matches_scipy_without_ties():
    from scipy import stats

    a, b = [0.3, 1.2, 2.5, 0.7], [1.9, 3.1, 2.8, 4.0, 3.3]
    assert rank_sum_p(a, b) == pytest.approx(stats.mannwhitneyu(a, b, method="exact").pvalue)


@pytest.mark.parametrize("n", [6, 10])
def test_hodges_lehmann_intervals_cover_at_least_95_percent(n):
    rng = random.Random(n)
    trials, covered_paired, covered_shift = 1500, 0, 0
    for _ in range(trials):
        diffs = [rng.expovariate(1.0) - math.log(2) for _ in range(n)]  # skewed, true median 0
        _, low, high = hodges_lehmann(diffs)
        covered_paired += low <= 0 <= high
        a, b = [rng.gauss(0, 1) for _ in range(n)], [rng.gauss(0, 1) for _ in range(n)]
        _, low, high = hodges_lehmann(a, b)
        covered_shift += low <= 0 <= high
    # nominal >= 0.95 (the exact interval is conservative); 1,500 trials: a standard error of 0.6 points
    assert covered_paired / trials >= 0.93 and covered_shift / trials >= 0.93


def test_the_detectable_effect_accounts_for_holm_with_the_noncentral_t():
    sd, n = 1.0, 6
    assert detectable(sd / math.sqrt(n), n - 1, family=4) / sd == pytest.approx(2.0, abs=0.02)
    assert detectable(sd / math.sqrt(n), n - 1, family=1) < detectable(sd / math.sqrt(n), n - 1, family=4)


def test_rank_based_effects_are_exact_whatever_the_scipy_version():
    e = effect([], [], [(1.0, 0.0)] * 3 + [(2.0, 0.0)] * 3, rank_based=True)
    assert e.test == "Wilcoxon signed-rank" and e.p == pytest.approx(2 / 2**6)
