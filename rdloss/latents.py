r"""Latent groups, conditional priors and step axes, resolved into one canonical structure.

A model's latents are one `Distribution` (a single latent) or a mapping from group name to
one per group (a hierarchical VAE's ``z_L .. z_1``). Each group's rate is taken against the
``prior`` the model computed for the call (a conditional VAE's $p(z|y)$, a top-down
$p(z_l | z_{>l})$, a world model's $p(z_t | h_t)$), else against the group's ``marginal``,
else against $\mathcal N(0, I)$. Canonical shapes:

* posterior: ``batch_shape (B,)``, or ``(B, T)`` with a step axis (`as_stepped_latent`);
* prior: ``batch_shape ()`` or the posterior's, the posterior's event (`as_prior`);
* marginal: ``batch_shape ()``, the posterior's (per-step) event (`as_marginal`).

`resolve` turns the arguments of a call into `LatentGroup` s; `RateTerms` is what the
objectives see of the rate at every level the model has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, TypeAlias

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent

from rdloss._checks import (
    check_distribution,
    check_tensor,
    declares_no_shapes,
    undeclared_shapes,
)

__all__ = [
    "LatentGroup",
    "MarginalLike",
    "RateTerms",
    "as_latent",
    "as_marginal",
    "as_prior",
    "as_stepped_latent",
    "check_categories",
    "resolve",
    "resolve_marginal",
    "sample_dims",
    "split_marginals",
]

MarginalLike: TypeAlias = nn.Module | Distribution
"""A marginal: a module whose ``forward()`` returns a ``Distribution``, or a ``Distribution``."""

UNGROUPED = "z"
"""The name of an ungrouped call's latent in per-step reports."""


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


class LatentGroup(NamedTuple):
    r"""One latent group of a call, in canonical shapes.

    Attributes:
        name: the group's key (``"z"`` for an ungrouped call).
        posterior: ``e(z|x)``, ``batch_shape (B,)`` or ``(B, T)``.
        prior: the prior given for this call (`as_prior`'s shapes), or ``None``.
        marginal: the group's marginal distribution when no prior is given (`as_marginal`'s
            shapes); ``None`` for $\mathcal N(0, I)$.
        z: the latents that fed the decoder, ``(*batch, *event)`` or ``(S, *batch, *event)``.
    """

    name: str
    posterior: Distribution
    prior: Distribution | None
    marginal: Distribution | None
    z: Tensor | None

    @property
    def steps(self) -> int | None:
        """``T`` for a group with a step axis, else ``None``."""
        batch = self.posterior.batch_shape
        return batch[1] if len(batch) == 2 else None


class RateTerms(NamedTuple):
    """The rate at every level of the model, for objectives (all in nats, unclamped).

    Attributes:
        per_example: ``(B,)`` total rate: the sum over groups and steps.
        per_dimension: ``(B, D)`` rate per latent dimension of all groups (concatenated in
            group order, steps flattened), or ``None`` unless every group's KL factorises.
        per_group: ``(B,)`` rate per group, in the posterior's key order.
        per_group_dimension: ``(B, D_g)`` per group, ``None`` where the KL does not factorise.
        per_step: ``(B, T)`` rate per step of each group with a step axis.
        group_size: latent dimensions per example of each group (steps included).
        grouped: whether the call named its groups (else one group, ``"z"``).
        step_mask: with a step mask (ragged sequences), ``(B, sum T)`` bool: which entries
            of the per-step rates concatenated in group order are real steps (padded
            steps hold rate 0 at every level); ``None`` without a mask.
        dimension_mask: with a step mask, ``(B, D)`` bool aligned with ``per_dimension``
            (``None`` where that is ``None``); ``None`` without a mask.
    """

    per_example: Tensor
    per_dimension: Tensor | None
    per_group: dict[str, Tensor]
    per_group_dimension: dict[str, Tensor | None]
    per_step: dict[str, Tensor]
    group_size: dict[str, int]
    grouped: bool
    step_mask: Tensor | None = None
    dimension_mask: Tensor | None = None

    @classmethod
    def single(cls, rate: Tensor, rate_per_dimension: Tensor | None = None) -> RateTerms:
        """The terms of one ungrouped latent without steps, from its per-example rate."""
        size = {} if rate_per_dimension is None else {UNGROUPED: rate_per_dimension.shape[1]}
        return cls(
            rate,
            rate_per_dimension,
            {UNGROUPED: rate},
            {UNGROUPED: rate_per_dimension},
            {},
            size,
            False,
        )


def resolve_marginal(marginal: MarginalLike | None, posterior: Distribution) -> Distribution | None:
    r"""``m(z)`` as a distribution (calling a module), or ``None`` for $\mathcal N(0, I)$.

    Raises:
        TypeError: a module's ``forward()`` returned something else than a distribution.
    """
    if marginal is None:
        return None
    if isinstance(marginal, nn.Module):
        dist = marginal()
        if not isinstance(dist, Distribution):
            raise TypeError(
                "marginal() must return a torch.distributions.Distribution, got "
                f"{type(dist).__name__}"
            )
        return dist
    return marginal


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


def _check_keys(name: str, given: Mapping[object, object], groups: Mapping[str, object]) -> None:
    for key in given:
        if key not in groups:
            raise ValueError(
                f"{name} has a key {key!r} that names no posterior group; the groups are "
                f"{list(groups)}"
            )


def resolve(
    posterior: Distribution | Mapping[str, Distribution],
    *,
    prior: Distribution | Mapping[str, Distribution | None] | None = None,
    z: Tensor | Mapping[str, Tensor] | None = None,
    marginal: MarginalLike | Mapping[str, MarginalLike] | None = None,
) -> tuple[tuple[LatentGroup, ...], bool]:
    r"""The latent groups of a call, checked and in canonical shapes.

    Args:
        posterior: one posterior, or a mapping from group name to posterior (the keys and
            their order define the groups).
        prior: per-call priors: one (for one posterior) or a mapping with the posterior's
            keys; a missing key or ``None`` means the group's marginal.
        z: latents that fed the decoder, one tensor or a mapping with the posterior's keys.
        marginal: one marginal (for one posterior) or a mapping from group name to marginal;
            a group with neither prior nor marginal uses $\mathcal N(0, I)$.

    Returns:
        ``(groups, grouped)``: the groups in order, and whether the call named them.

    Raises:
        TypeError: a mapping where one object is expected or the reverse, or a value of the
            wrong type.
        ValueError: a key names no group, a batch size, step axis or event shape differs.
    """
    if not isinstance(posterior, Mapping):
        for name, value in (("prior", prior), ("z", z), ("marginal", marginal)):
            if isinstance(value, Mapping):
                raise TypeError(
                    f"{name} is a mapping of groups but the posterior is one "
                    f"{type(posterior).__name__}: pass posterior as a mapping with the same keys"
                )
        q = as_stepped_latent(posterior)
        if z is not None:
            sample_dims(check_tensor("z", z), q)
        p = None if prior is None else as_prior(prior, q)
        m = None if p is not None else _marginal(marginal, q, "marginal")  # type: ignore[arg-type]
        if p is not None:
            check_categories(q, p, "prior")
        return (LatentGroup(UNGROUPED, q, p, m, z),), False  # type: ignore[arg-type]

    if len(posterior) == 0:
        raise ValueError("posterior is an empty mapping; give at least one latent group")
    for name, value in (("prior", prior), ("z", z), ("marginal", marginal)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(
                f"posterior is a mapping of groups {list(posterior)}, so {name} must be a "
                f"mapping with the same keys (or None), got {type(value).__name__}"
            )
        if value is not None:
            _check_keys(name, value, posterior)  # type: ignore[arg-type]
    priors: Mapping[str, Distribution | None] = prior if isinstance(prior, Mapping) else {}
    latents: Mapping[str, Tensor] = z if isinstance(z, Mapping) else {}
    marginals: Mapping[str, MarginalLike] = marginal if isinstance(marginal, Mapping) else {}
    batch: int | None = None
    groups = []
    for key, value in posterior.items():
        if not isinstance(key, str):
            raise TypeError(f"posterior group names must be str, got {type(key).__name__}")
        q = as_stepped_latent(value, f"posterior[{key!r}]")
        if batch is not None and q.batch_shape[0] != batch:
            raise ValueError(
                f"posterior[{key!r}] has batch size {q.batch_shape[0]}, the first group "
                f"{batch}: every group must cover the same examples"
            )
        batch = q.batch_shape[0]
        given = priors.get(key)
        p = None if given is None else as_prior(given, q, f"prior[{key!r}]")
        if p is not None:
            check_categories(q, p, f"prior[{key!r}]")
        m = None if p is not None else _marginal(marginals.get(key), q, f"marginal[{key!r}]")
        zk = latents.get(key)
        if zk is not None:
            sample_dims(check_tensor(f"z[{key!r}]", zk), q, f"z[{key!r}]")
        groups.append(LatentGroup(key, q, p, m, zk))
    return tuple(groups), True


def _marginal(
    marginal: MarginalLike | None, posterior: Distribution, name: str
) -> Distribution | None:
    """The group's marginal in canonical shapes (`as_marginal`), or ``None`` for N(0, I)."""
    dist = resolve_marginal(marginal, posterior)
    if dist is None:
        return None
    dist = as_marginal(dist, posterior.event_shape, name)
    check_categories(posterior, dist, name)
    return dist


def split_marginals(marginal: Mapping[Any, object]) -> dict[str, Distribution]:
    """Check a mapping of per-group marginals; return its fixed (``Distribution``) entries."""
    fixed = {}
    for key, value in marginal.items():
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(
                f"marginal group names must be non-empty strings without '.', got {key!r}"
            )
        if hasattr(nn.ModuleDict(), key):
            raise ValueError(
                f"marginal group name {key!r} is an attribute of torch.nn.ModuleDict, which "
                "holds the learned marginals; rename the group"
            )
        if isinstance(value, Distribution):
            fixed[key] = value
        elif not isinstance(value, nn.Module):
            raise TypeError(
                f"marginal[{key!r}] must be an nn.Module returning a Distribution or a "
                f"Distribution, got {type(value).__name__}"
            )
    return fixed
