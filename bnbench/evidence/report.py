"""`bnbench report STUDY_DIR... --out docs/results`: the evidence, generated from run directories only.

One engine for any study, shipped or a user's own; nothing here knows a study by name. Per study: the
question, the command that ran it, the published setup and every way the runs differ from it, a table of
its cells over seeds, the figures its study file asks for (figures.py), the published figures beside
bnbench's, and a verdict for every claim it declares (claims.py), Holm-adjusted within the study.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bnbench.errors import UsageError
from bnbench.evidence.claims import ALPHA, Judged, Published, deviations, holm, matches, verdict
from bnbench.evidence.compare import Run, find_runs, flat
from bnbench.evidence.figures import DRAW, FigureSpec, cell_label
from bnbench.evidence.sequential import judge_study, own_runs, rule_text
from bnbench.evidence.stats import one_per_seed
from bnbench.evidence.tables import is_numeric
from bnbench.naming import format_value
from bnbench.records import atomic_write
from bnbench.runs.specs import Sequential
from bnbench.runs.study import SHIPPED_CONFIGS, STUDY_FILE, Study, load_study, study_differences

REPORT_MARKER = ".bnbench-report"  # the files bnbench wrote in a report folder, one per line
VERDICT_MARKS = {"supported": "supported", "contradicted": "**contradicted**", "inconclusive": "inconclusive"}


@dataclass
class StudyRuns:
    name: str
    path: Path
    study: Study
    runs: list[Run]

    @property
    def keys(self) -> list[str]:
        """The matrix keys, in the study's order (keys that vary together each count)."""
        return [k for keys, _ in self.study.matrix for k in keys.split(",")]

    def cells(self) -> dict[tuple, list[Run]]:
        """Runs by their matrix values, in the order the study lists them."""
        order = {}
        for planned in self.study.runs():
            values = flat(planned.config.to_dict())
            order.setdefault(tuple(_hashable(values.get(k)) for k in self.keys), len(order))
        out: dict[tuple, list[Run]] = {}
        for run in self.runs:
            values = flat(run.config)
            out.setdefault(tuple(_hashable(values.get(k)) for k in self.keys), []).append(run)
        return dict(sorted(out.items(), key=lambda item: order.get(item[0], len(order))))


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


# --- figures as text --------------------------------------------------------------------------------------


def figure(value: float, digits: int = 4) -> str:
    if not (value == value):
        return "–"
    if math.isinf(value):
        return "never"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def p_text(p: float) -> str:
    if not (p == p):
        return "–"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def mean_std(values: list[float], digits: int = 3) -> str:
    finite = [v for v in values if v == v]
    if not finite:
        return "–"
    text = f"{statistics.fmean(finite):,.{digits}f}"
    text += f" ± {statistics.stdev(finite):,.{digits}f}" if len(finite) > 1 else ""
    return text + (f" (n={len(finite)})" if len(finite) != len(values) else "")


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table; columns of figures are right-aligned; a `|` in a value stays inside its cell."""

    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    cells = [[cell(v) for v in row] for row in rows]
    rule = ["---:" if i and is_numeric([r[i] for r in cells]) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def final(run: Run, column: str = "test_acc") -> float:
    values = run.table.get(column) or []
    return float(values[-1]) if values else math.nan


def last_change(run: Run, column: str = "test_acc") -> float:
    """How much the last epoch moved a column: near zero when a run has converged."""
    values = run.table.get(column) or []
    return float(values[-1] - values[-2]) if len(values) > 1 else math.nan


def statuses(runs: list[Run]) -> str:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


# --- one study's section ----------------------------------------------------------------------------------


def cells_table(s: StudyRuns) -> list[str]:
    """Per cell: seeds, status, final train loss / train acc / test acc (mean ± std), the test accuracy's
    range and its change over the last epoch (has training converged?), and batch-statistics accuracy."""
    cells = s.cells()
    batch = any("test_acc_batch_stats" in r.table for r in s.runs)
    rows = []
    for cell, members in cells.items():
        kept = list(one_per_seed([r for r in members if r.status in ("completed", "diverged")])[0].values())
        done = [r for r in kept if r.status == "completed"]  # a seed once; a diverged run has no final figures
        acc = [final(r) for r in done]
        finite = [a for a in acc if a == a]
        row = [cell_label(s.keys, cell) if s.keys else s.name, len(kept), statuses(members),
               mean_std([final(r, "train_loss") for r in done]), mean_std([final(r, "train_acc") for r in done]),
               mean_std(acc), f"{min(finite):.3f}–{max(finite):.3f}" if finite else "–",
               mean_std([last_change(r) for r in done], 4)]  # fmt: skip
        if batch:
            row.append(mean_std([final(r, "test_acc_batch_stats") for r in done]))
        rows.append(row)
    header = ["cell", "seeds", "status", "final train loss", "final train acc", "final test acc", "test acc range",
              "test acc change, last epoch"] + (["final test acc, batch statistics"] if batch else [])  # fmt: skip
    return [
        "Every cell over its seeds (each seed once: the most recent of repeated runs), mean ± std over the "
        "completed runs; failed and diverged runs are counted in the status, not in the figures. The last "
        "epoch's change in test accuracy says whether training had converged.",
        "",
        table(header, rows),
        "",
    ]


def published_lines(published: Published | None, s: StudyRuns) -> list[str]:
    """The published source and setup, every way these runs differ from it, and published figures beside
    bnbench's seeds."""
    if published is None:
        return []
    lines = []
    cite = _cite(dict(published.source))
    setup = ", ".join(f"{k}={format_value(v)}" for k, v in published.setup)
    if cite or setup:
        lines += [f"Published: {cite or 'no source named'}" + (f"; setup {setup}." if setup else "."), ""]
    claims = s.study.claims or (None,)  # no claims: the deviations of all runs
    every = list(dict.fromkeys(d for claim in claims for d in deviations(published, claim, s.runs)))
    if every:
        lines += ["Deviations from the published setup (beside every verdict below):", ""]
        lines += [f"- {d}" for d in every] + [""]
    if published.figures:
        rows = []
        for item in published.figures:
            members = [r for r in s.runs if r.status == "completed" and matches(flat(r.config), item.arm)]
            values = [final(r, item.column) for r in members]
            finite = [v for v in values if v == v]
            if item.value is not None:
                shown_value = figure(item.value, 3)
                inside = "–" if not finite else ("yes" if min(finite) <= item.value <= max(finite) else "no")
            else:
                shown_value = f"{item.low:g}–{item.high:g}"
                inside = "–" if not finite else f"{sum(item.low <= v <= item.high for v in finite)}/{len(finite)} seeds"
            spread = f"{min(finite):.3f}–{max(finite):.3f}" if finite else "–"
            rows.append([_arm(item.arm), item.column, shown_value, mean_std(values), spread, inside])
        lines += [
            "Published figures beside bnbench's seeds (a published single run inside the seeds' range is "
            "what the spread over seeds allows):",
            "",
            table(
                ["arm", "column", "published", "bnbench (mean ± std)", "bnbench range", "published within range"], rows
            ),  # fmt: skip
            "",
        ]
    return lines


def _cite(source: dict) -> str:
    cite = source.get("cite", "")
    return f"[{cite or 'source'}]({source['url']})" if source.get("url") else cite


def figure_lines(s: StudyRuns, out: Path, written: list[str]) -> list[str]:
    specs = s.study.figures or (FigureSpec(),)
    lines = []
    completed = [r for members in s.cells().values() for r in members if r.table.get("epoch")]  # the study's order
    for spec in specs:
        name = file_name(f"{s.name}_{spec.name}") + ".png"
        notes = DRAW[spec.plot](completed, spec, s.keys, out / name)
        written.append(name)
        caption = {"curves": f"{', '.join(spec.columns)} by {spec.x}", "sweep": f"final {spec.column} by {spec.x}",
                   "diagnostics": f"what the norm does at {spec.layer}",
                   "layers": f"{spec.column} by layer at step {spec.step}"}[spec.plot]  # fmt: skip
        lines += [f"![{s.name}: {caption}]({name})", ""]
        if notes:
            lines += ["In this figure " + "; ".join(notes) + " (one line lies under the other).", ""]
    return lines


def file_name(text: str) -> str:
    """A name from a study file (its name, figure columns, layers) as one file name inside the report
    folder: letters, digits, '.', '_', '-' only, never leading '.', so it cannot name a path outside."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".") or "figure"


def claims_lines(judged: list[Judged], published: Published | None, runs: list[Run], rule: Sequential | None = None
                 ) -> list[str]:  # fmt: skip
    """The declared claims of one study: one table of verdicts, then what each rests on."""
    family = sum(j.effect is not None and j.claim.expect in ("greater", "less", "different") for j in judged)
    if rule is not None:
        intro = (
            f"Judged look by look under the study's sequential rule: repeated confidence intervals (Jennison & "
            f"Turnbull 1989) with {rule.spending} alpha-spending (Lan & DeMets 1983) over at most {rule.max_seeds} "
            f"seeds per claim; each difference claim spends {ALPHA}/{family} (Bonferroni over this study's "
            f"{family} difference claims), an equivalence claim {2 * ALPHA} (TOST). The interval shown is the one "
            "that decided, at its look's nominal level; a claim keeps the verdict of the first look that decided "
            "it. Effect = the first arm minus the second over seeds, paired by seed."
        )
    else:
        intro = (
            f"Effect = the first arm minus the second over seeds, paired by seed on the seeds the arms share (mean "
            f"difference, t interval; Hodges-Lehmann estimate with its exact interval where a rank test decides: "
            f"steps to a target, a diverged run, or no spread), with the interval that decides: 95% for greater, "
            f"less and not_worse, 90% (TOST) for equivalent. p two-sided, Holm-adjusted over this study's {family} "
            f"difference claims; every difference claim names its smallest effect of interest (margin): supported "
            f"needs the interval on the claimed side and adjusted p < {ALPHA}, contradicted that the interval lies "
            "below the margin. An inconclusive difference row gives the smallest effect this design detects with "
            "80% power at the Holm level: a test that misses p < 0.05 is not evidence against a claim. Checks are "
            "true by construction (the same computation two ways) and are counted apart from findings."
        )
    lines = ["### Claims", "", intro, ""]
    rows = []
    for j in judged:
        e = j.effect
        digits = 0 if j.claim.metric.discrete else 4  # steps are counts
        detail = "" if e is None else f"{e.test}, n {e.n}{' pairs' if e.paired else ''}"
        detail = f"{detail}; {j.note}" if j.note else detail
        if (j.verdict == "inconclusive" and e is not None and e.detectable == e.detectable
                and j.claim.expect in ("greater", "less", "different")):  # fmt: skip
            detail += f"; detectable: ±{figure(e.detectable, digits)}"
        if j.claim.margin is not None:
            detail += f"; margin {j.claim.margin:g}"
        if j.look:
            detail += f"; {'decided' if j.verdict != 'inconclusive' else 'undecided'} at look {j.look}"
            detail += " (at the budget of seeds)" if j.at_budget else ""
        if j.claim.kind == "check":
            detail += "; a check (true by construction)"
        if j.diverged:
            detail += f"; {j.diverged} diverged run(s) counted at their worst value"
        if j.dropped:
            detail += "; left out: " + "; ".join(j.dropped)
        arms = f"{_arm(j.claim.compare)} vs {_arm(j.claim.against)}"
        means = " vs ".join(_mean(j.arms.get(side, []), digits) for side in ("compare", "against"))
        rows.append([f"**{j.claim.id}**: {j.claim.says}", arms, j.claim.metric.describe(), means, j.claim.expect,
                     effect_text(j), "–" if e is None else p_text(e.p), p_text(j.p_adjusted), VERDICT_MARKS[j.verdict],
                     detail.strip("; "), "; ".join(deviations(published, j.claim, runs)) or "none",
                     _cite(dict(j.claim.source)) or "–"])  # fmt: skip
    header = ["claim", "arms", "metric", "means", "expect", "effect [CI]", "p", "Holm p", "verdict", "test",
              "deviations from the published setup", "source"]  # fmt: skip
    return lines + [table(header, rows), ""]


def effect_text(j: Judged) -> str:
    """`0.0356 [0.0302, 0.0411]`: the effect and the interval that decides its verdict (Judged.interval), its
    level marked where it is not 95% (`(90%)`: TOST; under a sequential rule the look's nominal level, e.g.
    `(98.4%)`); steps to a target in whole steps."""
    e, digits = j.effect, 0 if j.claim.metric.discrete else 4
    if e is None:
        return "–"
    low, high, level = j.interval()

    def bound(value: float) -> str:  # an infinite bound is no bound (an exact rank test on too few seeds)
        return ("-∞" if value < 0 else "∞") if math.isinf(value) else figure(value, digits)

    shown_level = "" if abs(level - 0.95) < 1e-12 else f" ({100 * level:.3g}%)"  # 90%: TOST; a look's own level
    return f"{figure(e.estimate, digits)} [{bound(low)}, {bound(high)}]{shown_level}"


def headline(verdicts: list[Judged]) -> str:
    """`N findings (a supported, ...), M checks (...)`: findings counted with Holm's correction over every
    difference finding of the report (not only its study), checks apart."""
    findings = [j for j in verdicts if j.claim.kind != "check"]
    checks = [j for j in verdicts if j.claim.kind == "check"]
    family = [
        j
        for j in findings
        if j.effect is not None and j.claim.expect in ("greater", "less", "different") and not j.look
    ]  # fmt: skip  (a sequential verdict stands: its study split its own alpha)
    wide = dict(zip(map(id, family), holm([j.effect.p for j in family]), strict=True))
    overall = [verdict(j.claim, j.effect, wide.get(id(j), j.effect.p)) if j.effect is not None and not j.look
               else j.verdict for j in findings]  # fmt: skip
    sequential = sum(bool(j.look) for j in findings)

    def counts(values: list[str]) -> str:
        return ", ".join(f"{values.count(v)} {v}" for v in VERDICT_MARKS)

    how = [f"Holm-corrected over the report's {len(family)} fixed-design difference findings"] * bool(family)
    how += [f"{sequential} under their study's sequential rule"] * bool(sequential)
    return (
        f"{len(findings)} findings ({counts(overall)}{'; ' if how else ''}{'; '.join(how)}), "
        f"{len(checks)} checks ({counts([j.verdict for j in checks])})"
    )


def _mean(values: list[float], digits: int) -> str:
    """The mean of the finite values, and how many were not (never reached, or a diverged loss)."""
    finite = [v for v in values if math.isfinite(v)]
    mean = figure(statistics.fmean(finite), digits) if finite else "–"
    return mean + (f" (+{len(values) - len(finite)} ∞)" if len(finite) < len(values) else "")


def _arm(values: tuple) -> str:
    return cell_label([k for k, _ in values], tuple(v for _, v in values))


# --- assembly ---------------------------------------------------------------------------------------------


def load_study_runs(folder: Path) -> tuple[StudyRuns, list[str]]:
    if not (folder / STUDY_FILE).is_file():
        raise UsageError(f"{folder}: not a study folder (no {STUDY_FILE}; run `bnbench sweep` first)")
    study = load_study(folder)
    runs, warnings = find_runs([folder])  # all of them: a run that diverged before its first epoch still counts
    runs, strays = own_runs(study, runs)
    warnings += strays
    if not any(r.table.get("epoch") for r in runs):
        raise UsageError(f"{folder}: no run in this study has recorded an epoch yet")
    return StudyRuns(study.name, folder, study, runs), warnings


def _time(text: object) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)  # naive: taken as UTC


def wall_minutes(runs: list[Run]) -> float:
    """The minutes during which at least one of the runs was running: the union of their spans, each from
    its last start (resumed_at, else started_at) to its end. A sweep run in one go: first start to last end;
    a study stopped and resumed in a later session: the time between the sessions does not count (nor the
    part a resumed run trained before its stop: at most the runs in flight when it stopped)."""
    spans = []
    for run in runs:
        resumed = run.meta.get("resumed_at") or []
        start = _time(resumed[-1] if resumed and isinstance(resumed[-1], str) else run.meta.get("started_at"))
        end = _time(run.meta.get("ended_at") or run.meta.get("updated_at"))
        if start is not None and end is not None and end >= start:
            spans.append((start, end))
    if not spans:
        return math.nan
    total, (current_start, current_end) = 0.0, sorted(spans)[0]
    for start, end in sorted(spans)[1:]:
        if start > current_end:
            total += (current_end - current_start).total_seconds()
            current_start = start
        current_end = max(current_end, end)
    return (total + (current_end - current_start).total_seconds()) / 60


def shown(path: Path) -> str:
    """A path as the report prints it: relative to the working folder where it lies inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def command_of(s: StudyRuns) -> str:
    """The command that runs the study again (a user's own study: its folder, which `sweep` re-runs)."""
    target = f"configs/studies/{s.name}.yaml" if _shipped(s) else shown(s.path)
    return f"bnbench sweep {target}"  # the data folder as the user has it: --data-dir or BNBENCH_DATA_DIR


def recorded_commands(s: StudyRuns) -> list[str]:
    """The commands the runs' meta.json recorded, paths inside the working folder made relative."""
    found = []
    for run in s.runs:
        words = str(run.meta.get("command") or "").split()
        text = " ".join(shown(Path(w)) if w.startswith("/") else w for w in words)
        if text and text not in found:
            found.append(text)
    return found


def section(s: StudyRuns, out: Path, written: list[str]) -> tuple[list[str], list[Judged]]:
    """One study's part of the report, and its judged claims."""
    lines = ["", f"## {s.name}", ""]
    if s.study.question:
        lines += [f"*{s.study.question}*", ""]
    lines += ["```", command_of(s), "```", ""]
    recorded = recorded_commands(s)
    if recorded:
        lines += ["Recorded in the runs' meta.json: " + "; ".join(f"`{c}`" for c in recorded[:3]), ""]
    fixed = ", ".join(f"{k}={format_value(v)}" for k, v in s.study.fixed) or "none"
    lines += [f"Seeds {', '.join(str(x) for x in s.study.seeds)}; set for every run: {fixed}.", ""]
    if s.study.sequential is not None:
        lines += [f"Seeds until decided (`bnbench sweep {s.name} --until-decided`, docs/sweep.md): "
                  f"{rule_text(s.study.sequential, len(s.study.seeds))}; new seeds continue after "
                  f"{max(s.study.seeds)} in the cells of undecided claims.", ""]  # fmt: skip
    lines += published_lines(s.study.published, s)
    lines += cells_table(s)
    lines += figure_lines(s, out, written)
    judged = judge_study(s.study, s.runs)
    if judged:
        lines += claims_lines(judged, s.study.published, s.runs, s.study.sequential)
    return lines, judged


def report(folders: list[Path], out: Path) -> Path:
    """Write `out/README.md` and its figures from the study folders; returns the README's path."""
    return write_report(folders, out)[0]


VERDICT_HEADER = ["claim", "verdict", "effect [CI]", "study", "says"]


def regenerate_command(folders: list[Path], out: Path) -> str:
    """The command that writes this report again (for the shipped studies' full set, `make results` too)."""
    return f"bnbench report {' '.join(shown(f) for f in folders)} --out {shown(out)}"


def write_report(folders: list[Path], out: Path) -> tuple[Path, list[list[str]], list[str]]:
    """Write `out/README.md` and its figures from the study folders; returns the README's path and one row
    per judged claim (VERDICT_HEADER: claim id, verdict, effect [CI], study, what it says), for the
    terminal, and the runs left out (damaged, or not the study's), each one line."""
    loaded, warnings = [], []
    for folder in folders:
        s, w = load_study_runs(folder)
        loaded.append(s)
        warnings += w
    names = [s.name for s in loaded]
    if len(set(names)) != len(names):
        raise UsageError(f"two study folders hold the same study: {', '.join(n for n in names if names.count(n) > 1)}")
    before = claim_output(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = ["README.md"]
    sections, verdicts = [], []
    for s in loaded:
        lines, judged = section(s, out, written)
        sections += lines
        verdicts += [(s, j) for j in judged]
    for name in set(before) - set(written):  # bnbench's own figure that no study draws any more
        if _content_hash(out / name) == before[name]:  # and still the bytes it wrote: otherwise not touched
            (out / name).unlink()
    all_runs = [r for s in loaded for r in s.runs]
    machines = sorted({str(r.meta.get("device_name", "?")) for r in all_runs})
    versions = sorted({f"torch {r.meta.get('versions', {}).get('torch', '?')}" for r in all_runs})
    commits = sorted({str(r.meta.get("git_commit") or "?")[:10] for r in all_runs})
    total = sum(m for s in loaded if not math.isnan(m := wall_minutes(s.runs)))
    lines = [
        "# Results: what Batch Normalization did on this data",
        "",
        f"Generated by `bnbench report` from run directories only (regenerate: `{regenerate_command(folders, out)}`"
        + ("; the shipped studies' full set: `make results`" if all(_shipped(s) for s in loaded) else "")
        + "). Each study file "
        "declares the claims it tests, their published source and setup; one engine judges every claim of every "
        "study: the effect (first arm minus second, paired by seed on the seeds the arms share) with the interval "
        f"that decides (95%; 90% for equivalence) and Holm-adjusted p within the study. **supported**: the "
        f"interval lies on the claimed side and adjusted p < {ALPHA}; **contradicted**: the interval rules out "
        "the smallest effect of interest (margin) every claim declares; **inconclusive**: neither (with the "
        "smallest effect the design could detect). The counts below are corrected over the whole report. A "
        "study run until decided (`bnbench sweep --until-decided`, docs/sweep.md) is judged look by look with "
        "repeated intervals instead, Bonferroni within the study; its section says so.",
        "",
        f"Machine: {', '.join(machines)}; {', '.join(versions)}; bnbench commit {', '.join(commits)}. "
        f"Studies' wall time (minutes in which a run of the study was running, summed): {total:.0f} min.",
        "",
        table(
            ["study", "question", "runs", "status", "wall time"],
            [
                [
                    f"[{s.name}](#{s.name})",
                    s.study.question,
                    len(s.runs),
                    statuses(s.runs),
                    f"{wall_minutes(s.runs):.1f} min",
                ]
                for s in loaded
            ],
        ),  # fmt: skip
        "",
        "## Verdicts",
        "",
        headline([j for _, j in verdicts]) + ".",
        "",
        table(
            ["study", "claim", "verdict", "effect [CI]", "Holm p", "deviations from the published setup"],
            [
                [
                    f"[{s.name}](#{s.name})",
                    f"{j.claim.id}: {j.claim.says}",
                    VERDICT_MARKS[j.verdict],
                    effect_text(j),
                    p_text(j.p_adjusted),
                    "; ".join(deviations(s.study.published, j.claim, s.runs)) or "none",
                ]
                for s, j in verdicts
            ],
        ),  # fmt: skip
        "",
    ]
    lines += replicate_lines(loaded, verdicts)
    lines += sections
    if warnings:
        lines += ["", "## Skipped", ""] + [f"- {w}" for w in warnings]
    path = out / "README.md"
    atomic_write(path, "\n".join(lines).rstrip() + "\n")
    atomic_write(out / REPORT_MARKER, "".join(f"{_content_hash(out / name)}  {name}\n" for name in written))
    rows = [[j.claim.id, j.verdict, effect_text(j), s.name, j.claim.says] for s, j in verdicts]
    return path, rows, warnings


def replicate_lines(loaded: list[StudyRuns], verdicts: list[tuple[StudyRuns, Judged]]) -> list[str]:
    """A table per study that replicates another one in the report (`replicates:`): each claim both declare
    (by id), its verdict and effect there and here, and whether the change (e.g. momentum) changed it."""
    by_study = {(s.name, j.claim.id): j for s, j in verdicts}
    names = {s.name for s in loaded}
    lines: list[str] = []
    for s in loaded:
        rep = s.study.replicates
        if rep is None or rep.study not in names:
            continue
        rows = []
        for claim in s.study.claims:
            original, here = by_study.get((rep.study, claim.id)), by_study.get((s.name, claim.id))
            if original is None or here is None:
                continue
            same = "same" if original.verdict == here.verdict else "**changed**"
            rows.append([claim.id, f"{VERDICT_MARKS[original.verdict]} {effect_text(original)}",
                         f"{VERDICT_MARKS[here.verdict]} {effect_text(here)}", same])  # fmt: skip
        if rows:
            changed = sum(r[-1] != "same" for r in rows)
            lines += [f"## {s.name}: {rep.study} with {rep.change}", "",
                      f"{changed} of {len(rows)} verdicts change with {rep.change}.", "",
                      table(["claim", rep.study, s.name, "verdict"], rows), ""]  # fmt: skip
    return lines


def _shipped(s: StudyRuns) -> bool:
    """A shipped study as shipped (not run with --set, --epochs or under another matrix)."""
    path = SHIPPED_CONFIGS / "studies" / f"{s.name}.yaml"
    if not path.is_file():
        return False
    try:
        return not study_differences(s.study, load_study(path))
    except UsageError:
        return False


def _content_hash(path: Path) -> str | None:
    """sha256 of a regular file's bytes; None for a link, a missing or a special file (never read)."""
    import hashlib
    import stat

    try:
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def claim_output(out: Path) -> dict[str, str]:
    """The files an earlier report wrote in `out`, name -> the sha256 of the bytes it wrote (a stale one is
    removed only while its content still has that hash: the record cannot make bnbench delete a file it
    did not write). A folder that holds anything else and no record is not bnbench's: refused, nothing
    written; so is a folder that is a link (its files would land wherever the link points)."""
    for parent in out.parents:  # --out FILE/sub: say so before any work
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {out}: {parent} is not a folder")
            break
    if out.is_symlink():
        raise UsageError(f"--out {out}: is a link; bnbench writes a report only into a real folder")
    if not out.exists():
        return {}
    if not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    marker = out / REPORT_MARKER
    if marker.is_file() and not marker.is_symlink():
        recorded = {}
        for line in marker.read_text(errors="replace").splitlines():
            digest, _, name = line.strip().partition("  ")
            if name.endswith(".png") and name == file_name(name) and len(digest) == 64:  # only figures go stale
                recorded[name] = digest
        return recorded
    if any(out.iterdir()):
        raise UsageError(f"--out {out}: the folder holds files that bnbench did not write; give a new or empty folder")
    return {}


def default_output(folders: list[Path]) -> Path:
    """Beside the study: STUDY/report, or for several studies, report/ in their common folder."""
    if len(folders) == 1:
        return folders[0] / "report"
    import os

    return Path(os.path.commonpath([str(f.resolve()) for f in folders])) / "report"
