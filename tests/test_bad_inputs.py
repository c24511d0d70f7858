"""Catalogue of bad inputs: each raises a clear error naming the argument; none returns a number."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal

import rdloss
from rdloss import helpers, marginals, objectives

B, D, P = 4, 3, 6


def _x() -> torch.Tensor:
    return torch.randint(0, 2, (B, P)).float()


def _q(batch: int = B) -> torch.distributions.Distribution:
    return helpers.normal(torch.randn(batch, D), scale=1.0)


def _p(batch: int = B) -> torch.distributions.Distribution:
    return helpers.bernoulli(logits=torch.randn(batch, P))


def _loss(**kwargs: object) -> Callable[..., object]:
    return rdloss.RateDistortionLoss(**kwargs)  # type: ignore[arg-type]


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
    "marginal of the wrong latent size": (
        lambda: _loss(marginal=marginals.StandardNormal(4))(_x(), posterior=_q(), likelihood=_p()),
        ValueError,
        r"marginal must describe one latent of the posterior's event_shape \(3,\)",
    ),
    "marginal of the wrong type": (
        lambda: _loss(marginal="normal"),
        TypeError,
        r"marginal must be an nn.Module returning a Distribution, a Distribution, or None, got str",
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
        r"give exactly one of scale= or logvar=",
    ),
    "helper: scale that enlarges loc": (
        lambda: helpers.normal(torch.zeros(B, D), scale=torch.ones(2, B, D)),
        ValueError,
        r"scale of shape \(2, 4, 3\) must broadcast to loc's shape \(4, 3\)",
    ),
    "helper: non-positive fixed scale": (
        lambda: helpers.normal(torch.zeros(B, D), scale=0.0),
        ValueError,
        r"scale must be > 0, got 0.0",
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
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_raises_named_error(case: str) -> None:
    call, error, message = CASES[case]
    with pytest.raises(error, match=message):
        call()


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 15
