"""Seeds until decided: the stopping rule of `bnbench sweep --until-decided`, and how `report` judges a study
that declares one (`sequential: {max_seeds: 20}` in the study file, specs.Sequential).

Looks. A claim is judged at looks: the first with max(declared seeds, min_seeds) seeds, each next with 1.5
times as many (rounded up), the last with max_seeds. New seeds (after the declared ones: max + 1, max + 2,
...) go only to the cells of the claims a look left undecided; a claim decided at a look keeps that verdict.

Procedure: repeated confidence intervals (Jennison & Turnbull 1989, JRSS B 51:305; "Group Sequential Methods",
2000, ch. 9) from a two-sided group-sequential boundary with Lan & DeMets's alpha-spending (1983, Biometrika
70:659), the information fraction of a look being t = n / max_seeds (n: the pairs of seeds it has). Spending
`pocock` (the default): alpha * ln(1 + (e - 1) t); `obrien-fleming`: 2 - 2 Phi(z_(1 - alpha/2) / sqrt(t)).
The boundary c_k of look k is found so that the probability of crossing first at look k under no effect is
alpha(t_k) - alpha(t_(k-1)) (recursive numerical integration of Armitage, McPherson & Rowe 1969, from the
`gsdesign` package, a port of R's gsDesign). At look k every interval of the fixed design (the t interval,
or the exact Hodges-Lehmann one of a rank test) is computed at the nominal level alpha_k = 2 (1 - Phi(c_k))
instead of alpha: the intervals of all looks together cover the true effect with probability 1 - alpha,
whenever one stops, so each verdict rule of claims.verdict (the interval excludes 0; lies below the margin;
within +-margin) keeps its error rate however often the study is looked at. The unknown variance is handled
by using the t (or exact rank) interval at the nominal level, the "significance level approach" of Jennison &
Turnbull (2000, section 3.3): approximate at very small n; tests/evidence/test_sequential.py measures the
error rates by simulation.

Several claims: the study's difference claims (greater, less, different) each spend alpha / m (Bonferroni
over the m of them; Holm's step-down does not carry over to repeated looks this simply); equivalence and
not_worse claims spend 2 alpha (the 90% TOST interval) and alpha, as in the fixed design.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from bnbench.config import flat
from bnbench.evidence.claims import ALPHA, DIFFERENCE_CLAIMS, Judged, arms, judge, measured, tuned, verdict, with_note
from bnbench.runs.specs import Claim, Sequential, matches

GROWTH = 1.5  # each look has this many times the seeds of the one before (rounded up)
GRID = 18  # gsdesign's grid size parameter (its default; gsDesign's r)
FINAL = ("completed", "diverged", "failed")  # a look is complete when every run it needs is one of these


def spent(t: float, alpha: float, spending: str) -> float:
    """The alpha spent by information fraction t (0 < t <= 1), Lan & DeMets (1983)."""
    from scipy import stats

    t = min(1.0, t)
    if spending == "pocock":
        return alpha * math.log(1 + (math.e - 1) * t)
    return float(2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(t)))


@functools.lru_cache(maxsize=4096)
def nominal_levels(sizes: tuple[int, ...], max_n: int, alpha: float, spending: str) -> tuple[float, ...]:
    """The two-sided nominal level of each look, given the sizes (pairs of seeds, strictly increasing, at most
    max_n) of the looks so far: 2 (1 - Phi(c_k)) of the boundary c_k (see the module's docstring)."""
    from gsdesign import h1, hupdate
    from scipy import optimize, stats

    levels: list[float] = []
    grid, info_before, spent_before = None, 0.0, 0.0
    for n in sizes:
        info = min(n, max_n) / max_n
        if info <= info_before:
            raise ValueError(f"looks must grow: {sizes}")
        target = spent(info, alpha, spending) - spent_before
        if grid is None:
            c = float(stats.norm.isf(target / 2))
            grid = h1(GRID, 0.0, info, -c, c)
        else:
            previous, carried = grid, float(grid[2].sum())

            def excess(
                c: float, previous=previous, carried=carried, info=info, before=info_before, target=target
            ) -> float:
                inside = float(hupdate(GRID, 0.0, info, -c, c, 0.0, before, previous)[2].sum())
                return carried - inside - target  # crossing first at this look, minus what it may spend

            c = float(optimize.brentq(excess, 1e-3, 40.0, xtol=1e-10)) if target > 1e-14 else 40.0
            grid = hupdate(GRID, 0.0, info, -c, c, 0.0, info_before, previous)
        levels.append(float(2 * stats.norm.sf(c)))
        info_before, spent_before = info, spent(info, alpha, spending)
    return tuple(levels)


def look_sizes(rule: Sequential, declared: int) -> list[int]:
    """Seeds per claim at each look: max(declared, min_seeds), then x1.5 (rounded up) until max_seeds."""
    sizes = [min(rule.max_seeds, max(declared, rule.min_seeds))]
    while sizes[-1] < rule.max_seeds:
        sizes.append(min(rule.max_seeds, math.ceil(sizes[-1] * GROWTH)))
    return sizes


def look_seeds(seeds: tuple[int, ...], rule: Sequential) -> list[tuple[int, ...]]:
    """The seeds of each look: the declared ones, then max(declared) + 1, + 2, ..."""
    extended = list(seeds) + [max(seeds) + 1 + i for i in range(max(0, rule.max_seeds - len(seeds)))]
    return [tuple(extended[:n]) for n in look_sizes(rule, len(seeds))]


def decide(claim: Claim, seeds_a: dict[Any, float], seeds_b: dict[Any, float], looks: list[tuple[int, ...]],
           rule: Sequential, family: int, dropped: list[str] = (), diverged: int = 0) -> Judged:  # fmt: skip
    """A claim judged look by look (`looks`: the seeds of each complete look) until a look decides it: the
    first verdict other than inconclusive stands. A look that adds no pair of seeds is no look."""
    level = ALPHA / max(1, family) if claim.expect in DIFFERENCE_CLAIMS else ALPHA
    sizes: list[int] = []
    last = None
    for number, seeds in enumerate(looks, 1):
        a = {s: v for s, v in seeds_a.items() if s in seeds}
        b = {s: v for s, v in seeds_b.items() if s in seeds}
        shared = len(set(a) & set(b))
        n = min(rule.max_seeds, shared if shared >= 2 else min(len(a), len(b)))
        if n < 2 or (sizes and n <= sizes[-1]):
            continue
        sizes.append(n)
        alpha = nominal_levels(tuple(sizes), rule.max_seeds, level, rule.spending)[-1]
        alpha90 = nominal_levels(tuple(sizes), rule.max_seeds, 2 * ALPHA, rule.spending)[-1]
        last = measured(claim, a, b, list(dropped), diverged, family, alpha, alpha90)
        last.look, last.levels = number, (alpha, alpha90)
        if last.effect is not None:
            last.verdict = verdict(claim, last.effect, 0.0)  # the look's interval decides
        if last.verdict != "inconclusive":
            return last
    if last is None:
        first = set(looks[0]) if looks else set()
        return measured(claim, {s: v for s, v in seeds_a.items() if s in first},
                        {s: v for s, v in seeds_b.items() if s in first}, list(dropped), diverged, family)  # fmt: skip
    return last


# --- a study -----------------------------------------------------------------------------------------------


def _claim_cells(cells: list[tuple[str, dict]], claim: Claim) -> list[str]:
    """The cells that either arm of the claim selects."""
    return [cell for cell, config in cells if matches(config, claim.compare) or matches(config, claim.against)]


def own_runs(study: Any, runs: list) -> tuple[list, list[str]]:
    """The runs that are cells of the study (their config is a cell's, but for name and seed; keys a run
    lacks, added to bnbench since, do not count), and one warning per run that is not: a run copied in from
    another config would otherwise stand in for a cell's seed."""
    keys = [k for keys, _ in study.matrix for k in keys.split(",")]
    cells = [c for _, c in study.cells()]
    own, strays = [], []
    for run in runs:
        f = flat(run.config)
        cell = next((c for c in cells if matches(f, tuple((k, c[k]) for k in keys if k in c))), None)
        differs = (
            ["its matrix values"]
            if cell is None
            else [
                k for k, v in cell.items() if k not in ("name", "train.seed") and k in f and not matches(f, ((k, v),))
            ]
        )
        if differs:
            strays.append(f"{run.name}: not a run of study {study.name} (its config differs in "
                          f"{', '.join(differs[:3])}); left out")  # fmt: skip
        else:
            own.append(run)
    return own, strays


def _replay(study: Any, runs: list, cells: list[tuple[str, dict]]) -> list[tuple[Judged, int]]:
    """Every claim judged over the complete looks, and the number of looks it had (complete ones)."""
    rule = study.sequential
    looks = look_seeds(study.seeds, rule)
    status = {r.name: r.status for r in runs}
    family = sum(c.expect in DIFFERENCE_CLAIMS for c in study.claims)
    out = []
    for claim in study.claims:
        mine = _claim_cells(cells, claim)
        complete = 0
        for seeds in looks:
            if any(status.get(f"{cell}-s{seed}") not in FINAL for cell in mine for seed in seeds):
                break
            complete += 1
        chosen, choice = tuned(claim, runs)
        seeds_a, seeds_b, dropped, diverged = arms(chosen, runs)
        judged = with_note(decide(chosen, seeds_a, seeds_b, looks[:complete], rule, family, dropped, diverged), choice)
        judged.at_budget = judged.verdict == "inconclusive" and complete == len(looks)
        out.append((judged, complete))
    return out


def judge_study(study: Any, runs: list) -> list[Judged]:
    """Every claim of a study (runs.study.Study) over its runs: by the fixed design (claims.judge), or look by
    look under the study's `sequential:` rule."""
    if not study.claims:
        return []
    if study.sequential is None:
        return judge(study.claims, runs)
    return [judged for judged, _ in _replay(study, runs, study.cells())]


def next_runs(study: Any, runs: list) -> tuple[set[str], list[Judged]]:
    """The run names the study needs now: every cell at the declared seeds, and for each claim no look has
    decided yet (and not at the budget) its cells at the seeds of its next look. With the claims as judged."""
    looks, cells = look_seeds(study.seeds, study.sequential), study.cells()
    wanted = {f"{cell}-s{seed}" for cell, _ in cells for seed in study.seeds}
    judged = []
    for item, complete in _replay(study, runs, cells):
        judged.append(item)
        if item.verdict == "inconclusive" and complete < len(looks):
            wanted |= {f"{cell}-s{seed}" for cell in _claim_cells(cells, item.claim) for seed in looks[complete]}
    return wanted, judged


def rule_text(rule: Sequential, declared: int) -> str:
    """One line naming the rule, for the report and the sweep."""
    sizes = ", ".join(map(str, look_sizes(rule, declared)))
    return (
        f"repeated confidence intervals with {rule.spending} alpha-spending (Lan & DeMets 1983): at most "
        f"{rule.max_seeds} seeds per claim, looks at {sizes} seeds"
    )


def worst_case(study: Any) -> set[str]:
    """Every run the study could need: its cells at the declared seeds, each claim's cells at its maximum."""
    cells, last = study.cells(), look_seeds(study.seeds, study.sequential)[-1]
    names = {f"{cell}-s{seed}" for cell, _ in cells for seed in study.seeds}
    for claim in study.claims:
        names |= {f"{cell}-s{seed}" for cell in _claim_cells(cells, claim) for seed in last}
    return names
