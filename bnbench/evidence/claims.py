"""Claims as data and the one engine that judges them, for any study.

A study file declares the claims it tests beside its grid:

    claims:
      - id: bn_higher_final
        says: BN reaches a higher final test accuracy than no norm
        source: {cite: "Ioffe & Szegedy 2015, §4.1", url: "https://arxiv.org/abs/1502.03167"}
        compare: {norm.kind: torch}          # the runs of one arm: config keys and values
        against: {norm.kind: none}
        metric: {column: test_acc, at: final, mean_of_last: 3}   # at: final | {epoch: N} | {step: N}
        expect: greater                      # greater | less | equivalent | not_worse
        margin: 0.005                        # needed by equivalent and not_worse

or `metric: {column: train_acc, steps_to: 0.97}` (the first logged step reaching it; rank-based),
`metric: {column: test_acc, auc: true}` (the mean over epochs), `metric: {diagnostic: lag_mean, layer: last,
at: final, mean_of_last: 10}` (a diagnostics.csv quantity of one norm position, `last` = the deepest), and
`against_column: test_acc` to set two columns of the same runs against each other. `expect: different`
(with a margin) claims two arms differ by more than the margin, either way.

A study may also say what its claims were published with (`published:`, parse_published): the source,
the published setup as config keys (every value the runs differ in is printed beside the verdicts),
notes on what differs beyond the config, and published figures to print beside bnbench's. A claim's own
`source: {deviates: ...}` says how its test differs from its paper's (printed beside that verdict only).

Arms are paired by seed when they share their seeds (same initial weights and data order: the norm
layers draw no random numbers); the effect is the mean difference with its 95% confidence interval.
Verdicts, with Holm's correction over the claims of a study:
  supported     the CI excludes zero in the claimed direction and the Holm-adjusted p < 0.05
                (equivalent: the 90% CI lies within ±margin, TOST; not_worse: the 95% CI lies above -margin;
                different: the 95% CI lies outside ±margin and the adjusted p < 0.05)
  contradicted  the CI excludes the claimed effect (greater: it lies below margin or 0; equivalent: it
                lies outside ±margin; not_worse: below -margin; different: TOST puts it within ±margin)
  inconclusive  otherwise, with the smallest effect the design could have detected (80% power)
A test that misses p < 0.05 is never evidence against a claim. No torch, no study-specific code here.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any

from bnbench.config import flat
from bnbench.runs.specs import Claim, Metric, Published, matches

ALPHA = 0.05
POWER = 0.80
DIFFERENCE_CLAIMS = ("greater", "less", "different")  # tested against zero: the Holm family


# --- measuring a run -------------------------------------------------------------------------------------


def measure(run: Any, metric: Metric, against: bool = False) -> float:
    """The metric of one run (compare.Run) from its metrics.csv, steps.csv or diagnostics.csv; NaN when it
    cannot be read. `against`: the against arm's column where the metric names another one."""
    if against and metric.against_column is not None:
        metric = replace(metric, column=metric.against_column, against_column=None)
    if metric.layer is not None:
        return _diagnostic(run, metric)
    return _measure(run.table, run.step_table, metric)


def _diagnostic(run: Any, metric: Metric) -> float:
    """A diagnostics.csv quantity of one norm position ("last": the deepest), at its last probes, or at
    the last probe of an epoch or at or before a step."""
    d = run.diagnostics
    if d.empty:
        return math.nan
    d = d[d["quantity"] == metric.column]
    layers = sorted(set(d["layer"]) - {"model"}, key=lambda name: (len(name), name))  # norm2 before norm10
    layer = layers[-1] if metric.layer == "last" and layers else metric.layer
    values = d[d["layer"] == layer].sort_values("step")
    if metric.at_kind == "epoch":
        values = values[values["epoch"] == metric.at].tail(1)
    elif metric.at_kind == "step":
        values = values[values["step"] <= metric.at].tail(1)
    else:
        values = values.tail(metric.mean_of_last)
    if values.empty or (metric.at_kind == "final" and len(values) < metric.mean_of_last):
        return math.nan
    return float(values["value"].mean())


def _measure(table: dict[str, list], step_table: dict[str, list], metric: Metric) -> float:
    if metric.steps_to is not None:
        source = step_table if metric.column in step_table else table
        index = "step" if source is step_table else "epoch"
        for position, value in zip(source.get(index, []), source.get(metric.column, []), strict=True):
            if value == value and value >= metric.steps_to:
                return float(position)
        return math.inf  # never reached: ranks last
    values = table.get(metric.column, [])
    if metric.auc:
        finite = [v for v in values if v == v]
        return statistics.fmean(finite) if finite else math.nan
    if metric.at_kind == "final":
        tail = values[-metric.mean_of_last :]
        return statistics.fmean(tail) if len(tail) == metric.mean_of_last else math.nan
    if metric.at_kind == "epoch":
        epochs = [int(e) for e in table.get("epoch", [])]
        return values[epochs.index(metric.at)] if metric.at in epochs else math.nan
    steps = step_table.get("step", [])
    column = step_table.get(metric.column)
    if column is None:
        return math.nan
    before = [v for s, v in zip(steps, column, strict=True) if s <= metric.at]
    return before[-1] if before else math.nan


# --- statistics ------------------------------------------------------------------------------------------


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (1979): the k-th smallest p times (m - k + 1), kept monotone, capped at 1.
    NaN p-values (claims with no test) are left out of the family and stay NaN."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if p == p)
    m, running, adjusted = len(indexed), 0.0, [math.nan] * len(pvalues)
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass
class Effect:
    n: int  # pairs, or the smaller arm when unpaired
    paired: bool
    estimate: float  # compare minus against
    low: float  # 95% CI
    high: float
    p: float  # two-sided, for a difference
    low90: float = math.nan  # 90% CI, for TOST
    high90: float = math.nan
    detectable: float = math.nan  # the smallest effect this design detects with 80% power
    test: str = ""


def effect(a: list[float], b: list[float], pairs: list[tuple[float, float]] | None, discrete: bool) -> Effect:
    """The difference a - b: paired (a list of (a, b) per seed) or not; t-based for continuous measures,
    rank-based p (Wilcoxon / Mann-Whitney) with a bootstrap CI for discrete ones (steps to a target)."""
    from scipy import stats

    if pairs is not None:
        diffs = [x - y for x, y in pairs]
        n = len(diffs)
        estimate = statistics.fmean(diffs) if diffs else math.nan
        if discrete:
            p = _safe(lambda: stats.wilcoxon(diffs).pvalue) if any(diffs) else 1.0
            low, high, low90, high90 = _bootstrap(diffs)
            spread = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.nan
            return Effect(n, True, estimate, low, high, p, low90, high90, _detectable(spread, n - 1), "Wilcoxon")
        se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.nan
        dof = n - 1
        if se == 0:  # every pair differs by the same amount (identical computations: by nothing)
            p = 1.0 if estimate == 0 else 0.0
        else:
            p = _safe(lambda: stats.ttest_1samp(diffs, 0.0).pvalue)
    else:
        n = min(len(a), len(b))
        estimate = statistics.fmean(a) - statistics.fmean(b) if a and b else math.nan
        if discrete:
            p = _safe(lambda: stats.mannwhitneyu(a, b).pvalue)
            low, high, low90, high90 = _bootstrap(a, b)
            va, vb = (statistics.variance(x) if len(x) > 1 else math.nan for x in (a, b))
            spread = math.sqrt(va / len(a) + vb / len(b))
            return Effect(n, False, estimate, low, high, p, low90, high90, _detectable(spread, n - 1), "Mann-Whitney")
        va, vb = (statistics.variance(x) if len(x) > 1 else math.nan for x in (a, b))
        se = math.sqrt(va / len(a) + vb / len(b))
        dof = (va / len(a) + vb / len(b)) ** 2 / (
            (va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1)
        ) if se else max(1, len(a) + len(b) - 2)  # fmt: skip
        p = _safe(lambda: stats.ttest_ind(a, b, equal_var=False).pvalue) if se else (1.0 if estimate == 0 else 0.0)
    if not (se == se) or dof < 1:
        return Effect(n, pairs is not None, estimate, math.nan, math.nan, math.nan, test="too few seeds")
    t95, t90 = stats.t.ppf(1 - ALPHA / 2, dof), stats.t.ppf(1 - ALPHA, dof)
    return Effect(n, pairs is not None, estimate, estimate - t95 * se, estimate + t95 * se, float(p),
                  estimate - t90 * se, estimate + t90 * se, _detectable(se, dof),
                  "paired t" if pairs is not None else "Welch t")  # fmt: skip


def _safe(compute) -> float:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(compute())
        except ValueError:
            return math.nan


def _detectable(se: float, dof: float) -> float:
    from scipy import stats

    if not (se == se) or dof < 1:
        return math.nan
    return float((stats.t.ppf(1 - ALPHA / 2, dof) + stats.t.ppf(POWER, dof)) * se)


def _bootstrap(a: list[float], b: list[float] | None = None, resamples: int = 4000) -> tuple[float, ...]:
    """Percentile bootstrap of the mean (of a, or of a minus b): 95% and 90% intervals; seeded."""
    import random

    rng = random.Random(0)
    finite = lambda xs: [x for x in xs if math.isfinite(x)]  # noqa: E731 - "never reached" has no mean
    a = finite(a)
    b = finite(b) if b is not None else None
    if not a or (b is not None and not b):
        return (math.nan,) * 4
    means = []
    for _ in range(resamples):
        sample = statistics.fmean(rng.choices(a, k=len(a)))
        means.append(sample - statistics.fmean(rng.choices(b, k=len(b))) if b is not None else sample)
    means.sort()

    def q(x: float) -> float:
        return means[min(len(means) - 1, max(0, int(x * len(means))))]

    return q(0.025), q(0.975), q(0.05), q(0.95)


def verdict(claim: Claim, e: Effect, adjusted_p: float) -> str:
    """supported, contradicted or inconclusive (see the module's docstring)."""
    if not (e.low == e.low):
        return "inconclusive"
    sign = -1.0 if claim.expect == "less" else 1.0
    low, high = (e.low, e.high) if sign > 0 else (-e.high, -e.low)  # in the claimed direction
    if claim.expect in ("greater", "less"):
        if low > 0 and adjusted_p < ALPHA:
            return "supported"
        if high < (claim.margin or 0.0):  # the CI rules out any effect (or one of the declared size)
            return "contradicted"
        return "inconclusive"
    m = claim.margin or 0.0
    if claim.expect == "different":
        if (e.low > m or e.high < -m) and adjusted_p < ALPHA:
            return "supported"
        if -m < e.low90 and e.high90 < m:
            return "contradicted"
        return "inconclusive"
    if claim.expect == "equivalent":
        if -m < e.low90 and e.high90 < m:
            return "supported"
        if e.low > m or e.high < -m:
            return "contradicted"
        return "inconclusive"
    # not_worse: greater is better; worse by more than the margin is what it rules out
    if e.low > -m:
        return "supported"
    if e.high < -m:
        return "contradicted"
    return "inconclusive"


# --- a study's claims ------------------------------------------------------------------------------------


@dataclass
class Judged:
    claim: Claim
    effect: Effect | None
    verdict: str
    p_adjusted: float = math.nan
    n_compare: int = 0
    n_against: int = 0
    note: str = ""
    arms: dict[str, list[float]] = field(default_factory=dict)


def judge(claims: tuple[Claim, ...], runs: list) -> list[Judged]:
    """Every claim of one study over its finished runs (compare.Run): completed, and diverged ones with what
    they recorded (leaving out the runs that diverged would hide the worst outcomes); Holm-adjusted as one family."""
    completed = [r for r in runs if r.status in ("completed", "diverged")]
    flats = [(r, flat(r.config)) for r in completed]
    judged: list[Judged] = []
    for claim in claims:
        arm_a = [(f.get("train.seed"), measure(r, claim.metric)) for r, f in flats if matches(f, claim.compare)]
        arm_b = [(f.get("train.seed"), measure(r, claim.metric, against=True)) for r, f in flats
                 if matches(f, claim.against)]  # fmt: skip
        a = [v for _, v in arm_a if v == v]
        b = [v for _, v in arm_b if v == v]
        item = Judged(claim, None, "inconclusive", n_compare=len(a), n_against=len(b))
        judged.append(item)
        if len(a) < 2 or len(b) < 2:
            item.note = f"needs at least 2 completed runs per arm (has {len(a)} and {len(b)})"
            continue
        seeds_a, seeds_b = dict(arm_a), dict(arm_b)
        paired = len(seeds_a) == len(arm_a) and set(seeds_a) == set(seeds_b)  # one run per seed in each arm
        pairs = [(seeds_a[s], seeds_b[s]) for s in sorted(seeds_a) if seeds_a[s] == seeds_a[s]
                 and seeds_b[s] == seeds_b[s]] if paired else None  # fmt: skip
        if claim.metric.discrete:  # "never reached" ranks last: a large finite stand-in keeps the ranks
            cap = max([x for x in a + b if math.isfinite(x)] or [0.0]) * 2 + 1
            a, b = [min(x, cap) for x in a], [min(x, cap) for x in b]
            pairs = [(min(x, cap), min(y, cap)) for x, y in pairs] if pairs is not None else None
        item.effect = effect(a, b, pairs, claim.metric.discrete)
        item.arms = {"compare": a, "against": b}
        if claim.metric.discrete and pairs is not None and len(pairs) <= 5:
            item.note = f"a signed-rank test on {len(pairs)} pairs cannot reach p < {ALPHA}: at least 6 seeds"
    if claim_family := [j for j in judged if j.effect is not None and j.claim.expect in DIFFERENCE_CLAIMS]:
        for j, adjusted in zip(claim_family, holm([j.effect.p for j in claim_family]), strict=True):
            j.p_adjusted = adjusted
    for j in judged:
        if j.effect is not None:
            j.verdict = verdict(j.claim, j.effect, j.p_adjusted if j.p_adjusted == j.p_adjusted else j.effect.p)
    return judged


# --- where the runs differ from what was published ---------------------------------------------------


def deviations(published: Published | None, claim: Claim | None, runs: list) -> list[str]:
    """Where the runs of a claim's two arms (or all runs, with no claim) differ from the published setup:
    one line per config key (`train.epochs: 5 here, 10 published`), the published notes, then the claim's
    own (`source: {deviates: ...}`)."""
    own = [dict(claim.source)["deviates"]] if claim is not None and dict(claim.source).get("deviates") else []
    if published is None:
        return own

    flats = [flat(r.config) for r in runs if r.status == "completed"]
    used = [f for f in flats if claim is None or matches(f, claim.compare) or matches(f, claim.against)]
    out = []
    for key, value in published.setup:
        here = list(dict.fromkeys(str(f[key]) for f in used if key in f and not matches(f, ((key, value),))))
        if here:
            out.append(f"{key}: {', '.join(here)} here, {value} published")
    return out + list(published.notes) + own
