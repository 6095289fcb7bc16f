"""The schema of a study file's `claims:`, `published:`, `figures:` and `sequential:`: parsed and validated when the
study loads (one UsageError naming the claim or figure and the key), so that a typo is one line before
any training. What the claims and figures mean lives above: evidence/claims.py judges a `Claim`,
evidence/figures.py draws a `FigureSpec`. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bnbench.config import check_keys, parse_override
from bnbench.errors import UsageError
from bnbench.records import RECORDED_COLUMNS

EXPECTS = ("greater", "less", "equivalent", "not_worse", "different")
CLAIM_KEYS = ("id", "says", "source", "compare", "against", "metric", "expect", "margin", "kind", "tune")
KINDS = ("finding", "check")  # check: true by construction (hand-written = torch); counted apart


@dataclass(frozen=True)
class Metric:
    column: str = "test_acc"  # a metrics.csv or steps.csv column, or with `diagnostic` the quantity
    at: str | int | None = "final"  # "final", or an epoch number (at_kind "epoch") or a step ("step")
    at_kind: str = "final"  # final | epoch | step
    mean_of_last: int = 1
    steps_to: float | None = None
    auc: bool = False
    against_column: str | None = None  # the against arm's column, where it is another one
    layer: str | None = None  # set for a diagnostics.csv quantity: a norm position, or "last"
    minus: str | None = None  # another column of the same run, subtracted: train_acc minus test_acc is the gap

    @property
    def discrete(self) -> bool:
        return self.steps_to is not None

    def describe(self) -> str:
        name = self.column if self.against_column is None else f"{self.column} vs {self.against_column}"
        if self.minus is not None:
            name = f"{self.column} - {self.minus}"
        if self.layer is not None:
            name = f"{self.column} of {self.layer if self.layer != 'last' else 'the last norm'}"
        if self.steps_to is not None:
            return f"steps until {name} >= {self.steps_to:g}"
        if self.auc:
            return f"mean {name} over epochs"
        if self.at_kind == "final":
            return f"final {name}" + (f" (mean of last {self.mean_of_last})" if self.mean_of_last > 1 else "")
        return f"{name} at {self.at_kind} {self.at}"


@dataclass(frozen=True)
class Tune:
    """`tune:` of a claim: each arm at its own best value of `key` (e.g. train.lr), the value whose runs have the
    best mean of `by` (a validation metric: the test set is never used for a choice); `best`: max or min."""

    key: str
    by: Metric
    best: str = "max"

    def to_dict(self) -> dict:
        return {"key": self.key, "by": _metric_dict(self.by), "best": self.best}


def _metric_dict(m: Metric) -> dict[str, Any]:
    metric: dict[str, Any] = {"column": m.column}
    if m.layer is not None:
        metric = {"diagnostic": m.column, "layer": m.layer}
    if m.against_column is not None:
        metric["against_column"] = m.against_column
    if m.minus is not None:
        metric["minus"] = m.minus
    if m.steps_to is not None:
        metric["steps_to"] = m.steps_to
    elif m.auc:
        metric["auc"] = True
    elif m.at_kind == "final":
        metric.update(at="final", mean_of_last=m.mean_of_last)
    else:
        metric["at"] = {m.at_kind: m.at}
    return metric


@dataclass(frozen=True)
class Claim:
    id: str
    says: str
    compare: tuple[tuple[str, Any], ...]
    against: tuple[tuple[str, Any], ...]
    metric: Metric
    expect: str
    margin: float | None = None
    source: tuple[tuple[str, str], ...] = ()
    kind: str = "finding"
    tune: Tune | None = None

    def to_dict(self) -> dict:
        out = {"id": self.id, "says": self.says, "compare": dict(self.compare), "against": dict(self.against),
               "metric": _metric_dict(self.metric), "expect": self.expect}  # fmt: skip
        if self.margin is not None:
            out["margin"] = self.margin
        if self.source:
            out["source"] = dict(self.source)
        if self.kind != "finding":
            out["kind"] = self.kind
        if self.tune is not None:
            out["tune"] = self.tune.to_dict()
        return out


SPENDING = ("pocock", "obrien-fleming")  # Lan-DeMets alpha-spending functions (evidence/sequential.py)
SEQUENTIAL_KEYS = ("max_seeds", "min_seeds", "spending")


@dataclass(frozen=True)
class Sequential:
    """`sequential:` of a study: the stopping rule `bnbench sweep --until-decided` runs under and `report`
    judges with (evidence/sequential.py). Seeds per claim: at most `max_seeds`, the first look at
    max(declared seeds, `min_seeds`)."""

    max_seeds: int
    min_seeds: int = 3
    spending: str = "pocock"

    def to_dict(self) -> dict:
        return {"max_seeds": self.max_seeds, "min_seeds": self.min_seeds, "spending": self.spending}


@dataclass(frozen=True)
class Replicate:
    """`replicates:` of a study: the study it repeats (its name) and what it changes, e.g. SGD momentum 0.9;
    the report sets the verdicts of the claims both declare (by id) side by side."""

    study: str
    change: str

    def to_dict(self) -> dict:
        return {"study": self.study, "change": self.change}


def parse_replicate(raw: Any, source: str) -> Replicate:
    where = f"{source}: replicates"
    check_keys(raw, ("study", "change"), where, "a mapping {study: NAME, change: WHAT DIFFERS}")
    for key in ("study", "change"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise UsageError(f"{where}: {key}: expected one line of text")
    return Replicate(raw["study"].strip(), raw["change"].strip())


def _count(value: Any, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 10_000:
        raise UsageError(f"{where}: expected a whole number between {low} and 10000, got {value!r}")
    return value


MAX_SEED = 2**32 - 1  # numpy's seeding accepts no more


def parse_sequential(raw: Any, source: str, seeds: tuple[int, ...]) -> Sequential | None:
    """The `sequential:` mapping of a study file with these declared seeds, validated (one UsageError naming
    the key): the seeds it adds (after the declared ones) stay valid seeds."""
    if raw is None:
        return None
    where = f"{source}: sequential"
    check_keys(raw, SEQUENTIAL_KEYS, where)
    if "max_seeds" not in raw:
        raise UsageError(f"{where}: max_seeds is missing (the most seeds any claim may use)")
    max_seeds = _count(raw["max_seeds"], f"{where}: max_seeds", 2)
    min_seeds = _count(raw.get("min_seeds", 3), f"{where}: min_seeds", 2)
    rule = Sequential(max_seeds, min_seeds, raw.get("spending", "pocock"))
    if rule.spending not in SPENDING:
        raise UsageError(f"{where}: spending: {rule.spending!r} is not one of {', '.join(SPENDING)}")
    first = max(len(seeds), rule.min_seeds)
    if rule.max_seeds < first:
        raise UsageError(f"{where}: max_seeds {rule.max_seeds} is below the first look's {first} seeds "
                         f"(the declared seeds and min_seeds)")  # fmt: skip
    if max(seeds) + rule.max_seeds - len(seeds) > MAX_SEED:
        raise UsageError(f"{where}: the seeds added after {max(seeds)} would pass {MAX_SEED}, the largest seed; "
                         "declare smaller seeds")  # fmt: skip
    return rule


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict) or not value:
        raise UsageError(f"{where}: expected a mapping of config keys to values, e.g. {{norm.kind: torch}}")
    for key in value:
        parse_override(f"{key}=0", where)  # the key exists in the config
    return value


def parse_claims(raw: Any, source: str) -> tuple[Claim, ...]:
    """The `claims:` list of a study file, validated: one UsageError naming the claim and the key."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise UsageError(f"{source}: claims: expected a list of claims")
    claims, seen = [], set()
    for i, item in enumerate(raw):
        where = f"{source}: claims[{i}]"
        check_keys(item, CLAIM_KEYS, where)
        for key in ("id", "says", "compare", "against", "expect"):
            if key not in item:
                raise UsageError(f"{where}: {key} is missing")
        claim_id = str(item["id"])
        where = f"{source}: claim {claim_id}"
        if claim_id in seen:
            raise UsageError(f"{where}: two claims have this id")
        seen.add(claim_id)
        expect = item["expect"]
        if expect not in EXPECTS:
            raise UsageError(f"{where}: expect: {expect!r} is not one of {', '.join(EXPECTS)}")
        margin = item.get("margin")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                                   or not 0 < margin < math.inf):  # fmt: skip
            raise UsageError(f"{where}: margin: expected a positive finite number, got {margin!r}")
        kind = item.get("kind", "finding")
        if kind not in KINDS:
            raise UsageError(f"{where}: kind: {kind!r} is not one of {', '.join(KINDS)}")
        source_raw = item.get("source") or {}
        if not isinstance(source_raw, dict):
            raise UsageError(f"{where}: source: expected a mapping, e.g. {{cite: ..., url: ...}}")
        compare = tuple(_mapping(item["compare"], f"{where}: compare").items())
        against = tuple(_mapping(item["against"], f"{where}: against").items())
        metric = _metric(item.get("metric", {}), f"{where}: metric")
        if margin is None:
            why = ("how close counts as the same" if expect in ("equivalent", "not_worse", "different") else
                   "the smallest effect of interest, so that a null can contradict the claim")  # fmt: skip
            raise UsageError(f"{where}: expect {expect} needs a margin > 0 in the metric's units ({why})")
        tune = _tune(item["tune"], f"{where}: tune") if item.get("tune") is not None else None
        claims.append(Claim(claim_id, str(item["says"]), compare, against, metric, expect,
                            float(margin) if margin is not None else None,
                            tuple((str(k), str(v)) for k, v in source_raw.items()), kind, tune))  # fmt: skip
    return tuple(claims)


def _tune(raw: Any, where: str) -> Tune:
    check_keys(raw, ("key", "by", "best"), where, "a mapping, e.g. {key: train.lr, by: {column: val_acc}}")
    if "key" not in raw or "by" not in raw:
        raise UsageError(f"{where}: expected key (a config key, e.g. train.lr) and by (a validation metric)")
    key = str(raw["key"])
    parse_override(f"{key}=0", f"{where}: key")  # a config key, or one line naming the typo
    by = _metric(raw["by"], f"{where}: by")
    if by.column.startswith("test"):
        raise UsageError(f"{where}: by: {by.column}: a choice made on the test set is tested on it too; choose on a "
                         "validation column (val_acc, val_loss: data.val_split)")  # fmt: skip
    if by.layer is not None or by.steps_to is not None or by.against_column or by.minus:
        raise UsageError(f"{where}: by: one validation column at final, {{epoch: N}} or auc (no diagnostic, steps_to, "
                         "against_column or minus)")  # fmt: skip
    best = raw.get("best", "min" if "loss" in by.column else "max")
    if best not in ("max", "min"):
        raise UsageError(f"{where}: best: {best!r} is not one of max, min")
    return Tune(key, by, best)


def _metric(raw: Any, where: str) -> Metric:
    keys = ("column", "against_column", "diagnostic", "layer", "at", "mean_of_last", "steps_to", "auc", "minus")
    check_keys(raw, keys, where, "a mapping, e.g. {column: test_acc, at: final}")
    if "diagnostic" in raw and ("column" in raw or "against_column" in raw or "layer" not in raw):
        raise UsageError(f"{where}: a diagnostic takes a layer (a norm position such as norm2, or last) and no column")
    if "layer" in raw and "diagnostic" not in raw:
        raise UsageError(f"{where}: layer: goes with diagnostic (a diagnostics.csv quantity)")
    column = str(raw.get("diagnostic", raw.get("column", "test_acc")))
    layer = str(raw["layer"]) if "layer" in raw else None
    against = str(raw["against_column"]) if raw.get("against_column") is not None else None
    minus = str(raw["minus"]) if raw.get("minus") is not None else None
    for key, name in (("column", None if layer else column), ("against_column", against), ("minus", minus)):
        if name is not None and name not in RECORDED_COLUMNS:
            raise UsageError(
                f"{where}: {key}: {name!r} is not a column bnbench records ({', '.join(RECORDED_COLUMNS)})"
            )
    if minus is not None and (layer is not None or against is not None or raw.get("steps_to") is not None):
        raise UsageError(f"{where}: minus: subtracts one metrics.csv column from another; not with diagnostic, "
                         "against_column or steps_to")  # fmt: skip
    extra = {"against_column": against, "layer": layer, "minus": minus}
    if raw.get("steps_to") is not None:
        target = raw["steps_to"]
        if isinstance(target, bool) or not isinstance(target, (int, float)) or layer is not None:
            raise UsageError(f"{where}: steps_to: expected a number (of a metrics.csv or steps.csv column)")
        return Metric(column, None, "final", 1, float(target), **extra)
    if raw.get("auc"):
        return Metric(column, None, "final", 1, None, True, **extra)
    at = raw.get("at", "final")
    last = raw.get("mean_of_last", 1)
    if isinstance(last, bool) or not isinstance(last, int) or last < 1:
        raise UsageError(f"{where}: mean_of_last: expected an integer >= 1, got {last!r}")
    if at == "final":
        return Metric(column, "final", "final", last, **extra)
    if isinstance(at, dict) and len(at) == 1 and next(iter(at)) in ("epoch", "step"):
        kind, value = next(iter(at.items()))
        low = 0 if kind == "step" else 1  # step 0: the network as initialized (diagnostics probe it)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"{where}: at.{kind}: expected an integer >= {low}, got {value!r}")
        return Metric(column, value, kind, 1, **extra)
    raise UsageError(f"{where}: at: expected final, {{epoch: N}} or {{step: N}}, got {at!r}")


def matches(flat_config: dict[str, Any], wanted: tuple[tuple[str, Any], ...]) -> bool:
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0)
        return str(list(a) if isinstance(a, tuple) else a) == str(list(b) if isinstance(b, tuple) else b)

    return all(key in flat_config and same(flat_config[key], value) for key, value in wanted)


# --- what the claims were published with ---------------------------------------------------------

PUBLISHED_KEYS = ("source", "setup", "notes", "figures")


@dataclass(frozen=True)
class PublishedFigure:
    """One published number (`value`) or range (`low`..`high`) of a column, for the runs of one arm."""

    arm: tuple[tuple[str, Any], ...]
    column: str
    value: float | None = None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Published:
    source: tuple[tuple[str, str], ...] = ()
    setup: tuple[tuple[str, Any], ...] = ()  # config keys: the published values
    notes: tuple[str, ...] = ()  # what differs beyond config keys
    figures: tuple[PublishedFigure, ...] = ()

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        if self.source:
            out["source"] = dict(self.source)
        if self.setup:
            out["setup"] = dict(self.setup)
        if self.notes:
            out["notes"] = list(self.notes)
        if self.figures:
            out["figures"] = [{"arm": dict(f.arm), "column": f.column}
                              | {k: v for k in ("value", "low", "high") if (v := getattr(f, k)) is not None}
                              for f in self.figures]  # fmt: skip
        return out


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where}: expected a number, got {value!r}")
    return float(value)


def parse_published(raw: Any, source: str) -> Published | None:
    """A study's `published:` mapping, validated: one UsageError naming the key."""
    if raw is None:
        return None
    where = f"{source}: published"
    check_keys(raw, PUBLISHED_KEYS, where)
    cite = raw.get("source") or {}
    if not isinstance(cite, dict):
        raise UsageError(f"{where}.source: expected a mapping, e.g. {{cite: ..., url: ...}}")
    setup = _mapping(raw["setup"], f"{where}.setup") if raw.get("setup") is not None else {}
    notes = raw.get("notes") or []
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise UsageError(f"{where}.notes: expected a list of lines of text")
    figures = []
    for i, item in enumerate(raw.get("figures") or []):
        at = f"{where}.figures[{i}]"
        example = "{arm: {norm.kind: torch}, column: test_acc, value: 0.83} (or low and high for a range)"
        check_keys(item, ("arm", "column", "value", "low", "high"), at, example)
        if "arm" not in item or "column" not in item:
            raise UsageError(f"{at}: expected {example}")
        value = _number(item["value"], f"{at}.value") if "value" in item else None
        low = _number(item["low"], f"{at}.low") if "low" in item else None
        high = _number(item["high"], f"{at}.high") if "high" in item else None
        if (value is None) == (low is None or high is None):
            raise UsageError(f"{at}: give a value, or low and high")
        figures.append(PublishedFigure(tuple(_mapping(item["arm"], f"{at}.arm").items()), str(item["column"]),
                                       value, low, high))  # fmt: skip
    return Published(tuple((str(k), str(v)) for k, v in cite.items()), tuple(setup.items()), tuple(notes),
                     tuple(figures))  # fmt: skip


# --- figures ---------------------------------------------------------------------------------------

PLOTS = ("curves", "sweep", "diagnostics", "layers")
SPEC_KEYS = ("plot", "x", "columns", "column", "lines", "panels", "until", "layer", "step")


@dataclass(frozen=True)
class FigureSpec:
    plot: str = "curves"
    x: str = "epoch"  # curves: epoch or step; sweep: the swept config key
    columns: tuple[str, ...] = ("train_loss", "test_acc")  # curves
    column: str = "test_acc"  # sweep
    lines: tuple[str, ...] = ()  # sweep: the keys a line stands for (default: every other matrix key)
    panels: str | None = None  # a config key: one panel per value
    until: int | None = None  # curves: the last x shown
    layer: str | None = None  # diagnostics
    step: int = 0  # layers: the diagnostic step shown (0: the network as initialized)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"plot": self.plot}
        default = FigureSpec()
        for key in SPEC_KEYS[1:]:
            value = getattr(self, key)
            if value != getattr(default, key):
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def name(self) -> str:
        """The figure's file name inside the report (after the study's name)."""
        if self.plot == "sweep":
            return f"{self.column}_vs_{self.x.rsplit('.', 1)[-1]}"
        if self.plot == "diagnostics":
            return f"diagnostics_{self.layer}"
        if self.plot == "layers":
            return f"{self.column}_by_layer_at_step_{self.step}"
        return f"curves_by_{self.x}" + (f"_{'_'.join(self.columns)}" if self.columns != FigureSpec.columns else "")


def parse_figures(raw: Any, source: str) -> tuple[FigureSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise UsageError(f"{source}: figures: expected a list, e.g. [{{plot: curves}}]")
    specs = []
    for i, item in enumerate(raw):
        where = f"{source}: figures[{i}]"
        check_keys(item, SPEC_KEYS, where)
        if item.get("plot") not in PLOTS:
            raise UsageError(f"{where}: plot: expected one of {' | '.join(PLOTS)}")
        plot = item["plot"]
        lines = item.get("lines", [])
        lines = [lines] if isinstance(lines, str) else lines
        keys = [*lines, *([item["panels"]] if item.get("panels") else [])]
        if plot == "sweep":
            if "x" not in item:
                raise UsageError(f"{where}: a sweep names its x: a config key the study varies, e.g. train.lr")
            keys.append(item["x"])
        for key in keys:
            parse_override(f"{key}=0", where)  # a config key that exists
        if plot == "curves" and item.get("x", "epoch") not in ("epoch", "step"):
            raise UsageError(f"{where}: x: curves are drawn by epoch or by step")
        if plot == "diagnostics" and not item.get("layer"):
            raise UsageError(f"{where}: a diagnostics figure names its layer (a norm position, e.g. norm2)")
        until = item.get("until")
        if until is not None and (isinstance(until, bool) or not isinstance(until, int) or until < 1):
            raise UsageError(f"{where}: until: expected an integer >= 1")
        columns = item.get("columns", list(FigureSpec.columns))
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
            raise UsageError(f"{where}: columns: expected a list of metric names, e.g. [train_loss, test_acc]")
        step = item.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise UsageError(f"{where}: step: expected an integer >= 0")
        x, column = str(item.get("x", "epoch")), str(item.get("column", "test_acc"))
        specs.append(FigureSpec(plot, x, tuple(columns), column, tuple(str(k) for k in lines), item.get("panels"),
                                until, item.get("layer"), step))  # fmt: skip
    return tuple(specs)
