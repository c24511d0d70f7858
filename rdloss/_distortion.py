"""Distortion: the negative log-likelihood of the data, summed over data dimensions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent

from rdloss._checks import (
    SUPPORT_CHECK,
    Checks,
    check_distribution,
    check_finite,
    check_tensor,
    should_validate,
    widen_half,
)

__all__ = ["distortion", "sample_mean"]


def distortion(x: Tensor, likelihood: Distribution, *, checks: Checks | None = None) -> Tensor:
    r"""Per-sample distortion $-\log d(x|z)$ summed over data dimensions.

    The likelihood must cover ``x`` exactly: ``batch_shape + event_shape == x.shape``, or
    ``(S,) + x.shape`` for ``S`` latent samples per example. Nothing else is broadcast, so a
    ``(B, 784)`` likelihood against ``(B, 1, 28, 28)`` images is an error, not a
    ``(B, B, ...)`` tensor.

    Args:
        x: ``(B, ...)`` data.
        likelihood: ``d(x|z)`` as above; any split between batch and event dims is fine.
        checks: the calling loss's value checks, on which a Bernoulli likelihood's support
            check of ``x`` is queued (one host sync per call); ``None``: checked now.

    Returns:
        ``(B,)`` or ``(S, B)`` distortion in nats.

    Raises:
        TypeError: wrong argument types.
        ValueError: the likelihood's shape does not cover ``x``.

    Examples:
        >>> import torch
        >>> from torch.distributions import Bernoulli
        >>> x = torch.ones(2, 3)
        >>> distortion(x, Bernoulli(probs=torch.full((2, 3), 0.5)))
        tensor([2.0794, 2.0794])
    """
    check_tensor("x", x, min_ndim=1)
    check_distribution("likelihood", likelihood)
    return _distortion(x, likelihood, checks, deferred=True)


def _distortion(
    x: Tensor, likelihood: Distribution, checks: Checks | None, *, deferred: bool
) -> Tensor:
    """`distortion` of checked types; ``deferred``: run the checks a helper left to the loss.

    A `RateDistortionLoss` with ``validate_args=False`` passes ``deferred=False``: the
    helpers' deferred checks are the loss's to run, and it runs none.
    """
    shape = likelihood.batch_shape + likelihood.event_shape
    if shape == x.shape:
        n_lead = 1
    elif len(shape) == x.ndim + 1 and shape[1:] == x.shape:
        n_lead = 2
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
    per_element = widen_half(_negative_log_prob(likelihood, x, checks, deferred))
    data_dims = tuple(range(n_lead, per_element.ndim))
    return per_element.sum(data_dims) if data_dims else per_element


def _negative_log_prob(
    likelihood: Distribution, x: Tensor, checks: Checks | None, deferred: bool
) -> Tensor:
    """``-likelihood.log_prob(x)``, elementwise over a factorised Bernoulli's pixels.

    ``Bernoulli.log_prob`` negates the binary cross-entropy, and with the negation in the
    backward pass that is two extra passes over every pixel (about 1.4x the loss's cost on
    CPU); the cross-entropy itself is the negative log-likelihood, so it is used directly.
    """
    base = likelihood.base_dist if isinstance(likelihood, Independent) else likelihood
    if type(base) is Bernoulli:
        # logits already span the full (S?, B, *data) shape; x broadcasts over S only.
        logits = base.logits
        # Binarised data often arrives as int/bool/uint8: 0 and 1 are exact in any float.
        target = x if x.dtype == logits.dtype else x.to(logits.dtype)
        wanted = base._validate_args or (deferred and getattr(likelihood, SUPPORT_CHECK, False))
        if wanted and should_validate(True):
            _check_binary(target, checks)
        target = target if target.shape == logits.shape else target.expand_as(logits)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return -likelihood.log_prob(x)


def _check_binary(x: Tensor, checks: Checks | None) -> None:
    """``x`` in ``{0, 1}``, the Bernoulli's support: now, or queued on the call's checks."""

    def explain() -> None:
        if x.is_floating_point():
            check_finite(x=x)  # NaN and inf fail this check too: name them as such
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            raise ValueError(
                f"x must lie in the support {{0, 1}} of the Bernoulli likelihood, got "
                f"{int(bad.sum())} of {x.numel()} values that do not, e.g. "
                f"{x[bad][:3].tolist()}; for grey levels in [0, 1] build the likelihood with "
                "helpers.bernoulli(..., validate_args=False) (the cross-entropy) or use "
                "ContinuousBernoulli"
            )

    if checks is None:
        explain()
        return
    # x (1 - x) is 0 exactly at 0 and 1, NaN or non-zero elsewhere: one fused pass and its
    # extremes (aminmax, which propagates NaN, is 4x faster than an L1 norm on CPU) instead
    # of three boolean passes over the pixels.
    low, high = torch.aminmax(torch.addcmul(x, x, x, value=-1))
    checks.add((low == 0) & (high == 0), explain)
    checks.covers_finite(x)  # the loss's own finiteness screen of x would repeat it


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
