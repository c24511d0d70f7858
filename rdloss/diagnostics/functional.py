r"""Pure estimators behind the diagnostics metrics.

Every function here is stateless and works on whole tensors; the
`torchmetrics` classes in `rdloss.diagnostics` stream the same quantities over
batches and processes. All values are in nats unless a name says ``bits``.

The quantities follow Alemi et al., 2018, "Fixing a Broken ELBO" (arXiv:1711.00464): rate
$R = \mathbb{E}[\mathrm{KL}(e(z|x)\,\|\,m(z))]$, distortion
$D = -\mathbb{E}\log d(x|z)$ and the sandwich $H - D \le I(X;Z) \le R$.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from rdloss._checks import (
    check_nonnegative_number,
    check_positive_int,
    check_tensor,
    should_validate,
    widen_half,
)
from rdloss.diagnostics.aggregate import (
    AggregatePosterior,
    aggregate_posterior,
    minibatch_aggregate_posterior,
    pairwise_gaussian_log_prob,
)
from rdloss.diagnostics.codebook import CodebookReport, codebook_usage
from rdloss.diagnostics.iwae import importance_weighted_bound
from rdloss.diagnostics.steps import StepRateResult, rate_per_variable

__all__ = [
    "ActiveUnitsResult",
    "AggregatePosterior",
    "CodebookReport",
    "DiscreteAggregate",
    "MIBounds",
    "RateDistortionResult",
    "StepRateResult",
    "active_units",
    "aggregate_posterior",
    "codebook_usage",
    "discrete_mutual_information",
    "importance_weighted_bound",
    "minibatch_aggregate_posterior",
    "mutual_information_bounds",
    "pairwise_gaussian_log_prob",
    "rate_distortion",
    "rate_per_dimension",
    "rate_per_variable",
]

LN2 = math.log(2.0)


class RateDistortionResult(NamedTuple):
    """Dataset means of rate, distortion and ELBO.

    Attributes:
        rate: ``R`` in nats.
        distortion: ``D`` in nats.
        elbo: ``-(D + R)`` in nats.
        rate_bits: ``R / ln 2``.
        distortion_bits: ``D / ln 2``.
        bits_per_dim: ``(D + R) / (ln 2 * data_dims)``, the usual NLL-bound report; ``None``
            when the number of data dimensions was not given.
        rate_per_group: the mean rate of each named latent group (they sum to ``rate``),
            for a metric built with ``groups=``; else ``None``.
    """

    rate: Tensor
    distortion: Tensor
    elbo: Tensor
    rate_bits: Tensor
    distortion_bits: Tensor
    bits_per_dim: Tensor | None
    rate_per_group: dict[str, Tensor] | None = None


class MIBounds(NamedTuple):
    r"""The sandwich $H - D \le I(X;Z) \le R$ (Alemi et al., 2018, Eq. 2).

    Attributes:
        lower: ``H - D`` when the data entropy ``H`` is known, else ``None``.
        upper: ``R``.
        entropy_upper: ``D + R = -ELBO``, an upper estimate of ``H`` (the best one seen,
            for the streaming metric).
    """

    lower: Tensor | None
    upper: Tensor
    entropy_upper: Tensor


class ActiveUnitsResult(NamedTuple):
    r"""Active units (Burda et al., 2015, "Importance Weighted Autoencoders", Sec. 5.2).

    Attributes:
        num_active: 0-dim int64, the number of units with ``variance > threshold``.
        variances: ``(D,)`` $A_u = \mathrm{Var}_x\,\mathbb{E}_{e(z|x)}[z_u]$
            (unbiased, ``correction=1``, as ``torch.var``).
        active: ``(D,)`` bool mask.
        per_group: for grouped posteriors (``ActiveUnits(groups=...)``), the same result for
            each group's flattened units (``variances`` and ``active`` above concatenate
            them in group order); else ``None``.
    """

    num_active: Tensor
    variances: Tensor
    active: Tensor
    per_group: dict[str, ActiveUnitsResult] | None = None


class DiscreteAggregate(NamedTuple):
    r"""Exact ELBO-surgery terms for a discrete latent (Hoffman & Johnson, 2016).

    Attributes:
        mutual_information: $I(n;z) = \sum_n w_n \mathrm{KL}(e(z|x_n)\,\|\,q(z))$.
        marginal_gap: $\mathrm{KL}(q(z)\,\|\,m(z))$.
        rate: $R = \sum_n w_n \mathrm{KL}(e(z|x_n)\,\|\,m(z))$ = I + gap.
        aggregate: ``(K,)`` $q(z) = \sum_n w_n e(z|x_n)$.
    """

    mutual_information: Tensor
    marginal_gap: Tensor
    rate: Tensor
    aggregate: Tensor


def _per_example(name: str, value: Tensor) -> Tensor:
    check_tensor(name, value)
    if value.ndim > 1:
        raise ValueError(f"{name} must be a scalar or (B,) per-example tensor, got {value.shape}")
    if value.numel() == 0:
        raise ValueError(f"{name} has no examples (shape {tuple(value.shape)}): its mean is NaN")
    return _real(value)


def _real(value: Tensor) -> Tensor:
    """Floating-point ``value``: integers and bools as the default float dtype, halves widened."""
    return widen_half(value) if value.is_floating_point() else value.to(torch.get_default_dtype())


def _check_probabilities(**named: tuple[Tensor, int]) -> None:
    """Raise unless every tensor is non-negative and sums to one over the given dim.

    One host synchronisation for all of them (skipped while compiling).
    """
    if not should_validate(True):
        return
    flags = []
    for value, dim in named.values():
        total = value.sum(dim)
        flags.append(
            (value >= 0).all() & torch.isclose(total, torch.ones_like(total), atol=1e-4).all()
        )
    for name, ok in zip(named, torch.stack(flags).tolist(), strict=True):
        if not ok:
            value, dim = named[name]
            raise ValueError(
                f"{name} must be non-negative and sum to 1 over dim {dim}, got min "
                f"{value.min().item():.4g} and sums {value.sum(dim).flatten()[:4].tolist()}"
            )


def rate_distortion(
    rate: Tensor, distortion: Tensor, *, data_dims: int | None = None
) -> RateDistortionResult:
    """Dataset means of rate and distortion, the ELBO, and their conversions to bits.

    Args:
        rate: ``(B,)`` per-example rates (or a 0-dim mean), nats.
        distortion: ``(B,)`` per-example distortions, same shape as ``rate``, nats.
        data_dims: number of data dimensions per example (e.g. 784 for MNIST) for
            ``bits_per_dim``.

    Returns:
        `RateDistortionResult`.

    Examples:
        >>> import torch
        >>> out = rate_distortion(torch.tensor([1.0, 3.0]), torch.tensor([10.0, 12.0]))
        >>> out.rate.item(), out.elbo.item()
        (2.0, -13.0)
    """
    rate, distortion = _per_example("rate", rate), _per_example("distortion", distortion)
    if rate.shape != distortion.shape:
        raise ValueError(
            f"rate and distortion must have the same shape, got {tuple(rate.shape)} and "
            f"{tuple(distortion.shape)}"
        )
    if data_dims is not None:
        check_positive_int("data_dims", data_dims)
    return _rd_result(rate.mean(), distortion.mean(), data_dims)


def _rd_result(rate: Tensor, distortion: Tensor, data_dims: int | None) -> RateDistortionResult:
    neg_elbo = rate + distortion
    bpd = None if data_dims is None else neg_elbo / (LN2 * data_dims)
    return RateDistortionResult(rate, distortion, -neg_elbo, rate / LN2, distortion / LN2, bpd)


def mutual_information_bounds(
    rate: Tensor, distortion: Tensor, data_entropy: float | None = None
) -> MIBounds:
    r"""Bounds on $I(X;Z)$ from rate and distortion: $H - D \le I \le R$.

    Args:
        rate: ``(B,)`` per-example rates or their 0-dim mean, nats.
        distortion: same shape as ``rate``, nats.
        data_entropy: ``H`` in nats if known (e.g. for a synthetic dataset), else ``None``:
            then only the upper bound and the upper estimate ``D + R`` of ``H`` exist.

    Returns:
        `MIBounds`.

    Examples:
        >>> import torch
        >>> b = mutual_information_bounds(torch.tensor(2.0), torch.tensor(5.0), 6.0)
        >>> b.lower.item(), b.upper.item(), b.entropy_upper.item()
        (1.0, 2.0, 7.0)
    """
    rd = rate_distortion(rate, distortion)
    if data_entropy is not None:
        data_entropy = check_nonnegative_number("data_entropy", data_entropy)
    return _bounds(rd.rate, rd.distortion, data_entropy, rd.rate + rd.distortion, validate=True)


def _bounds(
    rate: Tensor,
    distortion: Tensor,
    data_entropy: float | None,
    entropy_upper: Tensor,
    *,
    validate: bool,
) -> MIBounds:
    """`MIBounds`; warns (one host read, if ``validate``) when ``H > R + D`` empties it.

    ``-ELBO = R + D`` upper-bounds the data entropy, so a larger ``H`` puts the lower bound
    above the upper one. It is reported, not refused: on a training set the model may have
    memorised (or through Monte Carlo noise in R and D) the measured ``-ELBO`` can fall below
    the true ``H``, and an end-of-epoch ``compute`` should not end a run over it.
    """
    if data_entropy is None:
        return MIBounds(None, rate, entropy_upper)
    lower = data_entropy - distortion
    if should_validate(validate) and bool(lower > rate):
        neg_elbo = float(rate + distortion)
        rank_zero_warn(
            f"data_entropy H = {data_entropy:.6g} nats is above R + D = {neg_elbo:.6g} nats "
            f"(the -ELBO, an upper bound on the data entropy), so the lower bound H - D = "
            f"{float(lower):.6g} exceeds the upper bound R = {float(rate):.6g}: the given "
            "entropy is too high, or R and D were measured where the model beats the data "
            "entropy (a memorised training set, Monte Carlo noise); use held-out data",
            UserWarning,
        )
    return MIBounds(lower, rate, entropy_upper)


def active_units(posterior_mean: Tensor, threshold: float = 0.01) -> ActiveUnitsResult:
    r"""Count latent units whose posterior mean varies across the data.

    $A_u = \mathrm{Var}_x\,\mathbb{E}_{e(z|x)}[z_u]$; unit ``u`` is active if
    $A_u > \text{threshold}$ (Burda et al., 2015, default 0.01).

    Args:
        posterior_mean: ``(N, D)`` posterior means ``E_e[z]`` over the dataset, ``N >= 2``.
        threshold: activity threshold on the variance.

    Returns:
        `ActiveUnitsResult`.

    Examples:
        >>> import torch
        >>> mu = torch.stack([torch.arange(4.0), torch.zeros(4)], dim=1)
        >>> active_units(mu).num_active.item()
        1
    """
    check_tensor("posterior_mean", posterior_mean, min_ndim=2)
    if posterior_mean.ndim != 2 or posterior_mean.shape[0] < 2:
        raise ValueError(
            f"posterior_mean must have shape (N, D) with N >= 2, got {tuple(posterior_mean.shape)}"
        )
    threshold = check_nonnegative_number("threshold", threshold)
    variances = _real(posterior_mean).var(0)
    active = variances > threshold
    return ActiveUnitsResult(active.sum(), variances, active)


def rate_per_dimension(rate_per_dimension: Tensor) -> Tensor:
    """Mean rate (KL) per latent unit over the examples.

    Args:
        rate_per_dimension: ``(B, D)``, e.g. ``RDOutput.rate_per_dimension``.

    Returns:
        ``(D,)`` mean KL per unit in nats; its sum is the mean rate.
    """
    check_tensor("rate_per_dimension", rate_per_dimension, min_ndim=2)
    if rate_per_dimension.ndim != 2:
        raise ValueError(
            f"rate_per_dimension must have shape (B, D), got {tuple(rate_per_dimension.shape)}"
        )
    return _real(rate_per_dimension).mean(0)


def _xlogy_ratio(p: Tensor, log_p: Tensor, log_r: Tensor) -> Tensor:
    # 0 * log(0 / r) = 0: support points of zero probability contribute nothing.
    return torch.where(p > 0, p * (log_p - log_r), torch.zeros_like(p))


def discrete_mutual_information(
    posterior_probs: Tensor,
    marginal_probs: Tensor | None = None,
    data_weights: Tensor | None = None,
) -> DiscreteAggregate:
    r"""Exact $I(n;z)$, marginal gap and rate for a discrete latent.

    With data weights $w_n$ (the data distribution), aggregate posterior
    $q(z) = \sum_n w_n e(z|x_n)$ and marginal $m$:
    $R = I(n;z) + \mathrm{KL}(q\,\|\,m)$ holds exactly (Hoffman & Johnson, 2016).

    Args:
        posterior_probs: ``(N, K)`` rows $e(z|x_n)$ summing to one.
        marginal_probs: ``(K,)`` $m(z)$; default ``q`` itself (gap zero).
        data_weights: ``(N,)`` non-negative weights, normalised; default uniform.

    Returns:
        `DiscreteAggregate`.

    Raises:
        TypeError: ``posterior_probs`` is not a floating-point tensor.
        ValueError: a shape is wrong, a row of ``posterior_probs`` or ``marginal_probs`` is
            not a probability vector (checked to 1e-4), or ``data_weights`` has a negative
            entry or sums to zero.

    Examples:
        >>> import torch
        >>> e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> out = discrete_mutual_information(e, torch.tensor([0.5, 0.5]))
        >>> round(out.mutual_information.item(), 4), out.marginal_gap.item()
        (0.6931, 0.0)
    """
    check_tensor("posterior_probs", posterior_probs, min_ndim=2)
    if not posterior_probs.is_floating_point():
        raise TypeError(
            f"posterior_probs must be a floating-point tensor, got dtype {posterior_probs.dtype}"
        )
    if posterior_probs.ndim != 2:
        raise ValueError(
            f"posterior_probs must have shape (N, K), got {tuple(posterior_probs.shape)}"
        )
    n, k = posterior_probs.shape
    if data_weights is None:
        weights = posterior_probs.new_full((n,), 1.0 / n)
    else:
        check_tensor("data_weights", data_weights)
        if data_weights.shape != (n,):
            raise ValueError(
                f"data_weights must have shape (N,) = ({n},), got {tuple(data_weights.shape)}"
            )
        if should_validate(True) and not bool((data_weights >= 0).all() & (data_weights.sum() > 0)):
            raise ValueError(
                "data_weights must be non-negative with a positive sum, got min "
                f"{data_weights.min().item():.4g} and sum {data_weights.sum().item():.4g}"
            )
        weights = data_weights / data_weights.sum()
    aggregate = weights @ posterior_probs
    if marginal_probs is None:
        marginal_probs = aggregate
    check_tensor("marginal_probs", marginal_probs)
    if marginal_probs.shape != (k,):
        raise ValueError(
            f"marginal_probs must have shape (K,) = ({k},), got {tuple(marginal_probs.shape)}"
        )
    _check_probabilities(posterior_probs=(posterior_probs, 1), marginal_probs=(marginal_probs, 0))
    log_e, log_q, log_m = posterior_probs.log(), aggregate.log(), marginal_probs.log()
    mi = weights @ _xlogy_ratio(posterior_probs, log_e, log_q).sum(-1)
    rate = weights @ _xlogy_ratio(posterior_probs, log_e, log_m).sum(-1)
    gap = _xlogy_ratio(aggregate, log_q, log_m).sum()
    return DiscreteAggregate(mi, gap, rate, aggregate)
