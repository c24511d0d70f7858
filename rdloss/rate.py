r"""The rate $R = \mathrm{KL}(e(z|x)\,\|\,m(z))$ of a call, per example, group, step and dimension.

Three estimators, chosen per group:

* **closed form** (`rdloss._closed_form`): Normal and categorical pairs computed by rdloss
  (for the diagonal Gaussians of `rdloss.helpers` from the log parameter they hold: no
  ``exp`` then ``log`` round trip; against $\mathcal N(0, I)$ nothing is built at all),
  any other pair through the public ``torch.distributions.kl_divergence``;
* **Monte Carlo** $\log e(z|x) - \log m(z)$ with the ``z`` that fed the decoder;
* **enumeration** $\sum_k q_k \log(q_k / m_k)$ over a discrete support.

KL balancing (DreamerV3) changes the gradient, not the value: see `balanced`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    Normal,
)

from rdloss._checks import check_fraction, widen_half
from rdloss._closed_form import closed_form, standard_normal_kl
from rdloss._rebuild import describe, stop_gradient, widened
from rdloss._shapes import enumerate_posterior
from rdloss.families import Gaussian, StandardGaussian, standard_normal
from rdloss.latents import LatentGroup, RateTerms, sample_dims

__all__ = [
    "Rate",
    "RateEstimator",
    "UsedEstimator",
    "balanced",
    "check_estimator",
    "enumerated",
    "group_rate",
    "is_discrete",
    "rate_terms",
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


def check_estimator(estimator: object) -> RateEstimator:
    """Return ``estimator`` if it is ``"analytic"``, ``"mc"`` or ``"auto"``, else raise."""
    if estimator == "analytic" or estimator == "mc" or estimator == "auto":
        return estimator
    raise ValueError(f"estimator must be 'analytic', 'mc' or 'auto', got {estimator!r}")


def is_discrete(dist: Distribution) -> bool:
    """Whether ``dist`` is a distribution over a discrete support (a mass, not a density)."""
    try:
        support = dist.support
    except NotImplementedError:
        return False
    return bool(getattr(support, "is_discrete", False))


def _elementwise(dist: Distribution) -> Distribution | None:
    """The innermost base of nested ``Independent`` s, if it is elementwise (event ``()``)."""
    while isinstance(dist, Independent):
        dist = dist.base_dist
    return dist if len(dist.event_shape) == 0 else None


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


def _analytic(posterior: Distribution, against: Distribution) -> Rate | None:
    lead = posterior.batch_shape
    q, p = _elementwise(posterior), _elementwise(against)
    if q is not None and p is not None:
        per_element = closed_form(q, p)
        if per_element is not None:
            per_element = per_element.expand(*lead, *posterior.event_shape)
            return _reduce(widen_half(per_element), lead, "analytic", per_dim=True)
    kl = closed_form(posterior, against)
    return None if kl is None else _reduce(widen_half(kl), lead, "analytic", per_dim=False)


def _monte_carlo(posterior: Distribution, against: Distribution, z: Tensor) -> Rate:
    lead = posterior.batch_shape
    n_sample = sample_dims(z, posterior)
    q, p = _elementwise(posterior), _elementwise(against)
    factorised = q is not None and p is not None
    pair = (q, p) if factorised else (posterior, against)
    log_ratio = widen_half(pair[0].log_prob(z)) - widen_half(pair[1].log_prob(z))  # type: ignore[union-attr]
    values = log_ratio.mean(0) if n_sample else log_ratio
    return _reduce(values, lead, "mc", per_dim=factorised)


def _standard_normal_rate(posterior: Distribution) -> Rate | None:
    r"""Closed-form KL to $\mathcal N(0, I)$ of a product of Normals, else ``None``.

    Nothing is built for the marginal: $\tfrac12(\mu^2 + \sigma^2 - 1) - \log\sigma$ per
    dimension, with $\log\sigma$ as the helper holds it.
    """
    base = _elementwise(posterior)
    if not isinstance(base, Normal):
        return None
    # Widened before use: a log taken in half precision loses digits.
    held = base.logvar if isinstance(base, Gaussian) else None
    loc = widen_half(base.loc)
    if held is not None:  # the scale is not read (a helper's Gaussian derives it)
        per_element = standard_normal_kl(loc, None, widen_half(held))
    else:
        per_element = standard_normal_kl(loc, widen_half(base.scale), None)
    return _reduce(per_element, posterior.batch_shape, "analytic", per_dim=True)


def _plain(
    posterior: Distribution,
    against: Distribution | None,
    z: Tensor | None,
    estimator: RateEstimator,
) -> Rate:
    """The rate against ``against`` (``None``: N(0, I)), canonical shapes, no balancing."""
    # N(0, I), the default or a StandardNormal marginal's: its closed form reads nothing of it.
    standard = against is None or isinstance(_elementwise(against), StandardGaussian)
    if standard and estimator != "mc":
        closed = _standard_normal_rate(posterior)
        if closed is not None:
            return closed
    if against is None:
        against = standard_normal(posterior)
    posterior, against = widened(posterior), widened(against)
    if estimator != "mc":
        result = _analytic(posterior, against)
        if result is not None:
            return result
        if estimator == "analytic" and not (is_discrete(posterior) and not is_discrete(against)):
            raise NotImplementedError(
                "estimator='analytic' but torch.distributions has no KL registered for "
                f"({type(posterior).__name__}, {type(against).__name__}); use 'mc' or 'auto'"
            )
    if is_discrete(posterior) and not is_discrete(against):
        raise ValueError(
            f"the posterior {describe(posterior)} is discrete but the rate is taken "
            f"against the continuous {describe(against)} (the default marginal is "
            "N(0, I)): a discrete latent needs a discrete marginal or prior, e.g. "
            "rdloss.marginals.Categorical(K) or the prior your model computes"
        )
    if z is None:
        raise ValueError(
            f"z is required for the Monte Carlo rate (estimator={estimator!r}, no closed-form "
            f"KL for ({type(posterior).__name__}, {type(against).__name__})); pass the z "
            "that fed the decoder, or a decoder so the loss draws it"
        )
    return _monte_carlo(posterior, against, z)


def balanced(
    rate_of: Callable[[Distribution, Distribution, Tensor | None], Rate],
    posterior: Distribution,
    against: Distribution,
    z: Tensor | None,
    balance: float,
) -> Rate:
    r"""``rate_of`` with KL balancing: the value of the KL, the gradient split ``balance``.

    The value is $\mathrm{KL}(e\|\mathrm{sg}(p))$, numerically the KL; the gradient is that of
    $\alpha\,\mathrm{KL}(\mathrm{sg}(e)\|p) + (1-\alpha)\,\mathrm{KL}(e\|\mathrm{sg}(p))$.
    """
    alpha = check_fraction("balance", balance)
    to_prior = rate_of(stop_gradient(posterior), against, None if z is None else z.detach())
    to_posterior = rate_of(posterior, stop_gradient(against), z)

    def mix(a: Tensor | None, b: Tensor | None) -> Tensor | None:
        if a is None or b is None:
            return None

        # a - a.detach() is exactly 0 (NaN where a is infinite: made 0, so an infinite KL
        # stays infinite): the value is b's, the gradients are split.
        def zero(t: Tensor) -> Tensor:
            return (t - t.detach()).nan_to_num(nan=0.0)

        return b.detach() + alpha * zero(a) + (1.0 - alpha) * zero(b)

    per_example = mix(to_prior.per_example, to_posterior.per_example)
    assert per_example is not None  # both are tensors
    return Rate(
        per_example,
        mix(to_prior.per_dimension, to_posterior.per_dimension),
        to_prior.estimator,
        mix(to_prior.per_step, to_posterior.per_step),
    )


def group_rate(
    posterior: Distribution,
    against: Distribution | None,
    z: Tensor | None,
    estimator: RateEstimator,
    balance: float | None,
) -> Rate:
    """The rate of one group in canonical, checked shapes (`rdloss.latents.resolve`).

    Args:
        posterior: ``batch_shape (B,)`` or ``(B, T)``.
        against: the prior or marginal in `rdloss.latents`' shapes; ``None`` for N(0, I).
        z: latents that fed the decoder, for Monte Carlo.
        estimator: ``"analytic"``, ``"mc"`` or ``"auto"``.
        balance: KL balancing fraction, or ``None``.
    """
    if balance is None:
        return _plain(posterior, against, z, estimator)
    if against is None:
        against = standard_normal(posterior)
    return balanced(lambda q, p, zz: _plain(q, p, zz, estimator), posterior, against, z, balance)


def _per_sample_mean(rate: Rate) -> Rate:
    """The rate of a per-sample group (``batch_shape (S, B)``): its mean over the samples.

    `_reduce` read ``(S, B)`` as a lead of two axes: ``per_step`` is the ``(S, B)`` rate and
    ``per_dimension`` is ``(S, B * D)``.
    """
    per_sample = rate.per_step
    assert per_sample is not None  # a lead of two axes always has it
    samples, batch = per_sample.shape
    dims = rate.per_dimension
    per_dimension = None if dims is None else dims.reshape(samples, batch, -1).mean(0)
    return Rate(per_sample.mean(0), per_dimension, rate.estimator)


def rate_terms(
    groups: tuple[LatentGroup, ...],
    *,
    grouped: bool,
    estimator: RateEstimator = "auto",
    balance: float | None = None,
) -> tuple[RateTerms, str]:
    """The rate of every group of a call (`rdloss.latents.resolve`), and its total.

    Args:
        groups: the call's groups (at least one).
        grouped: whether the call named its groups.
        estimator: as in `rdloss.functional.rate`, for every group.
        balance: KL balancing fraction for every group, or ``None``.

    Returns:
        ``(terms, estimator)``: `RateTerms`, and the estimators used, in group order
        without repeats, joined by ``"+"`` (e.g. ``"analytic"`` or ``"analytic+mc"``).

    Raises:
        ValueError: ``groups`` is empty, or a group's rate cannot be computed.
    """
    estimator = check_estimator(estimator)
    if not isinstance(groups, tuple) or not groups:
        raise ValueError(
            "groups must be a non-empty tuple of LatentGroup (rdloss.latents.resolve), got "
            f"{groups!r}"
        )
    # Every level filled in one pass over the groups (one group, the common call, pays for
    # no second pass and no merge).
    per_group: dict[str, Tensor] = {}
    per_group_dimension: dict[str, Tensor | None] = {}
    steps: dict[str, Tensor] = {}
    sizes: dict[str, int] = {}
    used: list[str] = []
    for g in groups:
        try:
            against = g.prior if g.prior is not None else g.marginal
            rate = group_rate(g.posterior, against, g.z, estimator, balance)
            if g.sampled:
                rate = _per_sample_mean(rate)
        except (ValueError, TypeError, NotImplementedError) as error:
            if not grouped:
                raise
            raise type(error)(f"posterior[{g.name!r}]: {error}") from error
        per_group[g.name] = rate.per_example
        per_group_dimension[g.name] = rate.per_dimension
        if rate.per_step is not None:
            steps[g.name] = rate.per_step
        sizes[g.name] = (g.steps or 1) * g.posterior.event_shape.numel()
        if rate.estimator not in used:
            used.append(rate.estimator)
    if len(groups) == 1:
        total, per_dimension = rate.per_example, rate.per_dimension
    else:
        total = torch.stack(list(per_group.values())).sum(0)
        dims = list(per_group_dimension.values())
        ready = [d for d in dims if d is not None]
        per_dimension = torch.cat(ready, dim=1) if len(ready) == len(dims) else None
    terms = RateTerms(total, per_dimension, per_group, per_group_dimension, steps, sizes, grouped)
    return terms, "+".join(used)


def enumerated(posterior: Distribution, against: Distribution, balance: float | None) -> Rate:
    r"""Exact rate of an enumerable posterior: the closed form, else $\sum_k q_k \log(q_k/m_k)$."""
    if balance is None:
        return _enumerated(posterior, against)
    return balanced(lambda q, p, _: _enumerated(q, p), posterior, against, None, balance)


def _enumerated(posterior: Distribution, against: Distribution) -> Rate:
    result = _analytic(posterior, against)
    if result is not None:
        return result
    z, probs = enumerate_posterior(posterior)
    log_ratio = posterior.log_prob(z) - against.log_prob(z)
    # 0 * log 0 = 0: categories the posterior never visits contribute nothing.
    terms = torch.where(probs > 0, probs * log_ratio, torch.zeros_like(log_ratio))
    return Rate(terms.sum(0), None, "enumerate")
