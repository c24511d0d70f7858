"""The scvi-tools two-group recipe (``examples/scvi_two_group.py``) runs reduced, with the
warm-up of ``z`` alone that scvi-tools applies.

scvi-tools' per-step KL weight (scverse/scvi-tools at
93dc4fae21917406673206320c8a3002433c4a5d, ``src/scvi/train/_trainingplans.py``,
``_compute_kl_weight``): ``slope * (step / n_steps_kl_warmup) + min_kl_weight`` while
``step < n_steps_kl_warmup``, else ``max_kl_weight`` (defaults 0 and 1), written out here.
"""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_scvi_two_group_recipe_matches_scvi_and_warms_up_z_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = runpy.run_path(str(EXAMPLES / "scvi_two_group.py"), run_name="example_scvi")
    steps, warmup = 9, 4
    result = script["main"](["--steps", str(steps), "--warmup", str(warmup)])
    # The script's own checks against VAE.loss written out, in float64: before, in and
    # after the warm-up, values and gradients.
    assert len(result.checks) == 6
    assert all(check.max_rel <= 1e-12 for check in result.checks), result.checks
    kl_weight = [(s / warmup if s < warmup else 1.0) for s in range(steps)]
    assert result.beta_z == pytest.approx(kl_weight, rel=1e-15, abs=1e-15)
    assert result.beta_l == [1.0] * steps
    metrics = result.metrics
    assert metrics["rate"] == pytest.approx(metrics["rate/z"] + metrics["rate/l"], rel=1e-5)
    assert metrics["beta/z"] == 1.0 and metrics["beta/l"] == 1.0  # evaluated after the ramp
    assert all(math.isfinite(v) for v in metrics.values())
    out = capsys.readouterr().out
    assert "check gradient at step 5" in out and "beta/z 0.500" in out
