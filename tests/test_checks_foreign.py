"""Foreign distributions that never declare their shapes (scvi-tools' NegativeBinomial).

scverse/scvi-tools at 93dc4fae21917406673206320c8a3002433c4a5d,
``src/scvi/distributions/_negative_binomial.py``: ``NegativeBinomial.__init__`` ends with
``super().__init__(validate_args=validate_args)`` (no ``batch_shape``), and ``log_prob`` is
``log_nb_positive(x, mu, theta, eps=1e-8)``:
``theta * (log(theta + eps) - log(theta + mu + eps)) + x * (log(mu + eps) - log(theta + mu +
eps)) + lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)``, elementwise.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.testing import assert_close

import rdloss
from rdloss import helpers

EPS = 1e-8
B, G = 4, 6


def _log_nb_positive(x: Tensor, mu: Tensor, theta: Tensor) -> Tensor:
    log_theta_mu_eps = (theta + mu + EPS).log()
    return (
        theta * ((theta + EPS).log() - log_theta_mu_eps)
        + x * ((mu + EPS).log() - log_theta_mu_eps)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )


class ShapelessNB(Distribution):
    """Mimics scvi-tools' NegativeBinomial: Distribution.__init__ without batch_shape."""

    arg_constraints = {}  # noqa: RUF012 (torch's own convention)
    support = constraints.nonnegative_integer

    def __init__(self, mu: Tensor, theta: Tensor) -> None:
        self.mu, self.theta = mu, theta
        super().__init__(validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return _log_nb_positive(value, self.mu, self.theta)


def _data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 7, (B, G), generator=g).double()
    mu = (torch.rand(B, G, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    theta = (torch.rand(B, G, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    q_mu = torch.randn(B, 3, generator=g, dtype=torch.float64)
    return x, mu, theta, q_mu


def test_shapeless_likelihood_names_the_problem_and_the_one_line_fix() -> None:
    x, mu, theta, q_mu = _data()
    q = helpers.normal(q_mu, logvar=torch.zeros_like(q_mu))
    nb = ShapelessNB(mu, theta)
    with pytest.raises(ValueError, match="does not declare its shapes") as info:
        rdloss.RateDistortionLoss()(x, posterior=q, likelihood=nb)
    assert "reshape the decoder output" not in str(info.value)
    assert "Distribution.__init__(likelihood, batch_shape=x.shape" in str(info.value)

    # The fix the message gives, then the distortion is scvi's NLL summed over genes.
    Distribution.__init__(nb, batch_shape=x.shape, validate_args=False)
    out = rdloss.RateDistortionLoss()(x, posterior=q, likelihood=nb)
    ref = -_log_nb_positive(x, mu, theta).sum(1)
    assert_close(out.distortion_per_example, ref, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(out.distortion, [mu, theta])
    want = torch.autograd.grad(ref.mean(), [mu, theta])
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_shapeless_posterior_names_the_problem() -> None:
    _, mu, theta, _ = _data()
    with pytest.raises(ValueError, match=r"Distribution.__init__\(posterior, batch_shape="):
        rdloss.RateDistortionLoss()(posterior=ShapelessNB(mu, theta))


def test_torch_scalar_distributions_keep_their_shape_messages() -> None:
    # torch's own classes always declare their shapes: () is a scalar, not a missing shape.
    x, _, _, q_mu = _data()
    q = helpers.normal(q_mu, logvar=torch.zeros_like(q_mu))
    scalar = torch.distributions.Normal(torch.tensor(0.0), 1.0)
    with pytest.raises(ValueError, match="likelihood must cover x exactly"):
        rdloss.RateDistortionLoss()(x, posterior=q, likelihood=scalar)
    with pytest.raises(ValueError, match="posterior must have a batch dimension"):
        rdloss.RateDistortionLoss()(posterior=scalar)
