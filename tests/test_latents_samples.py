"""Several samples per example with structured latents: the sample axis, declared.

A hierarchical VAE that draws ``S`` samples of its top latent ``z2`` computes the lower
posterior ``q(z1 | x, z2)`` and prior ``p(z1 | z2)`` once per sample: ``batch_shape (S, B)``.
With ``samples=S`` the rate of such a group is the mean over the samples of its KL; left
undeclared, ``(S, B)`` would read as ``(B, T)`` steps, which is refused where the shapes
cannot tell the two apart. References are written out here, not through rdloss.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.distributions import Independent, Normal
from torch.testing import assert_close

import rdloss
from rdloss import helpers

EXACT = {"rtol": 1e-10, "atol": 1e-12}
B, D, P = 4, 3, 6


def _gauss_kl(mq: Tensor, lq: Tensor, mp: Tensor, lp: Tensor) -> Tensor:
    """KL(N(mq, e^lq) || N(mp, e^lp)) summed over the last axis (log-scales lq, lp)."""
    return (lp - lq + (torch.exp(2 * lq) + (mq - mp) ** 2) / (2 * torch.exp(2 * lp)) - 0.5).sum(-1)


def _model(samples: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(samples)

    def leaf(*shape: int, scale: float = 1.0) -> Tensor:
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    t = {
        "m2": leaf(B, D),
        "l2": leaf(B, D, scale=0.3),
        "eps": torch.randn(samples, B, D, generator=g, dtype=torch.float64),
        "w1": leaf(D, D),
        "wp": leaf(D, D),
        "l1": leaf(B, D, scale=0.3),
        "dec": leaf(D, P),
    }
    t["x"] = (torch.rand(B, P, generator=g) < 0.5).double()
    return t


def _call(t: dict[str, Tensor], samples: int, **kwargs: object) -> rdloss.RDOutput:
    z2 = t["m2"] + t["l2"].exp() * t["eps"]  # (S, B, D): S reparameterised draws
    q1 = Independent(Normal(z2 @ t["w1"], t["l1"].exp().expand_as(z2)), 1)  # batch (S, B)
    p1 = Independent(Normal(z2 @ t["wp"], torch.ones_like(z2)), 1)
    likelihood = helpers.bernoulli(logits=z2 @ t["dec"], event_dims=1)  # (S, B, P)
    return rdloss.RateDistortionLoss()(
        t["x"],
        posterior={"z2": Normal(t["m2"], t["l2"].exp()), "z1": q1},
        prior={"z1": p1},
        likelihood=likelihood,
        samples=samples,
        **kwargs,  # type: ignore[arg-type]
    )


def _reference(t: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Per example: KL of z2 to N(0, I), mean over samples of z1's KL, and of the NLL."""
    z2 = t["m2"] + t["l2"].exp() * t["eps"]
    r2 = _gauss_kl(t["m2"], t["l2"], torch.zeros_like(t["m2"]), torch.zeros_like(t["l2"]))
    l1 = t["l1"].expand_as(z2)
    r1 = _gauss_kl(z2 @ t["w1"], l1, z2 @ t["wp"], torch.zeros_like(l1)).mean(0)
    logits = z2 @ t["dec"]
    nll = torch.clamp(logits, min=0) - logits * t["x"] + torch.log1p(torch.exp(-logits.abs()))
    return r2, r1, nll.sum(-1).mean(0)


@pytest.mark.parametrize("samples", [3, B])  # S == B is the case that used to pass silently
def test_declared_samples_average_the_per_sample_groups(samples: int) -> None:
    t = _model(samples)
    out = _call(t, samples)
    r2, r1, nll = _reference(t)
    assert out.rate_per_group is not None
    assert_close(out.rate_per_group["z2"], r2, **EXACT)
    assert_close(out.rate_per_group["z1"], r1, **EXACT)
    assert_close(out.distortion_per_example, nll, **EXACT)
    assert out.rate_per_step is None  # no step axis was read
    assert out.rate_per_dimension is not None and out.rate_per_dimension.shape == (B, 2 * D)
    assert_close(out.rate_per_dimension.sum(1), out.rate_per_example, **EXACT)
    ref = (r2 + r1 + nll).mean()
    leaves = [t[k] for k in ("m2", "l2", "w1", "wp", "l1", "dec")]
    got = torch.autograd.grad(out.loss, leaves)
    for a, b in zip(got, torch.autograd.grad(ref, leaves), strict=True):
        assert_close(a, b, **EXACT)


def test_undeclared_samples_equal_to_the_batch_are_refused() -> None:
    t = _model(B)
    with pytest.raises(ValueError, match=rf"read as \(B, T\) steps.*pass samples={B}"):
        _call(t, 1)


def test_undeclared_samples_of_another_size_name_the_fix() -> None:
    t = _model(3)
    with pytest.raises(ValueError, match="if its first axis holds samples, pass samples=3"):
        _call(t, 1)


def test_per_sample_monte_carlo_rate_uses_each_samples_z() -> None:
    t = _model(3)
    z2 = t["m2"] + t["l2"].exp() * t["eps"]
    q1 = Independent(Normal(z2 @ t["w1"], t["l1"].exp().expand_as(z2)), 1)
    p1 = Independent(Normal(z2 @ t["wp"], torch.ones_like(z2)), 1)
    z1 = q1.rsample()  # (S, B, D): one z1 per sample of z2
    out = rdloss.RateDistortionLoss(rate_estimator="mc")(
        t["x"],
        posterior={"z1": q1},
        prior={"z1": p1},
        z={"z1": z1},
        likelihood=helpers.bernoulli(logits=z1 @ t["dec"], event_dims=1),
        samples=3,
    )
    ref = (q1.log_prob(z1) - p1.log_prob(z1)).mean(0)
    assert_close(out.rate_per_example, ref, **EXACT)


def test_rate_alone_with_samples() -> None:
    t = _model(3)
    z2 = t["m2"] + t["l2"].exp() * t["eps"]
    q1 = Independent(Normal(z2 @ t["w1"], t["l1"].exp().expand_as(z2)), 1)
    p1 = Independent(Normal(z2 @ t["wp"], torch.ones_like(z2)), 1)
    out = rdloss.RateDistortionLoss()(
        posterior={"z2": Normal(t["m2"], t["l2"].exp()), "z1": q1}, prior={"z1": p1}, samples=3
    )
    r2, r1, _ = _reference(t)
    assert_close(out.rate_per_example, r2 + r1, **EXACT)


@pytest.mark.parametrize(
    ("samples", "message"),
    [("enumerate", "'enumerate' needs decoder="), (0, "samples must be an int >= 1")],
)
def test_bad_samples_with_a_likelihood_refused(samples: object, message: str) -> None:
    t = _model(3)
    with pytest.raises(ValueError, match=message):
        _call(t, samples)  # type: ignore[arg-type]


def test_likelihood_must_cover_the_declared_samples() -> None:
    t = _model(3)
    z2 = t["m2"] + t["l2"].exp() * t["eps"]
    q1 = Independent(Normal(z2 @ t["w1"], t["l1"].exp().expand_as(z2)), 1)
    with pytest.raises(
        ValueError, match=r"covers \(\) samples: it must cover \(S, \*x.shape\) = \(3, 4, 6\)"
    ):
        rdloss.RateDistortionLoss()(
            t["x"],
            posterior={"z1": q1},
            likelihood=helpers.bernoulli(logits=torch.zeros(B, P, dtype=torch.float64)),
            samples=3,
        )
    assert math.isfinite(float(_call(t, 3).loss.detach()))
