"""Closed-form KLs without torch's global memo, and stop-gradient copies of distributions."""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent
from torch.distributions.constraints import Constraint
from torch.distributions.kl import _KL_MEMOIZE, _KL_REGISTRY, _dispatch_kl

__all__ = ["closed_form_kl", "factorised_parts", "is_discrete", "stop_gradient"]

# What a distribution may hold besides tensors and distributions for `stop_gradient` to copy
# it faithfully; anything else (transforms, modules, callables) may carry parameters.
_PLAIN = (bool, int, float, str, type(None), torch.Size, Constraint, torch.dtype, torch.device)


def factorised_parts(
    posterior: Distribution, against: Distribution
) -> tuple[Distribution, Distribution] | None:
    """The elementwise base distributions of two products over dimensions, if both are."""
    if (
        isinstance(posterior, Independent)
        and isinstance(against, Independent)
        and posterior.reinterpreted_batch_ndims == against.reinterpreted_batch_ndims
        and len(posterior.base_dist.event_shape) == 0
        and len(against.base_dist.event_shape) == 0
    ):
        return posterior.base_dist, against.base_dist
    return None


def closed_form_kl(p: Distribution, q: Distribution) -> Tensor | None:
    """``kl_divergence(p, q)``, or ``None`` where torch.distributions registers no closed form."""
    # Not kl_divergence itself: it memoises into a global dict, and that write inside a
    # compiled region fails the guard dynamo keeps on the dict, so the next call recompiles
    # (pairs without a KL, e.g. mixtures and flows, are never memoised before). The exact
    # registry, then torch's memo (warm for inexact pairs, whose dispatch ranks matches with
    # min() over a generator that fullgraph=True cannot trace), then the dispatch, unmemoised.
    key = (type(p), type(q))
    fun = _KL_REGISTRY.get(key)
    if fun is None:
        fun = _KL_MEMOIZE.get(key)
    if fun is None:  # NotImplemented (no closed form) has no truth value: compare with is
        fun = _dispatch_kl(*key)
    if fun is NotImplemented:
        return None
    try:
        kl: Tensor = fun(p, q)
        return kl
    except NotImplementedError:  # also raised by pairs like Independent over a missing base KL
        return None


def is_discrete(dist: Distribution) -> bool:
    """Whether ``dist`` is a distribution over a discrete support (a mass, not a density)."""
    try:
        support = dist.support
    except NotImplementedError:
        return False
    return bool(getattr(support, "is_discrete", False))


def stop_gradient(dist: Distribution) -> Distribution:
    """A copy of ``dist`` whose parameters are detached: ``sg(dist)`` of KL balancing.

    Works for distributions whose state is tensors, nested distributions and plain values
    (``Normal``, ``Independent``, ``Categorical``, ``OneHotCategorical``, ``Bernoulli``,
    ``MixtureSameFamily``, ...); cached ``lazy_property`` values are detached too.

    Raises:
        TypeError: ``dist`` holds something else (e.g. the transforms of a flow), whose
            parameters a copy cannot detach.
    """
    out = copy.copy(dist)
    for key, value in vars(dist).items():
        if key.startswith("_rdloss_"):  # the loss's deferred checks stay with the original
            continue
        if isinstance(value, Tensor):
            vars(out)[key] = value.detach()
        elif isinstance(value, Distribution):
            vars(out)[key] = stop_gradient(value)
        elif not isinstance(value, _PLAIN):
            raise TypeError(
                f"KL balancing needs a stop-gradient copy of {type(dist).__name__}, whose "
                f"attribute {key!r} is a {type(value).__name__} that may hold parameters; "
                "use distributions made of tensors (Normal, Independent, Categorical, "
                "OneHotCategorical, mixtures), or balance=None"
            )
    return out
