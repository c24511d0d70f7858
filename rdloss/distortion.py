r"""The distortion $D = -\mathbb E_e \log d(x|z)$, summed over data dimensions, per example.

Either from the likelihood the caller computed (`given`), or by drawing (or enumerating)
latents and decoding them in one call (`decode`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent

from rdloss._checks import (
    Check,
    check_distribution,
    check_tensor,
    declares_no_shapes,
    run_checks,
    should_validate,
    undeclared_shapes,
    widen_half,
)
from rdloss._rebuild import widened
from rdloss.families import binary_support_check, value_checks
from rdloss.latents import LatentGroup

__all__ = ["Decoded", "Decoder", "decode", "distortion", "given", "per_draw", "sample_mean"]

Decoder = Callable[[Tensor], Distribution] | Callable[[dict[str, Tensor]], Distribution]


def distortion(x: Tensor, likelihood: Distribution, *, validate_args: bool = True) -> Tensor:
    r"""Per-sample distortion $-\log d(x|z)$ summed over data dimensions.

    The likelihood must cover ``x`` exactly: ``batch_shape + event_shape == x.shape``, or
    ``(S,) + x.shape`` for ``S`` latent samples per example. Nothing else is broadcast, so a
    ``(B, 784)`` likelihood against ``(B, 1, 28, 28)`` images is an error, not a
    ``(B, B, ...)`` tensor.

    Args:
        x: ``(B, ...)`` data.
        likelihood: ``d(x|z)`` as above; any split between batch and event dims is fine.
        validate_args: run the value checks a helper-built likelihood asks for (``x`` in a
            Bernoulli's support; one host sync), as `rdloss.RateDistortionLoss` does.

    Returns:
        ``(B,)`` or ``(S, B)`` distortion in nats.

    Raises:
        TypeError: wrong argument types.
        ValueError: the likelihood's shape does not cover ``x``, or a value check fails.

    Examples:
        >>> import torch
        >>> from torch.distributions import Bernoulli
        >>> x = torch.ones(2, 3)
        >>> distortion(x, Bernoulli(probs=torch.full((2, 3), 0.5)))
        tensor([2.0794, 2.0794])
    """
    check_tensor("x", x, min_ndim=1)
    check_distribution("likelihood", likelihood)
    draws = per_draw(x, likelihood)  # shape errors first
    if should_validate(validate_args) and x.device.type != "meta":
        with torch.no_grad():
            run_checks(likelihood_checks(x, likelihood))
    return draws


def likelihood_checks(x: Tensor, likelihood: Distribution) -> list[Check]:
    """The value checks of ``x`` against ``likelihood``.

    What a helper-built likelihood asks for (`rdloss.distributions.value_checks`), and the
    support of a ``Bernoulli`` built with torch's ``validate_args=True`` (whose own check in
    ``log_prob`` the cross-entropy path skips).
    """
    checks = value_checks(likelihood, x)
    base = likelihood.base_dist if isinstance(likelihood, Independent) else likelihood
    if not checks and isinstance(base, Bernoulli) and base._validate_args and x.numel():
        checks.append(binary_support_check(x))
    return checks


def _lead_dims(x: Tensor, likelihood: Distribution) -> int:
    """1 when the likelihood covers ``x``, 2 when it covers ``(S, *x.shape)``; else raise."""
    shape = likelihood.batch_shape + likelihood.event_shape
    if shape == x.shape:
        n_lead = 1
    elif len(shape) == x.ndim + 1 and shape[1:] == x.shape:
        n_lead = 2
    elif declares_no_shapes(likelihood):
        raise ValueError(undeclared_shapes("likelihood", likelihood, "x.shape"))
    else:
        raise ValueError(
            "likelihood must cover x exactly: batch_shape + event_shape must equal x.shape "
            f"{tuple(x.shape)} (or (S, *x.shape) for S samples), got batch_shape "
            f"{tuple(likelihood.batch_shape)} + event_shape {tuple(likelihood.event_shape)}; "
            "reshape the decoder output to x's shape (no broadcasting is done)"
        )
    if len(likelihood.batch_shape) < n_lead:
        raise ValueError(
            f"likelihood's event_shape {tuple(likelihood.event_shape)} swallows the "
            f"{'sample and ' if n_lead == 2 else ''}batch dimension: its batch_shape must "
            f"start with {tuple(shape[:n_lead])}, got {tuple(likelihood.batch_shape)} "
            "(build it with event_dims counting data dims only)"
        )
    return n_lead


def per_draw(x: Tensor, likelihood: Distribution, mask: Tensor | None = None) -> Tensor:
    """``(B,)`` or ``(S, B)`` distortion of checked types: shapes checked, no value checks.

    With a ``(B, T)`` step ``mask`` the padded steps' terms are left out; the likelihood's
    ``batch_shape`` must then keep the step axis: ``(B, T, ...)`` (or ``(S, B, T, ...)``).
    """
    n_lead = _lead_dims(x, likelihood)
    # Half-precision parameters are widened before the log-density, not the result after.
    per_element = widen_half(_negative_log_prob(widened(likelihood), x))
    if mask is not None:
        steps = per_element.shape[n_lead - 1 : n_lead + 1]
        if steps != mask.shape:
            raise ValueError(
                f"with mask= the likelihood's batch_shape must keep the step axis, (B, T, ...) "
                f"= {tuple(mask.shape)} (or (S, B, T, ...)), so that padded steps are left out "
                f"of the distortion; got batch_shape {tuple(likelihood.batch_shape)} (build it "
                "with event_dims counting one step's data dims only)"
            )
        column = mask.reshape(*mask.shape, *([1] * (per_element.ndim - n_lead - 1)))
        per_element = torch.where(column, per_element, 0.0)
    data_dims = tuple(range(n_lead, per_element.ndim))
    return per_element.sum(data_dims) if data_dims else per_element


def _negative_log_prob(likelihood: Distribution, x: Tensor) -> Tensor:
    """``-likelihood.log_prob(x)``, elementwise over a factorised Bernoulli's pixels.

    ``Bernoulli.log_prob`` negates the binary cross-entropy, and with the negation in the
    backward pass that is two extra passes over every pixel; the cross-entropy itself is
    the negative log-likelihood, so it is used directly (the same numbers).
    """
    base = likelihood.base_dist if isinstance(likelihood, Independent) else likelihood
    if isinstance(base, Bernoulli):
        logits = base.logits
        # Binarised data often arrives as int/bool/uint8: 0 and 1 are exact in any float.
        target = x if x.dtype == logits.dtype else x.to(logits.dtype)
        target = target if target.shape == logits.shape else target.expand_as(logits)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if x.dtype == torch.bool:
        raise TypeError(
            f"x has dtype torch.bool but the likelihood is a {type(base).__name__}: pass "
            "x.float() (or a Bernoulli likelihood for binary data)"
        )
    return -likelihood.log_prob(x)


def sample_mean(values: Tensor, probs: Tensor | None = None) -> Tensor:
    """Reduce ``(S, B)`` per-sample values to ``(B,)``: plain mean, or exact expectation.

    Args:
        values: ``(S, B)`` values, one row per latent sample (or support point).
        probs: ``(S, B)`` probabilities of each support point, for enumeration.
    """
    if probs is None:
        return values.mean(0)
    # Points of zero probability may carry inf distortion; they must contribute 0.
    return torch.where(probs > 0, probs * values, torch.zeros_like(values)).sum(0)


def given(
    x: Tensor,
    likelihood: Distribution,
    groups: tuple[LatentGroup, ...],
    grouped: bool,
    samples: int = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """``(B,)`` D of a likelihood the caller computed, its ``z`` checked against its samples.

    ``samples > 1`` is the number of samples per example the caller declared: the
    likelihood must then cover ``(samples, *x.shape)``. With a ``(B, T)`` step ``mask``
    the padded steps are left out (`per_draw`).
    """
    check_distribution("likelihood", likelihood)
    draws = per_draw(x, likelihood, mask)
    if samples > 1 and draws.shape[:-1] != (samples,):
        raise ValueError(
            f"samples={samples} declares {samples} samples per example your model drew, but "
            f"the likelihood covers {tuple(draws.shape[:-1])} samples: it must cover (S, "
            f"*x.shape) = {(samples, *x.shape)}; to have the loss draw them, pass decoder="
        )
    for g in groups:
        where = f"posterior[{g.name!r}]" if grouped else "posterior"
        if g.steps is not None and draws.ndim == 2 and g.posterior.batch_shape == draws.shape:
            # (S, B) with S == B == T reads as steps; the sample axis must be declared.
            raise ValueError(
                f"{where} has batch_shape {tuple(g.posterior.batch_shape)}, read as (B, T) "
                f"steps, and the likelihood covers {len(draws)} samples of a batch of "
                f"{len(draws)}: if its first axis is the samples (a prior that depends on a "
                f"sampled parent), pass samples={len(draws)}; if it is a step axis of "
                "that length, draw another number of samples"
            )
        if g.z is None:
            continue
        n_lead = len(g.posterior.batch_shape) + len(g.posterior.event_shape)
        z_draws = g.z.shape[: g.z.ndim - n_lead]
        if g.sampled:  # its own first batch axis is the sample axis
            z_draws = g.posterior.batch_shape[:1] + z_draws
        if z_draws != draws.shape[:-1]:
            name = f"z[{g.name!r}]" if grouped else "z"
            raise ValueError(
                f"{name} has sample dims {tuple(z_draws)} but the likelihood has "
                f"{tuple(draws.shape[:-1])}: they must come from the same latents"
            )
    return draws.mean(0) if draws.ndim == 2 else draws


class Decoded(NamedTuple):
    """What decoding drawn or enumerated latents gives.

    Attributes:
        distortion: ``(B,)`` per-example distortion.
        likelihood: what the decoder returned (its value checks are the loss's).
        groups: the call's groups with the drawn ``z`` (for a Monte Carlo rate).
    """

    distortion: Tensor
    likelihood: Distribution
    groups: tuple[LatentGroup, ...]


def decode(
    x: Tensor,
    groups: tuple[LatentGroup, ...],
    grouped: bool,
    decoder: Decoder,
    samples: int | Literal["enumerate"],
    support: tuple[Tensor, Tensor] | None = None,
) -> Decoded:
    """Draw ``samples`` latents (or take the enumerated ``support``), decode them in one call.

    Args:
        x: ``(B, ...)`` data.
        groups: the call's latent groups (`rdloss.latents.resolve`).
        grouped: whether the call named its groups.
        decoder: maps ``(N, *event)`` latents (a dict for groups) to a likelihood over
            ``(N, *x.shape[1:])``.
        samples: latents per example (an int >= 1; checked by the caller), or
            ``"enumerate"`` with ``support``.
        support: ``(z, probs)`` of `rdloss.functional.enumerate_posterior` for enumeration.

    Returns:
        `Decoded`.
    """
    probs: Tensor | None = None
    if support is not None:
        draws, probs = support
        zs = {groups[0].name: draws}
    else:
        # One draw (the common case) needs no sample axis: no flattening, no mean over it.
        shape = torch.Size() if samples == 1 else torch.Size([samples])  # type: ignore[list-item]
        zs = {g.name: g.posterior.rsample(shape) for g in groups}
        groups = tuple(
            LatentGroup(g.name, g.posterior, g.prior, g.marginal, zs[g.name]) for g in groups
        )
    single = samples == 1
    n_draws, rows = 1 if single else next(iter(zs.values())).shape[0], x.shape[0]
    flat = zs if single else {k: rearrange(v, "s b ... -> (s b) ...") for k, v in zs.items()}
    likelihood = decoder(flat if grouped else flat[groups[0].name])  # type: ignore[arg-type]
    if not isinstance(likelihood, Distribution):
        raise TypeError(
            f"decoder must return a torch.distributions.Distribution, got "
            f"{type(likelihood).__name__}"
        )
    data = x if n_draws == 1 else repeat(x, "b ... -> (s b) ...", s=n_draws)
    draws_d = per_draw(data, likelihood)
    if single and draws_d.ndim == 1:
        return Decoded(draws_d, likelihood, groups)
    return Decoded(sample_mean(draws_d.reshape(n_draws, rows), probs), likelihood, groups)
