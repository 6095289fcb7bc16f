"""Figures: training curves per epoch (`compare --plot`) and what the norm does inside the network
(`plot --diagnostics`), one line style per run or seed group so coinciding lines stay visible."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnbench.evidence.compare import Run, seed_groups

if TYPE_CHECKING:  # pandas only when a figure is drawn: `compare --plot`'s check of the name needs none
    import pandas as pd

LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "x", "P", "*")
SUFFIXES = (".png", ".svg", ".pdf")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# One colour per norm in every figure bnbench draws (norm.kind -> colour); other series take matplotlib's cycle.
NORM_COLOURS = {
    "none": "tab:gray",
    "torch": "tab:blue",
    "scratch": "tab:cyan",
    "layer": "tab:green",
    "torch_layer": "tab:olive",
    "group": "tab:purple",
    "torch_group": "tab:pink",
    "ghost": "tab:orange",
    "renorm": "tab:red",
}


def norm_of(runs: list[Run]) -> str | None:
    """The one `norm.kind` the runs share; None when they have several (or none)."""
    kinds = {str(r.config.get("norm", {}).get("kind")) for r in runs}
    return kinds.pop() if len(kinds) == 1 else None


def _style(i: int, norm: str | None = None) -> dict:
    """Colour, line style and marker of the i-th run or group: two coinciding lines still differ. The colour
    is the norm's (NORM_COLOURS) when the series has one known norm."""
    color = NORM_COLOURS.get(norm or "", f"C{i % 10}")
    return {"color": color, "linestyle": LINE_STYLES[i % 4], "marker": MARKERS[i % 8], "markersize": 4}


def band_note(sizes: list[int]) -> str:
    """What a figure's shaded band is, for its legend or title: empty when every series is one run."""
    several = [n for n in sizes if n > 1]
    if not several:
        return ""
    n = f"n={min(several)}" if min(several) == max(several) else f"n={min(several)}-{max(several)}"
    return f"line: mean over seeds, band: ± 1 std over seeds ({n})"


def _markevery(points: int) -> int:
    return max(1, points // 12)


def _datasets(runs: list[Run]) -> str:
    names = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "synthetic": "synthetic data"}
    found = dict.fromkeys(names.get(r.config.get("data", {}).get("dataset"), "?") for r in runs)
    return " + ".join(found)


def _mean_over_seeds(members: list[Run], layer: str, quantities: list[str]) -> pd.DataFrame:
    """Per step, the mean over the group's runs of each quantity at `layer` (columns: quantities)."""
    import pandas as pd

    frames = [r.diagnostics for r in members]
    frame = pd.concat([f[(f["layer"] == layer) & f["quantity"].isin(quantities)] for f in frames])
    if frame.empty:
        return pd.DataFrame(columns=quantities, dtype=float)
    return frame.pivot_table(index="step", columns="quantity", values="value", aggfunc="mean")


def training_curves(runs: list[Run], path: Path) -> None:
    """Train loss and test accuracy per epoch, train loss per example seen; mean ± std per seed group."""
    import pandas as pd

    plt = _pyplot()
    from matplotlib.ticker import EngFormatter, MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    panels = [
        ("metrics", "epoch", "train_loss", "train loss (epoch mean)"),
        ("metrics", "epoch", "test_acc", "test accuracy"),
        ("steps", "examples_seen", "train_loss", "train loss (log window)"),
    ]
    groups, _ = seed_groups(runs)  # a seed once, as in compare's tables
    for i, (name, members) in enumerate(groups.items()):
        style = _style(i, norm_of(members))
        color = style["color"]
        label = f"{name} (n={len(members)})" if len(members) > 1 else name
        for ax, (table, x, y, _) in zip(axes, panels, strict=True):
            frames = [getattr(r, table) for r in members if len(getattr(r, table)) and y in getattr(r, table)]
            if not frames:
                continue
            stats = pd.concat(frames).groupby(x)[y].agg(["mean", "std"])
            ax.plot(stats.index, stats["mean"], label=label, **style, markevery=_markevery(len(stats)))
            if len(frames) > 1:
                ax.fill_between(
                    stats.index,
                    stats["mean"] - stats["std"],
                    stats["mean"] + stats["std"],
                    color=color,
                    alpha=0.2,
                    linewidth=0,
                )
    for ax, (_, x, _, title) in zip(axes, panels, strict=True):
        ax.set_xlabel("examples seen" if x == "examples_seen" else "epoch")
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[1].legend(fontsize=8, title=band_note([len(ms) for ms in groups.values()]) or None, title_fontsize=7)
    axes[2].xaxis.set_major_formatter(EngFormatter())
    names = list(groups)
    fig.suptitle(f"{_datasets(runs)}: " + " vs ".join(names[:6]) + (" ..." if len(names) > 6 else ""))
    fig.tight_layout()
    save_figure(fig, path, 120)
    plt.close(fig)


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """Render to memory, then write atomically: a link already at `path` is replaced, never written through."""
    import io

    from bnbench.records import atomic_write

    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    atomic_write(path, buffer.getvalue())


def diagnostics_figure(runs: list[Run], path: Path, layers: list[str] | None = None, dpi: int = 110,
                       groups: dict[str, list[Run]] | None = None) -> None:  # fmt: skip
    """Ioffe & Szegedy's Fig. 1 b/c and Santurkar et al.'s Fig. 4, for any runs that recorded diagnostics:
    per norm position, the 15/50/85th percentiles of one unit's activation input over steps (a panel per
    run or seed group, shared y); gradient norms per position; the loss-landscape band, gradient
    predictiveness and beta-smoothness; the running statistics' lag. `groups`: named seed groups (default:
    compare's groups of the runs)."""
    plt = _pyplot()
    groups = {name: [r for r in ms if len(r.diagnostics)] for name, ms in (groups or seed_groups(runs)[0]).items()}
    groups = {name: ms for name, ms in groups.items() if ms}
    if not groups:
        raise ValueError("no run recorded diagnostics (train.diagnostics: true)")
    found = sorted({layer for ms in groups.values() for r in ms for layer in r.diagnostics["layer"]} - {"model"})
    layers = layers or found
    names = list(groups)
    columns = max(len(names), 4, len(layers))
    fig = plt.figure(figsize=(4.2 * columns, 3.2 * (len(layers) + 2)), layout="constrained")
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[len(layers), 1, 1])
    grid = top.subplots(len(layers), len(names), sharey="row", sharex=True, squeeze=False)
    percentiles = ["unit_p15", "unit_p50", "unit_p85"]
    for row, layer in enumerate(layers):
        for col, name in enumerate(names):
            ax, stats = grid[row][col], _mean_over_seeds(groups[name], layer, percentiles)
            if set(percentiles) <= set(stats.columns):
                color = _style(col, norm_of(groups[name]))["color"]
                ax.fill_between(stats.index, stats["unit_p15"], stats["unit_p85"], color=color, alpha=0.25,
                                linewidth=0, label="15th-85th percentile")  # fmt: skip
                ax.plot(stats.index, stats["unit_p50"], color=color, label="median")
            ax.set_title(f"{name}: {layer}", fontsize=9)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("activation input, unit 0")
            if row == len(layers) - 1:
                ax.set_xlabel("step")
    grid[0][0].legend(fontsize=7, loc="upper right")
    over = ", mean over seeds" if any(len(ms) > 1 for ms in groups.values()) else ""
    top.suptitle("activation input of one fixed unit per norm position (15th / 50th / 85th percentile over the "
                 f"probe batch{over})", fontsize=10)  # fmt: skip
    panels = middle.subplots(1, 4, squeeze=False)[0]
    for i, name in enumerate(names):
        model = _mean_over_seeds(groups[name], "model", ["loss", "landscape_loss_min", "landscape_loss_max",
                                                         "grad_change_max", "beta_smoothness"])  # fmt: skip
        style = _style(i, norm_of(groups[name]))
        if {"landscape_loss_min", "landscape_loss_max"} <= set(model.columns) and model[
            "landscape_loss_min"
        ].notna().any():
            band = model.dropna(subset=["landscape_loss_min"])
            panels[0].fill_between(band.index, band["landscape_loss_min"], band["landscape_loss_max"],
                                   color=style["color"], alpha=0.25, linewidth=0)  # fmt: skip
            panels[0].plot(band.index, band["landscape_loss_min"], label=name, **style)
            for panel, quantity in ((panels[1], "grad_change_max"), (panels[2], "beta_smoothness")):
                panel.plot(band.index, band[quantity], label=name, **style)
        lag = _mean_over_seeds(groups[name], layers[-1], ["lag_mean"])
        if "lag_mean" in lag.columns:
            panels[3].plot(lag.index, lag["lag_mean"], label=name, **style, markevery=_markevery(len(lag)))
    titles = [
        "loss along the gradient (band: min-max over steps t·lr)",
        "gradient predictiveness: max |g(t) - g(0)|",
        "effective beta-smoothness: max |Δg| / |Δw|",
        f"running-stat lag at {layers[-1]}: mean |μ_batch - μ_run| / σ_run",
    ]
    for panel, title in zip(panels, titles, strict=True):
        panel.set_title(title, fontsize=9)
        panel.set_xlabel("step")
        panel.grid(alpha=0.3)
    for panel in panels[:3]:
        if panel.lines:  # an empty log axis cannot be laid out
            panel.set_yscale("log")
    if panels[0].lines:
        panels[0].legend(fontsize=7)
    if not panels[3].lines:
        panels[3].text(0.5, 0.5, "no BN running statistics", ha="center", va="center", transform=panels[3].transAxes)
    grads = bottom.subplots(1, len(layers), squeeze=False)[0]
    for col, layer in enumerate(layers):
        for i, name in enumerate(names):
            stats = _mean_over_seeds(groups[name], layer, ["grad_weight_norm"])
            if "grad_weight_norm" in stats.columns:
                grads[col].plot(stats.index, stats["grad_weight_norm"], label=name, **_style(i, norm_of(groups[name])),
                                markevery=_markevery(len(stats)))  # fmt: skip
        grads[col].set_title(f"|grad| of the weights feeding {layer}", fontsize=9)
        if grads[col].lines:
            grads[col].set_yscale("log")
        grads[col].set_xlabel("step")
        grads[col].grid(alpha=0.3)
    grads[0].legend(fontsize=7)
    fig.suptitle(f"What the norm does inside the network, {_datasets(runs)}: " + " vs ".join(names))
    save_figure(fig, path, dpi)
    plt.close(fig)
