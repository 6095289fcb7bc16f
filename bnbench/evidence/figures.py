"""The report's figures: what a study file asks for under `figures:`, and the small named plot functions
that draw them from any study's runs.

    figures:
      - {plot: curves}                                   # train loss and test accuracy per epoch, a line per cell
      - {plot: curves, x: step, columns: [train_loss, train_acc], until: 2000, panels: norm.kind}
      - {plot: sweep, x: train.lr, lines: norm.kind, panels: model.name, column: test_acc}
      - {plot: diagnostics, layer: norm3}                # what the norm does inside the network (plots.py)
      - {plot: layers, column: grad_weight_norm, step: 0, panels: model.activation}   # a quantity by depth

Every figure's title names the model, the dataset and what varies; series are named as in the report's
tables; a swept axis is ticked at the values that ran; series that coincide are named in the caption.
A study with no `figures:` gets curves of every cell.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from bnbench.runs.specs import FigureSpec

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
KEY_NAMES = {"train.lr": "lr", "train.batch_size": "batch", "train.accumulate": "micro-batches",
             "norm.momentum": "momentum", "norm.noise": "noise", "train.precise_bn": "precise statistics",
             "train.eval_batch_size": "eval batch", "train.eval_order": "eval order", "train.trainable": "trains",
             "model.name": "", "norm.kind": "", "train.init_gain": "init gain", "model.dropout": "dropout",
             "model.residual": "residual", "model.skip_init": "SkipInit", "train.momentum": "SGD momentum"}  # fmt: skip
COLUMN_NAMES = {"train_loss": "train loss", "train_acc": "train accuracy", "test_acc": "test accuracy",
                "test_acc_batch_stats": "test accuracy, batch statistics", "val_acc": "validation accuracy",
                "val_loss": "validation loss"}  # fmt: skip
DATASETS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "synthetic": "synthetic data"}
MODELS = {"mlp": "MLP", "convnet": "conv net", "lenet": "LeNet"}


# --- names a reader knows --------------------------------------------------------------------------------


def value_label(key: str, value: Any) -> str:
    """`norm.kind` torch -> nn.BatchNorm; `train.lr` 0.1 -> lr 0.1; `train.precise_bn` None -> running."""
    from bnbench.naming import format_value

    if key == "norm.kind":
        return NORM_NAMES.get(str(value), str(value))
    if key == "model.name":
        return MODELS.get(str(value), str(value))
    if key == "model.hidden" and isinstance(value, (list, tuple)):
        same = len(set(value)) == 1
        return (
            f"{len(value)} hidden layer{'s' if len(value) > 1 else ''} of {value[0]}"
            if same
            else f"hidden {format_value(value)}"
        )
    if key == "train.precise_bn":
        return "running statistics" if value is None else f"precise statistics ({value} batches)"
    name = KEY_NAMES.get(key, key.rsplit(".", 1)[-1])
    if isinstance(value, bool):  # model.residual true -> residual; false -> no residual
        return name if value else f"no {name}"
    return f"{name} {format_value(value)}".strip()


def cell_label(keys: list[str], values: tuple) -> str:
    return ", ".join(value_label(k, v) for k, v in zip(keys, values, strict=True)) or "all runs"


def title_of(runs: list, varies: list[str]) -> str:
    """`LeNet (sigmoid) on Fashion-MNIST, by norm and lr`: what every run shares and what varies."""
    from bnbench.evidence.compare import flat

    flats = [flat(r.config) for r in runs]

    def model(f: dict) -> str:
        name = MODELS.get(f.get("model.name"), f.get("model.name"))
        if f.get("model.name") == "mlp" and "model.hidden" not in varies:  # the MLP's shape: 784-100-10
            name += " 784-" + "-".join(str(h) for h in f.get("model.hidden", [])) + "-10"
        return f"{name} ({f.get('model.activation')})"

    models = dict.fromkeys(model(f) for f in flats)
    datasets = dict.fromkeys(DATASETS.get(str(f.get("data.dataset")), str(f.get("data.dataset"))) for f in flats)
    kept: list[str] = []
    for key in varies:  # a key that varies with an earlier one (keys zipped in the matrix) is not named again
        if len(_groups(runs, [*kept, key])) > len(_groups(runs, kept)):
            kept.append(key)
    named = [KEY_NAMES.get(k) or k.rsplit(".", 1)[-1] for k in kept]
    named = ["norm" if k == "kind" else ("model" if k == "name" else k) for k in named]
    return f"{' / '.join(models)} on {' + '.join(datasets)}" + (f", by {' and '.join(named)}" if named else "")


# --- the plot functions: each draws one PNG and returns caption notes ------------------------------------


def _title(fig: Any, text: str) -> None:
    """The figure's title, wrapped to its width (a narrow figure never cuts its title off)."""
    import textwrap

    fig.suptitle(textwrap.fill(text, width=max(40, int(fig.get_figwidth() * 12))), fontsize=11)


def _groups(runs: list, keys: list[str]) -> dict[tuple, list]:
    from bnbench.evidence.compare import flat

    out: dict[tuple, list] = {}
    for run in runs:
        f = flat(run.config)
        out.setdefault(tuple(_hashable(f.get(k)) for k in keys), []).append(run)
    return out


def _line_keys(candidates: list[str], panels: dict[tuple, list]) -> list[str]:
    """The keys that tell a panel's lines apart (a key tied to the panel's, e.g. the init that goes with
    an activation, is left out of the labels)."""
    return [k for k in candidates if any(len(_groups(members, [k])) > 1 for members in panels.values())]


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if v == v]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _coinciding(series: dict[str, list[float]]) -> list[str]:
    """Pairs of series whose means agree at every point to 1e-3 of their range: the caption names them."""
    notes = []
    names = list(series)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            xs, ys = series[a], series[b]
            scale = max((abs(v) for v in xs + ys if v == v), default=1.0) or 1.0
            if len(xs) == len(ys) and xs and all(abs(x - y) <= 1e-3 * scale for x, y in zip(xs, ys, strict=True)):
                notes.append(f"{a} and {b} coincide")
    return notes


def _curve(members: list, x: str, column: str, until: int | None) -> tuple[list[float], list[float], list[float]]:
    """Mean and std over seeds of `column` at each epoch (metrics.csv) or logged step (steps.csv)."""
    by_x: dict[float, list[float]] = {}
    for run in members:
        table = run.step_table if x == "step" and column in run.step_table else run.table
        if column not in table:  # e.g. batch-statistics accuracy of a run with no BN
            continue
        index = "step" if table is run.step_table else "epoch"
        scale = 1.0
        if x == "step" and index == "epoch" and run.step_table.get("step") and run.table.get("epoch"):
            scale = max(run.step_table["step"]) / max(run.table["epoch"])  # each epoch at the step that ended it
        for at, value in zip(table.get(index, []), table.get(column, []), strict=True):
            if until is None or at * scale <= until:
                by_x.setdefault(at * scale, []).append(value)
    xs = sorted(by_x)
    stats = [_mean_std(by_x[v]) for v in xs]
    return xs, [m for m, _ in stats], [s for _, s in stats]


def curves(runs: list, spec: FigureSpec, keys: list[str], path: Path) -> list[str]:
    """A column of panels per `spec.panels` value, a row per metric; a line per cell, mean ± std over seeds."""
    from bnbench.evidence.plots import _pyplot, _style, band_note, norm_of, save_figure

    plt = _pyplot()
    panel_keys = [spec.panels] if spec.panels else []
    panels = _groups(runs, panel_keys)
    line_keys = _line_keys([k for k in keys if k not in panel_keys], panels)
    columns = [c for c in spec.columns if any(_curve([r], spec.x, c, spec.until)[0] for r in runs)]  # no empty row
    columns = columns or list(spec.columns)
    fig, axes = plt.subplots(
        len(columns),
        len(panels),
        figsize=(4.6 * len(panels) + 1.4, 3.3 * len(columns)),
        squeeze=False,
        sharey="row",
    )  # fmt: skip (panels side by side compare on one scale)
    notes: list[str] = []
    all_lines = list(_groups(runs, line_keys))
    for col, (panel, members) in enumerate(panels.items()):
        lines = _groups(members, line_keys)
        for row, column in enumerate(columns):
            ax = axes[row][col]
            means = {}
            for cell, group in lines.items():
                i = all_lines.index(cell)
                xs, mean, std = _curve(group, spec.x, column, spec.until)
                if not xs:
                    continue
                label = f"{cell_label(line_keys, cell)} (n={len(group)})"
                style = _style(i, norm_of(group))
                ax.plot(xs, mean, label=label, markevery=max(1, len(xs) // 12), **style)
                if len(group) > 1:  # the band: ± 1 std over seeds
                    ax.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)],
                                    [m + s for m, s in zip(mean, std, strict=True)], color=style["color"], alpha=0.15,
                                    linewidth=0)  # fmt: skip
                means[cell_label(line_keys, cell) + (f" ({cell_label(panel_keys, panel)})" if panel_keys else "")] = (
                    mean
                )
            if column.endswith("loss"):
                ax.set_yscale("log")
            where = f"{cell_label(panel_keys, panel)} (n={len(members)}): " if panel_keys else ""
            ax.set_title(where + COLUMN_NAMES.get(column, column), fontsize=10)
            ax.set_xlabel(spec.x)
            if spec.x == "epoch":
                from matplotlib.ticker import MaxNLocator

                ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 2.5
            ax.grid(alpha=0.3)
            if row == 0 and line_keys and ax.lines:  # each panel names its own lines (they differ by panel)
                ax.legend(fontsize=7, loc="best")
            notes += [f"{note} in {COLUMN_NAMES.get(column, column)}" for note in _coinciding(means)]
            if not ax.lines:  # a column this panel's runs never record (no norm: batch statistics): no empty panel
                ax.set_visible(False)
    note = band_note([len(g) for ms in panels.values() for g in _groups(ms, line_keys).values()])
    _title(fig, title_of(runs, keys) + (f" ({note})" if note else ""))
    fig.tight_layout()
    save_figure(fig, path, 90)
    plt.close(fig)
    return notes


def sweep(runs: list, spec: FigureSpec, keys: list[str], path: Path) -> list[str]:
    """`spec.column` at the end against the swept `spec.x` (log axis ticked at the values that ran): a panel per
    `spec.panels` value, a line per `spec.lines` cell, error bars = std over seeds."""
    from bnbench.evidence.plots import _pyplot, _style, norm_of, save_figure
    from bnbench.naming import format_value

    plt = _pyplot()
    panel_keys = [spec.panels] if spec.panels else []
    panels = _groups(runs, panel_keys)
    line_keys = list(spec.lines) or _line_keys([k for k in keys if k not in panel_keys and k != spec.x], panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 1.0, 4), squeeze=False)
    notes: list[str] = []
    all_lines = list(_groups(runs, line_keys))
    for ax, (panel, members) in zip(axes[0], panels.items(), strict=True):
        means = {}
        xs_run = sorted({x for x in _groups(members, [spec.x]) if isinstance(x[0], (int, float))})
        for cell, group in _groups(members, line_keys).items():
            points = _groups(group, [spec.x])
            xs = sorted(x for (x,) in points if isinstance(x, (int, float)))
            stats = [_mean_std([r.table.get(spec.column, [math.nan])[-1] if r.table.get(spec.column) else math.nan
                                for r in points[(x,)]]) for x in xs]  # fmt: skip
            if not xs or all(m != m for m, _ in stats):
                continue
            label = cell_label(line_keys, cell)
            ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], label=label, capsize=3,
                        **_style(all_lines.index(cell), norm_of(group)))  # fmt: skip
            means[label] = [m for m, _ in stats]
        ax.set_xscale("log")
        ticks = [x for (x,) in xs_run]
        ax.set_xticks(ticks, [format_value(x) for x in ticks])
        ax.minorticks_off()
        ax.set_xlabel(KEY_NAMES.get(spec.x) or spec.x)
        ax.set_ylabel(f"final {COLUMN_NAMES.get(spec.column, spec.column)}")
        if panel_keys:
            ax.set_title(cell_label(panel_keys, panel), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        notes += [f"{n}" + (f" ({cell_label(panel_keys, panel)})" if panel_keys else "") for n in _coinciding(means)]
    seeds = max((len(ms) for ms in _groups(runs, [*panel_keys, *line_keys, spec.x]).values()), default=1)
    over = f", mean ± std over seeds (error bars, n={seeds})" if seeds > 1 else ""
    _title(fig, title_of(runs, keys) + f": final {COLUMN_NAMES.get(spec.column, spec.column)}{over}")
    fig.tight_layout()
    save_figure(fig, path, 90)
    plt.close(fig)
    return notes


def diagnostics(runs: list, spec: FigureSpec, keys: list[str], path: Path) -> list[str]:
    from bnbench.evidence.plots import diagnostics_figure

    groups = {cell_label(keys, cell): members for cell, members in _groups(runs, keys).items()}
    diagnostics_figure(runs, path, [spec.layer] if spec.layer else None, dpi=80, groups=groups)
    return []


def layers(runs: list, spec: FigureSpec, keys: list[str], path: Path) -> list[str]:
    """A diagnostics quantity (`spec.column`) at every norm position, first to last, at diagnostic step
    `spec.step`: a panel per `spec.panels` value, a line per cell (mean over seeds), log scale."""
    from bnbench.evidence.plots import _pyplot, _style, norm_of, save_figure

    plt = _pyplot()
    panel_keys = [spec.panels] if spec.panels else []
    panels = _groups(runs, panel_keys)
    line_keys = list(spec.lines) or _line_keys([k for k in keys if k not in panel_keys], panels)
    all_lines = list(_groups(runs, line_keys))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 1.0, 4), squeeze=False)
    for ax, (panel, members) in zip(axes[0], panels.items(), strict=True):
        for cell, group in _groups(members, line_keys).items():
            by_layer: dict[int, list[float]] = {}
            for run in group:
                d = run.diagnostics
                if d.empty:
                    continue
                d = d[(d["quantity"] == spec.column) & (d["step"] == spec.step) & (d["layer"] != "model")]
                for layer, value in zip(d["layer"], d["value"], strict=True):
                    by_layer.setdefault(int("".join(c for c in str(layer) if c.isdigit()) or 0), []).append(value)
            if by_layer:
                xs = sorted(by_layer)
                ax.plot(xs, [_mean_std(by_layer[x])[0] for x in xs], label=cell_label(line_keys, cell),
                        markevery=max(1, len(xs) // 12), **_style(all_lines.index(cell), norm_of(group)))  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("norm position (1 = first hidden layer)")
        ax.set_ylabel(spec.column)
        if panel_keys:
            ax.set_title(cell_label(panel_keys, panel), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    several = any(len(ms) > 1 for ms in _groups(runs, [*panel_keys, *line_keys]).values())
    _title(fig, f"{title_of(runs, keys)}: {spec.column} at step {spec.step}" + (", mean over seeds" * several))
    fig.tight_layout()
    save_figure(fig, path, 90)
    plt.close(fig)
    return []


DRAW = {"curves": curves, "sweep": sweep, "diagnostics": diagnostics, "layers": layers}
