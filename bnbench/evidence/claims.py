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
        margin: 0.005                        # every claim: the smallest effect of interest (metric units)

or `metric: {column: train_acc, steps_to: 0.97}` (the first logged step reaching it; rank-based),
`metric: {column: test_acc, auc: true}` (the mean over epochs), `metric: {diagnostic: lag_mean, layer: last,
at: final, mean_of_last: 10}` (a diagnostics.csv quantity of one norm position, `last` = the deepest), and
`against_column: test_acc` to set two columns of the same runs against each other, `minus: test_acc` for a
gap within each run. `expect: different` (with a margin) claims two arms differ by more than the margin, either
way. `tune: {key: train.lr, by: {column: val_acc}}` judges each arm at its own best value of a key, chosen on
a validation metric (`tuned`).

A study may also say what its claims were published with (`published:`, parse_published): the source,
the published setup as config keys (every value the runs differ in is printed beside the verdicts),
notes on what differs beyond the config, and published figures to print beside bnbench's. A claim's own
`source: {deviates: ...}` says how its test differs from its paper's (printed beside that verdict only).

Arms are paired by seed on the seeds they share, one run per seed (stats.py); a diverged run counts at its
worst value (chance accuracy, infinite loss) with a rank test. Verdicts, Holm over the study's difference claims:
  supported     the interval excludes zero in the claimed direction and the Holm-adjusted p < 0.05
                (equivalent: the 90% interval lies within ±margin, TOST; not_worse: the 95% interval lies
                above -margin; different: it lies outside ±margin and the adjusted p < 0.05)
  contradicted  the interval rules the claim out (greater/less: it lies below the margin; equivalent:
                outside ±margin; not_worse: below -margin; different: TOST puts it within ±margin)
  inconclusive  otherwise, with the smallest effect the design could detect (80% power, Holm's level)
A test that misses p < 0.05 is never evidence against a claim. No torch, no study-specific code here.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any

from bnbench.config import flat
from bnbench.evidence.stats import ALPHA, Effect, effect, holm, one_per_seed, pair_by_seed
from bnbench.runs.specs import Claim, Metric, Published, matches

DIFFERENCE_CLAIMS = ("greater", "less", "different")  # tested against zero: the Holm family


# --- measuring a run -------------------------------------------------------------------------------------


CHANCE = 0.1  # accuracy of a guess among 10 classes: what a diverged run scores from its divergence on


def worst(column: str) -> float:
    """What a diverged run holds for a column from its divergence on: chance accuracy, infinite loss; NaN
    for a quantity with no worst value (a diagnostic), which the claim then reports as not measured."""
    if "acc" in column:
        return CHANCE
    if "loss" in column:
        return math.inf
    return math.nan


def measure(run: Any, metric: Metric, against: bool = False) -> float:
    """The metric of one run (compare.Run) from its metrics.csv, steps.csv or diagnostics.csv; NaN when the
    run never reached the point the metric reads (never a neighbouring value). A diverged run counts as
    diverged: from its divergence on it holds the worst value (`worst`). `against`: the against arm's
    column where the metric names another one."""
    if against and metric.against_column is not None:
        metric = replace(metric, column=metric.against_column, against_column=None)
    diverged = getattr(run, "status", "") == "diverged"
    if metric.minus is not None:  # a gap: both columns read alike; a diverged run has no gap (not measured)
        other = replace(metric, column=metric.minus, minus=None)
        return math.nan if diverged else measure(run, replace(metric, minus=None)) - measure(run, other)
    if metric.layer is not None:
        return math.nan if diverged else _diagnostic(run, metric)
    epochs = int(run.config.get("train", {}).get("epochs", 0) or 0)
    return _measure(run.table, run.step_table, metric, worst(metric.column) if diverged else None, epochs)


def _diagnostic(run: Any, metric: Metric) -> float:
    """A diagnostics.csv quantity of one norm position ("last": the deepest), at its last probes, or at
    the last probe of an epoch or at or before a step the run reached."""
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
        reached = bool(len(values)) and float(values["step"].max()) >= metric.at
        values = values[values["step"] <= metric.at].tail(1) if reached else values.iloc[0:0]
    else:
        values = values.tail(metric.mean_of_last)
    if values.empty or (metric.at_kind == "final" and len(values) < metric.mean_of_last):
        return math.nan
    return float(values["value"].mean())


def _measure(table: dict[str, list], step_table: dict[str, list], metric: Metric, worst_value: float | None,
             epochs: int) -> float:  # fmt: skip
    """`worst_value`: None for a run that did not diverge, else what it holds after its last recorded row."""
    diverged = worst_value is not None
    if metric.steps_to is not None:
        source = step_table if metric.column in step_table else table
        index = "step" if source is step_table else "epoch"
        for position, value in zip(source.get(index, []), source.get(metric.column, []), strict=True):
            if value == value and value >= metric.steps_to:
                return float(position)
        return math.inf  # never reached (or diverged first): ranks last
    if metric.column not in table and not (metric.at_kind == "step" and metric.column in step_table):
        return math.nan
    values = [v if v == v or not diverged else worst_value for v in table.get(metric.column, [])]
    if metric.auc:
        padded = values + [worst_value] * max(0, epochs - len(values)) if diverged else values
        finite = [v for v in padded if v == v]
        return statistics.fmean(finite) if finite else math.nan
    if metric.at_kind == "final":
        if diverged:
            return worst_value
        tail = values[-metric.mean_of_last :]
        return statistics.fmean(tail) if len(tail) == metric.mean_of_last else math.nan
    if metric.at_kind == "epoch":
        recorded = [int(e) for e in table.get("epoch", [])]
        if metric.at in recorded:
            return values[recorded.index(metric.at)]
        return worst_value if diverged and metric.at <= epochs else math.nan
    steps = step_table.get("step", [])
    column = step_table.get(metric.column)
    if column is None:
        return math.nan
    if not steps or max(steps) < metric.at:  # the run never got there
        return worst_value if diverged else math.nan
    before = [v for s, v in zip(steps, column, strict=True) if s <= metric.at]
    return before[-1] if before else math.nan


# --- verdicts --------------------------------------------------------------------------------------------


def verdict(claim: Claim, e: Effect, adjusted_p: float) -> str:
    """supported, contradicted or inconclusive (see the module's docstring). The interval that decides:
    the 95% one for greater, less and not_worse, the 90% one for equivalent (TOST), both for different."""
    if not (e.low == e.low):
        return "inconclusive"
    m = claim.margin or 0.0
    if claim.expect in ("greater", "less"):
        sign = -1.0 if claim.expect == "less" else 1.0
        low, high = (e.low, e.high) if sign > 0 else (-e.high, -e.low)  # in the claimed direction
        if high < m:  # the CI rules out any effect of interest (in the direction claimed, or at all)
            return "contradicted"
        if low > 0 and adjusted_p < ALPHA:
            return "supported"
        return "inconclusive"
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
    dropped: list[str] = field(default_factory=list)  # seeds or runs left out, each with why
    diverged: int = 0  # runs in the two arms that diverged (they count, at their worst value)
    look: int = 0  # under a sequential rule: the look (1, 2, ...) that decided it, or the last one judged
    at_budget: bool = False  # under a sequential rule: undecided at the study's max_seeds
    levels: tuple[float, float] = (ALPHA, 2 * ALPHA)  # the two-sided alphas of its 95% and 90% intervals

    def interval(self) -> tuple[float, float, float]:
        """The interval that decides the verdict, (low, high, level): TOST's 90% one where equivalence is
        supported or not ruled out and where a difference is contradicted, else the 95% one; under a
        sequential rule, the look's repeated interval at its nominal level (wider)."""
        e = self.effect
        if e is None:
            return math.nan, math.nan, math.nan
        if (self.claim.expect, self.verdict == "contradicted") in (("equivalent", False), ("different", True)):
            return e.low90, e.high90, 1 - self.levels[1]
        return e.low, e.high, 1 - self.levels[0]


def _arm(claim: Claim, runs: list, side: str) -> tuple[dict[Any, float], list[str], int]:
    """One arm: seed -> measured value, one run per seed; what was left out and why; diverged runs."""
    wanted = claim.compare if side == "compare" else claim.against
    members = [r for r in runs if matches(flat(r.config), wanted)]
    finished = [r for r in members if r.status in ("completed", "diverged")]
    dropped = [f"{side} {r.name}: {r.status}" for r in members if r.status not in ("completed", "diverged")]
    kept, repeated = one_per_seed(finished)
    dropped += [f"{side} {note}" for note in repeated]
    values: dict[Any, float] = {}
    for seed, run in kept.items():
        value = measure(run, claim.metric, against=side == "against")
        if value == value:
            values[seed] = value
        else:
            dropped.append(
                f"{side} {run.name}: {claim.metric.describe()} not reached"
                + (" (diverged; a diagnostic or a gap has no worst value)" if run.status == "diverged" else "")
            )
    return values, dropped, sum(r.status == "diverged" for r in kept.values())


def tuned(claim: Claim, runs: list) -> tuple[Claim, str]:
    """The claim with each arm at its own best value of `claim.tune.key` (Bjorck et al. 2018: each method at its
    own best learning rate): the value whose finished runs (one per seed) have the best mean of the tuning metric,
    a validation column; a value at which any run diverged ranks below every other; a tie goes to the smaller
    value. The arms then name that value, so the report shows
    the choice; also one line saying what was chosen from what. A side with nothing measured names a value
    no run has (its arm is then empty). Unchanged without `tune`."""
    if claim.tune is None:
        return claim, ""
    key, by = claim.tune.key, claim.tune.by
    chosen, parts = {}, []
    for side in ("compare", "against"):
        wanted = getattr(claim, side)
        groups: dict[Any, list] = {}
        for run in runs:
            config = flat(run.config)
            if matches(config, wanted) and key in config and run.status in ("completed", "diverged"):
                groups.setdefault(config[key], []).append(run)
        scores, diverged = {}, {}
        worst_score = -math.inf if claim.tune.best == "max" else math.inf  # a rate that diverged is never chosen
        for value in sorted(groups, key=_value_order):
            kept = one_per_seed(groups[value])[0].values()
            diverged[value] = sum(r.status == "diverged" for r in kept)
            finite = [v for v in (measure(r, by) for r in kept if r.status != "diverged") if v == v]
            if diverged[value]:
                scores[value] = worst_score
            elif finite:
                scores[value] = statistics.fmean(finite)
        if not scores:
            chosen[side] = wanted + ((key, math.nan),)
            parts.append(f"{side}: no run measured {by.describe()}, so no {key} chosen")
            continue
        pick = (max if claim.tune.best == "max" else min)(scores, key=scores.__getitem__)  # a tie: the smaller value
        chosen[side] = wanted + ((key, pick),)
        tried = ", ".join(f"{v} {f'{s:.4g}' if not diverged[v] else f'({diverged[v]} diverged)'}"
                          for v, s in scores.items())  # fmt: skip
        parts.append(f"{side} at {key} {pick} (mean {by.describe()}: {tried})")
    return replace(claim, compare=chosen["compare"], against=chosen["against"]), "chosen on validation: " + "; ".join(
        parts)  # fmt: skip


def _value_order(value: Any) -> tuple:
    """Numbers in numeric order, before anything else (in text order)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, float(value), "") if number else (1, 0.0, repr(value))


def with_note(item: Judged, note: str) -> Judged:
    item.note = "; ".join(filter(None, [note, item.note]))
    return item


def arms(claim: Claim, runs: list) -> tuple[dict[Any, float], dict[Any, float], list[str], int]:
    """The two arms of a claim, each seed -> measured value (one run per seed); what was left out and why;
    how many of the kept runs diverged."""
    seeds_a, dropped_a, div_a = _arm(claim, runs, "compare")
    seeds_b, dropped_b, div_b = _arm(claim, runs, "against")
    return seeds_a, seeds_b, dropped_a + dropped_b, div_a + div_b


def measured(claim: Claim, seeds_a: dict[Any, float], seeds_b: dict[Any, float], dropped: list[str],
             diverged: int, family: int, alpha: float = ALPHA, alpha90: float = 2 * ALPHA) -> Judged:  # fmt: skip
    """A claim's effect over its arms (paired on the seeds they share, unpaired when they share fewer than
    two), verdict still "inconclusive": `judge` (Holm) or evidence/sequential.py (a look's levels) decides."""
    a, b = list(seeds_a.values()), list(seeds_b.values())
    item = Judged(claim, None, "inconclusive", n_compare=len(a), n_against=len(b), dropped=list(dropped),
                  diverged=diverged)  # fmt: skip
    if len(a) < 2 or len(b) < 2:
        item.note = f"needs at least 2 measured runs per arm (has {len(a)} and {len(b)})"
        return item
    pairs, unshared = pair_by_seed(seeds_a, seeds_b)
    if len(pairs) >= 2:
        item.dropped += [f"seed {s}: only in the {'compare' if s in seeds_a else 'against'} arm; unpaired"
                         for s in unshared]  # fmt: skip
    else:
        pairs = None
    rank_based = claim.metric.discrete or item.diverged > 0
    # the means shown are over the values the test used: the paired seeds' where it pairs
    item.arms = {"compare": [x for x, _ in pairs], "against": [y for _, y in pairs]} if pairs else {
        "compare": a, "against": b}  # fmt: skip
    values = [x for x in a + b if math.isfinite(x)]
    if not values:  # no run of either arm reached the target (or every loss diverged): nothing to compare
        item.note = f"{claim.metric.describe()}: reached by no run of either arm"
        return item
    if len(values) < len(a) + len(b):  # never reached / diverged loss: ranks last, finitely
        cap = max(values) * 2 + 1
        a, b = [min(x, cap) for x in a], [min(x, cap) for x in b]
        pairs = [(min(x, cap), min(y, cap)) for x, y in pairs] if pairs is not None else None
        item.note = (f"{len(a) + len(b) - len(values)} of {len(a) + len(b)} values never reached (a diverged loss: "
                     f"infinite): ranked last by the rank test, counted as {cap:g} in its estimate")  # fmt: skip
    item.effect = effect(a, b, pairs, rank_based, family if claim.expect in DIFFERENCE_CLAIMS else 1, alpha, alpha90)
    if item.effect.rank_based and item.effect.low == -math.inf:
        item.note = "; ".join(filter(None, [item.note, f"an exact rank test on {item.effect.n} seeds cannot reach "
                                            f"p < {alpha:.2g}: more seeds needed"]))  # fmt: skip
    return item


def judge(claims: tuple[Claim, ...], runs: list) -> list[Judged]:
    """Every claim of one study over its runs (compare.Run). The seed is the unit: one run per seed and arm
    (the most recent of repeated ones), arms paired on the seeds they share (the others named, with why),
    unpaired only when they share fewer than two. A diverged run counts at its worst value, with a rank test.
    Holm-adjusted over the study's difference claims as one family."""
    family = sum(c.expect in DIFFERENCE_CLAIMS for c in claims)
    judged = []
    for claim in claims:
        claim, choice = tuned(claim, runs)
        judged.append(with_note(measured(claim, *arms(claim, runs), family), choice))
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
