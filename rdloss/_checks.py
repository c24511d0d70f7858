"""Checks shared by the public entry points, and their one input conversion (`widen_half`).

Shape and type checks are free and always run. Value checks (NaN/inf, negative weights) need a
host synchronisation, so callers run them only when their ``validate_args`` flag is true (the
default), and never while compiling (``torch.compiler.is_compiling()``).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = [
    "Check",
    "RangeCheck",
    "ValueCheck",
    "check_beta_range",
    "check_distribution",
    "check_finite",
    "finite_number",
    "check_fraction",
    "check_outputs",
    "check_weight",
    "check_nonnegative_number",
    "check_positive_int",
    "check_tensor",
    "declares_no_shapes",
    "finite_check",
    "in_functorch",
    "run_checks",
    "should_validate",
    "undeclared_shapes",
    "widen_half",
]


def is_compiling() -> bool:
    """Whether dynamo is tracing (``torch.compiler.is_compiling``, torch >= 2.3)."""
    return torch.compiler.is_compiling()


def in_functorch() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``, ...) is running."""
    if is_compiling():  # dynamo cannot trace the query on older releases; nor can it vmap here
        return False
    return torch._C._functorch.maybe_current_level() is not None


def should_validate(validate_args: bool) -> bool:
    """Whether value checks run: the flag, and never while compiling or inside ``torch.func``.

    rdloss' own checks do not follow ``torch.distributions.Distribution``'s global default:
    libraries flip that at import (zuko turns it off), which would silently drop them. A
    value check reads a tensor on the host, which ``vmap`` cannot do and compiling would
    split the graph for.

    Args:
        validate_args: the caller's flag.
    """
    return validate_args and not is_compiling() and not in_functorch()


def check_tensor(name: str, value: object, *, min_ndim: int = 0) -> Tensor:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is a floating or integer tensor.

    Args:
        name: argument name used in the message.
        value: what the caller received.
        min_ndim: the least number of dimensions accepted.

    Returns:
        ``value`` unchanged.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype.is_complex:  # the dtype's flag: dynamo traces it on every release
        raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
    if value.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s) (batch first), "
            f"got shape {tuple(value.shape)}"
        )
    if min_ndim >= 1 and value.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch (shape {tuple(value.shape)})")
    return value


def declares_no_shapes(dist: Distribution) -> bool:
    """Whether ``dist`` is another library's distribution with both shapes ``()``.

    torch's and rdloss's own classes always declare their shapes (``()`` then means a
    scalar); another library's with both ``()`` most likely never declared them.
    """
    root = type(dist).__module__.split(".")[0]
    return root not in ("torch", "rdloss") and not dist.batch_shape and not dist.event_shape


def undeclared_shapes(name: str, dist: Distribution, shape: str) -> str:
    """The message for a distribution that never declared its shapes (both are ``()``).

    Some libraries' distributions (scvi-tools' ``NegativeBinomial``) call
    ``Distribution.__init__`` without ``batch_shape``: their ``log_prob`` is elementwise
    over the parameters' shape, but nothing says which dimensions are examples. Declaring
    the shapes once on the built object is the public one-line fix.
    """
    return (
        f"{name} {type(dist).__name__} has batch_shape () and event_shape (): it does not "
        "declare its shapes (its class calls torch.distributions.Distribution.__init__ "
        "without batch_shape, as scvi-tools' NegativeBinomial does), so nothing says which "
        f"dimensions are examples. Declare them once after building it: "
        f"torch.distributions.Distribution.__init__({name.split('[')[0]}, "
        f"batch_shape={shape}, validate_args=False)"
    )


def check_distribution(name: str, value: object) -> Distribution:
    """Raise ``TypeError`` unless ``value`` is a ``torch.distributions.Distribution``."""
    if not isinstance(value, Distribution):
        # A wrapper that holds one (DreamerV3's ContDist keeps it as ``_dist``): name it.
        held = [k for k, v in getattr(value, "__dict__", {}).items() if isinstance(v, Distribution)]
        hint = f"; it holds one as .{held[0]}: pass that" if held else ""
        raise TypeError(
            f"{name} must be a torch.distributions.Distribution, got {type(value).__name__}{hint}"
        )
    return value


class ValueCheck(NamedTuple):
    """A value check whose verdict is still on the device.

    Attributes:
        passed: 0-dim bool tensor, true when the values pass; computed with cheap screens
            (a sum is non-finite whenever a term is), so it may raise a false alarm.
        explain: re-derives the verdict exactly and raises the precise error, or returns on
            a false alarm.
    """

    passed: Tensor
    explain: Callable[[], None]


class RangeCheck(NamedTuple):
    """``low <= t <= high`` everywhere (NaN fails), from ``t``'s extremes on the device.

    `run_checks` compares the extremes of every range check with the same bounds, dtype and
    device in one go, so a call over many latent groups pays one ``aminmax`` per tensor and
    a handful of kernels in all, not three comparisons per tensor.

    Attributes:
        smallest: 0-dim minimum of ``t``.
        largest: 0-dim maximum of ``t``.
        low: the bound ``smallest`` must reach.
        high: the bound ``largest`` must not pass.
        explain: re-derives the verdict and raises the precise error.
    """

    smallest: Tensor
    largest: Tensor
    low: float
    high: float
    explain: Callable[[], None]

    @property
    def passed(self) -> Tensor:
        """The verdict of this check alone, a 0-dim bool tensor."""
        return (self.smallest >= self.low) & (self.largest <= self.high)


Check = ValueCheck | RangeCheck


def _verdicts(checks: list[Check]) -> list[Tensor]:
    """One 0-dim bool per check, or per set of range checks with equal bounds and dtype."""
    flags: list[Tensor] = []
    same: dict[tuple[torch.dtype, torch.device, float, float], list[RangeCheck]] = {}
    for check in checks:
        if isinstance(check, RangeCheck):
            key = (check.smallest.dtype, check.smallest.device, check.low, check.high)
            same.setdefault(key, []).append(check)
        else:
            flags.append(check.passed)
    for (_, _, low, high), group in same.items():
        if len(group) == 1:
            flags.append(group[0].passed)
            continue
        # The bounds stay Python numbers: compared in the values' own dtype, as one check is.
        smallest = torch.stack([c.smallest for c in group]).amin()
        largest = torch.stack([c.largest for c in group]).amax()
        flags.append((smallest >= low) & (largest <= high))
    return flags


def run_checks(checks: list[Check], where: Sequence[str] = ()) -> None:
    """Decide every check with one host synchronisation; raise the first failure.

    Only when the fused verdict fails are the precise messages re-derived, in order, so the
    first failing check is the one reported. Call it, and build the checks, under
    ``torch.no_grad()``: they are screens of values, never part of the graph.

    Args:
        checks: the checks, in the order their errors are reported.
        where: for each check, the argument it belongs to, put before its error message
            (``"posterior['z3']: ..."``; ``""`` for none); empty: none for any.
    """
    if not checks:
        return
    flags = _verdicts(checks)
    if len(flags) <= 3:  # a chain of `&` is as short as stack + all
        passed = flags[0]
        for flag in flags[1:]:
            passed = passed & flag
    else:
        passed = torch.stack(flags).all()
    if bool(passed):
        return
    for check, place in zip(checks, where or [""] * len(checks), strict=True):
        try:
            check.explain()  # raises for a real failure; a screen's false alarm passes
        except ValueError as error:
            if not place:
                raise
            raise ValueError(f"{place}: {error}") from None


def finite_check(name: str, t: Tensor) -> ValueCheck:
    """`check_finite` of a floating-point tensor as a `ValueCheck`, screened by its sum."""
    return ValueCheck(finite_number(t.sum()), functools.partial(check_finite, **{name: t}))


def finite_number(t: Tensor) -> Tensor:
    """0-dim ``t`` is finite, as a device flag: ``t - t`` is 0, or NaN for NaN and inf.

    Two kernels where ``torch.isfinite`` runs four on CPU; this runs on every call.
    """
    return (t - t) == 0


def check_finite(**tensors: Tensor) -> None:
    """Raise ``ValueError`` naming every tensor argument that holds NaN or inf.

    All tensors are checked with one host synchronisation.
    """
    names = list(tensors)
    flags = torch.stack([torch.isfinite(t).all() for t in tensors.values()]).tolist()
    bad = [n for n, ok in zip(names, flags, strict=True) if not ok]
    if bad:
        raise ValueError(f"non-finite values (NaN or inf) in {', '.join(bad)}")


def check_nonnegative_number(name: str, value: object, *, positive: bool = False) -> float:
    """Return ``value`` as a float or raise naming the argument.

    Args:
        name: argument name used in the message.
        value: a real Python or 0-dim tensor number.
        positive: require ``value > 0`` instead of ``value >= 0``.
    """
    if isinstance(value, Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {number}")
    if number < 0 or (positive and number == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {number}")
    return number


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int ``>= 1`` (``bool`` excluded), else raise naming it.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: ``value < 1``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_beta_range(beta_min: object, beta_max: object) -> tuple[float, float]:
    """``(beta_min, beta_max)`` as floats with ``0 < beta_min < beta_max``, else raise."""
    low = check_nonnegative_number("beta_min", beta_min, positive=True)
    high = check_nonnegative_number("beta_max", beta_max, positive=True)
    if not high > low:
        raise ValueError(f"beta_max must be > beta_min = {low}, got {high}")
    return low, high


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a real number in ``[0, 1]``, else raise naming it.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` lies outside ``[0, 1]`` (or is NaN).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def widen_half(t: Tensor) -> Tensor:
    """``t`` in float32 if it is float16 or bfloat16, else ``t`` itself (no copy).

    Log-densities, KLs and their sums lose too much in half precision (and ``exp(logvar)``
    overflows float16), so inputs in half precision are computed in float32.
    """
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def check_weight(weight: Tensor) -> None:
    """Raise ``ValueError`` unless ``weight`` is finite, non-negative, with a positive sum."""
    check_finite(weight=weight)
    if not bool((weight >= 0).all() and weight.sum() > 0):
        raise ValueError("weight must be non-negative with a positive sum")


def check_outputs(rate: Tensor, distortion: Tensor) -> None:
    """Raise ``ValueError`` naming rate or distortion if either holds NaN/inf."""
    flags = torch.stack([torch.isfinite(rate).all(), torch.isfinite(distortion).all()])
    rate_ok, distortion_ok = flags.tolist()
    if not rate_ok:
        raise ValueError(
            f"rate is NaN/inf for {int((~torch.isfinite(rate)).sum())} of {rate.numel()} "
            "examples: check the posterior and marginal parameters"
        )
    if not distortion_ok:
        raise ValueError(
            f"distortion is NaN/inf for {int((~torch.isfinite(distortion)).sum())} of "
            f"{distortion.numel()} examples: check the likelihood parameters, and that x "
            "lies in the likelihood's support"
        )
