"""Marginals (priors) ``m(z)``: modules whose ``forward()`` returns a ``Distribution``.

This is zuko's ``LazyDistribution`` convention, so any zuko flow (or any module whose
``forward()`` takes no required argument and returns a distribution) is accepted as
``marginal=`` by `rdloss.RateDistortionLoss` with no adapter. The returned
distribution has ``batch_shape == ()`` and the latent event shape.

The optimal marginal for a fixed encoder is the aggregate posterior ``p_e(z)``; every gap
between ``m(z)`` and ``p_e(z)`` is paid as rate (Alemi et al., 2018, Sec. 2).

* `StandardNormal`, `DiagonalGaussian`: closed-form KL against Gaussian
  posteriors.
* `GaussianMixture`, `VampPrior`: learned mixtures evaluated by
  `rdloss.distributions.DiagonalGaussianMixture` in ``O(B K)`` memory; the rate is
  estimated by Monte Carlo.
* `Categorical`: learned ``pi`` for discrete latents; exact KL.
"""

from rdloss.marginals._base import DiagonalGaussian, Marginal, StandardNormal
from rdloss.marginals._categorical import Categorical
from rdloss.marginals._mixture import GaussianMixture, VampPrior

__all__ = [
    "Categorical",
    "DiagonalGaussian",
    "GaussianMixture",
    "Marginal",
    "StandardNormal",
    "VampPrior",
]
