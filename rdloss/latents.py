r"""Latent groups, conditional priors and step axes, resolved into one canonical structure.

A model's latents are one `Distribution` (a single latent) or a mapping from group name to
one per group (a hierarchical VAE's ``z_L .. z_1``). Each group's rate is taken against the
``prior`` the model computed for the call (a conditional VAE's $p(z|y)$, a top-down
$p(z_l | z_{>l})$, a world model's $p(z_t | h_t)$), else against the group's ``marginal``,
else against $\mathcal N(0, I)$. Canonical shapes:

* posterior: ``batch_shape (B,)``, ``(B, T)`` with a step axis (`as_stepped_latent`), or
  ``(S, B)`` once per sample of a sampled parent (`as_sampled_latent`, with ``samples=S``);
* prior: ``batch_shape ()`` or the posterior's, the posterior's event (`as_prior`);
* marginal: ``batch_shape ()``, the posterior's (per-step) event (`as_marginal`).

`resolve` turns the arguments of a call into `LatentGroup` s; `RateTerms` is what the
objectives see of the rate at every level the model has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, TypeAlias

from torch import Tensor, nn
from torch.distributions import Distribution

from rdloss._checks import check_tensor
from rdloss._shapes import (
    as_latent,
    as_marginal,
    as_prior,
    as_sampled_latent,
    as_stepped_latent,
    check_categories,
    sample_dims,
)

__all__ = [
    "LatentGroup",
    "MarginalLike",
    "RateTerms",
    "as_latent",
    "as_marginal",
    "as_prior",
    "as_sampled_latent",
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


class LatentGroup(NamedTuple):
    r"""One latent group of a call, in canonical shapes.

    Attributes:
        name: the group's key (``"z"`` for an ungrouped call).
        posterior: ``e(z|x)``, ``batch_shape (B,)`` or ``(B, T)``.
        prior: the prior given for this call (`as_prior`'s shapes), or ``None``.
        marginal: the group's marginal distribution when no prior is given (`as_marginal`'s
            shapes); ``None`` for $\mathcal N(0, I)$.
        z: the latents that fed the decoder, ``(*batch, *event)`` or ``(S, *batch, *event)``.
        sampled: the group is computed once per sample of a sampled parent: its posterior
            has ``batch_shape (S, B)`` (declared with ``samples=S``), and its rate per
            example is the mean over the ``S`` samples.
    """

    name: str
    posterior: Distribution
    prior: Distribution | None
    marginal: Distribution | None
    z: Tensor | None
    sampled: bool = False

    @property
    def steps(self) -> int | None:
        """``T`` for a group with a step axis, else ``None``."""
        batch = self.posterior.batch_shape
        return batch[1] if len(batch) == 2 and not self.sampled else None

    @property
    def batch(self) -> int:
        """``B``, the number of examples."""
        return self.posterior.batch_shape[1 if self.sampled else 0]


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
    samples: int = 1,
    batch: int | None = None,
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
        samples: ``S``, the samples per example the model drew; with ``S > 1`` a posterior
            of ``batch_shape (S, B, ...)`` is one latent per sample (`as_sampled_latent`).
        batch: ``B`` where the caller knows it (``x.shape[0]``), for the same reading.

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
        sampled = as_sampled_latent(posterior, samples, batch)
        q = as_stepped_latent(posterior) if sampled is None else sampled
        if z is not None:
            sample_dims(check_tensor("z", z), q)
        p = None if prior is None else as_prior(prior, q)
        m = None if p is not None else _marginal(marginal, q, "marginal")  # type: ignore[arg-type]
        if p is not None:
            check_categories(q, p, "prior")
        group = LatentGroup(UNGROUPED, q, p, m, z, sampled is not None)  # type: ignore[arg-type]
        return (group,), False

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
    if batch is None and samples > 1:  # B from a group that can only be (B, ...)
        lead = [q.batch_shape for q in posterior.values() if isinstance(q, Distribution)]
        batch = next((b[0] for b in lead if len(b) == 1 or b[0] != samples), None)
    first: int | None = None
    groups = []
    for key, value in posterior.items():
        if not isinstance(key, str):
            raise TypeError(f"posterior group names must be str, got {type(key).__name__}")
        sampled = as_sampled_latent(value, samples, batch, f"posterior[{key!r}]")
        q = as_stepped_latent(value, f"posterior[{key!r}]") if sampled is None else sampled
        size = q.batch_shape[1 if sampled is not None else 0]
        if first is not None and size != first:
            shape = q.batch_shape
            hint = (
                f"; if its first axis holds samples, pass samples={shape[0]}"
                if len(shape) == 2 and shape[1] == first
                else ""
            )
            raise ValueError(
                f"posterior[{key!r}] has batch size {size}, the first group "
                f"{first}: every group must cover the same examples{hint}"
            )
        first = size
        given = priors.get(key)
        p = None if given is None else as_prior(given, q, f"prior[{key!r}]")
        if p is not None:
            check_categories(q, p, f"prior[{key!r}]")
        m = None if p is not None else _marginal(marginals.get(key), q, f"marginal[{key!r}]")
        zk = latents.get(key)
        if zk is not None:
            sample_dims(check_tensor(f"z[{key!r}]", zk), q, f"z[{key!r}]")
        groups.append(LatentGroup(key, q, p, m, zk, sampled is not None))
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
