"""The distortion side of a loss call: decode drawn or enumerated latents, or read a likelihood."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from einops import rearrange, repeat
from torch import Tensor
from torch.distributions import Distribution

from rdloss import functional as F
from rdloss._distortion import _distortion
from rdloss._checks import Checks, check_distribution, check_tensor
from rdloss.latents import LatentGroup, RateTerms

__all__ = ["Decoder", "decoded", "given"]

Decoder = Callable[[Tensor], Distribution] | Callable[[dict[str, Tensor]], Distribution]


def decoded(
    x: Tensor,
    groups: tuple[LatentGroup, ...],
    grouped: bool,
    decoder: Decoder,
    samples: int | Literal["enumerate"],
    checks: Checks | None,
    *,
    estimator: F.RateEstimator,
    balance: float | None,
) -> tuple[Tensor, RateTerms, str]:
    """Draw or enumerate latents, decode them in one call, and compute D and R.

    Args:
        x: ``(B, ...)`` data.
        groups: the call's latent groups (`rdloss.latents.resolve`).
        grouped: whether the call named its groups.
        decoder: maps ``(N, *event)`` latents (a dict for groups) to a likelihood over
            ``(N, *x.shape[1:])``.
        samples: latents per example, or ``"enumerate"``.
        checks: the call's value checks, or ``None`` when they are off.
        estimator: the loss's rate estimator.
        balance: the loss's KL balancing fraction.

    Returns:
        ``(distortion (B,), rate terms, estimator used)``.
    """
    if not callable(decoder):
        raise TypeError(f"decoder must be callable, got {type(decoder).__name__}")
    probs: Tensor | None = None
    used: str
    if samples == "enumerate":
        if grouped or groups[0].steps is not None:
            raise ValueError(
                "samples='enumerate' takes one discrete latent without steps; draw "
                "samples (samples=S) or pass likelihood= for grouped or sequence latents"
            )
        (group,) = groups
        draws, probs = F.enumerate_posterior(group.posterior)
        if group.prior is None and group.marginal is None:
            raise ValueError(
                "samples='enumerate' needs a discrete marginal such as "
                "rdloss.marginals.Categorical(K) or a prior; the default N(0, I) is "
                "continuous"
            )
        rate = F.enumerated_rate(
            group.posterior, group.marginal, prior=group.prior, balance=balance
        )
        zs = {group.name: draws}
        terms = RateTerms.single(rate.per_example, rate.per_dimension)
        used = rate.estimator
    elif isinstance(samples, int) and not isinstance(samples, bool) and samples >= 1:
        for g in groups:
            if not g.posterior.has_rsample:
                raise ValueError(
                    f"{type(g.posterior).__name__} has no rsample; use samples='enumerate' "
                    "for discrete latents or pass likelihood= with your own (relaxed) "
                    "samples"
                )
        # One draw (the common case) needs no sample axis: no flattening, no mean over it.
        shape = torch.Size() if samples == 1 else torch.Size([samples])
        zs = {g.name: g.posterior.rsample(shape) for g in groups}
        groups = tuple(g._replace(z=zs[g.name]) for g in groups)
    else:
        raise ValueError(f"samples must be an int >= 1 or 'enumerate', got {samples!r}")
    single = samples == 1
    n_draws, rows = 1 if single else next(iter(zs.values())).shape[0], x.shape[0]
    flat = zs if single else {k: rearrange(v, "s b ... -> (s b) ...") for k, v in zs.items()}
    likelihood = decoder(flat if grouped else flat[groups[0].name])  # type: ignore[arg-type]
    if not isinstance(likelihood, Distribution):
        raise TypeError(
            f"decoder must return a torch.distributions.Distribution, got "
            f"{type(likelihood).__name__}"
        )
    if checks is not None:
        checks.collect(likelihood)
    data = x if n_draws == 1 else repeat(x, "b ... -> (s b) ...", s=n_draws)
    per_draw = _distortion(data, likelihood, checks, deferred=checks is not None)
    if probs is None:
        terms, used = F.rate_terms(groups, grouped=grouped, estimator=estimator, balance=balance)
    if single and per_draw.ndim == 1:
        return per_draw, terms, used
    return F.sample_mean(per_draw.reshape(n_draws, rows), probs), terms, used


def given(
    x: Tensor,
    likelihood: Distribution,
    groups: tuple[LatentGroup, ...],
    grouped: bool,
    checks: Checks | None,
) -> Tensor:
    """D of a likelihood the caller computed, with its ``z`` checked against its samples."""
    check_distribution("likelihood", likelihood)
    if checks is not None:
        checks.collect(likelihood)
    per_draw = _distortion(x, likelihood, checks, deferred=checks is not None)
    for g in groups:
        if g.z is None:
            continue
        name = f"z[{g.name!r}]" if grouped else "z"
        check_tensor(name, g.z)
        n_lead = len(g.posterior.batch_shape) + len(g.posterior.event_shape)
        z_draws = g.z.shape[: g.z.ndim - n_lead]
        if z_draws != per_draw.shape[:-1]:
            raise ValueError(
                f"{name} has sample dims {tuple(z_draws)} but the likelihood has "
                f"{tuple(per_draw.shape[:-1])}: they must come from the same latents"
            )
    return per_draw.mean(0) if per_draw.ndim == 2 else per_draw
