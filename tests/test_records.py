"""The record schemas: one owner, no silent columns."""

from __future__ import annotations

import pytest

from bnbench.records import DIAGNOSTICS, METRIC_COLUMNS, STEPS, metrics_schema


def test_a_row_must_have_exactly_the_declared_columns(tmp_path):
    with pytest.raises(ValueError, match=r"undeclared columns \['extra'\]"):
        STEPS.row(step=1, epoch=1, examples_seen=8, train_loss=0.1, train_acc=0.5, extra=1)
    with pytest.raises(ValueError, match=r"lacks \['train_acc'\]"):
        STEPS.row(step=1, epoch=1, examples_seen=8, train_loss=0.1)
    STEPS.create(tmp_path)
    with pytest.raises(ValueError):  # appending a row with a key the file does not declare
        STEPS.append(tmp_path, [{"step": 1, "bogus": 2}])
    row = DIAGNOSTICS.row(value=1.5, quantity="act_mean", layer="norm1", epoch=1, step=3)
    assert list(row) == list(DIAGNOSTICS.columns)  # declared order, whatever the call's order
    DIAGNOSTICS.create(tmp_path)
    DIAGNOSTICS.append(tmp_path, [row])
    assert DIAGNOSTICS.read(tmp_path) == [{k: str(v) for k, v in row.items()}]


def test_metrics_schema_adds_the_other_evaluation_mode_only_with_running_statistics():
    assert metrics_schema(False, "running").columns == METRIC_COLUMNS
    assert metrics_schema(True, "running").columns[-1] == "test_acc_batch_stats"
    assert metrics_schema(True, "batch").columns[-1] == "test_acc_running_stats"
