r"""Importance-weighted estimate of $\log p(x)$ for reporting NLL.

Burda, Grosse & Salakhutdinov (2015), "Importance Weighted Autoencoders":

$$
\mathcal L_k(x) = \log \frac1k \sum_{i=1}^k \frac{d(x|z_i)\, m(z_i)}{e(z_i|x)},
\qquad z_i \sim e(z|x),
$$

a lower bound on $\log p(x)$ in expectation, equal to the ELBO for ``k = 1``,
non-decreasing in ``k`` and converging to $\log p(x)$ as ``k`` grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from tqdm.auto import tqdm

from rdloss._checks import check_positive_int, check_tensor
from rdloss.families import standard_normal_like
from rdloss.functional import distortion
from rdloss.latents import as_latent, as_marginal, resolve_marginal

__all__ = ["importance_weighted_bound"]

T = TypeVar("T")


def _call(owner: str, method: str, fn: Callable[[Any], T], arg: Any) -> T:
    """``fn(arg)``, with a ``NotImplementedError`` turned into an error that says what to pass."""
    try:
        return fn(arg)
    except NotImplementedError:
        raise TypeError(
            f"the {owner} does not implement {method}() (it raised NotImplementedError), "
            "which importance_weighted_bound needs: pass a posterior and a marginal with "
            "sample() and "
            "log_prob(), e.g. Independent(Normal(mu, sigma), 1), a zuko flow's distribution "
            "flow(x), or an rdloss marginal"
        ) from None


@torch.no_grad()
def importance_weighted_bound(
    x: Tensor,
    posterior: Distribution,
    decoder: Callable[[Tensor], Distribution],
    marginal: Distribution | nn.Module | None = None,
    *,
    k: int = 5000,
    chunk_size: int = 100,
    progress: bool = False,
) -> Tensor:
    r"""IWAE estimate $\mathcal L_k(x)$ of $\log p(x)$, per example, in nats.

    The ``k`` samples are drawn and decoded ``chunk_size`` at a time and combined with a
    running log-sum-exp, so memory is that of one ``chunk_size * B`` decoder call. Report
    ``-importance_weighted_bound(...).mean()`` as the test NLL (Burda et al. use
    ``k = 5000``). Randomness comes from the global generator (seed it for reproducibility).

    Args:
        x: ``(B, ...)`` data.
        posterior: ``e(z|x)`` with ``batch_shape (B,)`` (extra batch dims become latent
            dims), supporting ``sample`` and ``log_prob`` (a zuko flow's distribution does;
            no ``mean`` is needed).
        decoder: maps ``(N, *event)`` latents to a likelihood over ``(N, *x.shape[1:])``,
            as for `rdloss.RateDistortionLoss`.
        marginal: ``m(z)``: a ``Distribution``, a marginal module, or ``None`` for
            ``N(0, I)``.
        k: number of importance samples.
        chunk_size: samples per decoder call.
        progress: show a tqdm progress bar over the chunks (off by default).

    Returns:
        ``(B,)`` estimates of $\log p(x)$; ``k = 1`` is a single-sample ELBO.

    Examples:
        >>> import torch
        >>> from rdloss import helpers
        >>> x = torch.zeros(3, 1)
        >>> q = helpers.normal(torch.zeros(3, 1), scale=2.0**-0.5)  # exact posterior
        >>> dec = lambda z: helpers.normal(z, scale=1.0)
        >>> iw = importance_weighted_bound(x, q, dec, k=10)  # x ~ N(0, 2)
        >>> torch.allclose(iw, torch.full((3,), -0.5 * torch.log(torch.tensor(4 * torch.pi))))
        True
    """
    check_tensor("x", x, min_ndim=1)
    given = type(posterior).__name__
    posterior = as_latent(posterior)
    batch = x.shape[0]
    if posterior.batch_shape[0] != batch:
        raise ValueError(
            f"posterior batch size {posterior.batch_shape[0]} does not match x's batch size {batch}"
        )
    if not callable(decoder):
        raise TypeError(f"decoder must be callable, got {type(decoder).__name__}")
    check_positive_int("k", k)
    check_positive_int("chunk_size", chunk_size)
    resolved = resolve_marginal(marginal, posterior)
    m_dist = None if resolved is None else as_marginal(resolved, posterior.event_shape)

    total: Tensor | None = None
    starts = range(0, k, chunk_size)
    for start in tqdm(starts, desc="importance sampling", disable=not progress, leave=False):
        draws = min(chunk_size, k - start)
        z = _call(f"posterior ({given})", "sample", posterior.sample, (draws,))
        if m_dist is None:  # N(0, I) in the samples' dtype and device (no mean needed)
            m_dist = standard_normal_like(posterior.event_shape, z)
        rows = x.expand(draws, *x.shape).reshape(draws * batch, *x.shape[1:])
        likelihood = decoder(z.reshape(draws * batch, *z.shape[2:]))
        if not isinstance(likelihood, Distribution):
            raise TypeError(
                "decoder must return a torch.distributions.Distribution, got "
                f"{type(likelihood).__name__}"
            )
        log_lik = -distortion(rows, likelihood).reshape(draws, batch)
        log_m = _call(f"marginal ({type(m_dist).__name__})", "log_prob", m_dist.log_prob, z)
        log_e = _call(f"posterior ({given})", "log_prob", posterior.log_prob, z)
        log_w = log_lik + log_m - log_e
        chunk = log_w.logsumexp(0)
        total = chunk if total is None else torch.logaddexp(total, chunk)
    assert total is not None  # k >= 1 was checked, so the loop ran
    return total - math.log(k)
