"""`--name` takes what `--set name=` takes and names are shown as written (no emoji codes, no markup);
absurd but finite values are refused at validation. Real processes, dry runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import write_config


def _dry_run(config, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bnbench", "run", str(config), "--dry-run", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["exp🔥", "exp:fire:1", "2024", "résumé"])
def test_name_and_set_name_agree_and_show_the_name_as_written(tmp_path, name):
    config = write_config(tmp_path / "c.yaml")
    by_option = _dry_run(config, "--name", name)
    by_set = _dry_run(config, "--set", f'name="{name}"')
    assert by_option.returncode == by_set.returncode == 0, by_option.stderr + by_set.stderr
    assert f"start   {name}  ->" in by_option.stdout and by_option.stdout == by_set.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr_factor=1e308", "train.lr_factor: must be <= 2, got 1e+308"),
        ("train.landscape_steps=[1e308]", "train.landscape_steps[0]: must be <= 1000, got 1e+308"),
    ],
)
def test_absurd_finite_values_are_refused_at_validation(tmp_path, override, message):
    config = write_config(tmp_path / "c.yaml", train={"schedule": "exponential", "diagnostics": True})
    result = _dry_run(config, "--set", override)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
