"""Catalogue of bad inputs: each raises a clear error naming the argument; none returns a number.

Every entry of ``CASES`` is ``(call, exception, message pattern)``; the command line's
entries raise `CommandError` carrying the exit code and the last line printed on stderr.
``docs/errors.md`` tabulates the same keys (checked below, so the table cannot drift).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal

import rdloss
from rdloss import diagnostics, helpers, marginals, objectives, plot, schedules
from rdloss.cli import main as cli_main

B, D, P = 4, 3, 6
DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


class CommandError(Exception):
    """The ``rdloss`` command exited non-zero: ``exit <code>: <last stderr line>``."""


def _cli(*argv: str) -> int:
    """Run the command in-process; raise `CommandError` unless it exits 0."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(list(argv))
    if code != 0:
        lines = err.getvalue().strip().splitlines() or [""]
        raise CommandError(f"exit {code}: {lines[-1]}")
    return code


def _a_file() -> Path:
    """A plain file in the working directory (the test runs in its own tmp_path)."""
    blocker = Path("not-a-folder")
    blocker.write_text("")
    return blocker


def _encoder(u: torch.Tensor) -> torch.distributions.Distribution:
    return helpers.normal(u, scale=1.0)


def _grouped_output() -> rdloss.RDOutput:
    """A two-group RDOutput (groups 'top' and 'bottom'), built by hand."""
    r = torch.ones(B)
    return rdloss.RDOutput(
        r.mean(),
        r.mean(),
        r.mean(),
        -2 * r.mean(),
        r,
        r,
        None,
        "analytic",
        {},
        rate_per_group={"top": r / 2, "bottom": r / 2},
    )


def _mi_two_sizes() -> None:
    metric = diagnostics.MutualInformation()
    metric.update(torch.zeros(B, 3), logvar=torch.zeros(B, 3))
    metric.update(torch.zeros(B, 2), logvar=torch.zeros(B, 2))


def _x() -> torch.Tensor:
    return torch.randint(0, 2, (B, P)).float()


def _q(batch: int = B) -> torch.distributions.Distribution:
    return helpers.normal(torch.randn(batch, D), scale=1.0)


def _p(batch: int = B) -> torch.distributions.Distribution:
    return helpers.bernoulli(logits=torch.randn(batch, P))


def _loss(**kwargs: object) -> Callable[..., object]:
    return rdloss.RateDistortionLoss(**kwargs)  # type: ignore[arg-type]


def _out() -> rdloss.RDOutput:
    return rdloss.RateDistortionLoss()(_x(), posterior=_q(), likelihood=_p())


def _updates(metric: diagnostics.ActiveUnits, *batches: torch.Tensor) -> None:
    for batch in batches:
        metric.update(batch)


def _nan_x() -> torch.Tensor:
    x = _x()
    x[1, 2] = float("nan")
    return x


CASES: dict[str, tuple[Callable[[], object], type[Exception], str]] = {
    "flat likelihood vs image x (silent-broadcast trap)": (
        lambda: _loss()(
            torch.rand(B, 1, 28, 28),
            posterior=_q(),
            likelihood=helpers.bernoulli(logits=torch.zeros(B, 784), validate_args=False),
        ),
        ValueError,
        r"likelihood must cover x exactly.*\(4, 1, 28, 28\).*\(4,\).*\(784,\)",
    ),
    "likelihood with a different data size": (
        lambda: _loss()(
            _x(), posterior=_q(), likelihood=helpers.bernoulli(logits=torch.zeros(B, 5))
        ),
        ValueError,
        r"likelihood must cover x exactly",
    ),
    "likelihood whose event swallows the batch": (
        lambda: _loss()(
            _x(),
            posterior=_q(),
            likelihood=Independent(Bernoulli(logits=torch.zeros(B, P)), 2),
        ),
        ValueError,
        r"event_shape \(4, 6\) swallows the batch dimension",
    ),
    "posterior batch differs from x": (
        lambda: _loss()(_x(), posterior=_q(batch=3), likelihood=_p()),
        ValueError,
        r"posterior batch size 3 does not match x's batch size 4",
    ),
    "x is not a tensor": (
        lambda: _loss()(_x().tolist(), posterior=_q(), likelihood=_p()),
        TypeError,
        r"x must be a torch.Tensor, got list",
    ),
    "posterior given as (mu, logvar) tuple": (
        lambda: _loss()(_x(), posterior=(torch.zeros(B, D), torch.zeros(B, D)), likelihood=_p()),
        TypeError,
        r"posterior must be a torch.distributions.Distribution, got tuple",
    ),
    "likelihood given as logits tensor": (
        lambda: _loss()(_x(), posterior=_q(), likelihood=torch.zeros(B, P)),
        TypeError,
        r"likelihood must be a torch.distributions.Distribution, got Tensor",
    ),
    "NaN in x": (
        lambda: _loss()(_nan_x(), posterior=_q(), likelihood=_p()),
        ValueError,
        r"non-finite values \(NaN or inf\) in x",
    ),
    "inf in posterior parameters": (
        lambda: _loss()(
            _x(),
            posterior=helpers.normal(torch.full((B, D), float("inf")), scale=1.0),
            likelihood=_p(),
        ),
        ValueError,
        r"rate is NaN/inf for 4 of 4 examples: check the posterior",
    ),
    "NaN in likelihood parameters": (
        lambda: _loss()(
            _x(),
            posterior=_q(),
            likelihood=helpers.bernoulli(
                logits=torch.full((B, P), float("nan")), validate_args=False
            ),
        ),
        ValueError,
        r"distortion is NaN/inf for 4 of 4 examples: check the likelihood",
    ),
    "empty batch": (
        lambda: _loss()(torch.zeros(0, P), posterior=_q(), likelihood=_p()),
        ValueError,
        r"x has an empty batch \(shape \(0, 6\)\)",
    ),
    "Monte Carlo rate without z": (
        lambda: _loss(rate_estimator="mc")(_x(), posterior=_q(), likelihood=_p()),
        ValueError,
        r"z is required for the Monte Carlo rate",
    ),
    "negative beta": (lambda: objectives.Beta(-0.5), ValueError, r"beta must be >= 0, got -0.5"),
    "beta as a string": (
        lambda: objectives.Beta("1"),  # type: ignore[arg-type]
        TypeError,
        r"beta must be a real number or an rdloss.schedules.Schedule, got str",
    ),
    "negative sigma": (
        lambda: objectives.TargetRate(-1.0),
        ValueError,
        r"sigma must be >= 0, got -1.0",
    ),
    "zero target-rate weight": (
        lambda: objectives.TargetRate(1.0, weight=0.0),
        ValueError,
        r"weight must be > 0, got 0.0",
    ),
    "both likelihood and decoder": (
        lambda: _loss()(_x(), posterior=_q(), likelihood=_p(), decoder=lambda z: _p()),
        ValueError,
        r"pass exactly one of likelihood= or decoder=",
    ),
    "neither likelihood nor decoder": (
        lambda: _loss()(_x(), posterior=_q()),
        ValueError,
        r"pass exactly one of likelihood= or decoder=",
    ),
    "weight of the wrong shape": (
        lambda: _loss()(_x(), posterior=_q(), likelihood=_p(), weight=torch.ones(B, 1)),
        ValueError,
        r"weight must have shape \(B,\) = \(4,\), got \(4, 1\)",
    ),
    "negative weight": (
        lambda: _loss()(
            _x(), posterior=_q(), likelihood=_p(), weight=torch.tensor([1.0, -1.0, 1.0, 1.0])
        ),
        ValueError,
        r"weight must be non-negative",
    ),
    "zero samples": (
        lambda: _loss()(_x(), posterior=_q(), decoder=lambda z: _p(), samples=0),
        ValueError,
        r"samples must be an int >= 1 or 'enumerate', got 0",
    ),
    "samples with a likelihood": (
        lambda: _loss()(_x(), posterior=_q(), likelihood=_p(), samples=2),
        ValueError,
        r"samples=2 needs decoder=",
    ),
    "enumerate a continuous posterior": (
        lambda: _loss()(_x(), posterior=_q(), decoder=lambda z: _p(), samples="enumerate"),
        TypeError,
        r"samples='enumerate' needs a Categorical or OneHotCategorical posterior, got Independent",
    ),
    "sample a posterior without rsample": (
        lambda: _loss()(
            _x(), posterior=Categorical(logits=torch.zeros(B, 5)), decoder=lambda z: _p()
        ),
        ValueError,
        r"Categorical has no rsample",
    ),
    "enumerate with the default continuous marginal": (
        lambda: _loss()(
            _x(),
            posterior=Categorical(logits=torch.zeros(B, 5)),
            decoder=lambda z: _p(),
            samples="enumerate",
        ),
        ValueError,
        r"samples='enumerate' needs a discrete marginal",
    ),
    "unknown rate estimator": (
        lambda: _loss(rate_estimator="exact"),
        ValueError,
        r"rate_estimator must be 'analytic', 'mc' or 'auto', got 'exact'",
    ),
    "sync_dist that is not a bool": (
        lambda: _loss(sync_dist="yes"),
        TypeError,
        r"sync_dist must be a bool, got str",
    ),
    "marginal of the wrong latent size": (
        lambda: _loss(marginal=marginals.StandardNormal(4))(_x(), posterior=_q(), likelihood=_p()),
        ValueError,
        r"marginal must describe one latent of the posterior's event_shape \(3,\)",
    ),
    "marginal of the wrong type": (
        lambda: _loss(marginal="normal"),
        TypeError,
        r"marginal must be an nn.Module returning a Distribution, a Distribution, a mapping "
        r".*got str",
    ),
    "objective of the wrong type": (
        lambda: _loss(objective=lambda r, d: r + d),
        TypeError,
        r"objective must be an rdloss.objectives.Objective, got function",
    ),
    "z of the wrong shape": (
        lambda: _loss(rate_estimator="mc")(
            _x(), posterior=_q(), likelihood=_p(), z=torch.zeros(B, D + 1)
        ),
        ValueError,
        r"z must have shape \(B, \*event\) = \(4, 3\) or \(S, B, \*event\), got \(4, 4\)",
    ),
    "z with samples the likelihood lacks": (
        lambda: _loss()(_x(), posterior=_q(), likelihood=_p(), z=torch.zeros(2, B, D)),
        ValueError,
        r"z has sample dims \(2,\) but the likelihood has \(\)",
    ),
    "decoder returning logits": (
        lambda: _loss()(_x(), posterior=_q(), decoder=lambda z: torch.zeros(B, P)),
        TypeError,
        r"decoder must return a torch.distributions.Distribution, got Tensor",
    ),
    "posterior without a batch dimension": (
        lambda: _loss()(_x(), posterior=Normal(torch.tensor(0.0), 1.0), likelihood=_p()),
        ValueError,
        r"posterior must have a batch dimension",
    ),
    "helper: logvar shape differs from loc": (
        lambda: helpers.normal(torch.zeros(B, D), logvar=torch.zeros(B, D + 1)),
        ValueError,
        r"logvar must have loc's shape \(4, 3\), got \(4, 4\)",
    ),
    "helper: both scale and logvar": (
        lambda: helpers.normal(torch.zeros(B, D), scale=1.0, logvar=torch.zeros(B, D)),
        ValueError,
        r"give exactly one of scale=, logvar= or log_scale=",
    ),
    "helper: laplace without a scale": (
        lambda: helpers.laplace(torch.zeros(B, D)),
        ValueError,
        r"give exactly one of scale= or log_scale=",
    ),
    "helper: scale that enlarges loc": (
        lambda: helpers.normal(torch.zeros(B, D), scale=torch.ones(2, B, D)),
        ValueError,
        r"scale of shape \(2, 4, 3\) must broadcast to loc's shape \(4, 3\)",
    ),
    "helper: non-positive fixed scale": (
        lambda: helpers.normal(torch.zeros(B, D), scale=0.0),
        ValueError,
        r"scale must be > 0 and finite, got 0.0",
    ),
    "helper: both logits and probs": (
        lambda: helpers.bernoulli(logits=torch.zeros(B, P), probs=torch.zeros(B, P)),
        ValueError,
        r"give exactly one of logits= or probs=",
    ),
    "helper: event_dims beyond the tensor": (
        lambda: helpers.bernoulli(logits=torch.zeros(B, P), event_dims=2),
        ValueError,
        r"event_dims must be in \[0, 1\] for logits of shape \(4, 6\).*got 2",
    ),
    "helper: category axis on the batch": (
        lambda: helpers.categorical(torch.zeros(B, 256), category_dim=0),
        ValueError,
        r"category_dim must not be the batch dimension 0",
    ),
    "marginal latent_dim zero": (
        lambda: marginals.StandardNormal(0),
        ValueError,
        r"latent_dim must be >= 1, got 0",
    ),
    # ---- schedules -------------------------------------------------------------------
    "schedule: zero steps": (
        lambda: schedules.Linear(0.0, 1.0, steps=0),
        ValueError,
        r"steps must be >= 1, got 0",
    ),
    "schedule: fractional steps": (
        lambda: schedules.Linear(0.0, 1.0, steps=2.5),  # type: ignore[arg-type]
        TypeError,
        r"steps must be an int \(or a float with an integer value, e\.g\. 1e5\), got 2\.5",
    ),
    "schedule: NaN start": (
        lambda: schedules.Cosine(float("nan"), 1.0, steps=10),
        ValueError,
        r"start must be finite, got nan",
    ),
    "schedule: value given as text": (
        lambda: schedules.Constant("0.5"),  # type: ignore[arg-type]
        TypeError,
        r"value must be a real number, got str",
    ),
    "schedule: ramp ratio above one": (
        lambda: schedules.Cyclical(steps=10, ratio=1.5),
        ValueError,
        r"ratio must be in \(0, 1\], got 1.5",
    ),
    "schedule: more cycles than steps": (
        lambda: schedules.Cyclical(steps=3, cycles=10),
        ValueError,
        r"cycles must be <= steps .*got cycles=10 and steps=3",
    ),
    "schedule: zero steepness": (
        lambda: schedules.Sigmoid(0.0, 1.0, steps=10, steepness=0.0),
        ValueError,
        r"steepness must be > 0, got 0.0",
    ),
    "schedule: called with a Python int step": (
        lambda: schedules.Linear(0.0, 1.0, steps=10)(5),
        TypeError,
        r"step must be a torch.Tensor .*got int",
    ),
    # ---- objectives and controllers ---------------------------------------------------
    "objective: weight schedule that stays at 0": (
        lambda: objectives.TargetRate(5.0, weight=schedules.Constant(0.0)),
        ValueError,
        r"weight must be > 0 at some step, got a Constant schedule that stays at 0",
    ),
    "objective: beta schedule that goes negative": (
        lambda: objectives.Beta(schedules.Linear(-1.0, 1.0, steps=10)),
        ValueError,
        r"beta must be >= 0 at every step, got a Linear schedule whose values reach -1.0",
    ),
    "objective: capacity schedule below zero": (
        lambda: objectives.Capacity(schedules.Cosine(-5.0, 25.0, steps=100)),
        ValueError,
        r"capacity must be >= 0 at every step, got a Cosine schedule whose values reach -5.0",
    ),
    "objective: zero capacity gamma": (
        lambda: objectives.Capacity(5.0, gamma=0.0),
        ValueError,
        r"gamma must be > 0, got 0.0",
    ),
    "objective: infinite target distortion": (
        lambda: objectives.TargetDistortion(float("inf")),
        ValueError,
        r"delta must be finite, got inf",
    ),
    "objective: unknown reduction": (
        lambda: objectives.TargetRate(1.0, reduction="mean"),  # type: ignore[arg-type]
        ValueError,
        r"reduction must be 'batch' or 'example', got 'mean'",
    ),
    "objective: unknown free-bits grouping": (
        lambda: objectives.FreeBits(per="dim"),  # type: ignore[arg-type]
        ValueError,
        r"per must be 'dimension', 'group', 'step' or 'total', got 'dim'",
    ),
    "objective: distortion batch differs from rate": (
        lambda: objectives.Beta(1.0)(torch.ones(3), torch.ones(5)),
        ValueError,
        r"distortion must have rate's shape \(B,\) = \(3,\), got \(5,\)",
    ),
    "objective: rate with a trailing unit dimension": (
        lambda: objectives.TargetRate(1.0)(torch.ones(3, 1), torch.ones(3)),
        ValueError,
        r"rate must have shape \(B,\), got \(3, 1\)",
    ),
    "objective: rate given as a float": (
        lambda: objectives.Beta(1.0)(1.0, torch.ones(3)),
        TypeError,
        r"rate must be a torch.Tensor of shape \(B,\), got float",
    ),
    "objective: weight of another batch size": (
        lambda: objectives.TargetDistortion(1.0)(
            torch.ones(3), torch.ones(3), weight=torch.ones(4)
        ),
        ValueError,
        r"weight must have rate's shape \(B,\) = \(3,\), got \(4,\)",
    ),
    "objective: free bits per dimension without per-dimension rates": (
        lambda: objectives.FreeBits(0.1)(torch.ones(3), torch.ones(3)),
        ValueError,
        r"FreeBits\(per='dimension'\) needs rate_per_dimension, which is None",
    ),
    "objective: per-dimension rates of another batch": (
        lambda: objectives.FreeBits(0.1)(
            torch.ones(3), torch.ones(3), rate_per_dimension=torch.ones(4, 2)
        ),
        ValueError,
        r"rate_per_dimension must have shape \(B, D\) with B = 3, got \(4, 2\)",
    ),
    "controller: GECO alpha of one": (
        lambda: objectives.GECO(1.0, alpha=1.0),
        ValueError,
        r"alpha must be in \[0, 1\), got 1.0",
    ),
    "controller: GECO multiplier outside its clamp": (
        lambda: objectives.GECO(1.0, multiplier=10.0, max_multiplier=5.0),
        ValueError,
        r"multiplier must lie in \[min_multiplier, max_multiplier\] = \[1e-06, 5.0\], got 10.0",
    ),
    "controller: GECO min multiplier above max": (
        lambda: objectives.GECO(1.0, min_multiplier=2.0, max_multiplier=1.0),
        ValueError,
        r"min_multiplier must be < max_multiplier, got 2.0 and 1.0",
    ),
    "controller: GECO lr schedule below zero": (
        lambda: objectives.GECO(1.0, lr=schedules.Linear(-0.1, 0.1, steps=10)),
        ValueError,
        r"lr must be >= 0 at every step, got a Linear schedule whose values reach -0.1",
    ),
    "controller: GECO distortion of another batch": (
        lambda: objectives.GECO(1.0)(torch.ones(3), torch.ones(5)),
        ValueError,
        r"distortion must have rate's shape \(B,\) = \(3,\), got \(5,\)",
    ),
    "controller: rate controller with equal beta bounds": (
        lambda: objectives.RateController(5.0, beta_min=1.0, beta_max=1.0),
        ValueError,
        r"beta_min must be < beta_max, got 1.0 and 1.0",
    ),
    "controller: negative proportional gain": (
        lambda: objectives.RateController(5.0, kp=-0.1),
        ValueError,
        r"kp must be >= 0, got -0.1",
    ),
    "controller: rate controller fed a 2-D rate": (
        lambda: objectives.RateController(5.0)(torch.ones(3, 2), torch.ones(3)),
        ValueError,
        r"rate must have shape \(B,\), got \(3, 2\)",
    ),
    "objective: negative beta assigned by attribute": (
        lambda: setattr(objectives.Beta(1.0), "beta", -3.0),
        ValueError,
        r"beta must be >= 0, got -3.0",
    ),
    "objective: text sigma assigned by attribute": (
        lambda: setattr(objectives.TargetRate(1.0), "sigma", "2"),
        TypeError,
        r"sigma must be a real number or an rdloss.schedules.Schedule, got str",
    ),
    "objective: reduction reassigned after construction": (
        lambda: setattr(objectives.TargetRate(1.0), "reduction", "example"),
        AttributeError,
        r"TargetRate.reduction is fixed at construction",
    ),
    "objective: adaptive target rate with a scheduled weight": (
        lambda: objectives.TargetRate(
            1.0, weight=schedules.Linear(1.0, 2.0, steps=5), adaptive=True
        ),
        TypeError,
        r"weight must be a number with adaptive=True \(the initial weight\), got a Linear",
    ),
    "objective: adaptive target rate weight above its clamp": (
        lambda: objectives.TargetRate(1.0, weight=20.0, adaptive=True, max_weight=10.0),
        ValueError,
        r"weight must lie in \[0.001, max_weight\] = \[0.001, 10.0\] with adaptive=True, got 20.0",
    ),
    "controller: unknown rate controller error mode": (
        lambda: objectives.RateController(1.0, error="percent"),
        ValueError,
        r"error must be 'relative' or 'absolute', got 'percent'",
    ),
    "controller: GECO alpha reassigned": (
        lambda: setattr(objectives.GECO(1.0), "alpha", 0.5),
        AttributeError,
        r"GECO.alpha is fixed at construction",
    ),
    "metric: grouped metric fed other groups": (
        lambda: diagnostics.RateDistortion(groups=["a", "b"]).update(_grouped_output()),
        ValueError,
        r"rate_per_group has groups \['top', 'bottom'\], but this metric was built with "
        r"groups=\['a', 'b'\]",
    ),
    "metric: grouped metric fed tensors": (
        lambda: diagnostics.RateDistortion(groups=["a"]).update(torch.ones(B), torch.ones(B)),
        ValueError,
        r"this metric was built with groups=\['a'\]: update it with the loss's RDOutput",
    ),
    "metric: groups given as one string": (
        lambda: diagnostics.RatePerDimension(groups="top"),
        TypeError,
        r"groups must be a sequence of group names",
    ),
    "metric: negative example weight": (
        lambda: diagnostics.RateDistortion().update(
            torch.ones(B), torch.ones(B), weight=-torch.ones(B)
        ),
        ValueError,
        r"weight must be non-negative",
    ),
    "metric: active units of a scalar latent": (
        lambda: diagnostics.ActiveUnits().update(Normal(torch.zeros(B), 1.0)),
        ValueError,
        r"posterior_mean must have latent units \(an event_shape such as \(D,\)\)",
    ),
    "metric: ungrouped active units fed a mapping": (
        lambda: diagnostics.ActiveUnits().update({"a": torch.zeros(B, D)}),
        ValueError,
        r"posterior_mean is a mapping of groups \['a'\]: build the metric with groups=\['a'\]",
    ),
    "mutual information: latent size changes between updates": (
        _mi_two_sizes,
        ValueError,
        r"posterior has 2 latent dimensions but earlier batches had 3",
    ),
    # ---- marginals ---------------------------------------------------------------------
    "marginal: fractional latent_dim": (
        lambda: marginals.DiagonalGaussian(2.5),  # type: ignore[arg-type]
        TypeError,
        r"latent_dim must be an int, got float",
    ),
    "marginal: zero mixture components": (
        lambda: marginals.GaussianMixture(2, n_components=0),
        ValueError,
        r"n_components must be >= 1, got 0",
    ),
    "marginal: categorical one_hot given as 1": (
        lambda: marginals.Categorical(3, one_hot=1),  # type: ignore[arg-type]
        TypeError,
        r"one_hot must be a bool, got int",
    ),
    "marginal: log_prob of a z with one column": (
        lambda: marginals.StandardNormal(3).log_prob(torch.zeros(4, 1)),
        ValueError,
        r"z must have shape \(\.\.\., \*event_shape\) = \(\.\.\., 3\) for this marginal, "
        r"got \(4, 1\)",
    ),
    "marginal: mixture log_prob of a list": (
        lambda: marginals.GaussianMixture(3, 5).log_prob([0.0, 0.0, 0.0]),  # type: ignore[arg-type]
        TypeError,
        r"z must be a torch.Tensor, got list",
    ),
    "marginal: sample shape given as an int": (
        lambda: marginals.StandardNormal(3).sample(16),  # type: ignore[arg-type]
        TypeError,
        r"shape must be a tuple of non-negative ints or a torch.Size .*got 16",
    ),
    "marginal: VampPrior encoder that is not callable": (
        lambda: marginals.VampPrior("encoder", torch.zeros(5, D)),  # type: ignore[arg-type]
        TypeError,
        r"encoder must be an nn.Module or a callable returning a Distribution, got str",
    ),
    "marginal: VampPrior integer pseudo-inputs": (
        lambda: marginals.VampPrior(_encoder, torch.zeros(5, D, dtype=torch.long)),
        TypeError,
        r"pseudo_inputs must be a floating-point tensor .*got dtype torch.int64",
    ),
    "marginal: VampPrior without pseudo-inputs": (
        lambda: marginals.VampPrior(_encoder, torch.zeros(0, D)),
        ValueError,
        r"pseudo_inputs has an empty batch \(shape \(0, 3\)\)",
    ),
    "marginal: VampPrior encoder returning a tensor": (
        lambda: marginals.VampPrior(lambda u: u, torch.zeros(5, D))(),  # type: ignore[arg-type, return-value]
        TypeError,
        r"encoder\(pseudo_inputs\) must be a torch.distributions.Distribution, got Parameter",
    ),
    "marginal: VampPrior encoder that drops pseudo-inputs": (
        lambda: marginals.VampPrior(lambda u: _encoder(u[:2]), torch.zeros(5, D))(),
        ValueError,
        r"encoder\(pseudo_inputs\) must have batch_shape \(K,\) = \(5,\), got \(2,\)",
    ),
    # ---- helpers -----------------------------------------------------------------------
    "helper: integer loc": (
        lambda: helpers.normal(torch.zeros(B, D, dtype=torch.long), scale=0.5),
        TypeError,
        r"loc must be a floating-point tensor, got dtype torch.int64",
    ),
    "helper: infinite fixed scale": (
        lambda: helpers.normal(torch.zeros(B, D), scale=float("inf")),
        ValueError,
        r"scale must be > 0 and finite, got inf",
    ),
    "helper: scale given as text": (
        lambda: helpers.normal(torch.zeros(B, D), scale="1"),  # type: ignore[arg-type]
        TypeError,
        r"scale must be a float or a Tensor, got str",
    ),
    "helper: integer Bernoulli logits": (
        lambda: helpers.bernoulli(logits=torch.zeros(B, P, dtype=torch.long)),
        TypeError,
        r"logits must be a floating-point tensor, got dtype torch.int64",
    ),
    "helper: neither logits nor probs": (
        lambda: helpers.bernoulli(),
        ValueError,
        r"give exactly one of logits= or probs=",
    ),
    "helper: category_dim given as a float": (
        lambda: helpers.categorical(torch.zeros(B, 5), category_dim=1.0),  # type: ignore[arg-type]
        TypeError,
        r"category_dim must be an int, got float",
    ),
    # ---- diagnostics: functional -------------------------------------------------------
    "diagnostics: rate and distortion of different shapes": (
        lambda: diagnostics.functional.rate_distortion(torch.ones(3), torch.ones(4)),
        ValueError,
        r"rate and distortion must have the same shape, got \(3,\) and \(4,\)",
    ),
    "diagnostics: empty rate": (
        lambda: diagnostics.functional.rate_distortion(torch.ones(0), torch.ones(0)),
        ValueError,
        r"rate has no examples \(shape \(0,\)\)",
    ),
    "diagnostics: zero data_dims": (
        lambda: diagnostics.functional.rate_distortion(torch.ones(3), torch.ones(3), data_dims=0),
        ValueError,
        r"data_dims must be >= 1, got 0",
    ),
    "diagnostics: negative data entropy": (
        lambda: diagnostics.functional.mutual_information_bounds(
            torch.tensor(2.0), torch.tensor(5.0), -1.0
        ),
        ValueError,
        r"data_entropy must be >= 0, got -1.0",
    ),
    "diagnostics: active units of one example": (
        lambda: diagnostics.functional.active_units(torch.zeros(1, D)),
        ValueError,
        r"posterior_mean must have shape \(N, D\) with N >= 2, got \(1, 3\)",
    ),
    "diagnostics: negative activity threshold": (
        lambda: diagnostics.functional.active_units(torch.randn(B, D), threshold=-0.1),
        ValueError,
        r"threshold must be >= 0, got -0.1",
    ),
    "diagnostics: 3-D rate per dimension": (
        lambda: diagnostics.functional.rate_per_dimension(torch.zeros(2, 3, 4)),
        ValueError,
        r"rate_per_dimension must have shape \(B, D\), got \(2, 3, 4\)",
    ),
    "diagnostics: posterior probabilities that do not sum to one": (
        lambda: diagnostics.functional.discrete_mutual_information(torch.ones(2, 2)),
        ValueError,
        r"posterior_probs must be non-negative and sum to 1 over dim 1, got min 1 and sums "
        r"\[2.0, 2.0\]",
    ),
    "diagnostics: negative data weights": (
        lambda: diagnostics.functional.discrete_mutual_information(
            torch.eye(2), data_weights=torch.tensor([1.0, -1.0])
        ),
        ValueError,
        r"data_weights must be non-negative with a positive sum, got min -1 and sum 0",
    ),
    "diagnostics: marginal probabilities of another size": (
        lambda: diagnostics.functional.discrete_mutual_information(
            torch.eye(2), torch.full((3,), 1 / 3)
        ),
        ValueError,
        r"marginal_probs must have shape \(K,\) = \(2,\), got \(3,\)",
    ),
    # ---- diagnostics: metrics ----------------------------------------------------------
    "metric: unknown output field": (
        lambda: diagnostics.RateDistortion(output="nll"),
        ValueError,
        r"output must be None or one of \('rate', .*\), got 'nll'",
    ),
    "metric: bits_per_dim output without data_dims": (
        lambda: diagnostics.RateDistortion(output="bits_per_dim"),
        ValueError,
        r"output='bits_per_dim' needs data_dims",
    ),
    "metric: validate_args given as text": (
        lambda: diagnostics.MutualInformationBounds(validate_args="yes"),
        TypeError,
        r"validate_args must be a bool, got str",
    ),
    "metric: zero latent_dim": (
        lambda: diagnostics.RatePerDimension(latent_dim=0),
        ValueError,
        r"latent_dim must be >= 1, got 0",
    ),
    "metric: update with a NaN rate": (
        lambda: diagnostics.RateDistortion().update(torch.tensor([float("nan")]), torch.ones(1)),
        ValueError,
        r"non-finite values \(NaN or inf\) in rate",
    ),
    "metric: update with rate and distortion of different sizes": (
        lambda: diagnostics.MutualInformationBounds().update(torch.ones(3), torch.ones(4)),
        ValueError,
        r"rate and distortion must be per-example tensors of the same shape \(B,\), got "
        r"\(3,\) and \(4,\)",
    ),
    "metric: update with an RDOutput and a distortion": (
        lambda: diagnostics.RateDistortion().update(_out(), torch.ones(B)),
        ValueError,
        r"pass either an RDOutput or rate and distortion tensors",
    ),
    "metric: active units of a 1-D tensor": (
        lambda: diagnostics.ActiveUnits().update(torch.ones(D)),
        ValueError,
        r"posterior_mean must have at least 2 dimension\(s\) .*got shape \(3,\)",
    ),
    "metric: active units with another latent size": (
        lambda: _updates(diagnostics.ActiveUnits(), torch.ones(2, 3), torch.ones(2, 4)),
        ValueError,
        r"posterior_mean has 4 units but earlier batches had 3",
    ),
    "metric: rate per dimension with inf": (
        lambda: diagnostics.RatePerDimension().update(torch.tensor([[float("inf"), 0.0]])),
        ValueError,
        r"non-finite values \(NaN or inf\) in rate_per_dimension",
    ),
    # ---- diagnostics: mutual information, aggregate posterior, IWAE ---------------------
    "mutual information: negative posterior scale": (
        lambda: diagnostics.functional.aggregate_posterior(
            torch.randn(5, 2), scale=-torch.ones(5, 2)
        ),
        ValueError,
        r"scale must be positive and finite, got values in \[-1, -1\]",
    ),
    "mutual information: NaN posterior mean": (
        lambda: diagnostics.functional.aggregate_posterior(
            torch.full((5, 2), float("nan")), scale=torch.ones(5, 2)
        ),
        ValueError,
        r"non-finite values \(NaN or inf\) in loc",
    ),
    "mutual information: both scale and logvar": (
        lambda: diagnostics.functional.aggregate_posterior(
            torch.zeros(5, 2), scale=torch.ones(5, 2), logvar=torch.zeros(5, 2)
        ),
        ValueError,
        r"give exactly one of scale= or logvar=",
    ),
    "mutual information: z of another shape": (
        lambda: diagnostics.functional.minibatch_aggregate_posterior(
            torch.zeros(5, 2), scale=torch.ones(5, 2), z=torch.zeros(5, 3)
        ),
        ValueError,
        r"z must have loc's shape \(5, 2\), got \(5, 3\)",
    ),
    "mutual information: metric with a string marginal": (
        lambda: diagnostics.MutualInformation("normal"),  # type: ignore[arg-type]
        TypeError,
        r"marginal must be a marginal module, a Distribution or None, got str",
    ),
    "mutual information: metric with zero chunk_size": (
        lambda: diagnostics.MutualInformation(chunk_size=0),
        ValueError,
        r"chunk_size must be >= 1, got 0",
    ),
    "mutual information: metric with a text seed": (
        lambda: diagnostics.MutualInformation(seed="0"),  # type: ignore[arg-type]
        ValueError,
        r"seed must be an int in \[0, 2\*\*64\), got '0'",
    ),
    "mutual information: metric update with a Bernoulli posterior": (
        lambda: diagnostics.MutualInformation().update(_p()),
        TypeError,
        r"MutualInformation needs diagonal-Gaussian posteriors "
        r".*got Independent over (Checked)?Bernoulli",
    ),
    "mutual information: metric update with a zero scale": (
        lambda: diagnostics.MutualInformation().update(torch.zeros(B, D), torch.zeros(B, D)),
        ValueError,
        r"scale must be positive and finite, got values in \[0, 0\]",
    ),
    "mutual information: pairwise log-density of mismatched sizes": (
        lambda: diagnostics.functional.pairwise_gaussian_log_prob(
            torch.zeros(3, 2), torch.zeros(4, 3), torch.ones(4, 3)
        ),
        ValueError,
        r"expected z \(M, D\), loc \(N, D\), scale \(N, D\) with the same D, got \(3, 2\), "
        r"\(4, 3\), \(4, 3\)",
    ),
    "iwae: zero importance samples": (
        lambda: diagnostics.importance_weighted_bound(_x(), _q(), lambda z: _p(len(z)), k=0),
        ValueError,
        r"k must be >= 1, got 0",
    ),
    "iwae: decoder returning logits": (
        lambda: diagnostics.importance_weighted_bound(
            _x(),
            _q(),
            lambda z: torch.zeros(len(z), P),  # type: ignore[arg-type, return-value]
            k=2,
        ),
        TypeError,
        r"decoder must return a torch.distributions.Distribution, got Tensor",
    ),
    "iwae: posterior batch differs from x": (
        lambda: diagnostics.importance_weighted_bound(_x(), _q(batch=3), lambda z: _p(len(z))),
        ValueError,
        r"posterior batch size 3 does not match x's batch size 4",
    ),
    # ---- plots -------------------------------------------------------------------------
    "plot: no points": (
        lambda: plot.rd_plane([]),
        ValueError,
        r"points must contain at least one \(rate, distortion\) point",
    ),
    "plot: point given as a triple": (
        lambda: plot.rd_plane([(1.0, 2.0, 3.0)]),  # type: ignore[list-item]
        TypeError,
        r"points\[0\] must be an RDPoint or a \(rate, distortion\) pair, got \(1.0, 2.0, 3.0\)",
    ),
    "plot: rate given as text": (
        lambda: plot.rd_plane([plot.RDPoint("0.5", 2.0)]),  # type: ignore[arg-type]
        TypeError,
        r"points\[0\].rate must be a real number, got str '0.5'",
    ),
    "plot: NaN distortion": (
        lambda: plot.rd_plane([(1.0, 2.0), (0.5, float("nan"))]),
        ValueError,
        r"points\[1\].distortion must be finite, got nan",
    ),
    "plot: empty ELBO levels": (
        lambda: plot.rd_plane([(1.0, 2.0)], elbo_levels=[]),
        ValueError,
        r"elbo_levels must contain at least one value, or be None",
    ),
    "plot: NaN entropy": (
        lambda: plot.rd_plane([(1.0, 2.0)], entropy=float("nan")),
        ValueError,
        r"entropy must be finite, got nan",
    ),
    "plot: axes that are not matplotlib Axes": (
        lambda: plot.rd_plane([(1.0, 2.0)], ax="left"),  # type: ignore[arg-type]
        TypeError,
        r"ax must be a matplotlib Axes or None, got str",
    ),
    "plot: trajectory of unequal lengths": (
        lambda: plot.trajectory([0.0, 1.0], [3.0]),
        ValueError,
        r"rate and distortion must be non-empty and of equal length, got 2 and 1",
    ),
    "plot: trajectory of a 2-D tensor": (
        lambda: plot.trajectory(torch.ones(2, 2), torch.ones(2, 2)),  # type: ignore[arg-type]
        TypeError,
        r"rate\[0\] must be a real number, got Tensor",
    ),
    "plot: trajectory given as text": (
        lambda: plot.trajectory("0.1 0.2", [1.0, 2.0]),  # type: ignore[arg-type]
        TypeError,
        r"rate must be a sequence of numbers, got str",
    ),
    # ---- command line (exit code and the message on stderr) ----------------------------
    "cli: unknown command": (
        lambda: _cli("fly"),
        CommandError,
        r"exit 2: .*argument COMMAND: invalid choice: 'fly'",
    ),
    "cli: unknown marginal": (
        lambda: _cli("sweep", "--marginal", "flow"),
        CommandError,
        r"exit 2: .*argument --marginal: invalid choice: 'flow'",
    ),
    "cli: unknown decoder": (
        lambda: _cli("sweep", "--decoder", "pixelcnn"),
        CommandError,
        r"exit 2: .*argument --decoder: invalid choice: 'pixelcnn'",
    ),
    "cli: negative beta": (
        lambda: _cli("sweep", "--beta", "-1"),
        CommandError,
        r"exit 2: .*argument --beta: expected a finite number >= 0, got '-1'",
    ),
    "cli: zero epochs": (
        lambda: _cli("sweep", "--epochs", "0"),
        CommandError,
        r"exit 2: .*argument --epochs: expected an integer >= 1, got '0'",
    ),
    "cli: fractional latent size": (
        lambda: _cli("demo", "--latent-dim", "1.5"),
        CommandError,
        r"exit 2: .*argument --latent-dim: expected an integer, got '1.5'",
    ),
    "cli: zero threads": (
        lambda: _cli("demo", "--threads", "0"),
        CommandError,
        r"exit 2: .*argument --threads: expected an integer >= 1, got '0'",
    ),
    "cli: target rate given as text": (
        lambda: _cli("toy", "--target-rate", "x"),
        CommandError,
        r"exit 2: .*argument --target-rate: expected a number, got 'x'",
    ),
    "cli: negative learning rate": (
        lambda: _cli("toy", "--lr", "-1"),
        CommandError,
        r"exit 2: .*argument --lr: expected a finite number > 0, got '-1'",
    ),
    "cli: NaN learning rate": (
        lambda: _cli("toy", "--lr", "nan"),
        CommandError,
        r"exit 2: .*argument --lr: expected a finite number > 0, got 'nan'",
    ),
    "cli: seed beyond 64 bits": (
        lambda: _cli("toy", "--seed", str(2**64)),
        CommandError,
        r"exit 2: .*argument --seed: expected an integer in \[0, 2\*\*64\), "
        r"got '18446744073709551616'",
    ),
    "cli: unknown device": (
        lambda: _cli("sweep", "--device", "tpu9"),
        CommandError,
        r"exit 1: rdloss: error: unknown --device 'tpu9'; try cpu or cuda",
    ),
    "cli: meta device": (
        lambda: _cli("sweep", "--device", "meta"),
        CommandError,
        r"exit 1: rdloss: error: --device meta holds no data; use a device that computes",
    ),
    "cli: device torch was built without": (
        lambda: _cli("sweep", "--device", "mps"),
        CommandError,
        r"exit 1: rdloss: error: --device mps is not available here: ",
    ),
    "cli: learning rate that diverges": (
        lambda: _cli("toy", "--lr", "1e308", "--steps", "5"),
        CommandError,
        r"exit 1: rdloss: error: training diverged at step 1 of 5: non-finite parameters "
        r"with lr=1e\+308; try a smaller --lr",
    ),
    "cli: output folder inside a file": (
        lambda: _cli("toy", "--out", str(_a_file() / "sub")),
        CommandError,
        r"exit 1: rdloss: error: cannot write to output folder .*sub",
    ),
    # --- latent groups, per-call priors, steps (issue 12) ----------------------------------
    "groups: prior key names no posterior group": (
        lambda: _loss()(_x(), posterior={"z1": _q()}, prior={"z9": _q()}, likelihood=_p()),
        ValueError,
        r"prior has a key 'z9' that names no posterior group; the groups are \['z1'\]",
    ),
    "groups: z key names no posterior group": (
        lambda: _loss(rate_estimator="mc")(
            _x(), posterior={"z1": _q()}, z={"zz": torch.zeros(B, D)}, likelihood=_p()
        ),
        ValueError,
        r"z has a key 'zz' that names no posterior group",
    ),
    "groups: marginal key names no posterior group": (
        lambda: _loss(marginal={"top": marginals.StandardNormal(D)})(
            _x(), posterior={"z1": _q()}, likelihood=_p()
        ),
        ValueError,
        r"marginal has a key 'top' that names no posterior group",
    ),
    "groups: prior mapping for one posterior": (
        lambda: _loss()(_x(), posterior=_q(), prior={"z1": _q()}, likelihood=_p()),
        TypeError,
        r"prior is a mapping of groups but the posterior is one Independent",
    ),
    "groups: one prior for a mapping of posteriors": (
        lambda: _loss()(_x(), posterior={"z1": _q()}, prior=_q(), likelihood=_p()),
        TypeError,
        r"posterior is a mapping of groups \['z1'\], so prior must be a mapping",
    ),
    "groups: empty posterior mapping": (
        lambda: _loss()(_x(), posterior={}, likelihood=_p()),
        ValueError,
        r"posterior is an empty mapping",
    ),
    "groups: groups of different batch sizes": (
        lambda: _loss()(_x(), posterior={"a": _q(), "b": _q(B - 1)}, likelihood=_p()),
        ValueError,
        r"posterior\['b'\] has batch size 3, the first group 4",
    ),
    "groups: prior batch neither () nor the posterior's": (
        lambda: _loss()(_x(), posterior=_q(), prior=_q(B - 1), likelihood=_p()),
        ValueError,
        r"prior must have batch_shape \(\) or the posterior's \(4,\) and the posterior's "
        r"event_shape \(3,\), got batch_shape \(3,\)",
    ),
    "groups: prior event shape differs": (
        lambda: _loss()(
            _x(),
            posterior=_q(),
            prior=helpers.normal(torch.zeros(B, D + 1), scale=1.0),
            likelihood=_p(),
        ),
        ValueError,
        r"prior must have batch_shape \(\) or the posterior's \(4,\) and the posterior's "
        r"event_shape \(3,\), got batch_shape \(4,\) and event_shape \(4,\)",
    ),
    "groups: step axis differs between posterior and prior": (
        lambda: _loss()(
            _x(),
            posterior=Independent(Normal(torch.zeros(B, 5, D), torch.ones(B, 5, D)), 1),
            prior=Independent(Normal(torch.zeros(B, 4, D), torch.ones(B, 4, D)), 1),
            likelihood=_p(),
        ),
        ValueError,
        r"the step axis differs: posterior T = 5, prior T = 4",
    ),
    "groups: z of a group has the wrong shape": (
        lambda: _loss(rate_estimator="mc")(
            _x(), posterior={"z1": _q()}, z={"z1": torch.zeros(B, D + 2)}, likelihood=_p()
        ),
        ValueError,
        r"z\['z1'\] must have shape \(B, \*event\) = \(4, 3\) or \(S, B, \*event\), got \(4, 5\)",
    ),
    "groups: free bits per step without a step axis": (
        lambda: _loss(objective=objectives.FreeBits(per="step"))(
            _x(), posterior={"z1": _q()}, likelihood=_p()
        ),
        ValueError,
        r"FreeBits\(per='step'\) needs a step axis in every group, but \['z1'\] have none",
    ),
    "groups: free bits per group on an ungrouped call": (
        lambda: _loss(objective=objectives.FreeBits(per="group"))(
            _x(), posterior=_q(), likelihood=_p()
        ),
        ValueError,
        r"FreeBits\(per='group'\) needs named latent groups",
    ),
    "groups: discrete posterior against the default N(0, I)": (
        lambda: _loss()(_x(), posterior=Categorical(logits=torch.zeros(B, D)), likelihood=_p()),
        ValueError,
        r"the posterior Categorical is discrete but the rate is taken against the "
        r"continuous Normal \(the default marginal is N\(0, I\)\)",
    ),
    "groups: flow posterior with the default marginal": (
        lambda: _loss()(
            _x(),
            posterior=torch.distributions.TransformedDistribution(
                helpers.normal(torch.zeros(B, D), scale=1.0),
                [torch.distributions.transforms.TanhTransform()],
            ),
            likelihood=_p(),
        ),
        ValueError,
        r"the default marginal N\(0, I\) needs the posterior's dtype and device from its "
        r"mean, which TransformedDistribution does not implement",
    ),
    "groups: kl_balance outside [0, 1]": (
        lambda: _loss(kl_balance=1.5),
        ValueError,
        r"kl_balance must lie in \[0, 1\], got 1.5",
    ),
    "groups: marginal group name with a dot": (
        lambda: _loss(marginal={"enc.z": marginals.StandardNormal(D)}),
        ValueError,
        r"marginal group names must be non-empty strings without '.', got 'enc.z'",
    ),
    "groups: enumeration of grouped latents": (
        lambda: _loss(marginal={"c": marginals.Categorical(D)})(
            _x(),
            posterior={"c": Categorical(logits=torch.zeros(B, D))},
            decoder=lambda z: _p(),
            samples="enumerate",
        ),
        ValueError,
        r"samples='enumerate' takes one discrete latent without steps",
    ),
    "groups: NVAE balancing on an ungrouped call": (
        lambda: _loss(objective=objectives.Beta(0.5, group_balance=True))(
            _x(), posterior=_q(), likelihood=_p()
        ),
        ValueError,
        r"Beta\(group_balance=True\) balances named latent groups",
    ),
    "groups: NVAE alpha without balancing": (
        lambda: objectives.Beta(0.5, alpha={"z1": 1.0}),
        ValueError,
        r"alpha weights NVAE's group balancing: pass group_balance=True",
    ),
    "groups: NVAE alpha missing a group": (
        lambda: _loss(objective=objectives.Beta(0.5, group_balance=True, alpha={"a": 1.0}))(
            _x(), posterior={"a": _q(), "b": _q()}, likelihood=_p()
        ),
        ValueError,
        r"alpha must give every group a value; missing \['b'\]",
    ),
    "groups: KL balancing of a flow prior": (
        lambda: _loss(kl_balance=0.5, rate_estimator="mc")(
            _x(),
            posterior=_q(),
            prior=torch.distributions.TransformedDistribution(
                helpers.normal(torch.zeros(B, D), scale=1.0),
                [torch.distributions.transforms.AffineTransform(0.0, 2.0)],
            ),
            z=torch.zeros(B, D),
            likelihood=_p(),
        ),
        TypeError,
        r"KL balancing needs a stop-gradient copy of TransformedDistribution, whose "
        r"parameters rdloss cannot reach",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_raises_named_error(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the command's output folder, if it ever got that far
    call, error, message = CASES[case]
    try:
        with pytest.raises(error, match=message):
            call()
    finally:
        plt.close("all")


def _area(case: str) -> str:
    return case.split(":", 1)[0] if ":" in case else "loss"


def test_catalogue_is_large_and_covers_every_area() -> None:
    areas = [_area(case) for case in CASES]
    counts = {area: areas.count(area) for area in set(areas)}
    assert len(CASES) >= 70
    for area in ("loss", "helper", "marginal", "objective", "controller", "schedule"):
        assert counts[area] >= 4, (area, counts)
    for area in ("diagnostics", "metric", "mutual information", "iwae", "plot", "cli"):
        assert counts[area] >= 3, (area, counts)


def _documented_cases() -> list[str]:
    """The "bad input" column of every row of the table in docs/errors.md."""
    rows = []
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[1] not in ("bad input", "---"):
            rows.append(cells[1])
    return rows


def test_docs_table_lists_exactly_the_catalogue() -> None:
    documented = _documented_cases()
    assert len(documented) == len(set(documented)), "a case is listed twice in docs/errors.md"
    assert sorted(set(CASES) - set(documented)) == [], "cases missing from docs/errors.md"
    assert sorted(set(documented) - set(CASES)) == [], "docs/errors.md lists unknown cases"
