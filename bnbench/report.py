"""`bnbench report STUDY_DIR... --out docs/results`: the evidence, generated from run directories only.

Per study: the question, the command that ran it, tables over seeds (mean ± std, differences against no
norm with Welch p-values, epochs to target), figures, the published figures beside (from
`published.yaml`, the one hand-typed input, each with its source) and a verdict computed from the numbers.
A study this module has no section for gets the generic one: seed groups and training curves.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from bnbench.compare import Run, find_runs, flat, summarize, welch_p
from bnbench.errors import UsageError
from bnbench.records import atomic_write
from bnbench.study import SHIPPED_CONFIGS, STUDY_FILE, Study, format_value, load_study
from bnbench.tables import is_numeric

PUBLISHED = Path(__file__).with_name("published.yaml")
SIGNIFICANT = 0.05
NORM_NAMES = {
    "none": "no norm",
    "scratch": "hand-written BN",
    "torch": "nn.BatchNorm",
    "layer": "LayerNorm",
    "torch_layer": "nn.LayerNorm",
    "group": "GroupNorm",
    "torch_group": "nn.GroupNorm",
    "ghost": "ghost BN",
    "renorm": "batch renorm",
}


@dataclass
class StudyRuns:
    name: str
    path: Path
    study: Study
    runs: list[Run]

    def order(self, key: str) -> Callable[[object], tuple]:
        """Sort values of `key` as the study's matrix lists them (numbers numerically otherwise)."""
        listed: list = []
        for keys, values in self.study.matrix:
            if key in keys.split(","):
                i = keys.split(",").index(key)
                listed = [v[i] if "," in keys else v for v in values]
        return lambda v: (listed.index(v), 0, "") if v in listed else (len(listed), 0 if _is_num(v) else 1, v)

    def split(self, *keys: str) -> dict[tuple, list[Run]]:
        """Runs by their values of `keys`, in the study's order."""
        out: dict[tuple, list[Run]] = {}
        for run in self.runs:
            out.setdefault(tuple(value(run, k) for k in keys), []).append(run)
        orders = [self.order(k) for k in keys]
        return dict(sorted(out.items(), key=lambda item: [o(v) for o, v in zip(orders, item[0], strict=True)]))

    def values(self, key: str) -> list:
        return sorted({value(r, key) for r in self.runs}, key=self.order(key))


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def value(run: Run, key: str) -> object:
    v = flat(run.config).get(key)
    return tuple(v) if isinstance(v, list) else v


def final(run: Run, column: str = "test_acc") -> float:
    m = run.metrics
    return float(m[column].iloc[-1]) if column in m and len(m) else math.nan


def at_epoch(run: Run, epoch: int, column: str = "test_acc") -> float:
    m = run.metrics[run.metrics["epoch"] == epoch] if len(run.metrics) else run.metrics
    return float(m[column].iloc[0]) if column in m and len(m) else math.nan


def stats(values: list[float]) -> tuple[float, float, int]:
    s = pd.Series(values, dtype=float).dropna()
    return (s.mean() if len(s) else math.nan, s.std(ddof=1) if len(s) > 1 else math.nan, len(s))


def mean_std(values: list[float], digits: int = 3) -> str:
    mean, std, n = stats(values)
    if n == 0:
        return "–"
    text = f"{mean:,.{digits}f}" + (f" ± {std:,.{digits}f}" if not math.isnan(std) else "")
    return text + (f" (n={n})" if n != len(values) else "")


def why_not(a: list[float], b: list[float]) -> str:
    """Where a difference is not significant: say whether the seeds' spread is the likely reason."""
    difference, spread = stats(a)[0] - stats(b)[0], max(stats(a)[1], stats(b)[1])
    if math.isnan(difference) or math.isnan(spread) or abs(difference) >= spread:
        return ""
    return f"; the difference ({difference:+.4f}) is within the seed spread (std up to {spread:.4f})"


def p_value(a: list[float], b: list[float]) -> float:
    """Welch's p over the values that are numbers; NaN with fewer than two a side."""
    a, b = [x for x in a if not math.isnan(x)], [x for x in b if not math.isnan(x)]
    return welch_p(a, b) if len(a) >= 2 and len(b) >= 2 else math.nan


def p_text(a: list[float], b: list[float]) -> str:
    p = p_value(a, b)
    return "–" if math.isnan(p) else (f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}")


def delta(a: list[float], b: list[float], digits: int = 3) -> str:
    d = stats(a)[0] - stats(b)[0]
    return "–" if math.isnan(d) else f"{d:+.{digits}f}"


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table; columns of figures are right-aligned."""

    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    cells = [[cell(v) for v in row] for row in rows]
    rule = ["---:" if i and is_numeric([r[i] for r in cells]) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def norm_name(kind: object) -> str:
    return NORM_NAMES.get(str(kind), str(kind))


def statuses(runs: list[Run]) -> str:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def diverged(runs: list[Run]) -> int:
    return sum(r.status == "diverged" for r in runs)


class Section:
    """One study's part of the report: markdown lines, figures written next to the report, verdicts."""

    def __init__(self, s: StudyRuns, out: Path, published: dict) -> None:
        self.s, self.out, self.published = s, out, published
        self.lines: list[str] = []
        self.verdicts: list[str] = []
        self.written: list[str] = []  # figure files, for the report folder's marker

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def verdict(self, text: str) -> None:
        self.verdicts.append(text)

    def figure(self, name: str, draw: Callable[[Path], None], caption: str) -> None:
        path = self.out / f"{self.s.name}_{name}.png"
        draw(path)
        self.written.append(path.name)
        self.add(f"![{caption}]({path.name})", "")


def _plt():
    from bnbench.plots import _pyplot

    return _pyplot()


def curves_figure(groups: dict[str, list[Run]], path: Path, x: str = "epoch", xlabel: str = "epoch") -> None:
    """Test accuracy per epoch, mean ± std over seeds, a line per group."""
    from bnbench.plots import _style

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, members) in enumerate(groups.items()):
        for ax, column in zip(axes, ("train_loss", "test_acc"), strict=True):
            frames = [r.metrics for r in members if len(r.metrics) and column in r.metrics]
            if not frames:
                continue
            if x == "step":  # each epoch's figures at the step that ended it
                frames = [
                    r.metrics.assign(step=r.metrics["epoch"] * (r.steps["step"].max() / r.metrics["epoch"].max()))
                    for r in members
                    if len(r.metrics) and len(r.steps)
                ]
            frame = pd.concat(frames)
            g = frame.groupby(x)[column].agg(["mean", "std"])
            ax.plot(g.index, g["mean"], label=f"{label} (n={len(members)})", **_style(i))
            ax.fill_between(
                g.index,
                g["mean"] - g["std"].fillna(0),
                g["mean"] + g["std"].fillna(0),
                color=_style(i)["color"],
                alpha=0.2,
                linewidth=0,
            )
    axes[0].set_yscale("log")
    for ax, title in zip(axes, ("train loss (epoch mean)", "test accuracy"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sweep_figure(panels: dict[str, dict[str, dict[float, list[float]]]], path: Path, xlabel: str, log2: bool) -> None:
    """Accuracy against a swept number: a panel per model, a line per norm, error bars over seeds."""
    from bnbench.plots import _style

    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for i, (label, points) in enumerate(lines.items()):
            xs = sorted(points)
            means = [stats(points[x])[0] for x in xs]
            stds = [0 if math.isnan(stats(points[x])[1]) else stats(points[x])[1] for x in xs]
            ax.errorbar(xs, means, yerr=stds, label=label, capsize=3, **_style(i))
        ax.set_xscale("log", base=2 if log2 else 10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final test accuracy")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# The sections --------------------------------------------------------------------------------------------


def norms_table(sec: Section, by_norm: dict[tuple, list[Run]], extra: list[tuple[str, Callable[[Run], float]]]) -> None:
    """Per norm: final train loss, train and test accuracy, and the test accuracy's difference to no norm."""
    base = next((ms for (k,), ms in by_norm.items() if k == "none"), None)
    rows = []
    for (kind,), members in by_norm.items():
        acc = [final(r) for r in members]
        row = [
            norm_name(kind),
            len(members),
            mean_std([final(r, "train_loss") for r in members]),
            mean_std([final(r, "train_acc") for r in members]),
            mean_std(acc),
            f"{min(acc):.3f}–{max(acc):.3f}",
        ]
        row += [mean_std([f(r) for r in members]) for _, f in extra]
        if base is not None and kind != "none":
            row += [delta(acc, [final(r) for r in base]), p_text(acc, [final(r) for r in base])]
        else:
            row += ["", ""]
        rows.append(row)
    header = ["norm", "seeds", "final train loss", "final train acc", "final test acc", "test acc range"]
    header += [name for name, _ in extra] + ["Δ test acc vs none", "p"]
    sec.add(table(header, rows), "")


def lenet_norms(sec: Section) -> None:
    s, pub = sec.s, sec.published
    by_norm = s.split("norm.kind")
    norms_table(sec, by_norm, [("test acc, epoch 1", lambda r: at_epoch(r, 1))])
    if pub.get("runs") or pub.get("ranges"):
        sec.add("Published, beside bnbench's seeds (a single run each; the ranges span 12 builds):", "")
        rows = []
        for ref in pub.get("runs", []):
            members = by_norm.get((ref["norm"],), [])
            accs = [final(r) for r in members]
            inside = "–" if not accs else ("yes" if min(accs) <= ref["test_acc"] <= max(accs) else "no")
            rows.append(
                [
                    ref["source"],
                    norm_name(ref["norm"]),
                    f"{ref['train_loss']:.3f}",
                    f"{ref['train_acc']:.3f}",
                    f"{ref['test_acc']:.3f}",
                    mean_std(accs),
                    inside,
                ]
            )
        for ref in pub.get("ranges", []):
            accs = [final(r) for r in by_norm.get((ref["norm"],), [])]
            rows.append(
                [
                    ref["source"],
                    norm_name(ref["norm"]),
                    "",
                    "",
                    f"{ref['low']}–{ref['high']}",
                    mean_std(accs),
                    "–" if not accs else f"{sum(ref['low'] <= a <= ref['high'] for a in accs)}/{len(accs)} seeds",
                ]
            )
        sec.add(
            table(
                [
                    "source",
                    "norm",
                    "train loss",
                    "train acc",
                    "test acc",
                    "bnbench test acc",
                    "published within bnbench's seed range",
                ],
                rows,
            ),
            "",
        )
    sec.figure(
        "curves",
        lambda p: curves_figure({norm_name(k[0]): v for k, v in by_norm.items()}, p),
        "LeNet on Fashion-MNIST: train loss and test accuracy per epoch, mean ± std over seeds",
    )
    none = [final(r) for r in by_norm.get(("none",), [])]
    for kind in ("scratch", "torch"):
        bn = [final(r) for r in by_norm.get((kind,), [])]
        if not bn:
            continue
        p = p_value(bn, none)
        mean, std, _ = stats(bn)
        refs = [r for r in pub.get("runs", []) if r["norm"] == kind]
        spread = f"; over seeds its final test accuracy spans {min(bn):.3f}–{max(bn):.3f}, "
        spread += "so one run is a poor reference" if max(bn) - min(bn) > 0.02 else "a narrow spread"
        if refs:
            spread += f" (published single runs: {', '.join(str(r['test_acc']) for r in refs)})"
        if none:
            better = stats(bn)[0] > stats(none)[0]
            holds = "holds" if better and p < SIGNIFICANT else "does not hold"
            sec.verdict(
                f"{norm_name(kind)} beats no norm: {holds} ({mean:.3f} ± {std:.3f} vs "
                f"{stats(none)[0]:.3f} ± {stats(none)[1]:.3f}, p {p_text(bn, none)}){spread}."
            )
    bn_runs = by_norm.get(("torch",), []) + by_norm.get(("scratch",), [])
    train_bn, test_bn = [final(r, "train_acc") for r in bn_runs], [final(r) for r in bn_runs]
    batch_bn = [final(r, "test_acc_batch_stats") for r in bn_runs]
    if train_bn:
        text = f"With BN, train accuracy {mean_std(train_bn)} vs test {mean_std(test_bn)}"
        if stats(batch_bn)[2] and stats(batch_bn)[0] > stats(test_bn)[0]:
            text += (
                f"; evaluated with each test batch's own statistics instead of the running ones, test accuracy is "
                f"{mean_std(batch_bn)}: at lr 1.0 the running statistics lag the weights, the likely reason "
                "single published runs scatter while their train accuracy stays near 0.90"
            )
        sec.verdict(text + ".")


def convergence(sec: Section) -> None:
    """mlp_norms / convnet_norms: epochs and examples to 97% and 98% test accuracy; epoch-1 accuracy."""
    by_norm = sec.s.split("norm.kind")
    rows = []
    base = by_norm.get(("none",), [])
    for (kind,), members in by_norm.items():
        row = [
            norm_name(kind),
            len(members),
            mean_std([at_epoch(r, 1) for r in members]),
            p_text([at_epoch(r, 1) for r in members], [at_epoch(r, 1) for r in base]) if kind != "none" else "",
            mean_std([final(r) for r in members]),
            p_text([final(r) for r in members], [final(r) for r in base]) if kind != "none" else "",
        ]
        for target in (0.97, 0.98):
            got = [summarize(r, "test_acc", target) for r in members]
            reached = [g for g in got if g["epochs_to_target"] is not None]
            row += [
                f"{mean_std([g['epochs_to_target'] for g in reached], 1)} ({len(reached)}/{len(got)})",
                mean_std([g["examples_to_target"] for g in reached], 0) if reached else "–",
            ]
        rows.append(row)
    sec.add(
        table(
            [
                "norm",
                "seeds",
                "test acc, epoch 1",
                "p (vs none)",
                "final test acc",
                "p (vs none)",
                "epochs to 97% (reached)",
                "examples to 97%",
                "epochs to 98% (reached)",
                "examples to 98%",
            ],
            rows,
        ),
        "",
        "Epochs to a target: the first epoch whose test accuracy reaches it, over the seeds "
        "that reached it; examples: training examples seen by the end of that epoch.",
        "",
    )
    sec.figure(
        "curves",
        lambda p: curves_figure({norm_name(k[0]): v for k, v in by_norm.items()}, p),
        "test accuracy and train loss per epoch, mean ± std over seeds",
    )
    if not base:
        return
    first_none, final_none = [at_epoch(r, 1) for r in base], [final(r) for r in base]
    for kind in ("scratch", "torch"):
        members = by_norm.get((kind,), [])
        if not members:
            continue
        first, last = [at_epoch(r, 1) for r in members], [final(r) for r in members]
        faster = stats(first)[0] > stats(first_none)[0] and p_value(first, first_none) < SIGNIFICANT
        difference = stats(last)[0] - stats(final_none)[0]
        similar = abs(difference) < 0.005
        significant = p_value(last, final_none) < SIGNIFICANT
        to_target = ""
        for target in (0.97, 0.98):
            epochs = [[summarize(r, "test_acc", target)["epochs_to_target"] for r in ms] for ms in (members, base)]
            if all(e is not None for e in epochs[0] + epochs[1]):
                to_target = (f"; {target:.0%} test accuracy after {stats(epochs[0])[0]:.1f} epochs vs "
                             f"{stats(epochs[1])[0]:.1f} (p {p_text(epochs[0], epochs[1])})")  # fmt: skip
        sec.verdict(
            f"{norm_name(kind)}: faster in the first epoch {'holds' if faster else 'does not hold'} "
            f"({stats(first)[0]:.4f} vs {stats(first_none)[0]:.4f} after epoch 1, p {p_text(first, first_none)}"
            f"{'' if faster else why_not(first, first_none)}{to_target}); "
            f"final accuracy similar (within 0.5 points) {'holds' if similar else 'does not hold'} "
            f"({stats(last)[0]:.4f} vs {stats(final_none)[0]:.4f}, p {p_text(last, final_none)}"
            + (f", a small but significant {difference:+.4f}" if similar and significant else "")
            + ")."
        )


def unit_percentiles(members: list[Run], layer: str, where: str) -> tuple[float, float, float]:
    """Mean over seeds of a unit's 15/50/85th percentiles at the first or last diagnostic step."""
    values = []
    for r in members:
        d = r.diagnostics
        d = d[(d["layer"] == layer) & d["quantity"].isin(["unit_p15", "unit_p50", "unit_p85"])]
        if d.empty:
            continue
        step = d["step"].min() if where == "first" else d["step"].max()
        values.append(d[d["step"] == step].set_index("quantity")["value"])
    if not values:
        return (math.nan,) * 3
    mean = pd.concat(values, axis=1).mean(axis=1)
    return (mean.get("unit_p15", math.nan), mean.get("unit_p50", math.nan), mean.get("unit_p85", math.nan))


def ioffe(sec: Section) -> None:
    s = sec.s
    by_norm = s.split("norm.kind")
    some = s.runs[0].config.get("train", {})
    epochs = max((len(r.metrics) for r in s.runs), default=0)
    steps = max((int(r.steps["step"].max()) for r in s.runs if len(r.steps)), default=0)
    sec.add(
        f"Optimizer: {some.get('optimizer')} at lr {some.get('lr')}, momentum {some.get('momentum')}, "
        f"{some.get('init')} init, batch {some.get('batch_size')}: {steps:,} steps ({epochs} epochs). "
        "The paper names no optimizer or learning rate.",
        "",
    )
    layers = sorted({lay for r in s.runs for lay in r.diagnostics["layer"].unique()} - {"model"})
    last = layers[-1] if layers else None
    checkpoints = [e for e in (1, 5, 10, 20, epochs) if 1 <= e <= epochs]
    checkpoints = list(dict.fromkeys(checkpoints))
    per_epoch = steps // epochs if epochs else 0
    rows = []
    base = by_norm.get(("none",), [])
    for (kind,), members in by_norm.items():
        row = [norm_name(kind), len(members)]
        row += [mean_std([at_epoch(r, e) for r in members], 4) for e in checkpoints]
        if last:
            for where in ("first", "last"):
                row.append(" / ".join(f"{v:+.2f}" for v in unit_percentiles(members, last, where)))
        rows.append(row)
    header = ["norm", "seeds"] + [f"test acc, step {e * per_epoch:,}" for e in checkpoints]
    if last:
        header += [f"{last} unit 0 p15/p50/p85, first step", "last step"]
    sec.add(table(header, rows), "")
    sec.figure(
        "accuracy",
        lambda p: curves_figure({norm_name(k[0]): v for k, v in by_norm.items()}, p, "step", "step"),
        "test accuracy over training steps (Fig. 1a), mean ± std over seeds",
    )
    if last:
        from bnbench.plots import diagnostics_figure

        runs = [r for ms in by_norm.values() for r in ms]
        sec.figure(
            "activations",
            lambda p: diagnostics_figure(runs, p, [last], dpi=80),
            f"the input of a sigmoid unit in {last} (15/50/85th percentiles, Fig. 1b/c) and the other diagnostics",
        )
    bn = by_norm.get(("torch",), [])
    if base and bn:
        one, one_none = [at_epoch(r, 1) for r in bn], [at_epoch(r, 1) for r in base]
        end, end_none = [final(r) for r in bn], [final(r) for r in base]
        faster = stats(one)[0] > stats(one_none)[0] and p_value(one, one_none) < SIGNIFICANT
        higher = stats(end)[0] > stats(end_none)[0] and p_value(end, end_none) < SIGNIFICANT
        converged = "" if higher else (
            "; both networks converge by the end at this learning rate, so the gap is in speed, not the end point"
            if abs(stats(end)[0] - stats(end_none)[0]) < 0.005 else why_not(end, end_none))  # fmt: skip
        sec.verdict(
            f"Faster with BN: {'holds' if faster else 'does not hold'} (test acc after {per_epoch:,} steps "
            f"{stats(one)[0]:.4f} vs {stats(one_none)[0]:.4f}, p {p_text(one, one_none)}). Higher at the end: "
            f"{'holds' if higher else 'does not hold'} ({stats(end)[0]:.4f} vs {stats(end_none)[0]:.4f}, "
            f"p {p_text(end, end_none)}{converged})."
        )
        if last:
            shift = {}
            for kind, members in (("none", base), ("torch", bn)):
                first, lastv = unit_percentiles(members, last, "first"), unit_percentiles(members, last, "last")
                shift[kind] = (lastv[1] - first[1], (lastv[2] - lastv[0]) - (first[2] - first[0]))
            steadier = [abs(shift["torch"][i]) <= 0.5 * abs(shift["none"][i]) for i in (0, 1)]
            verdict = "holds" if all(steadier) else ("partly holds" if any(steadier) else "does not hold")
            sec.verdict(
                f"Stable distribution with BN {verdict} (at most half the change without BN counts as stable): "
                f"from the first to the last step the median of {last}'s unit 0 moved {shift['torch'][0]:+.2f} "
                f"with BN vs {shift['none'][0]:+.2f} without, its 15–85 spread changed "
                f"{shift['torch'][1]:+.2f} vs {shift['none'][1]:+.2f}. BN fixes a unit's input to zero mean and "
                "unit variance only up to its learned gamma and beta, which grow, so the spread widens with BN too."
            )


@dataclass
class ModelSweep:
    """One model's runs in a study that sweeps `key` against norm.kind (lr_sensitivity, batch_size)."""

    model: str
    runs: list[Run]
    xs: list  # the swept values, in the study's order
    kinds: list
    cells: dict[tuple, list[Run]]  # (x, kind) -> runs

    @property
    def title(self) -> str:
        return f"{self.model} ({value(self.runs[0], 'model.activation')}, {value(self.runs[0], 'data.dataset')})"

    def panel(self) -> dict[str, dict[float, list[float]]]:
        """For sweep_figure: a line per norm, the final accuracies at each swept value."""
        return {norm_name(k): {x: [final(r) for r in self.cells.get((x, k), [])] for x in self.xs} for k in self.kinds}


def model_sweeps(s: StudyRuns, key: str) -> list[ModelSweep]:
    out = []
    for (model,), runs in s.split("model.name").items():
        sub = StudyRuns(s.name, s.path, s.study, runs)
        out.append(ModelSweep(str(model), runs, sub.values(key), sub.values("norm.kind"), sub.split(key, "norm.kind")))
    return out


def lr_sensitivity(sec: Section) -> None:
    s = sec.s
    panels: dict[str, dict[str, dict[float, list[float]]]] = {}
    for sweep in model_sweeps(s, "train.lr"):
        model, model_runs, lrs, kinds, cells = sweep.model, sweep.runs, sweep.xs, sweep.kinds, sweep.cells
        rows = []
        for lr in lrs:
            row: list[object] = [format_value(lr)]
            for kind in kinds:
                members = cells.get((lr, kind), [])
                text = mean_std([final(r) for r in members])
                row.append(text + (f", {diverged(members)} diverged" if diverged(members) else ""))
            none, bn = cells.get((lr, "none"), []), cells.get((lr, "torch"), [])
            row += [
                delta([final(r) for r in bn], [final(r) for r in none]),
                p_text([final(r) for r in bn], [final(r) for r in none]),
            ]
            rows.append(row)
        sec.add(
            f"**{model}** (final test accuracy, mean ± std over seeds; a diverged run counts with its last "
            "recorded accuracy):",
            "",
            table(["lr", *(norm_name(k) for k in kinds), "Δ BN − none", "p"], rows),
            "",
        )
        panels[sweep.title] = sweep.panel()
        usable = {}
        for kind in kinds:
            means = {lr: stats([final(r) for r in cells.get((lr, kind), [])])[0] for lr in lrs}
            best = max((m for m in means.values() if not math.isnan(m)), default=math.nan)
            ok = [lr for lr, m in means.items() if m >= best - 0.02]
            usable[kind] = (
                best,
                min(ok) if ok else math.nan,
                max(ok) if ok else math.nan,
                max(means, key=lambda lr: -1 if math.isnan(means[lr]) else means[lr]),
            )
        if "none" in usable and "torch" in usable:
            n, b = usable["none"], usable["torch"]

            def span(u: tuple) -> str:
                return f"lr {format_value(u[1])}" + (f"–{format_value(u[2])}" if u[2] != u[1] else " only")

            top = b[2]  # the highest lr BN trains well at: is it better than no norm there?
            bn_top, none_top = ([final(r) for r in cells.get((top, k), [])] for k in ("torch", "none"))
            holds = top > n[2] and stats(bn_top)[0] > stats(none_top)[0] and p_value(bn_top, none_top) < SIGNIFICANT
            sec.verdict(
                f"{model}: higher learning rates with BN {'holds' if holds else 'does not hold'}: within 2 points "
                f"of its best, no norm trains at {span(n)} (best {n[0]:.3f} at {format_value(n[3])}), nn.BatchNorm "
                f"at {span(b)} (best {b[0]:.3f} at {format_value(b[3])}); at lr {format_value(top)} "
                f"{stats(bn_top)[0]:.3f} vs {stats(none_top)[0]:.3f} (p {p_text(bn_top, none_top)}"
                f"{'' if holds else why_not(bn_top, none_top)})"
                + (f"; {sum(diverged(ms) for (lr, k), ms in cells.items() if k == 'none')} no-norm and "
                   f"{sum(diverged(ms) for (lr, k), ms in cells.items() if k == 'torch')} BN runs diverged"
                   if any(diverged(ms) for ms in cells.values()) else "; no run diverged"
                   + (" (sigmoids saturate rather than overflow: too high a learning rate shows as accuracy "
                      "stuck near chance)" if all(value(r, "model.activation") == "sigmoid" for r in model_runs)
                      else ""))
                + "."
            )  # fmt: skip
    sec.figure(
        "accuracy_vs_lr",
        lambda p: sweep_figure(panels, p, "learning rate", log2=False),
        "final test accuracy against the learning rate, mean ± std over seeds",
    )


def batch_size(sec: Section) -> None:
    s = sec.s
    panels: dict[str, dict[str, dict[float, list[float]]]] = {}
    for sweep in model_sweeps(s, "train.batch_size"):
        model, sizes, kinds, cells = sweep.model, sweep.xs, sweep.kinds, sweep.cells
        rows = []
        for size in sizes:
            lr = value(cells[next(k for k in cells if k[0] == size)][0], "train.lr")
            row: list[object] = [size, format_value(lr)]
            for kind in kinds:
                members = cells.get((size, kind), [])
                text = mean_std([final(r) for r in members])
                batch = [final(r, "test_acc_batch_stats") for r in members]
                if any(not math.isnan(b) for b in batch):
                    text += f" / {mean_std(batch)}"
                row.append(text)
            rows.append(row)
        sec.add(
            f"**{model}** (final test accuracy; for BN kinds, running statistics / the test batch's own statistics). "
            "Every batch size sees the same examples once, so a larger batch takes fewer steps: compare the "
            "norms within a row.",
            "",
            table(["batch", "lr", *(norm_name(k) for k in kinds)], rows),
            "",
        )
        panels[sweep.title] = sweep.panel()
        small = sizes[0]
        acc = {key: [final(r) for r in ms] for key, ms in cells.items()}
        at = {key: stats(v)[0] for key, v in acc.items()}
        independent = [k for k in kinds if k in ("group", "layer", "torch_group", "torch_layer")]
        if "torch" in kinds and independent:
            best_size = max(sizes, key=lambda b: at.get((b, "torch"), -1))
            bn_small, bn_best = acc.get((small, "torch"), []), acc.get((best_size, "torch"), [])
            degrades = stats(bn_small)[0] < stats(bn_best)[0] and p_value(bn_small, bn_best) < SIGNIFICANT
            avoided = [k for k in independent if at.get((small, k), math.nan) > stats(bn_small)[0]
                       and p_value(acc.get((small, k), []), bn_small) < SIGNIFICANT]  # fmt: skip
            best = max(kinds, key=lambda k: -1 if math.isnan(at.get((small, k), math.nan)) else at[(small, k)])
            sec.verdict(
                f"{model}: at batch {small} nn.BatchNorm reaches {stats(bn_small)[0]:.3f} vs {stats(bn_best)[0]:.3f} "
                f"at its best batch ({best_size}; p {p_text(bn_small, bn_best)}); at batch {small} "
                + ", ".join(f"{norm_name(k)} {at.get((small, k), math.nan):.3f} (p vs BN "
                            f"{p_text(acc.get((small, k), []), bn_small)})" for k in independent)
                + f"; best at batch {small}: {norm_name(best)}. BN degrading at small batches where the "
                f"batch-independent norms do not: {'holds' if degrades and avoided else 'does not hold'}"
                + ("; a likely reason: a convolution's BN pools each channel over the batch and every position, "
                   f"so a batch of {small} still gives it {small} × H × W values"
                   if not (degrades and avoided) and model != "mlp" else "")
                + "."
            )  # fmt: skip
    sec.figure(
        "accuracy_vs_batch",
        lambda p: sweep_figure(panels, p, "batch size", log2=True),
        "final test accuracy against the batch size, mean ± std over seeds",
    )


def accumulation(sec: Section) -> None:
    s = sec.s
    kinds, splits = s.values("norm.kind"), s.values("train.accumulate")
    cells = s.split("train.accumulate", "norm.kind")
    batch = value(s.runs[0], "train.batch_size")
    rows = []
    for acc in splits:
        row: list[object] = [f"{acc} × {batch // acc}"]
        for kind in kinds:
            members = cells.get((acc, kind), [])
            row.append(
                f"{mean_std([final(r) for r in members])} / {mean_std([final(r, 'train_loss') for r in members])}"
            )
        rows.append(row)
    sec.add(
        "Final test accuracy / final train loss, mean ± std over seeds:",
        "",
        table(["micro-batches", *(norm_name(k) for k in kinds)], rows),
        "",
    )
    for kind in kinds:
        one = [final(r) for r in cells.get((splits[0], kind), [])]
        many = [final(r) for r in cells.get((splits[-1], kind), [])]
        by_seed: dict[object, list[float]] = {}
        for a in splits:
            for r in cells.get((a, kind), []):
                by_seed.setdefault(value(r, "train.seed"), []).append(final(r))
        spread = max((max(v) - min(v) for v in by_seed.values() if len(v) == len(splits)), default=math.nan)
        same = spread < 0.001
        sec.verdict(
            f"{norm_name(kind)}: {splits[-1]} × {batch // splits[-1]} vs 1 × {batch}: {delta(many, one)} test "
            f"accuracy (p {p_text(many, one)}); the same seed's final accuracy differs by up to {spread:.4f} "
            f"across the splits: {'equivalent' if same else 'not equivalent'} to one batch of {batch}."
        )
    ghost = cells.get((splits[0], "ghost"), [])
    virtual = value(ghost[0], "norm.virtual_batch_size") if ghost else None
    same_stats = cells.get((batch // virtual, "torch"), []) if virtual and batch % virtual == 0 else []
    if ghost and same_stats:
        losses = [[final(r, "train_loss") for r in ms] for ms in (ghost, same_stats)]
        alike = abs(stats(losses[0])[0] - stats(losses[1])[0]) < 0.01
        sec.verdict(
            f"Ghost BN with virtual batches of {virtual} in one batch of {batch} "
            f"{'trains like' if alike else 'does not train like'} nn.BatchNorm on {batch // virtual} × {virtual} "
            f"micro-batches (final train loss {mean_std(losses[0])} vs {mean_std(losses[1])})"
            + (": the statistics' batch size, not the step's, sets what BN does." if alike else ".")
        )
    sec.figure(
        "curves",
        lambda p: curves_figure({f"{norm_name(k)}, {a} × {batch // a}": v for (a, k), v in cells.items()}, p),
        "test accuracy and train loss per epoch, mean ± std over seeds",
    )


def lag(members: list[Run]) -> float:
    """The running statistics' lag at the last norm position, at each run's last diagnostic step."""
    values = []
    for r in members:
        d = r.diagnostics
        d = d[d["quantity"] == "lag_mean"]
        if d.empty:
            continue
        d = d[d["layer"] == sorted(d["layer"].unique())[-1]]
        values.append(float(d[d["step"] == d["step"].max()]["value"].mean()))
    return stats(values)[0] if values else math.nan


def paired_p(a: dict[object, float], b: dict[object, float]) -> float:
    """Paired two-sided t-test over the seeds both sides have (the same seed trains the same weights)."""
    import warnings

    from scipy import stats as scipy_stats

    seeds = [k for k in a if k in b and not math.isnan(a[k]) and not math.isnan(b[k])]
    if len(seeds) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(scipy_stats.ttest_rel([a[k] for k in seeds], [b[k] for k in seeds]).pvalue)


def by_seed(runs: list[Run], column: str = "test_acc") -> dict[object, float]:
    return {value(r, "train.seed"): final(r, column) for r in runs}


def eval_statistics(sec: Section) -> None:
    s = sec.s
    cells = s.split("train.lr", "norm.momentum", "train.precise_bn")
    lrs = s.values("train.lr")
    rows, checks = [], []
    lines: dict[str, dict[float, list[float]]] = {}
    for lr in lrs:
        m1, m01 = cells.get((lr, 0.1, None), []), cells.get((lr, 0.01, None), [])
        precise = [r for (l_, _, p), ms in cells.items() if l_ == lr and p is not None for r in ms]
        figures = {
            "running, momentum 0.1": by_seed(m1),
            "running, momentum 0.01": by_seed(m01),
            "precise": by_seed(precise),
            # Momentum and precise statistics change only the buffers, never training: one cell suffices.
            "batch statistics": by_seed(m1, "test_acc_batch_stats"),
        }
        for name, values in figures.items():
            lines.setdefault(name, {})[lr] = list(values.values())
        lag_m1 = lag(m1) if m1 else math.nan
        lags = [f"{lag_m1:.3f}" if m1 else "–", f"{lag(m01):.3f}" if m01 else "–"]
        rows.append([format_value(lr), *(mean_std(list(v.values())) for v in figures.values()), *lags])
        running, fixed = figures["running, momentum 0.1"], figures["precise"]
        if running and fixed:
            gap = stats(list(fixed.values()))[0] - stats(list(running.values()))[0]
            p = paired_p(fixed, running)
            wins = sum(fixed[k] >= running[k] for k in fixed if k in running)
            spreads = (stats(list(running.values()))[1], stats(list(fixed.values()))[1])
            checks.append((lr, gap, p, lag_m1, wins, len(fixed), spreads))
            ranked = max(figures, key=lambda k: stats(list(figures[k].values()))[0])
            sec.verdict(
                f"lr {format_value(lr)}: best with {ranked} ({stats(list(figures[ranked].values()))[0]:.3f}); "
                f"precise vs running (m 0.1) {gap:+.3f}, paired p {'–' if math.isnan(p) else f'{p:.2g}'}; "
                f"running m 0.01 vs m 0.1 "
                f"{delta(list(figures['running, momentum 0.01'].values()), list(running.values()))}."
            )
    sec.add(
        "Final test accuracy over seeds by the statistics the evaluation used, and the running statistics' "
        "lag at the last norm position at the end (mean |μ_batch − μ_running| / σ_running on the probe batch). "
        "Runs of one seed train identical weights whatever the momentum or precise statistics (only the "
        "buffers differ), so precise and running statistics are compared paired by seed:",
        "",
        table(
            ["lr", "running (m 0.1)", "running (m 0.01)", "precise", "batch statistics", "lag (m 0.1)", "lag (m 0.01)"],
            rows,
        ),  # fmt: skip
        "",
    )
    sec.figure(
        "accuracy_vs_lr",
        lambda path: sweep_figure({"LeNet + nn.BatchNorm": lines}, path, "learning rate", log2=False),
        "final test accuracy against the learning rate, by the statistics used at evaluation",
    )
    if len(checks) >= 2:
        from scipy.stats import binomtest

        lag_grows = all(b[3] > a[3] for a, b in itertools.pairwise(checks))
        wins, pairs = sum(c[4] for c in checks), sum(c[5] for c in checks)
        sign_p = binomtest(wins, pairs, 0.5).pvalue if pairs else math.nan
        each = all(c[1] > 0 and c[2] < SIGNIFICANT for c in checks)
        fixes = all(c[1] > 0 for c in checks) and (each or sign_p < SIGNIFICANT)
        spread = max(c[6][0] for c in checks), max(c[6][1] for c in checks)
        sec.verdict(
            f"The EMA lagging more at larger learning rates: {'holds' if lag_grows else 'does not hold'} (lag "
            + ", ".join(f"{c[3]:.3f} at lr {format_value(c[0])}" for c in checks)
            + f"); precise statistics fixing it: {'holds' if fixes else 'does not hold'} (precise minus running: "
            + ", ".join(f"{c[1]:+.3f} at lr {format_value(c[0])}" for c in checks)
            + f"; precise at least as good in {wins} of {pairs} seed pairs, sign test p {sign_p:.2g})"
            + ("" if each else f"; per learning rate the paired t-test does not separate them, because the "
               f"running statistics spread over seeds (std up to {spread[0]:.3f}, precise {spread[1]:.3f}): "
               "the lag costs some seeds much and others little")
            + "."
        )  # fmt: skip


SECTIONS: dict[str, Callable[[Section], None]] = {
    "lenet_norms": lenet_norms,
    "mlp_norms": convergence,
    "convnet_norms": convergence,
    "ioffe_mnist": ioffe,
    "lr_sensitivity": lr_sensitivity,
    "batch_size": batch_size,
    "accumulation": accumulation,
    "eval_statistics": eval_statistics,
}


def generic(sec: Section) -> None:
    """Any other study: a seed group per cell (the matrix keys' values), final accuracy and curves."""
    keys = [k for ks, _ in sec.s.study.matrix for k in ks.split(",")]
    cells = sec.s.split(*keys) if keys else {(): sec.s.runs}
    rows = [
        [
            ", ".join(f"{k}={format_value(v)}" for k, v in zip(keys, cell, strict=True)) or sec.s.name,
            len(ms),
            mean_std([final(r) for r in ms]),
            mean_std([final(r, "train_loss") for r in ms]),
        ]
        for cell, ms in cells.items()
    ]
    sec.add(table(["cell", "seeds", "final test acc", "final train loss"], rows), "")
    sec.figure(
        "curves",
        lambda p: curves_figure({r[0]: ms for r, ms in zip(rows, cells.values(), strict=True)}, p),
        "test accuracy and train loss per epoch, mean ± std over seeds",
    )


# Assembly ------------------------------------------------------------------------------------------------


def load_published(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a readable published-figures file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f"{path}: expected a mapping of study names to published figures")
    return data


def _figure(value: float, digits: int = 4) -> str:
    if not (value == value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def claims_lines(judged: list) -> list[str]:
    """The declared claims of one study, judged by claims.judge: one table, then what each rests on."""
    from bnbench.claims import ALPHA

    family = sum(j.claim.expect in ("greater", "less") and j.effect is not None for j in judged)
    lines = [
        "### Declared claims",
        "",
        f"Effect = the first arm minus the second, mean over seeds (paired by seed where the arms share them), "
        f"with its 95% confidence interval; p two-sided, Holm-adjusted over this study's {family} difference "
        f"claims (the family); supported needs the interval on the claimed side and adjusted p < {ALPHA}; "
        "equivalence by TOST (the 90% interval within ±margin). Inconclusive rows give the smallest effect "
        "this design detects with 80% power.",
        "",
    ]
    rows = []
    for j in judged:
        e = j.effect
        digits = 0 if j.claim.metric.discrete else 4  # steps are counts
        effect = "-" if e is None else (f"{_figure(e.estimate, digits)} [{_figure(e.low, digits)}, "
                                        f"{_figure(e.high, digits)}]")  # fmt: skip
        detail = "" if e is None else f"{e.test}, n {e.n}{' pairs' if e.paired else ''}"
        detail = f"{detail}; {j.note}" if j.note else detail
        if j.verdict == "inconclusive" and e is not None and e.detectable == e.detectable:
            detail += f"; detectable: ±{_figure(e.detectable, digits)}"
        if j.claim.margin is not None:
            detail += f"; margin {j.claim.margin:g}"
        source = dict(j.claim.source)
        cite = source.get("cite", "")
        if source.get("url"):
            cite = f"[{cite or 'source'}]({source['url']})"
        rows.append([f"**{j.claim.id}**: {j.claim.says}", j.claim.metric.describe(), j.claim.expect, effect,
                     "-" if e is None else _figure(e.p, 3), _figure(j.p_adjusted, 3), f"**{j.verdict}**",
                     detail.strip("; "), cite or "-"])  # fmt: skip
    header = ["claim", "metric", "expect", "effect [95% CI]", "p", "Holm p", "verdict", "test", "source"]
    return lines + [table(header, rows), ""]


def load_study_runs(folder: Path) -> tuple[StudyRuns, list[str]]:
    if not (folder / STUDY_FILE).is_file():
        raise UsageError(f"{folder}: not a study folder (no {STUDY_FILE}; run `bnbench sweep` first)")
    study = load_study(folder)
    runs, warnings = find_runs([folder])
    runs = [r for r in runs if len(r.metrics)]
    if not runs:
        raise UsageError(f"{folder}: no run in this study has recorded an epoch yet")
    return StudyRuns(study.name, folder, study, runs), warnings


def _time(text: object) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)  # naive: taken as UTC


def wall_minutes(runs: list[Run]) -> float:
    """From the first run's start to the last run's end (a sweep's wall time when it ran in one go)."""
    starts = [t for r in runs if (t := _time(r.meta.get("started_at")))]
    ends = [t for r in runs if (t := _time(r.meta.get("ended_at") or r.meta.get("updated_at")))]
    return (max(ends) - min(starts)).total_seconds() / 60 if starts and ends else math.nan


def shown(path: Path) -> str:
    """A path as the report prints it: relative to the working folder where it lies inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def command_of(s: StudyRuns) -> str:
    shipped = SHIPPED_CONFIGS / "studies" / f"{s.name}.yaml"
    target = f"configs/studies/{s.name}.yaml" if shipped.is_file() else shown(s.path)
    return f"BNBENCH_DATA_DIR=../shared/data bnbench sweep {target}"


def recorded_commands(s: StudyRuns) -> list[str]:
    """The commands the runs' meta.json recorded, paths inside the working folder made relative."""
    found = []
    for run in s.runs:
        words = str(run.meta.get("command") or "").split()
        text = " ".join(shown(Path(w)) if w.startswith("/") else w for w in words)
        if text and text not in found:
            found.append(text)
    return found


def settings(s: StudyRuns, published: dict) -> str:
    """What every run shares that a reader needs, and where a study was cut from the published length."""
    fixed = ", ".join(f"{k}={format_value(v)}" for k, v in s.study.fixed) or "none"
    seeds = ", ".join(str(x) for x in s.study.seeds)
    text = f"Seeds {seeds}; overrides of the base config for every run: {fixed}."
    epochs = max(len(r.metrics) for r in s.runs)
    if published.get("epochs") and epochs < published["epochs"]:
        text += (
            f" **Cut to fit `make results`:** {epochs} epochs where the published setting trains {published['epochs']}."
        )
    return text


def report(folders: list[Path], out: Path, published_path: Path = PUBLISHED) -> Path:
    """Write `out/README.md` and its figures from the study folders; returns the README's path."""
    published = load_published(published_path)
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
    sections = []
    for s in loaded:
        sec = Section(s, out, published.get(s.name, {}))
        SECTIONS.get(s.name, generic)(sec)
        sections.append(sec)
    written = ["README.md"] + [name for sec in sections for name in sec.written]
    for name in set(before) - set(written):  # bnbench's own figure that no study draws any more
        (out / name).unlink(missing_ok=True)
    all_runs = [r for s in loaded for r in s.runs]
    machines = sorted({str(r.meta.get("device_name", "?")) for r in all_runs})
    versions = sorted({f"torch {r.meta.get('versions', {}).get('torch', '?')}" for r in all_runs})
    commits = sorted({str(r.meta.get("git_commit") or "?")[:10] for r in all_runs})
    total = sum(m for s in loaded if not math.isnan(m := wall_minutes(s.runs)))
    lines = [
        "# Results: what Batch Normalization did on this data",
        "",
        "Generated by `bnbench report` from run directories only (regenerate: `make results`); the only typed "
        "figures are the published ones, from [bnbench/published.yaml](../../bnbench/published.yaml) with "
        "their sources. A claim *holds* when the difference has the claimed sign and Welch's two-sided "
        f"t-test over seeds gives p < {SIGNIFICANT} (a section that pairs runs by seed says which test it uses).",
        "",
        f"Machine: {', '.join(machines)}; {', '.join(versions)}; bnbench commit {', '.join(commits)}. "
        f"Studies' wall time (first start to last end, summed): {total:.0f} min.",
        "",
        table(
            ["study", "question", "runs", "status", "wall time"],
            [
                [
                    f"[{s.name}](#{s.name})",
                    published.get(s.name, {}).get("question", ""),
                    len(s.runs),
                    statuses(s.runs),
                    f"{wall_minutes(s.runs):.1f} min",
                ]
                for s in loaded
            ],
        ),
        "",
        "## Verdicts",
        "",
    ]
    for sec in sections:
        lines += [f"- **{sec.s.name}**: " + " ".join(sec.verdicts)] if sec.verdicts else []
    for sec in sections:
        pub = sec.published
        lines += ["", f"## {sec.s.name}", ""]
        if pub.get("question"):
            lines += [f"*{pub['question']}*", ""]
        recorded = recorded_commands(sec.s)
        lines += ["```", command_of(sec.s), "```", ""]
        if recorded:
            lines += ["Recorded in the runs' meta.json: " + "; ".join(f"`{c}`" for c in recorded[:3]), ""]
        lines += [settings(sec.s, pub), ""]
        if pub.get("claims"):
            lines += ["Published claims:", ""] + [f"- {c['claim']} ({c['source']})" for c in pub["claims"]] + [""]
        lines += sec.lines
        if sec.s.study.claims:
            from bnbench.claims import judge

            lines += claims_lines(judge(sec.s.study.claims, sec.s.runs))
        if sec.verdicts:
            lines += ["**Verdict.** " + " ".join(sec.verdicts), ""]
    if warnings:
        lines += ["", "## Skipped", ""] + [f"- {w}" for w in warnings]
    path = out / "README.md"
    atomic_write(path, "\n".join(lines).rstrip() + "\n")
    atomic_write(out / REPORT_MARKER, "".join(f"{name}\n" for name in written))
    return path


REPORT_MARKER = ".bnbench-report"  # the files bnbench wrote in a report folder, one per line


def claim_output(out: Path) -> list[str]:
    """The files an earlier report wrote in `out` (only those may be replaced or removed). A folder that
    holds anything else and no marker is not bnbench's: refused, nothing written."""
    for parent in out.parents:  # --out FILE/sub: say so before any work
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {out}: {parent} is not a folder")
            break
    if not out.exists():
        return []
    if not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    marker = out / REPORT_MARKER
    if marker.is_file() and not marker.is_symlink():
        names = [n.strip() for n in marker.read_text(errors="replace").splitlines() if n.strip()]
        return [n for n in names if "/" not in n and not n.startswith(".")]
    if any(out.iterdir()):
        raise UsageError(f"--out {out}: the folder holds files that bnbench did not write; give a new or empty folder")
    return []


def default_output(folders: list[Path]) -> Path:
    """Beside the study: STUDY/report, or for several studies, report/ in their common folder."""
    if len(folders) == 1:
        return folders[0] / "report"
    import os

    return Path(os.path.commonpath([str(f.resolve()) for f in folders])) / "report"
