"""`RDOutput.metrics` per data dimension, against VDVAE's own reduction.

openai/vdvae at ea35b490313bc33e7f8ac63dd8132f3cc1a729b4, ``vae.py`` (``VAE.forward``):
``ndims = np.prod(x.shape[1:])``, ``rate_per_pixel = sum of the layers' KL / ndims``, the
distortion per pixel likewise (``DmolNet.nll`` divides by the dimensions), and
``elbo = (distortion_per_pixel + rate_per_pixel).mean()``: nats per dimension, which the
papers report in bits per dimension after dividing by ln 2.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

import rdloss
from rdloss import helpers

B, C, H, W = 4, 3, 2, 2


def _out() -> tuple[rdloss.RDOutput, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    loc = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    mu = torch.randn(B, 5, generator=g, dtype=torch.float64)
    likelihood = Normal(loc, 0.7)
    out = rdloss.RateDistortionLoss()(
        x, posterior=helpers.normal(mu, logvar=torch.zeros_like(mu)), likelihood=likelihood
    )
    # Written out, not through rdloss: N(0, I) KL and the Gaussian NLL summed per example.
    rate = 0.5 * (mu**2).sum(1)
    nll = -likelihood.log_prob(x).sum((1, 2, 3))
    return out, rate, nll


def test_bits_per_dim_equal_vdvae_elbo_over_ln2() -> None:
    out, rate, nll = _out()
    ndims = C * H * W
    vdvae_elbo = (nll / ndims + rate / ndims).mean()  # vae.py: nats per dimension
    m = out.metrics(data_dims=ndims)
    # metrics() reports float32 numbers.
    assert m["nats_per_dim"] == pytest.approx(float(vdvae_elbo), rel=1e-6)
    assert m["bits_per_dim"] == pytest.approx(float(vdvae_elbo) / math.log(2), rel=1e-6)
    assert m["rate_bits_per_dim"] == pytest.approx(
        float(rate.mean()) / ndims / math.log(2), rel=1e-6
    )
    assert m["distortion_bits_per_dim"] == pytest.approx(
        float(nll.mean()) / ndims / math.log(2), rel=1e-6
    )
    assert "bits_per_dim" not in out.metrics()  # only when the data size is given


@pytest.mark.parametrize(
    ("data_dims", "error"), [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_data_dims_refused_clearly(data_dims: object, error: type[Exception]) -> None:
    out, _, _ = _out()
    with pytest.raises(error, match="data_dims"):
        out.metrics(data_dims=data_dims)  # type: ignore[arg-type]
