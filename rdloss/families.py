r"""The distributions `rdloss.helpers` builds: what they hold and what the loss checks of them.

Each is the torch distribution of the same name (``isinstance`` holds) with two additions
for `rdloss.RateDistortionLoss`:

* `Gaussian` keeps ``logvar`` or ``log_scale`` as the caller had it, for the closed-form
  KL (`rdloss._closed_form`); `StandardGaussian` is `marginals.StandardNormal`'s N(0, 1);
* ``checked=True`` asks the loss to run the distribution's value checks (`value_checks`:
  the variance's range, ``scale > 0``, ``probs`` in ``[0, 1]``, ``x`` in ``{0, 1}``) in its
  one host synchronisation per call. The flag is a constructor argument of an rdloss type,
  so it survives the ``Independent`` the loss may wrap around it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    Laplace,
    Normal,
    OneHotCategorical,
)
from typing_extensions import override

from rdloss._checks import Check, RangeCheck, ValueCheck, check_finite

__all__ = [
    "CheckedBernoulli",
    "CheckedLaplace",
    "Gaussian",
    "StandardGaussian",
    "binary_support_check",
    "one_hot",
    "standard_normal",
    "standard_normal_like",
    "value_checks",
]

_Shape = torch.Size | list[int] | tuple[int, ...]


def _range_check(t: Tensor, low: float, high: float, message: str) -> RangeCheck:
    """``low <= t <= high`` everywhere (NaN fails), as device extremes and the exact message.

    ``message`` is formatted with ``low``, ``high`` and the values' ``smallest``/``largest``.
    """
    smallest, largest = torch.aminmax(t)

    def explain() -> None:
        lo, hi = torch.stack(torch.aminmax(t)).tolist()
        if not low <= lo <= hi <= high:  # NaN fails every comparison
            raise ValueError(message.format(low=low, high=high, smallest=lo, largest=hi))

    return RangeCheck(smallest, largest, low, high, explain)


class Gaussian(Normal):
    r"""A ``Normal`` that also holds its log parameter, as `rdloss.helpers.normal` builds it.

    The same distribution as ``Normal(loc, scale)``; what it adds is for the loss:

    * the closed-form KL between two of them (and against $\mathcal N(0, I)$) reads
      ``logvar`` or ``log_scale`` instead of taking ``scale.log()`` again (no ``exp`` then
      ``log`` round trip, fewer operators and backward nodes);
    * with ``checked=True`` a `RateDistortionLoss` checks, in its one value check, that
      the variance $\sigma^2$ is a finite normal number of the dtype (a log parameter
      given) or that ``scale > 0`` (otherwise): below that range the rate's gradient is
      infinite while its value looks fine.

    Args:
        loc: means.
        scale: standard deviations, ``loc``'s shape; ``None`` with ``logvar`` or
            ``log_scale`` given: then ``scale`` is $\exp(\tfrac12 \mathrm{logvar})$ (or
            $\exp(\mathrm{log\_scale})$) computed where it is read (``rsample``,
            ``log_prob``), never stored, so the rate's closed form, which reads the log
            parameter only, costs no ``exp``. Like ``loc``, it then follows that parameter:
            an in-place change of it after building reaches it, and a distribution built
            under ``torch.no_grad()`` still differentiates through the scale it derives
            where it is read with gradients on.
        logvar: $\log\sigma^2$ exactly as the caller has it, or ``None``.
        log_scale: $\log\sigma$ exactly as the caller has it (VDVAE's and NVAE's
            parameterisation), or ``None``; at most one of ``logvar`` and ``log_scale``.
            ``logvar`` then reads $2\,\mathrm{log\_scale}$ (computed where it is read),
            and the KL between two of them takes the log-variance gap as
            $2(\log\sigma_p - \log\sigma_q)$: the same bits as from the log-variances,
            one operator fewer per side.
        checked: whether the loss checks the parameters' values (see above).
        validate_args: passed to ``Normal``.
    """

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor | None = None,
        *,
        logvar: Tensor | None = None,
        log_scale: Tensor | None = None,
        checked: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        if logvar is not None and log_scale is not None:
            raise ValueError("Gaussian takes logvar or log_scale, not both")
        self._logvar = logvar
        self.log_scale = log_scale
        self.checked = checked
        if scale is not None:
            super().__init__(loc, scale, validate_args=validate_args)
            return
        held = logvar if logvar is not None else log_scale
        if held is None or held.shape != loc.shape:
            raise ValueError(
                "Gaussian without scale needs logvar or log_scale of loc's shape "
                f"{tuple(loc.shape)}, got {None if held is None else tuple(held.shape)}"
            )
        self.loc = loc
        self._scale: Tensor | None = None
        # Normal's own __init__ would broadcast a scale it has not got: the shapes are known.
        Distribution.__init__(self, loc.shape, validate_args=validate_args)

    @property
    def logvar(self) -> Tensor | None:
        r"""$\log\sigma^2$: as given, else $2\,\mathrm{log\_scale}$ (recomputed), else ``None``."""
        if self.log_scale is not None:
            return 2.0 * self.log_scale
        return self._logvar

    @property
    def holds_log_parameter(self) -> bool:
        """Whether it was built from ``logvar`` or ``log_scale`` (read without computing)."""
        return self._logvar is not None or self.log_scale is not None

    # ``scale`` is an attribute of ``Normal``; here it may be derived from a log parameter.
    @property
    def scale(self) -> Tensor:
        r"""Standard deviations: as given, else derived from the log parameter (recomputed)."""
        if self._scale is not None:
            return self._scale
        if self.log_scale is not None:
            return torch.exp(self.log_scale)
        assert self._logvar is not None  # __init__: no scale means a log parameter
        return torch.exp(0.5 * self._logvar)

    @scale.setter
    def scale(self, value: Tensor) -> None:
        self._scale = value

    @override
    def __repr__(self) -> str:
        # torch's repr lists the parameters stored in __dict__: a derived scale is not.
        shown = {"loc": self.loc, "scale": self.scale}
        args = ", ".join(f"{k}: {v if v.numel() == 1 else v.size()}" for k, v in shown.items())
        return f"{type(self).__name__}({args})"

    @property
    def derived_scale(self) -> bool:
        """Whether ``scale`` is computed from ``logvar`` (built without a scale)."""
        return self._scale is None

    @override
    def expand(self, batch_shape: _Shape, _instance: Distribution | None = None) -> Gaussian:
        shape = torch.Size(batch_shape)

        def expanded(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.expand(shape)

        return Gaussian(
            self.loc.expand(shape),
            expanded(self._scale),
            logvar=expanded(self._logvar),
            log_scale=expanded(self.log_scale),
            checked=self.checked,
            validate_args=False,
        )

    def value_checks(self, value: Tensor | None = None) -> list[Check]:
        """The parameter checks the loss runs when ``checked`` (``value`` is unused)."""
        if not self.checked or self.loc.numel() == 0:
            return []
        held, name, factor = (
            (self.log_scale, "log_scale", 0.5)
            if self.log_scale is not None
            else (self._logvar, "logvar", 1.0)
        )
        if held is not None:
            finfo = torch.finfo(held.dtype)
            # log_scale = logvar / 2 exactly: its bounds are halved (halving is exact).
            low, high = factor * math.log(finfo.tiny), factor * math.log(finfo.max)
            variance = "exp(2 * log_scale)" if name == "log_scale" else "exp(logvar)"
            message = (
                f"{name} must lie in [{{low:.1f}}, {{high:.1f}}] for {held.dtype} (the "
                f"variance {variance} must be a finite normal number), got values in "
                "[{smallest}, {largest}]; clamp the encoder's "
                + ("log standard deviation" if name == "log_scale" else "log-variance")
            )
            return [_range_check(held, low, high, message)]
        return [_positive("scale", self.scale)]


def _positive(name: str, t: Tensor) -> ValueCheck:
    def explain() -> None:
        bad = ~(t > 0)
        if bool(bad.any()):
            raise ValueError(
                f"{name} must be > 0 everywhere, got {int(bad.sum())} of {t.numel()} values "
                f"that are not (min {float(t.min())})"
            )

    return ValueCheck(t.amin() > 0, explain)


class StandardGaussian(Gaussian):
    r"""$\mathcal N(0, 1)$ over ``shape``, as `rdloss.marginals.StandardNormal` returns it.

    The rate against it takes the closed form of the KL to $\mathcal N(0, I)$ (the same
    numbers as the loss's default marginal). It has no parameters to get wrong: zeros and
    ones are made here.

    Args:
        shape: the latent's shape (the distribution's batch shape; wrap it in
            ``Independent`` for an event).
        like: a tensor whose dtype and device it takes.
    """

    def __init__(self, shape: _Shape, *, like: Tensor) -> None:
        zeros = like.new_zeros(shape)
        super().__init__(zeros, torch.ones_like(zeros), logvar=zeros, validate_args=False)

    @override
    def expand(self, batch_shape: _Shape, _instance: Distribution | None = None) -> Gaussian:
        return StandardGaussian(batch_shape, like=self.loc)


class CheckedLaplace(Laplace):
    """A ``Laplace`` whose ``scale > 0`` the loss checks (`rdloss.helpers.laplace`).

    Args:
        loc: locations.
        scale: positive scales, ``loc``'s shape.
        checked: whether the loss checks ``scale > 0`` in its one value check.
        validate_args: passed to ``Laplace``.
    """

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor,
        *,
        checked: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(loc, scale, validate_args=validate_args)
        self.checked = checked

    @override
    def expand(self, batch_shape: _Shape, _instance: Distribution | None = None) -> CheckedLaplace:
        shape = torch.Size(batch_shape)
        return CheckedLaplace(
            self.loc.expand(shape),
            self.scale.expand(shape),
            checked=self.checked,
            validate_args=False,
        )

    def value_checks(self, value: Tensor | None = None) -> list[Check]:
        """``scale > 0`` when ``checked`` (``value`` is unused)."""
        return [_positive("scale", self.scale)] if self.checked and self.scale.numel() else []


class CheckedBernoulli(Bernoulli):
    """A ``Bernoulli`` whose data (and ``probs``) the loss checks (`rdloss.helpers.bernoulli`).

    With ``checked=True`` a `RateDistortionLoss` checks in its one value check that ``x``
    lies in the support ``{0, 1}`` and, for a distribution built from ``probs``, that they
    lie in ``[0, 1]`` (a decoder without its sigmoid).

    Args:
        probs: probabilities, or
        logits: log-odds (give exactly one).
        checked: whether the loss checks the values (see above).
        validate_args: passed to ``Bernoulli``.
    """

    def __init__(
        self,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        *,
        checked: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(probs=probs, logits=logits, validate_args=validate_args)
        self.checked = checked
        self.given_probs = probs

    @override
    def expand(
        self, batch_shape: _Shape, _instance: Distribution | None = None
    ) -> CheckedBernoulli:
        shape = torch.Size(batch_shape)
        if self.given_probs is not None:
            return CheckedBernoulli(
                probs=self.given_probs.expand(shape), checked=self.checked, validate_args=False
            )
        return CheckedBernoulli(
            logits=self.logits.expand(shape), checked=self.checked, validate_args=False
        )

    def value_checks(self, value: Tensor | None = None) -> list[Check]:
        """``probs`` in ``[0, 1]`` (when given as probs) and ``value`` in ``{0, 1}``."""
        if not self.checked:
            return []
        checks: list[Check] = []
        if self.given_probs is not None and self.given_probs.numel():
            checks.append(
                _range_check(
                    self.given_probs,
                    0.0,
                    1.0,
                    "probs must lie in [0, 1], got values in [{smallest}, {largest}]: did "
                    "the decoder miss its sigmoid? (pass logits= instead)",
                )
            )
        if value is not None and value.numel():
            checks.append(binary_support_check(value))
        return checks


def binary_support_check(x: Tensor) -> ValueCheck:
    """``x`` in ``{0, 1}``, the Bernoulli's support, as a device flag and its message."""

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

    t = x if x.is_floating_point() else x.to(torch.float32)
    # x (1 - x) is 0 exactly at 0 and 1, NaN or non-zero elsewhere (NaN counts as non-zero):
    # one fused pass and a count instead of three boolean passes over the pixels.
    return ValueCheck(torch.count_nonzero(torch.addcmul(t, t, t, value=-1)) == 0, explain)


def one_hot(
    weights: Categorical, kind: type[OneHotCategorical] = OneHotCategorical
) -> Distribution:
    """``OneHotCategorical`` (or ``kind``) over ``weights``, without checking them again.

    torch's ``OneHotCategorical.__init__`` builds its inner ``Categorical`` with the global
    default argument checks whatever ``validate_args`` says (torch 2.13): a host
    synchronisation per object. This wraps the given ``Categorical`` instead.
    """
    dist = kind.__new__(kind)
    dist._categorical = weights
    Distribution.__init__(dist, weights.batch_shape, weights.param_shape[-1:], validate_args=False)
    return dist


def value_checks(dist: Distribution, value: Tensor | None = None) -> list[Check]:
    """The checks the loss runs for ``dist`` (through ``Independent`` layers): rdloss's own."""
    while isinstance(dist, Independent):
        dist = dist.base_dist
    if isinstance(dist, (Gaussian, CheckedLaplace, CheckedBernoulli)):
        return dist.value_checks(value)
    return []


def standard_normal(posterior: Distribution) -> Distribution:
    """``N(0, I)`` over the posterior's event shape, in its dtype and on its device."""
    try:
        like = posterior.mean
    except NotImplementedError:  # flows and transformed posteriors have no closed-form mean
        raise ValueError(
            f"the default marginal N(0, I) needs the posterior's dtype and device from its "
            f"mean, which {type(posterior).__name__} does not implement; pass a marginal "
            "(e.g. rdloss.marginals.StandardNormal(latent_dim)) or a prior"
        ) from None
    return standard_normal_like(posterior.event_shape, like)


def standard_normal_like(event_shape: torch.Size, like: Tensor) -> Distribution:
    """``N(0, I)`` over ``event_shape`` in ``like``'s dtype and on its device."""
    loc = like.new_zeros(event_shape).detach()
    # Known-valid parameters: skip torch's argument checks (a host sync each).
    unit = Normal(loc, torch.ones_like(loc), validate_args=False)
    if len(event_shape) == 0:
        # A scalar latent: torch registers no KL for Independent(Normal, 0).
        return unit
    return Independent(unit, len(event_shape), validate_args=False)
