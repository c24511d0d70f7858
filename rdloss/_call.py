"""The checks of one `rdloss.RateDistortionLoss` call: its style, enumeration, its values.

A call computes rate and distortion from a ``likelihood``, from a ``decoder``, or the rate
alone (neither, and no ``x``); `call_style` refuses every other combination before any
computation. `value_checks` lists everything the call's one host synchronisation screens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor
from torch.distributions import Distribution

from rdloss._checks import (
    Check,
    ValueCheck,
    check_outputs,
    check_weight,
    finite_check,
    finite_number,
)
from rdloss._shapes import enumerate_posterior
from rdloss.distortion import Decoder, likelihood_checks
from rdloss.families import value_checks as distribution_checks
from rdloss.latents import LatentGroup
from rdloss.objectives import GECO, Objective, TargetDistortion

__all__ = [
    "CallStyle",
    "call_style",
    "declared_samples",
    "decoder_draws",
    "enumerable",
    "value_checks",
]

CallStyle = Literal["likelihood", "decoder", "rate"]


def call_style(
    x: Tensor | None,
    likelihood: Distribution | None,
    decoder: Decoder | None,
    objective: Objective,
) -> CallStyle:
    """Which of the three call styles the arguments ask for; the reason when none.

    Raises:
        ValueError: both or only one of ``x`` and a distortion source, or the rate alone
            with an objective that reads the distortion.
    """
    if likelihood is not None and decoder is not None:
        raise ValueError("pass exactly one of likelihood= or decoder=")
    if x is None:
        if likelihood is not None or decoder is not None:
            raise ValueError(
                f"x is required with {'likelihood' if decoder is None else 'decoder'}= "
                "(the distortion is taken of x)"
            )
        if isinstance(objective, (TargetDistortion, GECO)):
            raise ValueError(
                f"the rate alone (no x, likelihood or decoder) cannot train "
                f"{type(objective).__name__}, whose loss reads the distortion; use an "
                "objective of the rate (Beta, FreeBits, TargetRate, Capacity, "
                "RateController, MultiRate)"
            )
        return "rate"
    if likelihood is None and decoder is None:
        raise ValueError(
            "pass exactly one of likelihood= or decoder=, or neither and no x for the "
            "rate alone (loss_fn(posterior=..., prior=...))"
        )
    return "likelihood" if likelihood is not None else "decoder"


def declared_samples(style: CallStyle, samples: object) -> int:
    """``S`` declared with ``likelihood=`` or the rate alone (1 with ``decoder=``).

    Raises:
        ValueError: ``samples`` is not an int >= 1 there.
    """
    if style == "decoder" or samples == 1:
        return 1
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        where = "the rate alone" if style == "rate" else "likelihood="
        raise ValueError(
            f"samples must be an int >= 1 with {where} (the samples per example your model "
            f"drew; 'enumerate' needs decoder=), got {samples!r}"
        )
    return samples


def decoder_draws(
    decoder: object, samples: object, groups: tuple[LatentGroup, ...], grouped: bool
) -> tuple[Tensor, Tensor] | None:
    """Check what ``decoder=`` needs; the support to enumerate, or ``None`` to draw.

    Raises:
        TypeError: ``decoder`` is not callable.
        ValueError: ``samples`` is neither an int >= 1 nor ``"enumerate"``, or a posterior
            cannot be drawn from with gradients.
    """
    if not callable(decoder):
        raise TypeError(f"decoder must be callable, got {type(decoder).__name__}")
    if samples == "enumerate":
        return enumerable(groups, grouped)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1 or 'enumerate', got {samples!r}")
    for g in groups:
        if not g.posterior.has_rsample:
            raise ValueError(
                f"{type(g.posterior).__name__} has no rsample; use samples='enumerate' for "
                "discrete latents or pass likelihood= with your own (relaxed) samples"
            )
    return None


def enumerable(groups: tuple[LatentGroup, ...], grouped: bool) -> tuple[Tensor, Tensor]:
    """The support of the call's one discrete latent, or the reason it has none."""
    if grouped or groups[0].steps is not None:
        raise ValueError(
            "samples='enumerate' takes one discrete latent without steps; draw "
            "samples (samples=S) or pass likelihood= for grouped or sequence latents"
        )
    (group,) = groups
    support = enumerate_posterior(group.posterior)
    if group.prior is None and group.marginal is None:
        raise ValueError(
            "samples='enumerate' needs a discrete marginal such as "
            "rdloss.marginals.Categorical(K) or a prior; the default N(0, I) is "
            "continuous"
        )
    return support


def value_checks(
    x: Tensor | None,
    likelihood: Distribution | None,
    groups: tuple[LatentGroup, ...],
    weight: Tensor | None,
    rate: Tensor,
    distortion: Tensor,
    elbo: Tensor,
    own: list[ValueCheck],
    *,
    grouped: bool = False,
) -> tuple[list[Check], list[str]]:
    """Every value check of a call, in the order their errors are reported, and its source.

    ``x`` and ``likelihood`` are ``None`` for the rate alone. The second list names, for
    each check, the argument `run_checks` puts before its error (``posterior['z3']``,
    ``prior``; ``""`` for none): in a model of many groups the message alone would not say
    which encoder or top-down layer to clamp.
    """
    checks: list[Check] = []
    where: list[str] = []  # kept aligned with checks

    def add(found: Sequence[Check], source: str = "") -> None:
        checks.extend(found)
        where.extend([source] * len(found))

    if weight is not None:
        total = weight.sum()
        screen = finite_number(total) & (total > 0) & (weight.amin() >= 0)
        add([ValueCheck(screen, lambda: check_weight(weight))])
    for g in groups:
        key = f"[{g.name!r}]" if grouped else ""
        add(distribution_checks(g.posterior), f"posterior{key}")
        if g.prior is not None:
            add(distribution_checks(g.prior), f"prior{key}")
    if x is not None and likelihood is not None:
        data = likelihood_checks(x, likelihood)
        add(data)
        if not data and x.is_floating_point():  # a support check of x covers NaN/inf too
            add([finite_check("x", x)])
    add(own)  # the objective's (`Objective.value_checks`)
    # The ELBO is finite exactly when both means are: no extra pass over R and D.
    add([ValueCheck(finite_number(elbo), lambda: check_outputs(rate, distortion))])
    return checks, where
