r"""The shapes of one latent's distributions, each checked and made canonical.

* posterior: ``batch_shape (B,)`` (`as_latent`), ``(B, T)`` with a step axis
  (`as_stepped_latent`), or ``(S, B)`` computed once per sample (`as_sampled_latent`);
* prior: ``batch_shape ()`` or the posterior's, the posterior's event (`as_prior`);
* marginal: ``batch_shape ()``, the posterior's (per-step) event (`as_marginal`);
* the support of a discrete posterior, for exact expectations (`enumerate_posterior`).

`rdloss.latents` uses these to resolve a call's groups and re-exports them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, Independent, OneHotCategorical

from rdloss._checks import check_distribution, declares_no_shapes, undeclared_shapes

__all__ = [
    "as_latent",
    "as_marginal",
    "as_prior",
    "as_sampled_latent",
    "as_stepped_latent",
    "check_categories",
    "enumerate_posterior",
    "sample_dims",
]


def as_latent(posterior: object, name: str = "posterior") -> Distribution:
    """Return ``posterior`` with ``batch_shape == (B,)``.

    Batch dimensions after the first are reinterpreted as latent (event) dimensions, so
    ``Normal(mu, sigma)`` with ``mu`` of shape ``(B, D)`` becomes a distribution over
    ``D``-vectors, as ``Independent(Normal(mu, sigma), 1)`` would.

    Raises:
        TypeError: ``posterior`` is not a ``Distribution``.
        ValueError: ``posterior`` has no batch dimension.
    """
    dist = check_distribution(name, posterior)
    if declares_no_shapes(dist):
        raise ValueError(undeclared_shapes(name, dist, "(B, *latent_shape)"))
    if len(dist.batch_shape) == 0:
        raise ValueError(
            f"{name} must have a batch dimension (batch_shape (B,)), got batch_shape () "
            f"and event_shape {tuple(dist.event_shape)}"
        )
    if len(dist.batch_shape) > 1:
        dist = Independent(dist, len(dist.batch_shape) - 1)
    if dist.batch_shape[0] == 0:
        raise ValueError(f"{name} has an empty batch (batch_shape {tuple(dist.batch_shape)})")
    return dist


def as_stepped_latent(posterior: object, name: str = "posterior") -> Distribution:
    """Return ``posterior`` with ``batch_shape`` ``(B,)``, or ``(B, T)`` when it has steps.

    A posterior over non-scalar latents with ``batch_shape (B, T)`` (e.g.
    ``Independent(Normal(mu, sigma), 1)`` with ``mu`` of shape ``(B, T, D)``, or
    ``Independent(OneHotCategorical(logits), 1)`` over ``(B, T, 32, 32)`` logits) has a
    step axis ``T``: its rate is reported per step. Any other shape is `as_latent`'s
    (elementwise ``Normal(mu, sigma)`` over ``(B, T, D)`` is one ``(T, D)`` latent).

    Raises:
        TypeError: ``posterior`` is not a ``Distribution``.
        ValueError: ``posterior`` has no batch dimension, or an empty one.
    """
    dist = check_distribution(name, posterior)
    if len(dist.batch_shape) == 2 and len(dist.event_shape) > 0:
        if dist.batch_shape.numel() == 0:
            raise ValueError(f"{name} has an empty batch (batch_shape {tuple(dist.batch_shape)})")
        return dist
    return as_latent(dist, name)


def as_marginal(marginal: object, event_shape: torch.Size, name: str = "marginal") -> Distribution:
    """Return ``marginal`` with ``batch_shape == ()`` and the given latent event shape.

    Trailing batch dimensions that spell out ``event_shape`` are reinterpreted, so
    ``Normal(zeros(D), ones(D))`` is accepted for ``D``-dimensional latents.

    Raises:
        TypeError: ``marginal`` is not a ``Distribution``.
        ValueError: its shape does not match the posterior's event shape.
    """
    dist = check_distribution(name, marginal)
    if dist.batch_shape + dist.event_shape != event_shape:
        hint = (
            "; for a prior computed per example (batch_shape (B,)) pass it as prior="
            if len(dist.batch_shape) > len(event_shape)
            else ""
        )
        raise ValueError(
            f"{name} must describe one latent of the posterior's event_shape "
            f"{tuple(event_shape)} (batch_shape ()), got batch_shape "
            f"{tuple(dist.batch_shape)} and event_shape {tuple(dist.event_shape)}{hint}"
        )
    if len(dist.batch_shape) > 0:
        dist = Independent(dist, len(dist.batch_shape))
    return dist


def as_prior(prior: object, posterior: Distribution, name: str = "prior") -> Distribution:
    """Return a per-call prior shaped like ``posterior``: ``batch_shape`` ``()`` or the posterior's.

    The posterior is `as_stepped_latent`'s (``batch_shape (B,)`` or ``(B, T)``). Trailing
    batch dimensions of the prior that spell out the posterior's event are reinterpreted,
    as for the posterior; nothing is broadcast.

    Raises:
        TypeError: ``prior`` is not a ``Distribution``.
        ValueError: its batch shape is neither ``()`` nor the posterior's (a different batch
            size or step axis), or its event shape differs.
    """
    dist = check_distribution(name, prior)
    batch, event = posterior.batch_shape, posterior.event_shape
    shape = dist.batch_shape + dist.event_shape
    n_batch = len(batch) if shape == batch + event else 0 if shape == event else -1
    if n_batch < 0 or len(dist.batch_shape) < n_batch:
        steps = (
            f"; the step axis differs: posterior T = {batch[1]}, {name} "
            f"{'T = ' + str(dist.batch_shape[1]) if len(dist.batch_shape) > 1 else 'none'}"
            if len(batch) == 2 and dist.batch_shape[:1] == batch[:1]
            else ""
        )
        raise ValueError(
            f"{name} must have batch_shape () or the posterior's {tuple(batch)} and the "
            f"posterior's event_shape {tuple(event)}, got batch_shape "
            f"{tuple(dist.batch_shape)} and event_shape {tuple(dist.event_shape)}{steps}"
        )
    extra = len(dist.batch_shape) - n_batch
    return Independent(dist, extra) if extra > 0 else dist


def sample_dims(z: Tensor, posterior: Distribution, name: str = "z") -> int:
    """Number of leading sample dimensions of ``z`` (0 or 1), validated against the posterior."""
    lead, event = posterior.batch_shape, posterior.event_shape
    n = len(lead) + len(event)
    if z.ndim in (n, n + 1) and z.shape[z.ndim - n :] == lead + event:
        return z.ndim - n
    axes = "B, T" if len(lead) == 2 else "B"
    raise ValueError(
        f"{name} must have shape ({axes}, *event) = {(*lead, *event)} or (S, {axes}, *event), "
        f"got {tuple(z.shape)}"
    )


def _categories(dist: Distribution) -> int | None:
    """The number of categories of an index ``Categorical`` (through ``Independent``)."""
    while isinstance(dist, Independent):
        dist = dist.base_dist
    return dist.param_shape[-1] if type(dist) is Categorical else None


def check_categories(posterior: Distribution, against: Distribution, name: str) -> None:
    """Refuse a categorical prior or marginal over another number of categories.

    Index ``Categorical`` s have event shape ``()`` whatever their number of categories,
    so the shape checks cannot see it; torch would broadcast one category into a negative
    rate, or fail deep inside.
    """
    k, k_against = _categories(posterior), _categories(against)
    if k is not None and k_against is not None and k != k_against:
        raise ValueError(
            f"{name} has {k_against} categories but the posterior has {k}: they must be "
            f"over the same support (e.g. rdloss.marginals.Categorical({k}))"
        )


def as_sampled_latent(
    posterior: object, samples: int, batch: int | None, name: str = "posterior"
) -> Distribution | None:
    """``posterior`` with ``batch_shape (S, B)`` if it is one latent per sample, else ``None``.

    A group whose posterior depends on a sampled parent (``q(z1 | x, z2)`` with ``S`` draws
    of ``z2``) has ``batch_shape (S, B, ...)``; with ``samples=S`` declared, its batch
    dimensions after ``(S, B)`` become event dimensions. ``batch`` is ``B`` where known.
    Declared samples win: with ``S == B``, ``batch_shape (S, S)`` reads as samples, never
    as ``T = S`` steps.
    """
    dist = check_distribution(name, posterior)
    shape = dist.batch_shape
    if samples < 2 or len(shape) < 2 or shape[0] != samples:
        return None
    if batch is not None and shape[1] != batch:
        return None
    n = len(shape) - 2
    return Independent(dist, n) if n > 0 else dist


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
