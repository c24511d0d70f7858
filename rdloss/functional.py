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

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    Normal,
    OneHotCategorical,
)

from rdloss._distortion import distortion, sample_mean
from rdloss._kl import closed_form_kl, factorised_parts, is_discrete, stop_gradient, widened
from rdloss._means import batch_mean, global_batch_mean
from rdloss._checks import (
    check_distribution,
    check_fraction,
    check_tensor,
    widen_half,
)
from rdloss.latents import (
    LatentGroup,
    RateTerms,
    as_latent,
    as_marginal,
    as_prior,
    as_stepped_latent,
    sample_dims,
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

RateEstimator = Literal["analytic", "mc", "auto"]
UsedEstimator = Literal["analytic", "mc", "enumerate"]


class Rate(NamedTuple):
    """Per-example rate and how it was computed.

    Attributes:
        per_example: ``(B,)`` rate in nats, summed over latent dimensions (and steps).
        per_dimension: ``(B, D)`` rate per flattened latent dimension (steps included)
            where the KL factorises (both sides are products over dimensions), else ``None``.
        estimator: ``"analytic"`` (closed-form KL), ``"mc"`` (Monte Carlo) or
            ``"enumerate"`` (exact sum over a discrete support).
        per_step: ``(B, T)`` rate per step for a posterior with a step axis, else ``None``.
    """

    per_example: Tensor
    per_dimension: Tensor | None
    estimator: UsedEstimator
    per_step: Tensor | None = None


def _reduce(values: Tensor, lead: torch.Size, estimator: UsedEstimator, per_dim: bool) -> Rate:
    """`Rate` from values over ``(*lead, ...)``: per dimension (flattened) or per batch entry."""
    if per_dim:
        # (B, D), the common case, is already flat: a reshape would still cost a view op.
        if values.ndim != len(lead) + 1:
            values = values.reshape(*lead, -1)
        per_step = values.sum(-1)
        per_dimension: Tensor | None = values if values.ndim == 2 else values.reshape(lead[0], -1)
    else:
        per_step, per_dimension = values, None
    if len(lead) == 1:
        return Rate(per_step, per_dimension, estimator)
    return Rate(per_step.sum(-1), per_dimension, estimator, per_step)


def _analytic_rate(posterior: Distribution, against: Distribution) -> Rate | None:
    lead = posterior.batch_shape
    parts = factorised_parts(posterior, against)
    if parts is not None:
        per_element = closed_form_kl(*parts)
        if per_element is not None:
            per_element = per_element.expand(*lead, *posterior.event_shape)
            return _reduce(widen_half(per_element), lead, "analytic", per_dim=True)
    kl = closed_form_kl(posterior, against)
    return None if kl is None else _reduce(widen_half(kl), lead, "analytic", per_dim=False)


def _mc_rate(posterior: Distribution, against: Distribution, z: Tensor) -> Rate:
    lead = posterior.batch_shape
    n_sample = sample_dims(z, posterior)
    parts = factorised_parts(posterior, against)
    pair = parts if parts is not None else (posterior, against)
    log_ratio = widen_half(pair[0].log_prob(z)) - widen_half(pair[1].log_prob(z))
    values = log_ratio.mean(0) if n_sample else log_ratio
    return _reduce(values, lead, "mc", per_dim=parts is not None)


def standard_normal(posterior: Distribution) -> Distribution:
    """``N(0, I)`` over the posterior's event shape, in its dtype and on its device."""
    try:
        loc = posterior.mean.new_zeros(posterior.event_shape).detach()
    except NotImplementedError:  # flows and transformed posteriors have no closed-form mean
        raise ValueError(
            f"the default marginal N(0, I) needs the posterior's dtype and device from its "
            f"mean, which {type(posterior).__name__} does not implement; pass a marginal "
            "(e.g. rdloss.marginals.StandardNormal(latent_dim)) or a prior"
        ) from None
    # Known-valid parameters: skip torch's argument checks (a host sync each).
    unit = Normal(loc, torch.ones_like(loc), validate_args=False)
    if len(posterior.event_shape) == 0:
        # A scalar latent: torch registers no KL for Independent(Normal, 0).
        return unit
    return Independent(unit, len(posterior.event_shape), validate_args=False)


def _standard_normal_rate(posterior: Distribution) -> Rate | None:
    r"""Closed-form KL to $\mathcal N(0, I)$ of a product of Normals, else ``None``.

    $\tfrac12(\mu^2 + \sigma^2 - 1) - \log\sigma$ per dimension: the same value as torch's
    Normal-Normal KL, without building the marginal or dividing by its unit scale.
    """
    # A bare Normal here is a scalar latent (as_latent wraps extra batch dims).
    base = posterior.base_dist if isinstance(posterior, Independent) else posterior
    if type(base) is not Normal:
        return None
    loc, scale = widen_half(base.loc), widen_half(base.scale)
    # The same sum in four fused ops (addcmul: a + v * b * c): this runs every step.
    per_element = torch.addcmul(-0.5 - scale.log(), loc, loc, value=0.5)
    per_element = torch.addcmul(per_element, scale, scale, value=0.5)
    return _reduce(per_element, posterior.batch_shape, "analytic", per_dim=True)


def _describe(dist: Distribution) -> str:
    """``Independent(OneHotCategorical)`` rather than a bare ``Independent``."""
    if isinstance(dist, Independent):
        return f"Independent({_describe(dist.base_dist)})"
    return type(dist).__name__


def _plain_rate(
    posterior: Distribution,
    against: Distribution | None,
    z: Tensor | None,
    estimator: RateEstimator,
) -> Rate:
    """The rate against ``against`` (``None``: N(0, I)), canonical shapes, no balancing."""
    if against is None:
        if estimator != "mc":
            closed = _standard_normal_rate(posterior)
            if closed is not None:
                return closed
        against = standard_normal(posterior)
    posterior, against = widened(posterior), widened(against)
    if estimator != "mc":
        result = _analytic_rate(posterior, against)
        if result is not None:
            return result
        if estimator == "analytic" and not (is_discrete(posterior) and not is_discrete(against)):
            raise NotImplementedError(
                "estimator='analytic' but torch.distributions has no KL registered for "
                f"({type(posterior).__name__}, {type(against).__name__}); use 'mc' or 'auto'"
            )
    if is_discrete(posterior) and not is_discrete(against):
        raise ValueError(
            f"the posterior {_describe(posterior)} is discrete but the rate is taken "
            f"against the continuous {_describe(against)} (the default marginal is "
            "N(0, I)): a discrete latent needs a discrete marginal or prior, e.g. "
            "rdloss.marginals.Categorical(K) or the prior your model computes"
        )
    if z is None:
        raise ValueError(
            f"z is required for the Monte Carlo rate (estimator={estimator!r}, no closed-form "
            f"KL for ({type(posterior).__name__}, {type(against).__name__})); pass the z "
            "that fed the decoder, or a decoder so the loss draws it"
        )
    return _mc_rate(posterior, against, z)


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
    _check_estimator(estimator)
    posterior = as_stepped_latent(posterior)
    if prior is not None:
        against: Distribution | None = as_prior(prior, posterior)
    elif marginal is not None:
        against = as_marginal(marginal, posterior.event_shape)
    else:
        against = None
    if z is not None:
        sample_dims(check_tensor("z", z), posterior)
    return _canonical_rate(posterior, against, z, estimator, balance)


def _check_estimator(estimator: object) -> None:
    if estimator not in ("analytic", "mc", "auto"):
        raise ValueError(f"estimator must be 'analytic', 'mc' or 'auto', got {estimator!r}")


def _canonical_rate(
    posterior: Distribution,
    against: Distribution | None,
    z: Tensor | None,
    estimator: RateEstimator,
    balance: float | None,
) -> Rate:
    """`rate` of arguments already in canonical, checked shapes (`rdloss.latents.resolve`)."""
    if balance is None:
        return _plain_rate(posterior, against, z, estimator)
    if against is None:
        against = standard_normal(posterior)
    return _balanced(
        lambda q, p, zz: _plain_rate(q, p, zz, estimator), posterior, against, z, balance
    )


def _balanced(
    rate_of: Callable[[Distribution, Distribution, Tensor | None], Rate],
    posterior: Distribution,
    against: Distribution,
    z: Tensor | None,
    balance: float,
) -> Rate:
    """`rate_of` with KL balancing: the value of the KL, the gradient split ``balance``."""
    alpha = check_fraction("balance", balance)
    # Value: the KL itself (x - x.detach() is exactly 0); gradient: alpha to the prior
    # through KL(sg(e) || p), 1 - alpha to the posterior through KL(e || sg(p)).
    to_prior = rate_of(stop_gradient(posterior), against, None if z is None else z.detach())
    to_posterior = rate_of(posterior, stop_gradient(against), z)

    def mix(a: Tensor | None, b: Tensor | None) -> Tensor | None:
        if a is None or b is None:
            return None
        return a.detach() + alpha * (a - a.detach()) + (1.0 - alpha) * (b - b.detach())

    per_example = mix(to_prior.per_example, to_posterior.per_example)
    assert per_example is not None  # both are tensors
    return Rate(
        per_example,
        mix(to_prior.per_dimension, to_posterior.per_dimension),
        to_prior.estimator,
        mix(to_prior.per_step, to_posterior.per_step),
    )


def rate_terms(
    groups: tuple[LatentGroup, ...],
    *,
    grouped: bool,
    estimator: RateEstimator = "auto",
    balance: float | None = None,
) -> tuple[RateTerms, str]:
    """The rate of every group of a call (`rdloss.latents.resolve`), and its total.

    Args:
        groups: the call's groups.
        grouped: whether the call named its groups.
        estimator: as in `rate`, for every group.
        balance: as in `rate`, for every group.

    Returns:
        ``(terms, estimator)``: `RateTerms`, and the estimators used, in group order
        without repeats, joined by ``"+"`` (e.g. ``"analytic"`` or ``"analytic+mc"``).
    """
    _check_estimator(estimator)
    rates = {}
    for g in groups:
        try:
            # resolve() checked the shapes of the posterior, the prior and z already.
            against = g.prior
            if against is None and g.marginal is not None:
                against = as_marginal(g.marginal, g.posterior.event_shape)
            rates[g.name] = _canonical_rate(g.posterior, against, g.z, estimator, balance)
        except (ValueError, TypeError, NotImplementedError) as error:
            if not grouped:
                raise
            raise type(error)(f"posterior[{g.name!r}]: {error}") from error
    per_group = {k: r.per_example for k, r in rates.items()}
    per_group_dimension = {k: r.per_dimension for k, r in rates.items()}
    dims = list(per_group_dimension.values())
    if len(rates) == 1:
        (total,) = per_group.values()
        per_dimension = dims[0]
    else:
        total = torch.stack(list(per_group.values())).sum(0)
        ready = [d for d in dims if d is not None]
        per_dimension = torch.cat(ready, dim=1) if len(ready) == len(dims) else None
    sizes = {
        g.name: g.posterior.batch_shape[1:].numel() * g.posterior.event_shape.numel()
        for g in groups
    }
    steps = {k: r.per_step for k, r in rates.items() if r.per_step is not None}
    terms = RateTerms(total, per_dimension, per_group, per_group_dimension, steps, sizes, grouped)
    used = "+".join(dict.fromkeys(r.estimator for r in rates.values()))
    return terms, used


def enumerate_posterior(posterior: Distribution) -> tuple[Tensor, Tensor]:
    """Support and probabilities of a discrete posterior, for exact expectations.

    Args:
        posterior: ``Categorical`` (``z`` are indices) or ``OneHotCategorical`` (``z`` are
            one-hot vectors) with ``batch_shape (B,)`` and ``K`` categories.

    Returns:
        ``(z, probs)``: ``z`` of shape ``(K, B)`` or ``(K, B, K)``, ``probs`` of shape
        ``(K, B)`` with ``probs[k, b] = e(z_k | x_b)``.

    Raises:
        TypeError: the posterior is not one of the two enumerable types.
        ValueError: its batch shape is not ``(B,)``.
    """
    check_distribution("posterior", posterior)
    if not isinstance(posterior, (Categorical, OneHotCategorical)):
        raise TypeError(
            "samples='enumerate' needs a Categorical or OneHotCategorical posterior, got "
            f"{type(posterior).__name__}"
        )
    if len(posterior.batch_shape) != 1:
        raise ValueError(
            "an enumerated posterior must have batch_shape (B,) (one discrete latent per "
            f"example), got {tuple(posterior.batch_shape)}"
        )
    return posterior.enumerate_support(expand=True), posterior.probs.transpose(0, 1)


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
    if prior is not None:
        against = as_prior(prior, posterior)
    elif marginal is not None:
        against = as_marginal(marginal, posterior.event_shape)
    else:
        raise ValueError(
            "an enumerated rate needs a discrete marginal or prior, such as "
            "rdloss.marginals.Categorical(K); the default N(0, I) is continuous"
        )
    if balance is None:
        return _enumerated(posterior, against)
    return _balanced(lambda q, p, _: _enumerated(q, p), posterior, against, None, balance)


def _enumerated(posterior: Distribution, against: Distribution) -> Rate:
    result = _analytic_rate(posterior, against)
    if result is not None:
        return result
    z, probs = enumerate_posterior(posterior)
    log_ratio = posterior.log_prob(z) - against.log_prob(z)
    # 0 * log 0 = 0: categories the posterior never visits contribute nothing.
    terms = torch.where(probs > 0, probs * log_ratio, torch.zeros_like(log_ratio))
    return Rate(terms.sum(0), None, "enumerate")


def elbo(rate: Tensor, distortion: Tensor) -> Tensor:
    """ELBO ``-(D + R)`` from tensors of matching shape (per example or batch means)."""
    return -(distortion + rate)
