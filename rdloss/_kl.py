"""Closed-form KLs without torch's global memo, and stop-gradient copies of distributions."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent
from torch.distributions.constraints import Constraint
from torch.distributions.kl import _KL_MEMOIZE, _KL_REGISTRY, _dispatch_kl

__all__ = ["closed_form_kl", "factorised_parts", "is_discrete", "stop_gradient", "widened"]

# What a distribution may hold besides tensors and distributions for `stop_gradient` to copy
# it faithfully; anything else (transforms, modules, callables) may carry parameters.
_PLAIN = (bool, int, float, str, type(None), torch.Size, Constraint, torch.dtype, torch.device)
_HALF = (torch.float16, torch.bfloat16)


def _elementwise(dist: Distribution) -> Distribution | None:
    """The innermost base of nested ``Independent`` s, if it is elementwise (event ``()``)."""
    while isinstance(dist, Independent):
        dist = dist.base_dist
    return dist if len(dist.event_shape) == 0 else None


def factorised_parts(
    posterior: Distribution, against: Distribution
) -> tuple[Distribution, Distribution] | None:
    """The elementwise base distributions of two products over dimensions, if both are.

    Both must have the same event shape (the canonical shapes of `rdloss.latents`); how
    each splits its dimensions between ``Independent`` layers does not matter.
    """
    q, p = _elementwise(posterior), _elementwise(against)
    return None if q is None or p is None else (q, p)


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


def _map_tensors(
    dist: Distribution, fn: Callable[[Tensor], Tensor], *, strict: bool
) -> Distribution | None:
    """A copy of ``dist`` with ``fn`` applied to every tensor it holds (nested included).

    Returns ``None`` (or with ``strict`` raises ``TypeError``) when ``dist`` holds something
    else than tensors, distributions and plain values: transforms, modules or callables may
    carry parameters that a copy cannot reach.
    """
    out = copy.copy(dist)
    for key, value in vars(dist).items():
        if key.startswith("_rdloss_"):  # the loss's deferred checks stay with the original
            continue
        if isinstance(value, Tensor):
            vars(out)[key] = fn(value)
        elif isinstance(value, Distribution):
            inner = _map_tensors(value, fn, strict=strict)
            if inner is None:
                return None
            vars(out)[key] = inner
        elif not isinstance(value, _PLAIN):
            if not strict:
                return None
            raise TypeError(
                f"KL balancing needs a stop-gradient copy of {type(dist).__name__}, whose "
                f"attribute {key!r} is a {type(value).__name__} that may hold parameters; "
                "use distributions made of tensors (Normal, Independent, Categorical, "
                "OneHotCategorical, mixtures), or balance=None"
            )
    return out


def stop_gradient(dist: Distribution) -> Distribution:
    """A copy of ``dist`` whose parameters are detached: ``sg(dist)`` of KL balancing.

    Works for distributions whose state is tensors, nested distributions and plain values
    (``Normal``, ``Independent``, ``Categorical``, ``OneHotCategorical``, ``Bernoulli``,
    ``MixtureSameFamily``, ...); cached ``lazy_property`` values are detached too.

    Raises:
        TypeError: ``dist`` holds something else (e.g. the transforms of a flow), whose
            parameters a copy cannot detach.
    """
    out = _map_tensors(dist, Tensor.detach, strict=True)
    assert out is not None  # strict raises instead
    return out


def _holds_half(dist: Distribution) -> bool:
    for value in vars(dist).values():
        if isinstance(value, Tensor) and value.dtype in _HALF:
            return True
        if isinstance(value, Distribution) and _holds_half(value):
            return True
    return False


def widened(dist: Distribution) -> Distribution:
    """``dist`` with half-precision parameters in float32, where a copy can reach them.

    KLs and log-densities in float16/bfloat16 lose digits (and ``exp`` overflows); the
    parameters are widened before, not the result after.
    """
    if not _holds_half(dist):
        return dist
    out = _map_tensors(dist, lambda t: t.float() if t.dtype in _HALF else t, strict=False)
    return dist if out is None else out
