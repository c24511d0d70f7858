r"""Aggregate-posterior estimates for diagonal-Gaussian posteriors (ELBO surgery).

With stored posteriors $e(z|x_n) = \mathcal N(\mu_n, \mathrm{diag}\,s_n^2)$,
$n = 1..N$, the aggregate posterior is the mixture :math:`q(z) = \frac1N \sum_n
e(z|x_n)`. Hoffman & Johnson (2016, "ELBO surgery") split the mean rate as

$$
R = \underbrace{\mathbb E_n \mathbb E_{e(z|x_n)}[\log e(z|x_n) - \log q(z)]}_{I(n;z)}
+ \underbrace{\mathbb E_{q(z)}[\log q(z) - \log m(z)]}_{\mathrm{KL}(q\|m)},
$$

and Chen et al. (2018, β-TCVAE) split the gap further into the total correlation
$\mathrm{KL}(q(z)\,\|\,\prod_j q(z_j))$ and the dimension-wise KL
$\sum_j \mathrm{KL}(q(z_j)\,\|\,m(z_j))$.

All-pairs log-densities use the mixture kernel of `rdloss.distributions` (the one behind
`DiagonalGaussianMixture`), one matrix product per chunk of rows (expand the square):
:math:`\log\mathcal N(z;\mu_n,s_n) = [z^2, z, 1] \cdot [-\tfrac{1}{2s_n^2}, \tfrac{\mu_n}{s_n^2},
c_n]`, an ``(M, 2D+1) @ (2D+1, N)`` product, followed by a row-wise log-sum-exp; memory is
``O(chunk * N)``. The data are centred on the mean of $\mu$ first, which keeps the
expanded square accurate in float32. The constant $\log N$ of
$\log q(z) = \mathrm{logsumexp}_n \log e(z|x_n) - \log N$ is kept, so
$0 \le I(n;z) \le \log N$ (the estimate saturates there).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal
from tqdm.auto import tqdm

from rdloss._checks import (
    check_positive_int,
    check_tensor,
    should_validate,
)
from rdloss.distributions import (
    _component_weights,
    _expanded_square,
    _gaussian_log_normaliser,
    _logsumexp,
)
from rdloss.families import standard_normal_like
from rdloss.latents import as_marginal, resolve_marginal

__all__ = [
    "AggregatePosterior",
    "aggregate_posterior",
    "check_gaussian_parameters",
    "minibatch_aggregate_posterior",
    "pairwise_gaussian_log_prob",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# Bytes allowed for one (rows, N) block of log-densities; bounds the extra peak memory.
_BLOCK_BYTES = 32 * 2**20


class AggregatePosterior(NamedTuple):
    r"""Aggregate-posterior estimates in nats (one Monte Carlo sample per point).

    Attributes:
        mutual_information: $I(n;z)$, in ``[0, log N]``.
        marginal_gap: $\mathrm{KL}(q(z)\,\|\,m(z))$; ``None`` without a marginal.
        rate: Monte Carlo rate $\mathbb E[\log e - \log m]$ from the same samples, so
            ``rate == mutual_information + marginal_gap`` up to rounding; ``None`` without a
            marginal.
        total_correlation: $\mathrm{KL}(q(z)\,\|\,\prod_j q(z_j))$ on ``tc_samples``
            points; ``None`` if ``tc_samples == 0``.
        dimensionwise_kl: $\sum_j \mathrm{KL}(q(z_j)\,\|\,m(z_j))$ on the same
            points; ``None`` without a marginal that factorises over dimensions.
        mutual_information_stderr: Monte Carlo standard error of ``mutual_information``
            (standard deviation of the per-point terms over $\sqrt{N}$).
        num_points: ``N``, the number of posteriors in the mixture ``q(z)``.
        saturation: ``log N``: no estimate of ``I`` can exceed it.
        num_samples: latent samples behind ``mutual_information`` and ``marginal_gap``.
        tc_samples: latent samples behind ``total_correlation`` and ``dimensionwise_kl``.
    """

    mutual_information: Tensor
    marginal_gap: Tensor | None
    rate: Tensor | None
    total_correlation: Tensor | None
    dimensionwise_kl: Tensor | None
    mutual_information_stderr: Tensor
    num_points: int
    saturation: float
    num_samples: int
    tc_samples: int


def _resolve_scale(loc: Tensor, scale: Tensor | None, logvar: Tensor | None) -> Tensor:
    if (scale is None) == (logvar is None):
        raise ValueError("give exactly one of scale= or logvar=")
    if scale is None:
        assert logvar is not None  # narrowed by the exactly-one check above
        check_tensor("logvar", logvar)
        if logvar.shape != loc.shape:
            raise ValueError(
                f"logvar must have loc's shape {tuple(loc.shape)}, got {tuple(logvar.shape)}"
            )
        return torch.exp(0.5 * logvar.to(loc.dtype))
    check_tensor("scale", scale)
    if scale.shape != loc.shape:
        raise ValueError(
            f"scale must have loc's shape {tuple(loc.shape)}, got {tuple(scale.shape)}"
        )
    return scale.to(loc.dtype)


def check_gaussian_parameters(loc: Tensor, scale: Tensor, z: Tensor | None = None) -> None:
    """Raise on NaN/inf in ``loc`` or ``z``, or a ``scale`` that is not positive and finite.

    One host synchronisation for all three; skipped while compiling. A zero or negative
    scale would otherwise turn every estimate into NaN or inf.
    """
    if not should_validate(True):
        return
    checks = [torch.isfinite(loc).all(), ((scale > 0) & torch.isfinite(scale)).all()]
    if z is not None:
        checks.append(torch.isfinite(z).all())
    flags = torch.stack(checks).tolist()
    if not flags[0]:
        raise ValueError("non-finite values (NaN or inf) in loc")
    if not flags[1]:
        raise ValueError(
            f"scale must be positive and finite, got values in [{scale.min().item():.4g}, "
            f"{scale.max().item():.4g}] (NaN counts as invalid)"
        )
    if z is not None and not flags[2]:
        raise ValueError("non-finite values (NaN or inf) in z")


def _check_loc(loc: Tensor) -> Tensor:
    check_tensor("loc", loc, min_ndim=2)
    if loc.ndim != 2 or loc.shape[1] == 0:
        raise ValueError(f"loc must have shape (N, D) with D >= 1, got {tuple(loc.shape)}")
    return loc if loc.dtype in (torch.float32, torch.float64) else loc.float()


def _marginal(marginal: object, loc: Tensor, scale: Tensor) -> Distribution:
    """``m(z)`` as a distribution over ``D``-vectors (``latents.resolve_marginal``'s rules)."""
    posterior = Independent(Normal(loc, scale, validate_args=False), 1)
    dist = resolve_marginal(marginal, posterior)  # type: ignore[arg-type]
    if dist is None:  # N(0, I), in the posteriors' dtype
        return standard_normal_like(loc.shape[1:], loc)
    return as_marginal(dist, posterior.event_shape)


def _chunks(total: int, size: int, progress: bool, desc: str) -> Iterator[tuple[int, int]]:
    starts = range(0, total, size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        yield start, min(start + size, total)


def _rows(chunk_size: int | None, n: int, per_row_bytes: int) -> int:
    if chunk_size is None:
        return max(1, _BLOCK_BYTES // max(per_row_bytes, 1))
    return check_positive_int("chunk_size", chunk_size)


def pairwise_gaussian_log_prob(
    z: Tensor, loc: Tensor, scale: Tensor, *, centre: bool = True
) -> Tensor:
    r"""All-pairs diagonal-Gaussian log-densities $\log\mathcal N(z_m; \mu_n, s_n^2)$.

    One ``(M, 2D+1) @ (2D+1, N)`` matrix product; no ``(M, N, D)`` tensor is formed.

    Args:
        z: ``(M, D)`` points.
        loc: ``(N, D)`` component means.
        scale: ``(N, D)`` component standard deviations.
        centre: subtract the mean of ``loc`` from both first (float32 accuracy).

    Returns:
        ``(M, N)`` log-densities, summed over the ``D`` dimensions.

    Examples:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> z, mu, s = torch.randn(3, 2), torch.randn(4, 2), torch.rand(4, 2) + 0.5
        >>> ref = Normal(mu, s).log_prob(z[:, None]).sum(-1)
        >>> torch.allclose(pairwise_gaussian_log_prob(z, mu, s), ref, atol=1e-5)
        True
    """
    loc = _check_loc(loc)
    check_tensor("z", z, min_ndim=2)
    check_tensor("scale", scale)
    if z.ndim != 2 or z.shape[1] != loc.shape[1] or scale.shape != loc.shape:
        raise ValueError(
            f"expected z (M, D), loc (N, D), scale (N, D) with the same D, got "
            f"{tuple(z.shape)}, {tuple(loc.shape)}, {tuple(scale.shape)}"
        )
    check_gaussian_parameters(loc, scale, z)
    scale = scale.to(loc.dtype)
    shift = loc.mean(0) if centre else torch.zeros_like(loc[0])
    weights = _component_weights(loc, scale, _gaussian_log_normaliser(scale), shift)
    return _expanded_square(z.to(loc.dtype), weights, shift)


def _diagonal_log_prob(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    quad = (z - loc).div_(scale).square_().sum(-1)
    return -0.5 * quad + _gaussian_log_normaliser(scale)


def _per_dimension(marginal: Distribution) -> Distribution | None:
    """The elementwise base of a marginal that is a product over its one event dim."""
    if (
        isinstance(marginal, Independent)
        and marginal.reinterpreted_batch_ndims == 1
        and len(marginal.base_dist.event_shape) == 0
    ):
        base: Distribution = marginal.base_dist
        return base
    return None


def _factor_terms(z: Tensor, loc: Tensor, scale: Tensor, progress: bool) -> tuple[Tensor, Tensor]:
    """``log q(z)`` ``(M,)`` and per-dimension ``log q(z_j)`` ``(M, D)`` by chunked broadcasting."""
    n, d = loc.shape
    rows = _rows(None, n, n * (d + 1) * loc.element_size())
    log_q, log_qj = z.new_empty(len(z)), z.new_empty(z.shape)
    log_scale, inv_scale = scale.log(), scale.reciprocal()
    for start, stop in _chunks(len(z), rows, progress, "total correlation"):
        # In place after the first subtraction: a single (rows, N, D) block.
        dens = (z[start:stop, None, :] - loc).mul_(inv_scale).pow_(2).mul_(-0.5)
        dens.sub_(log_scale).sub_(_HALF_LOG_2PI)
        log_q[start:stop] = _logsumexp(dens.sum(-1)) - math.log(n)
        log_qj[start:stop] = _logsumexp(dens, dim=1) - math.log(n)
    return log_q, log_qj


@torch.no_grad()
def aggregate_posterior(
    loc: Tensor,
    *,
    scale: Tensor | None = None,
    logvar: Tensor | None = None,
    marginal: Distribution | nn.Module | None = None,
    z: Tensor | None = None,
    tc_samples: int = 256,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> AggregatePosterior:
    r"""Whole-dataset $I(n;z)$, marginal gap, total correlation and dimension-wise KL.

    Draws one $z_n \sim e(z|x_n)$ per point (or uses ``z``) and evaluates
    $\log q(z_n)$ against all ``N`` components exactly, in chunks of rows. Total
    correlation and dimension-wise KL need per-dimension mixtures, an ``(M, N, D)``
    computation, so they use a random subsample of ``tc_samples`` of the same points
    (still against all ``N`` components).

    Errors: the Monte Carlo standard error of ``I`` is reported; every estimate is capped
    by $I(n;z) \le \log N$ (``saturation``), so when ``I`` approaches ``log N`` it
    measures the dataset size, not the encoder.

    Args:
        loc: ``(N, D)`` posterior means.
        scale: ``(N, D)`` posterior standard deviations (or give ``logvar``).
        logvar: ``(N, D)`` posterior log-variances.
        marginal: ``m(z)``, a ``Distribution`` or a marginal module, for the gap, rate and
            dimension-wise KL; ``None`` computes ``I`` and the total correlation only.
        z: ``(N, D)`` posterior samples to use instead of fresh ones.
        tc_samples: points for total correlation and dimension-wise KL (0 skips them).
        chunk_size: rows per chunk; default keeps each ``(rows, N)`` block near 32 MiB.
        generator: random generator for the samples and the subsample.
        progress: show tqdm progress bars (off by default).

    Returns:
        `AggregatePosterior`.

    Raises:
        TypeError: ``chunk_size`` is not an int.
        ValueError: a shape disagrees, ``tc_samples`` or ``chunk_size`` is invalid, ``loc``
            or ``z`` holds NaN/inf, or a ``scale`` is not positive and finite.

    Examples:
        >>> import torch
        >>> from rdloss.marginals import StandardNormal
        >>> mu, s = torch.randn(500, 2), torch.full((500, 2), 0.5)
        >>> out = aggregate_posterior(mu, scale=s, marginal=StandardNormal(2), tc_samples=100)
        >>> bool(0 <= out.mutual_information <= out.saturation), out.num_points
        (True, 500)
        >>> torch.allclose(out.rate, out.mutual_information + out.marginal_gap)
        True
    """
    loc = _check_loc(loc)
    scale = _resolve_scale(loc, scale, logvar)
    n = loc.shape[0]
    if isinstance(tc_samples, bool) or not isinstance(tc_samples, int) or tc_samples < 0:
        raise ValueError(f"tc_samples must be a non-negative int, got {tc_samples!r}")
    if z is not None:
        check_tensor("z", z)
        if z.shape != loc.shape:
            raise ValueError(f"z must have loc's shape {tuple(loc.shape)}, got {tuple(z.shape)}")
        z = z.to(loc.dtype)
    check_gaussian_parameters(loc, scale, z)
    if z is None:
        z = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
        z.mul_(scale).add_(loc)
    m_dist = None if marginal is None else _marginal(marginal, loc, scale)

    # The mixture kernel of rdloss.distributions, in the posteriors' dtype (not widened to
    # float64 as DiagonalGaussianMixture.log_prob does: the dominant own component below
    # is exact, and float64 would double the time of this N x N computation).
    centre = loc.mean(0)
    weights = _component_weights(loc, scale, _gaussian_log_normaliser(scale), centre)
    rows = _rows(chunk_size, n, n * loc.element_size())
    log_e = _diagonal_log_prob(z, loc, scale)
    log_q = z.new_empty(n)
    for start, stop in _chunks(n, rows, progress, "aggregate posterior"):
        block = _expanded_square(z[start:stop], weights, centre)
        # Each point's own component, computed directly: exact where the expanded square
        # loses digits, and it keeps every term of I at most log N.
        block.diagonal(offset=start).copy_(log_e[start:stop])
        log_q[start:stop] = _logsumexp(block)
    log_q -= math.log(n)
    terms = log_e - log_q
    mi = terms.mean()
    stderr = terms.std() / math.sqrt(n) if n > 1 else torch.zeros_like(mi)
    gap = rate = tc = dwkl = None
    if m_dist is not None:
        log_m = m_dist.log_prob(z)
        gap = (log_q - log_m).mean()
        rate = mi + gap

    used = min(tc_samples, n)
    if used > 0:
        index = torch.randperm(n, generator=generator, device=loc.device)[:used]
        log_q_sub, log_qj = _factor_terms(z[index], loc, scale, progress)
        tc = (log_q_sub - log_qj.sum(-1)).mean()
        base = None if m_dist is None else _per_dimension(m_dist)
        if base is not None:
            dwkl = (log_qj - base.log_prob(z[index])).sum(-1).mean()
    return AggregatePosterior(mi, gap, rate, tc, dwkl, stderr, n, math.log(n), n, used)


def minibatch_aggregate_posterior(
    loc: Tensor,
    *,
    scale: Tensor | None = None,
    logvar: Tensor | None = None,
    marginal: Distribution | nn.Module | None = None,
    z: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AggregatePosterior:
    """Cheap estimate from one minibatch: the batch stands in for the dataset.

    The same estimator as `aggregate_posterior` with ``q(z)`` the mixture of the
    ``B`` posteriors of the batch and every point used for the total correlation. It
    saturates at ``log B`` (reported as ``saturation``): with ``B = 128``, no estimate
    exceeds 4.85 nats.

    Args:
        loc: ``(B, D)`` posterior means of the batch.
        scale: ``(B, D)`` standard deviations (or ``logvar``).
        logvar: ``(B, D)`` log-variances.
        marginal: ``m(z)`` for the gap and dimension-wise KL.
        z: ``(B, D)`` the batch's own latent samples (e.g. those fed to the decoder).
        generator: random generator when ``z`` is not given.

    Returns:
        `AggregatePosterior` with ``saturation = log B``.
    """
    batch = _check_loc(loc).shape[0]
    return aggregate_posterior(
        loc,
        scale=scale,
        logvar=logvar,
        marginal=marginal,
        z=z,
        tc_samples=batch,
        generator=generator,
    )
