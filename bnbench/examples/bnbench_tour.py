# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # bnbench from Python: a tiny study, its curves and its verdict
#
# A Jupytext percent script: open it as a notebook (`jupytext --to ipynb bnbench_tour.py`) or run it with
# `python bnbench_tour.py`. It trains a small MLP with and without BatchNorm on bnbench's synthetic data
# (seconds on a CPU, no download), loads the runs as DataFrames, plots every seed's curve and judges the
# study's claim. Everything goes to `$BNBENCH_TOUR_DIR`, or a new temporary folder. See docs/python.md.

# %%
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: headless; in Jupyter the figures show inline
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import bnbench  # noqa: E402

work = Path(os.environ.get("BNBENCH_TOUR_DIR") or tempfile.mkdtemp(prefix="bnbench_tour_"))
work.mkdir(parents=True, exist_ok=True)
pd.set_option("display.width", 160)

# %% [markdown]
# A config (one run) and a study (a grid x seeds, with one claim to judge). Configs and studies are YAML
# files; a study's `base` is a config path or a shipped config's name.

# %%
(work / "mlp.yaml").write_text("""\
name: mlp
model: {name: mlp, hidden: [16]}
norm: {kind: none}
data: {dataset: synthetic, train_subset: 512}
train: {epochs: 3, batch_size: 32, lr: 0.1, eval_batch_size: 256}
""")
(work / "tour.yaml").write_text("""\
name: tour
question: Does BN help a small MLP on synthetic data?
base: mlp.yaml
matrix:
  norm.kind: [none, torch]
seeds: 0-2
claims:
  - id: bn_lower_loss
    says: BN ends with a lower training loss than no norm
    compare: {norm.kind: torch}
    against: {norm.kind: none}
    metric: {column: train_loss, at: final}
    expect: less
    margin: 0.01
""")

# %% [markdown]
# Train: the same engine as `bnbench sweep` (resumable: run the cell again and finished runs are skipped).

# %%
runs = bnbench.sweep(work / "tour.yaml", out_dir=work / "runs", jobs=1)
print(runs)

# %% [markdown]
# One row per run and epoch, with the config as dotted columns.

# %%
epochs = runs.epochs()
epochs[["name", "seed", "norm.kind", "epoch", "train_loss", "test_acc"]].head(6)

# %%
epochs.groupby(["norm.kind", "epoch"])["test_acc"].agg(["mean", "std", "count"])

# %% [markdown]
# Every seed's curve, one colour per norm.

# %%
fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
for (kind, seed), run in epochs.groupby(["norm.kind", "seed"]):
    colour = "tab:blue" if kind == "none" else "tab:orange"
    label = f"norm.kind={kind}" if seed == 0 else None
    loss_ax.plot(run["epoch"], run["train_loss"], color=colour, alpha=0.7, label=label)
    acc_ax.plot(run["epoch"], run["test_acc"], color=colour, alpha=0.7, label=label)
loss_ax.set(xlabel="epoch", ylabel="train loss")
acc_ax.set(xlabel="epoch", ylabel="test accuracy")
loss_ax.legend()
fig.tight_layout()
fig.savefig(work / "curves.png", dpi=100)

# %% [markdown]
# The seed groups as `bnbench compare` prints them, against no norm.

# %%
groups = bnbench.compare(runs, baseline="kind=none")
groups[["group", "n", "final_test_acc_mean", "final_test_acc_std", "delta_final_test_acc", "p_value", "test"]]

# %% [markdown]
# The study's claim, judged as `bnbench report` judges it.

# %%
verdicts = bnbench.judge(work / "runs" / "tour")
print(verdicts[["claim", "verdict", "effect", "ci_low", "ci_high", "p", "holm_p", "test", "n"]].to_string())
