"""The statistics every verdict and every seed-group test uses: one implementation for `compare` and the
claims engine.

The seed is the unit of evidence. `one_per_seed` keeps one run per (arm, seed); `pair_by_seed` pairs two
arms on the seeds they share and says which seeds were dropped and why. `effect` is the difference of two
arms with its confidence interval and two-sided p:

- paired t (Student 1908) on the per-seed differences, or Welch's t (1947) when the arms share too few seeds;
- rank-based where a mean would mislead: steps to a target (never reached ranks last), a diverged run (it
  holds the worst value from its divergence on), or differences with no spread at all (accuracy is
  quantized at 1e-4: three pairs differing by exactly 0.0012 would give a t of infinity). Then the p is the
  exact Wilcoxon signed-rank test (paired) or the exact Wilcoxon-Mann-Whitney rank-sum test (unpaired),
  computed here by enumerating the permutation distribution over the observed midranks (so ties and the
  SciPy version do not change it; zero differences are left out, Wilcoxon's 1945 convention), and the
  estimate with its interval is Hodges-Lehmann's (1963): the median of the Walsh averages (paired) or of
  the pairwise differences (unpaired), with the distribution-free interval of Lehmann (1975, "Nonparametrics",
  §3.2 and §4.2) from the exact null distribution: its coverage is at least the nominal one at any n.

`detectable` is the smallest true effect a t design finds with 80% power at the Holm-corrected level that
its first step uses (alpha / m), from the noncentral t distribution (Cohen 1988, ch. 2). No torch here.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05
POWER = 0.80


@dataclass
class Effect:
    n: int  # pairs, or the smaller arm when unpaired
    paired: bool
    estimate: float  # compare minus against (mean difference; Hodges-Lehmann for rank-based tests)
    low: float  # 95% CI
    high: float
    p: float  # two-sided, for a difference
    low90: float = math.nan  # 90% CI, for TOST
    high90: float = math.nan
    test: str = ""
    design: tuple[float, float, int] | None = None  # (standard error, degrees of freedom, Holm family): t designs

    @property
    def detectable(self) -> float:
        """The smallest effect this design detects with 80% power (t designs at the fixed 95% level; NaN
        otherwise). Computed when asked: it is a noncentral-t root."""
        return detectable(*self.design) if self.design is not None else math.nan

    @property
    def rank_based(self) -> bool:
        return self.test.startswith(("Wilcoxon", "Mann-Whitney"))


# --- one run per seed, and pairs ----------------------------------------------------------------------


def _recency(run: Any) -> tuple:
    meta = getattr(run, "meta", {}) or {}
    return (str(meta.get("ended_at") or meta.get("updated_at") or meta.get("started_at") or ""), str(run.path))


def one_per_seed(runs: list) -> tuple[dict[Any, Any], list[str]]:
    """One run per seed (`train.seed` of its config): where several runs share a seed, the most recently
    finished counts and the others are named in the returned warnings, never counted twice."""
    by_seed: dict[Any, list] = {}
    for run in runs:
        by_seed.setdefault(run.config.get("train", {}).get("seed"), []).append(run)
    kept, repeated = {}, []
    for seed, members in by_seed.items():
        members = sorted(members, key=_recency)
        kept[seed] = members[-1]
        if len(members) > 1:
            repeated.append(f"seed {seed} ran {len(members)} times ({', '.join(r.name for r in members)}): "
                            f"only {members[-1].name}, the most recent, counts")  # fmt: skip
    return kept, repeated


def pair_by_seed(a: dict[Any, float], b: dict[Any, float]) -> tuple[list[tuple[float, float]], list[Any]]:
    """The (a, b) values of the seeds both arms have, in seed order, and the seeds only one arm has."""
    common = sorted(set(a) & set(b), key=str)
    return [(a[s], b[s]) for s in common], sorted(set(a) ^ set(b), key=str)


# --- exact rank tests -----------------------------------------------------------------------------------


def _midranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def signed_rank_p(diffs: list[float]) -> float:
    """Exact two-sided p of Wilcoxon's signed-rank test: the sum of the positive differences' midranks
    against its distribution over all 2^n sign assignments (zeros left out). 1.0 with no nonzero difference."""
    nonzero = [d for d in diffs if d != 0]
    n = len(nonzero)
    if n == 0:
        return 1.0
    ranks = [round(2 * r) for r in _midranks([abs(d) for d in nonzero])]  # doubled: integers
    observed = sum(r for r, d in zip(ranks, nonzero, strict=True) if d > 0)
    counts = {0: 1}
    for r in ranks:
        nxt: dict[int, int] = {}
        for s, c in counts.items():
            nxt[s] = nxt.get(s, 0) + c
            nxt[s + r] = nxt.get(s + r, 0) + c
        counts = nxt
    total, mean = 2**n, sum(ranks) / 2
    extreme = sum(c for s, c in counts.items() if abs(s - mean) >= abs(observed - mean) - 1e-9)
    return min(1.0, extreme / total)


def rank_sum_p(a: list[float], b: list[float]) -> float:
    """Exact two-sided p of the Wilcoxon-Mann-Whitney rank-sum test: the sum of a's midranks against its
    distribution over every choice of len(a) of the pooled values."""
    pooled = list(a) + list(b)
    ranks = [round(2 * r) for r in _midranks(pooled)]
    m = len(a)
    observed = sum(ranks[:m])
    # counts[k][s]: ways to choose k of the ranks seen so far with doubled sum s
    counts: list[dict[int, int]] = [{0: 1}] + [{} for _ in range(m)]
    for r in ranks:
        for k in range(m, 0, -1):
            for s, c in counts[k - 1].items():
                counts[k][s + r] = counts[k].get(s + r, 0) + c
    total, mean = math.comb(len(pooled), m), m * sum(ranks) / len(pooled)
    extreme = sum(c for s, c in counts[m].items() if abs(s - mean) >= abs(observed - mean) - 1e-9)
    return min(1.0, extreme / total)


def _signed_rank_critical(n: int, alpha: float) -> int:
    """The largest k with P(T <= k) <= alpha / 2 under the no-ties null of the signed-rank statistic T
    (-1 when even T = 0 is more likely than that)."""
    counts = [1] + [0] * (n * (n + 1) // 2)
    for r in range(1, n + 1):
        for s in range(len(counts) - 1, r - 1, -1):
            counts[s] += counts[s - r]
    total, cumulative, k = 2**n, 0, -1
    for s, c in enumerate(counts):
        cumulative += c
        if cumulative / total > alpha / 2:
            break
        k = s
    return k


def _rank_sum_critical(m: int, n: int, alpha: float) -> int:
    """The largest k with P(U <= k) <= alpha / 2 under the no-ties null of Mann-Whitney's U."""
    # counts of U over all arrangements, by the recursion of Mann & Whitney (1947)
    table: dict[tuple[int, int], list[int]] = {}

    def dist(i: int, j: int) -> list[int]:
        if i == 0 or j == 0:
            return [1]
        if (i, j) not in table:
            left, right = dist(i - 1, j), dist(i, j - 1)  # the largest value from a (adds j to U) or from b
            out = [0] * (i * j + 1)
            for u, c in enumerate(left):
                out[u + j] += c
            for u, c in enumerate(right):
                out[u] += c
            table[(i, j)] = out
        return table[(i, j)]

    counts = dist(m, n)
    total, cumulative, k = math.comb(m + n, m), 0, -1
    for u, c in enumerate(counts):
        cumulative += c
        if cumulative / total > alpha / 2:
            break
        k = u
    return k


def hodges_lehmann(a: list[float], b: list[float] | None = None, alpha: float = ALPHA) -> tuple[float, float, float]:
    """Hodges-Lehmann estimate with its exact distribution-free (1 - alpha) interval: of the median
    difference (`a` the per-seed differences, b None) from the Walsh averages, or of the shift a - b from the
    pairwise differences. The interval is [-inf, inf] where n is too small for the level."""
    if b is None:
        values = sorted((x + y) / 2 for x, y in itertools.combinations_with_replacement(a, 2))
        k = _signed_rank_critical(len(a), alpha)
    else:
        values = sorted(x - y for x in a for y in b)
        k = _rank_sum_critical(len(a), len(b), alpha)
    estimate = statistics.median(values)
    if k < 0:
        return estimate, -math.inf, math.inf
    return estimate, values[k], values[len(values) - 1 - k]


# --- the effect ------------------------------------------------------------------------------------------


def detectable(se: float, dof: float, family: int = 1) -> float:
    """The smallest true difference a two-sided t test with this standard error and degrees of freedom
    detects with 80% power at level alpha / family (Holm's first step): the noncentrality delta with
    P(|T'(dof, delta)| > t_crit) = 0.8, times the standard error. NaN where it cannot be computed."""
    from scipy import optimize, stats

    if not (se == se) or se <= 0 or dof < 1:
        return math.nan
    crit = stats.t.ppf(1 - ALPHA / max(1, family) / 2, dof)

    def power(delta: float) -> float:
        lower = float(stats.nct.cdf(-crit, dof, delta))  # negligible, and NaN in SciPy far out in the tail
        return float(stats.nct.sf(crit, dof, delta)) + (lower if lower == lower else 0.0) - POWER

    high = crit + 1.0
    while power(high) < 0:  # power grows with delta; 0.8 lies below crit + 1 + a few at any dof >= 1
        high *= 2
        if not high < 1e4:
            return math.nan
    return float(optimize.brentq(power, 0.0, high)) * se


def effect(a: list[float], b: list[float], pairs: list[tuple[float, float]] | None, rank_based: bool,
           family: int = 1, alpha: float = ALPHA, alpha90: float = 2 * ALPHA) -> Effect:  # fmt: skip
    """The difference a - b: paired (the (a, b) values of each shared seed) or not; a t test, or the exact
    rank tests with Hodges-Lehmann intervals where `rank_based` or where the differences have no spread.
    `family`: the number of difference claims Holm corrects over (for the detectable effect). `alpha`,
    `alpha90`: the two-sided levels of the `low, high` and `low90, high90` intervals (95% and 90% by
    default; a sequential look's nominal levels, evidence/sequential.py, and then no detectable effect)."""
    from scipy import special

    if pairs is not None:
        diffs = [x - y for x, y in pairs]
        n = len(diffs)
        if n < 2:
            return Effect(n, True, math.nan, math.nan, math.nan, math.nan, test="too few seeds")
        if not any(diffs):  # identical results seed for seed: a clean null, not an infinitely precise one
            return Effect(n, True, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, test="Wilcoxon signed-rank (all differences 0)")
        se = statistics.stdev(diffs) / math.sqrt(n)
        if rank_based or se == 0:
            est, low, high = hodges_lehmann(diffs, alpha=alpha)
            _, low90, high90 = hodges_lehmann(diffs, alpha=alpha90)
            return Effect(n, True, est, low, high, signed_rank_p(diffs), low90, high90, test="Wilcoxon signed-rank")
        estimate, dof = statistics.fmean(diffs), n - 1
        test = "paired t"
    else:
        n = min(len(a), len(b))
        if n < 2:
            return Effect(n, False, math.nan, math.nan, math.nan, math.nan, test="too few seeds")
        va, vb = statistics.variance(a), statistics.variance(b)
        se = math.sqrt(va / len(a) + vb / len(b))
        if rank_based or se == 0:
            est, low, high = hodges_lehmann(a, b, alpha=alpha)
            _, low90, high90 = hodges_lehmann(a, b, alpha=alpha90)
            return Effect(n, False, est, low, high, rank_sum_p(a, b), low90, high90, test="Mann-Whitney")
        estimate = statistics.fmean(a) - statistics.fmean(b)
        dof = (va / len(a) + vb / len(b)) ** 2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
        test = "Welch t"
    # Student's t distribution function and its inverse from scipy.special: what scipy.stats.ttest_1samp
    # and ttest_ind(equal_var=False) compute, without their per-call overhead (the sequential simulation
    # calls this many thousand times)
    p = float(min(1.0, 2 * special.stdtr(dof, -abs(estimate / se))))
    t95, t90 = -float(special.stdtrit(dof, alpha / 2)), -float(special.stdtrit(dof, alpha90 / 2))
    design = (se, dof, family) if alpha == ALPHA else None
    return Effect(n, pairs is not None, estimate, estimate - t95 * se, estimate + t95 * se, p,
                  estimate - t90 * se, estimate + t90 * se, test, design)  # fmt: skip


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (1979): the k-th smallest p times (m - k + 1), kept monotone, capped at 1.
    NaN p-values (claims with no test) are left out of the family and stay NaN."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if p == p)
    m, running, adjusted = len(indexed), 0.0, [math.nan] * len(pvalues)
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
