"""The sequential rule (evidence/sequential.py): its boundaries, and its error rates by simulation through the
real engine (no training): planted per-seed effects fed look by look through `decide`."""

from __future__ import annotations

import random
import statistics

import pytest
from scipy import stats

from bnbench.evidence.claims import measured, verdict
from bnbench.evidence.sequential import decide, look_seeds, look_sizes, nominal_levels
from bnbench.runs.specs import Claim, Metric, Sequential

RULE = Sequential(max_seeds=30, min_seeds=3)
LOOKS = look_seeds((0, 1, 2), RULE)  # 3, 5, 8, 12, 18, 27, 30 seeds
STUDIES = 1500  # simulated studies per rate; Monte-Carlo standard error of a 5% rate: 0.56 points


def claim(expect: str, margin: float = 0.5) -> Claim:
    return Claim("c", "planted", (("norm.kind", "torch"),), (("norm.kind", "none"),), Metric(), expect, margin)


def study(rng: random.Random, effect: float) -> tuple[dict, dict]:
    """One simulated study: per-seed compare values (effect + N(0, 1) noise) against zeros."""
    return {s: effect + rng.gauss(0, 1) for s in LOOKS[-1]}, dict.fromkeys(LOOKS[-1], 0.0)


def naive(c: Claim, a: dict, b: dict) -> tuple[str, int]:
    """Re-test after each look with the fixed design's 95% (90%) intervals, stopping at the first verdict."""
    for seeds in LOOKS:
        item = measured(c, {s: a[s] for s in seeds}, {s: b[s] for s in seeds}, [], 0, 1)
        v = verdict(c, item.effect, item.effect.p)
        if v != "inconclusive":
            return v, len(seeds)
    return "inconclusive", len(LOOKS[-1])


def rates(c: Claim, effect: float, seed: int) -> tuple[float, float, float]:
    """Rate of "supported" under the sequential rule and the naive one, and the sequential mean seeds."""
    rng = random.Random(seed)
    supported = naive_supported = 0
    used = []
    for _ in range(STUDIES):
        a, b = study(rng, effect)
        judged = decide(c, a, b, LOOKS, RULE, family=1)
        supported += judged.verdict == "supported"
        used.append(len(LOOKS[judged.look - 1]))
        naive_supported += naive(c, a, b)[0] == "supported"
    return supported / STUDIES, naive_supported / STUDIES, statistics.fmean(used)


def test_looks_grow_by_half_to_the_budget():
    assert look_sizes(RULE, 3) == [3, 5, 8, 12, 18, 27, 30]
    assert look_sizes(RULE, 10) == [10, 15, 23, 30]
    assert look_seeds((4, 7), Sequential(max_seeds=4, min_seeds=2)) == [(4, 7), (4, 7, 8), (4, 7, 8, 9)]


def test_boundaries_match_the_published_pocock_type_values():
    """Lan-DeMets Pocock-type spending, 5 equally spaced looks, two-sided 0.05: 2.438, 2.427, 2.410, 2.397,
    2.386 (Jennison & Turnbull 2000, Table 7.? as computed by gsDesign's sfLDPocock); O'Brien-Fleming type:
    the first look spends 2 - 2 Phi(1.96 / sqrt(0.2)) exactly."""
    z = [stats.norm.isf(a / 2) for a in nominal_levels((1, 2, 3, 4, 5), 5, 0.05, "pocock")]
    assert z == pytest.approx([2.438, 2.427, 2.410, 2.397, 2.386], abs=2e-3)
    first = nominal_levels((1, 2, 3, 4, 5), 5, 0.05, "obrien-fleming")[0]
    assert first == pytest.approx(2 * stats.norm.sf(stats.norm.isf(0.025) / 0.2**0.5), rel=1e-9)


def test_a_true_null_is_rarely_supported_however_often_the_study_looks():
    """No effect: "supported" (a greater claim, decided on one side: 2.5% in the fixed design) at most 2.5% +
    3 Monte-Carlo standard errors under the sequential rule (the t interval at a look's nominal level is
    approximate at 3 seeds: 3.1% measured); the naive re-test after each look exceeds even 5%."""
    sequential, naive_rate, _ = rates(claim("greater"), 0.0, seed=1)
    assert sequential <= 0.025 + 3 * (0.025 * 0.975 / STUDIES) ** 0.5
    assert naive_rate > 0.05 + 3 * (0.05 * 0.95 / STUDIES) ** 0.5


def test_equivalence_at_the_margin_is_rarely_supported_however_often_the_study_looks():
    """A true effect exactly at the margin: "equivalent" (TOST, 5% per side) at most 5% + 3 standard errors;
    the naive re-test exceeds it."""
    sequential, naive_rate, _ = rates(claim("equivalent", margin=0.5), 0.5, seed=3)
    tolerance = 3 * (0.05 * 0.95 / STUDIES) ** 0.5
    assert sequential <= 0.05 + tolerance
    assert naive_rate > 0.05 + tolerance


EFFECT = 0.6  # a planted real effect, in standard deviations of the per-seed difference


def fixed_seeds(power: float) -> int:
    """The fewest seeds of a fixed paired-t design (two-sided 0.05) with at least this power at EFFECT."""
    for n in range(2, 500):
        crit = stats.t.isf(0.025, n - 1)
        if stats.nct.sf(crit, n - 1, EFFECT * n**0.5) >= power:
            return n
    raise AssertionError("no n up to 500")


def test_a_real_effect_is_decided_with_fewer_seeds_than_the_fixed_design_of_equal_power():
    power, _, mean_seeds = rates(claim("greater"), EFFECT, seed=2)
    assert power > 0.5  # it finds the effect
    assert mean_seeds < fixed_seeds(power)  # and on average stops earlier than a fixed design as powerful


def test_the_interval_shown_is_the_one_that_decided():
    """An equivalence claim is supported by its 90% (TOST) interval but contradicted by its 95% one: the
    report and bnbench.judge show the one that decided (the 95% one for a contradicted equivalence)."""
    from bnbench.evidence.stats import Effect

    far = Effect(10, True, 0.007, 0.0056, 0.0083, 1e-6, 0.0059, 0.0081, test="paired t")
    item = measured(claim("equivalent", margin=0.005), {}, {}, [], 0, 1)
    item.effect, item.verdict = far, verdict(item.claim, far, far.p)
    assert item.verdict == "contradicted" and item.interval() == (0.0056, 0.0083, 0.95)
    item.verdict = "supported"
    assert item.interval() == (0.0059, 0.0081, 0.90)
