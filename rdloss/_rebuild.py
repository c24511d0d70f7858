"""Rebuild a distribution from mapped parameters: stop-gradient copies and widening.

Through each family's public constructor (never ``vars()`` or ``copy.copy`` of a torch
object), so dynamo traces it and no private attribute is read.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    Laplace,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    OneHotCategorical,
    OneHotCategoricalStraightThrough,
)

from rdloss.distributions import DiagonalGaussianMixture
from rdloss.families import CheckedBernoulli, CheckedLaplace, Gaussian, StandardGaussian, one_hot

__all__ = ["describe", "parameters", "rebuild", "stop_gradient", "widened"]


def describe(dist: Distribution) -> str:
    """``Independent(OneHotCategorical)`` rather than a bare ``Independent``."""
    if isinstance(dist, Independent):
        return f"Independent({describe(dist.base_dist)})"
    return type(dist).__name__


def parameters(dist: Distribution) -> list[Tensor] | None:
    """The tensors `rebuild` would map, or ``None`` where it cannot rebuild ``dist``.

    Reads them without building anything (a categorical's ``logits`` or ``probs`` are
    computed once and kept by torch, as its KL needs both anyway).
    """
    if type(dist) not in _REBUILT:
        return None
    if isinstance(dist, Independent):
        return parameters(dist.base_dist)
    if isinstance(dist, Gaussian) and dist.holds_log_parameter:
        # A derived scale is a function of the log parameter: reading it would compute it.
        scale = [] if dist.derived_scale else [dist.scale]
        held = dist.log_scale if dist.log_scale is not None else dist.logvar
        assert held is not None  # it holds logvar or log_scale
        return [dist.loc, *scale, held]
    if isinstance(dist, (Normal, Laplace)):
        return [dist.loc, dist.scale]
    if isinstance(dist, (Bernoulli, Categorical, OneHotCategorical)):
        return [dist.logits]
    if isinstance(dist, MultivariateNormal):
        return [dist.loc, dist.scale_tril]
    if isinstance(dist, MixtureSameFamily):
        mixture = parameters(dist.mixture_distribution)
        components = parameters(dist.component_distribution)
        return None if mixture is None or components is None else mixture + components
    assert isinstance(dist, DiagonalGaussianMixture)
    return [dist.logits, dist.loc, dist.scale]


_REBUILT = (
    Independent,
    StandardGaussian,
    MultivariateNormal,
    Gaussian,
    Normal,
    Laplace,
    CheckedLaplace,
    Bernoulli,
    CheckedBernoulli,
    Categorical,
    OneHotCategorical,
    OneHotCategoricalStraightThrough,
    MixtureSameFamily,
    DiagonalGaussianMixture,
)


def rebuild(dist: Distribution, fn: Callable[[Tensor], Tensor]) -> Distribution | None:
    """``dist`` built again through its public constructor from ``fn`` of its parameters.

    Known families only (``Normal``, `Gaussian`, ``MultivariateNormal``, ``Laplace``, ``Bernoulli``,
    ``Categorical``, ``OneHotCategorical`` and its straight-through variant,
    ``MixtureSameFamily``, `DiagonalGaussianMixture`, ``Independent`` over those); ``None``
    for any other (a subclass included), whose parameters (e.g. a flow's transforms) rdloss
    cannot reach. Categoricals and Bernoullis come back holding both their ``logits`` and
    ``probs`` as given; the rdloss subclasses come back without their value checks.
    """
    if type(dist) not in _REBUILT:
        return None
    if isinstance(dist, Independent):
        base = rebuild(dist.base_dist, fn)
        if base is None:
            return None
        return Independent(base, dist.reinterpreted_batch_ndims, validate_args=False)
    if isinstance(dist, MultivariateNormal):
        return MultivariateNormal(fn(dist.loc), scale_tril=fn(dist.scale_tril), validate_args=False)
    if type(dist) is Gaussian:
        scale = None if dist.derived_scale else fn(dist.scale)
        if dist.log_scale is not None:
            return Gaussian(fn(dist.loc), scale, log_scale=fn(dist.log_scale), validate_args=False)
        lv = None if dist.logvar is None else fn(dist.logvar)
        return Gaussian(fn(dist.loc), scale, logvar=lv, validate_args=False)
    if isinstance(dist, Normal):
        return Normal(fn(dist.loc), fn(dist.scale), validate_args=False)
    if isinstance(dist, Laplace):
        return Laplace(fn(dist.loc), fn(dist.scale), validate_args=False)
    if isinstance(dist, (Bernoulli, Categorical, OneHotCategorical)):
        # Both parameters as the original holds them, as torch's own ``expand`` sets them.
        # Rebuilt from one, it would not be the same distribution: logits computed from
        # probs are clamped (a probability of exactly 0 becomes about e^-16, an infinite KL
        # a finite one), and the constructor normalises logits again (a few ulps, more in
        # half precision).
        logits, probs = fn(dist.logits), fn(dist.probs)
        if isinstance(dist, Bernoulli):
            bernoulli = Bernoulli(logits=logits, validate_args=False)
            bernoulli.logits, bernoulli.probs = logits, probs
            return bernoulli
        categorical = Categorical(logits=logits, validate_args=False)
        categorical.logits, categorical.probs = logits, probs
        return categorical if isinstance(dist, Categorical) else one_hot(categorical, type(dist))
    if isinstance(dist, MixtureSameFamily):
        mixture = rebuild(dist.mixture_distribution, fn)
        components = rebuild(dist.component_distribution, fn)
        if not isinstance(mixture, Categorical) or components is None:
            return None
        return MixtureSameFamily(mixture, components, validate_args=False)
    assert isinstance(dist, DiagonalGaussianMixture)
    return DiagonalGaussianMixture(
        fn(dist.logits), fn(dist.loc), fn(dist.scale), validate_args=False
    )


def stop_gradient(dist: Distribution) -> Distribution:
    """``dist`` rebuilt from detached parameters: ``sg(dist)`` of KL balancing.

    Works for ``Normal`` (and rdloss's `rdloss.distributions.Gaussian`), ``Laplace``,
    ``Bernoulli``, ``Categorical``, ``OneHotCategorical`` (straight-through too),
    ``MixtureSameFamily``, rdloss's mixture, and ``Independent`` over any of them.

    Raises:
        TypeError: another distribution (e.g. a flow), whose parameters rdloss cannot reach.
    """
    out = rebuild(dist, Tensor.detach)
    if out is None:
        raise TypeError(
            f"KL balancing needs a stop-gradient copy of {describe(dist)}, whose parameters "
            "rdloss cannot reach; use distributions made of tensors (Normal, Independent, "
            "Categorical, OneHotCategorical, mixtures), or kl_balance=None"
        )
    return out


_HALF = (torch.float16, torch.bfloat16)


def widened(dist: Distribution) -> Distribution:
    """``dist`` with half-precision parameters in float32, where a rebuild can reach them.

    KLs and log-densities in float16/bfloat16 lose digits (and ``exp`` overflows); the
    parameters are widened before, not the result after. Other distributions stay as given.
    """
    if not any(t.dtype in _HALF for t in parameters(dist) or ()):
        return dist
    out = rebuild(dist, lambda t: t.float() if t.dtype in _HALF else t)
    return dist if out is None else out
