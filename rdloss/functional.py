"""Pure functions behind `rdloss.RateDistortionLoss`.

Conventions (Alemi et al., 2018, "Fixing a Broken ELBO", arXiv:1711.00464):

* posterior ``e(z|x)``: a ``Distribution`` with ``batch_shape == (B,)`` and the latent
  ``event_shape``;
* marginal ``m(z)``: a ``Distribution`` with ``batch_shape == ()`` and the same event shape;
* likelihood ``d(x|z)``: a ``Distribution`` whose ``batch_shape + event_shape`` equals
  ``x.shape`` (one latent sample) or ``(S,) + x.shape`` (``S`` samples per example).

Rate ``R = E_e[log e(z|x) - log m(z)]`` is summed over latent dimensions and distortion
``D = E_e[-log d(x|z)]`` over data dimensions, both per example and in nats.
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Distribution

from rdloss._checks import check_tensor
from rdloss._means import batch_mean, global_batch_mean
from rdloss._shapes import enumerate_posterior
from rdloss.distortion import distortion, sample_mean
from rdloss.families import standard_normal
from rdloss.latents import (
    as_latent,
    as_marginal,
    as_prior,
    as_stepped_latent,
    check_categories,
    sample_dims,
)
from rdloss.rate import (
    Rate,
    RateEstimator,
    check_estimator,
    enumerated,
    group_rate,
    rate_terms,
)

__all__ = [
    "Rate",
    "RateEstimator",
    "as_latent",
    "as_marginal",
    "as_prior",
    "as_stepped_latent",
    "batch_mean",
    "distortion",
    "elbo",
    "enumerate_posterior",
    "enumerated_rate",
    "global_batch_mean",
    "rate",
    "rate_terms",
    "sample_mean",
    "standard_normal",
]


def _against(
    posterior: Distribution, marginal: Distribution | None, prior: Distribution | None
) -> Distribution | None:
    """The prior or the marginal in `rdloss.latents`' shapes, checked against the posterior."""
    if prior is not None:
        against: Distribution | None = as_prior(prior, posterior)
        name = "prior"
    elif marginal is not None:
        against, name = as_marginal(marginal, posterior.event_shape), "marginal"
    else:
        return None
    check_categories(posterior, against, name)  # type: ignore[arg-type]
    return against


def rate(
    posterior: Distribution,
    marginal: Distribution | None = None,
    *,
    prior: Distribution | None = None,
    z: Tensor | None = None,
    estimator: RateEstimator = "auto",
    balance: float | None = None,
) -> Rate:
    r"""Per-example rate $R = \mathrm{KL}(e(z|x) \,\|\, m(z))$ in nats.

    Args:
        posterior: ``e(z|x)`` with ``batch_shape (B,)``, or ``(B, T)`` for a latent with a
            step axis (see `as_stepped_latent`; other batch dims become event dims).
        marginal: ``m(z)`` with ``batch_shape ()`` and the posterior's event shape;
            ``None`` for $\mathcal N(0, I)$ (closed form for diagonal-Gaussian posteriors
            without building the marginal).
        prior: a prior the model computed for this batch, ``batch_shape ()`` or the
            posterior's (``(B,)``, ``(B, T)``); it replaces ``marginal``.
        z: ``(*batch, *event)`` or ``(S, *batch, *event)`` samples from the posterior, the
            same ones that fed the decoder. Required for ``"mc"`` and for ``"auto"`` when no
            closed form is registered.
        estimator: ``"analytic"`` uses ``torch.distributions.kl_divergence``; ``"mc"`` the
            single-sample estimate $\frac1S\sum_s \log e(z_s|x) - \log m(z_s)$;
            ``"auto"`` the closed form where one is registered, else Monte Carlo.
        balance: KL balancing (Hafner et al., 2023, DreamerV3): the fraction $\alpha$ of the
            rate's gradient that goes to the prior. The value stays the KL; the gradient is
            that of $\alpha\,\mathrm{KL}(\mathrm{sg}(e)\|p) + (1-\alpha)\,
            \mathrm{KL}(e\|\mathrm{sg}(p))$. ``None`` (default): the plain KL.

    Returns:
        `Rate` with ``per_example (B,)``, ``per_dimension (B, D)`` or ``None``, the
        estimator used, and ``per_step (B, T)`` for a posterior with steps.

    Raises:
        ValueError: unknown estimator, shape mismatch, or no way to compute the rate.
        NotImplementedError: ``"analytic"`` asked for a pair without a registered KL.

    Examples:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> q = Normal(torch.zeros(2, 3), torch.ones(2, 3))
        >>> m = Normal(torch.zeros(3), torch.ones(3))
        >>> rate(q, m).per_example
        tensor([0., 0.])
    """
    estimator = check_estimator(estimator)
    posterior = as_stepped_latent(posterior)
    against = _against(posterior, marginal, prior)
    if z is not None:
        sample_dims(check_tensor("z", z), posterior)
    return group_rate(posterior, against, z, estimator, balance)


def enumerated_rate(
    posterior: Distribution,
    marginal: Distribution | None = None,
    *,
    prior: Distribution | None = None,
    balance: float | None = None,
) -> Rate:
    r"""Exact rate of a discrete posterior.

    The closed-form KL where one is registered, else $\sum_k q_k \log(q_k/m_k)$.

    Args:
        posterior: ``Categorical`` or ``OneHotCategorical`` with ``batch_shape (B,)``.
        marginal: a distribution over the same support, ``batch_shape ()``.
        prior: instead of ``marginal``, a prior of ``batch_shape ()`` or ``(B,)``.
        balance: KL balancing, as in `rate`.

    Returns:
        `Rate` with ``estimator`` ``"analytic"`` or ``"enumerate"``.
    """
    enumerate_posterior(posterior)
    against = _against(posterior, marginal, prior)
    if against is None:
        raise ValueError(
            "an enumerated rate needs a discrete marginal or prior, such as "
            "rdloss.marginals.Categorical(K); the default N(0, I) is continuous"
        )
    return enumerated(posterior, against, balance)


def elbo(rate: Tensor, distortion: Tensor) -> Tensor:
    """ELBO ``-(D + R)`` from tensors of matching shape (per example or batch means)."""
    return -(distortion + rate)
