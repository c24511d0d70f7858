r"""Streaming diagnostics as `torchmetrics.Metric` classes.

``update`` per batch, ``compute`` at the end of an epoch, ``reset`` between epochs; states
are synchronised across processes by torchmetrics and saved by ``state_dict`` (they are
registered ``persistent``). States use torchmetrics' default float32; call
``metric.set_dtype(torch.float64)`` for float64 accumulation. Shapes are always checked;
NaN/inf in an update raise ``ValueError`` unless the metric was built with
``validate_args=False`` (the check costs one host synchronisation per update).

Metrics whose ``compute`` returns a named tuple take ``output=`` to return one field
instead, so that Lightning's ``self.log(name, metric)`` (which needs a tensor) works::

    self.rate = RateDistortion(output="rate")
    ...
    self.rate.update(out)                      # in training_step
    self.log("train/rate", self.rate, on_epoch=True)

(Alemi et al., 2018, "Fixing a Broken ELBO"; Burda et al., 2015, for active units.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.distributions import Distribution
from torchmetrics import Metric
from typing_extensions import override

from rdloss._validation import (
    check_finite,
    check_nonnegative_number,
    check_positive_int,
    check_tensor,
    should_validate,
)
from rdloss.diagnostics.functional import (
    ActiveUnitsResult,
    MIBounds,
    RateDistortionResult,
    _bounds,
    _rd_result,
)
from rdloss.functional import as_latent
from rdloss.loss import RDOutput

__all__ = ["ActiveUnits", "MutualInformationBounds", "RateDistortion", "RatePerDimension"]


class _Diagnostic(Metric):
    """Shared ``output=`` selection of one field of the named-tuple result."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    _fields: ClassVar[tuple[str, ...]] = ()
    sums: Tensor

    def __init__(
        self, *, output: str | None = None, validate_args: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if output is not None and output not in self._fields:
            raise ValueError(f"output must be None or one of {self._fields}, got {output!r}")
        if not isinstance(validate_args, bool):
            raise TypeError(f"validate_args must be a bool, got {type(validate_args).__name__}")
        self.output = output
        self.validate_args = validate_args

    def _check_finite(self, **tensors: Tensor) -> None:
        """NaN/inf check of an update's inputs (one host sync), if ``validate_args``."""
        if should_validate(self.validate_args):
            check_finite(**tensors)

    @override
    def _wrap_compute(self, compute: Callable[..., Any]) -> Callable[..., Any]:
        # torchmetrics squeezes every one-element tensor that compute returns, which would
        # turn a (D,) per-unit result into a 0-dim tensor when D = 1.
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(wrapped)
        def keep_shapes(*args: Any, **kwargs: Any) -> Any:
            return self._restore_shapes(wrapped(*args, **kwargs))

        return keep_shapes

    def _restore_shapes(self, value: Any) -> Any:
        """Undo torchmetrics' squeeze of one-element results that have a shape."""
        return value

    def _require(self, fields: tuple[str, ...], condition: bool, needs: str) -> None:
        """Reject an ``output`` field that would always be ``None`` (Lightning needs a tensor)."""
        if self.output in fields and not condition:
            raise ValueError(f"output={self.output!r} needs {needs}")

    def _select(self, result: tuple[Any, ...]) -> Any:
        return result if self.output is None else getattr(result, self.output)

    def _add_sums(self) -> None:
        # [sum of R, sum of D, count] in one state: one in-place add per update.
        self.add_state("sums", torch.zeros(3), dist_reduce_fx="sum", persistent=True)

    def _update_sums(self, rate: Tensor | RDOutput, distortion: Tensor | None) -> None:
        if isinstance(rate, RDOutput):
            if distortion is not None:
                raise ValueError("pass either an RDOutput or rate and distortion tensors")
            output = rate
            rate, distortion = output.rate_per_example, output.distortion_per_example
        check_tensor("rate", rate, min_ndim=1)
        if distortion is None:
            raise ValueError("distortion is required when rate is a tensor")
        check_tensor("distortion", distortion, min_ndim=1)
        if rate.ndim != 1 or rate.shape != distortion.shape:
            raise ValueError(
                "rate and distortion must be per-example tensors of the same shape (B,), got "
                f"{tuple(rate.shape)} and {tuple(distortion.shape)}"
            )
        self._check_finite(rate=rate, distortion=distortion)
        batch = torch.stack([rate.detach(), distortion.detach(), torch.ones_like(rate)])
        self.sums.add_(batch.sum(1))

    @override
    def extra_repr(self) -> str:
        return "" if self.output is None else f"output={self.output!r}"


class RateDistortion(_Diagnostic):
    """Running dataset means of rate ``R``, distortion ``D`` and the ELBO ``-(D + R)``.

    ``compute`` returns a `RateDistortionResult` (nats
    and bits; bits per dimension when ``data_dims`` is given), or one field with ``output=``.

    Args:
        data_dims: data dimensions per example (784 for MNIST) for ``bits_per_dim``.
        output: return only this field, e.g. ``"rate"``, for ``self.log`` in Lightning.
        **kwargs: ``validate_args`` (default ``True``: NaN/inf in an update raise
            ``ValueError``, at one host synchronisation per update) and the options of
            `torchmetrics.Metric`.

    Examples:
        >>> import torch
        >>> m = RateDistortion()
        >>> m.update(torch.tensor([1.0, 3.0]), torch.tensor([10.0, 12.0]))
        >>> m.update(torch.tensor([2.0]), torch.tensor([8.0]))
        >>> m.compute().elbo
        tensor(-12.)
    """

    _fields = RateDistortionResult._fields

    def __init__(
        self, *, data_dims: int | None = None, output: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(output=output, **kwargs)
        self.data_dims = None if data_dims is None else check_positive_int("data_dims", data_dims)
        self._require(("bits_per_dim",), data_dims is not None, "data_dims")
        self._add_sums()

    @override
    def update(self, rate: Tensor | RDOutput, distortion: Tensor | None = None) -> None:
        """Add a batch: an `RDOutput`, or ``(B,)`` rate and distortion."""
        self._update_sums(rate, distortion)

    @override
    def compute(self) -> Any:
        """Return the `RateDistortionResult` (or the ``output`` field)."""
        rate, distortion = self.sums[0] / self.sums[2], self.sums[1] / self.sums[2]
        return self._select(_rd_result(rate, distortion, self.data_dims))


class MutualInformationBounds(_Diagnostic):
    r"""The sandwich $H - D \le I(X;Z) \le R$ (Alemi et al., 2018, Eq. 2).

    ``compute`` returns `MIBounds`: ``lower = H - D``
    (``None`` without ``data_entropy``), ``upper = R`` and ``entropy_upper``, the best (lowest)
    dataset-level ``-ELBO = D + R`` seen so far, an upper estimate of ``H``. The best value
    is kept across ``reset`` (it is folded in when an epoch that was computed is reset) and
    saved in ``state_dict``.

    Args:
        data_entropy: ``H`` in nats, if known.
        output: return only this field (``"upper"``, ``"lower"``, ``"entropy_upper"``).
        **kwargs: ``validate_args`` (default ``True``: NaN/inf in an update raise
            ``ValueError``, at one host synchronisation per update) and the options of
            `torchmetrics.Metric`.

    Examples:
        >>> import torch
        >>> m = MutualInformationBounds(data_entropy=6.0)
        >>> m.update(torch.tensor([2.0]), torch.tensor([5.0]))
        >>> b = m.compute()
        >>> b.lower.item(), b.upper.item(), b.entropy_upper.item()
        (1.0, 2.0, 7.0)
    """

    _fields = MIBounds._fields
    best_entropy_upper: Tensor

    def __init__(
        self, data_entropy: float | None = None, *, output: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(output=output, **kwargs)
        self.data_entropy = (
            None if data_entropy is None else check_nonnegative_number("data_entropy", data_entropy)
        )
        self._require(("lower",), data_entropy is not None, "data_entropy")
        self._add_sums()
        self.register_buffer("best_entropy_upper", torch.tensor(float("inf")))
        self._epoch_entropy_upper: Tensor | None = None

    @override
    def update(self, rate: Tensor | RDOutput, distortion: Tensor | None = None) -> None:
        """Add a batch: an `RDOutput`, or ``(B,)`` rate and distortion."""
        self._epoch_entropy_upper = None  # the epoch goes on: no computed value is final
        self._update_sums(rate, distortion)

    @override
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Update and return the batch's value, which is not an epoch's ``-ELBO``."""
        value = super().forward(*args, **kwargs)
        self._epoch_entropy_upper = None
        return value

    @override
    def compute(self) -> Any:
        """Return the `MIBounds` (or the ``output`` field)."""
        rate, distortion = self.sums[0] / self.sums[2], self.sums[1] / self.sums[2]
        current = rate + distortion
        self._epoch_entropy_upper = current.detach()
        best = torch.minimum(self.best_entropy_upper.to(current), current)
        return self._select(_bounds(rate, distortion, self.data_entropy, best))

    @override
    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # A computed epoch not yet reset lives outside the buffers: save it folded into the
        # best, as reset() would fold it, so a checkpoint between compute and reset resumes.
        if self._epoch_entropy_upper is not None:
            key = prefix + "best_entropy_upper"
            best = destination[key]
            destination[key] = torch.minimum(best, self._epoch_entropy_upper.to(best))

    @override
    def reset(self) -> None:
        """Clear the sums; keep the best ``-ELBO`` of every epoch that was computed."""
        # Set by a compute() over the epoch since the last update (forward's per-batch value
        # and further updates clear it).
        if self._epoch_entropy_upper is not None:
            self.best_entropy_upper = torch.minimum(
                self.best_entropy_upper, self._epoch_entropy_upper.to(self.best_entropy_upper)
            )
        self._epoch_entropy_upper = None
        super().reset()


def _merge_moments(stacked: Tensor) -> Tensor:
    """Merge packed ``[count, sum(x - shift), sum((x - shift)^2), shift]`` rows.

    Sums are kept around a reference point (``shift``, a data row), so they hold small
    numbers and the variance ``(S2 - S1^2 / n) / (n - 1)`` does not cancel a large common
    offset, even in float32. Rows with different shifts are moved exactly to the shift of
    the first non-empty row (Chan, Golub & LeVeque's pairwise update).

    Args:
        stacked: ``(W, 1 + 3D)`` summaries, e.g. one per process.

    Returns:
        ``(1 + 3D,)`` the summary of the union.
    """
    dim = (stacked.shape[1] - 1) // 3
    count, s1, s2, shift = stacked.split([1, dim, dim, dim], dim=1)
    ref = shift[(count[:, 0] > 0).int().argmax()]
    # Empty rows have all-zero sums; mask their (arbitrary) shifts out.
    delta = torch.where(count > 0, shift - ref, torch.zeros_like(shift))
    s2 = s2 + 2 * delta * s1 + count * delta.square()
    s1 = s1 + count * delta
    return torch.cat([count.sum(0), s1.sum(0), s2.sum(0), ref])


class ActiveUnits(_Diagnostic):
    r"""Active units (Burda et al., 2015): unit ``u`` is active if $A_u > \text{threshold}$.

    $A_u = \mathrm{Var}_x\,\mathbb E_{e(z|x)}[z_u]$ is accumulated as shifted sums
    (count, and sums of ``x - shift`` and its square, with ``shift`` a data row) that are
    merged exactly across processes (Chan, Golub & LeVeque), so large offsets such as
    means of 1e4 with variance 1e-2 lose no precision in float32. ``compute`` returns
    `ActiveUnitsResult` (count, per-unit variances
    with ``correction=1``, mask) or one field with ``output=``.

    Args:
        threshold: activity threshold on the variance (Burda et al.: 0.01).
        latent_dim: number of units ``D``; ``None`` sizes the state at the first update
            (then every process must see at least one batch before ``compute``).
        output: return only this field, e.g. ``"num_active"``.
        **kwargs: ``validate_args`` (default ``True``: NaN/inf in an update raise
            ``ValueError``, at one host synchronisation per update) and the options of
            `torchmetrics.Metric`.

    Examples:
        >>> import torch
        >>> m = ActiveUnits()
        >>> m.update(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
        >>> m.update(torch.tensor([[2.0, 1.0]]))
        >>> m.compute().num_active, m.compute().variances
        (tensor(1), tensor([1., 0.]))
    """

    _fields = ActiveUnitsResult._fields
    full_state_update = True  # the state may be sized lazily; forward must not stack sizes
    moments: Tensor

    def __init__(
        self,
        threshold: float = 0.01,
        *,
        latent_dim: int | None = None,
        output: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(output=output, **kwargs)
        self.threshold = check_nonnegative_number("threshold", threshold)
        if latent_dim is not None:
            check_positive_int("latent_dim", latent_dim)
        self.latent_dim = latent_dim
        size = 0 if latent_dim is None else 1 + 3 * latent_dim
        self.add_state("moments", torch.zeros(size), dist_reduce_fx=_merge_moments, persistent=True)

    @override
    def update(self, posterior_mean: Tensor | Distribution) -> None:
        """Add a batch of posterior means ``(B, D)`` (or the posterior, whose mean is used)."""
        if isinstance(posterior_mean, Distribution):
            posterior_mean = as_latent(posterior_mean).mean.flatten(1)
        check_tensor("posterior_mean", posterior_mean, min_ndim=2)
        if posterior_mean.ndim != 2:
            raise ValueError(
                f"posterior_mean must have shape (B, D), got {tuple(posterior_mean.shape)}"
            )
        self._check_finite(posterior_mean=posterior_mean)
        values = posterior_mean.detach().to(self.moments.dtype)
        dim = values.shape[1]
        if self.moments.numel() not in (0, 1 + 3 * dim):
            raise ValueError(
                f"posterior_mean has {dim} units but earlier batches had "
                f"{(self.moments.numel() - 1) // 3}"
            )
        # The first batch's first row becomes the reference; later batches use the state's.
        if self.moments.numel() == 0:  # lazily sized, first update since reset
            self.moments = torch.cat([values.new_zeros(1 + 2 * dim), values[0]])
        state = self.moments
        shift = state[1 + 2 * dim :]
        if self.latent_dim is not None:  # pre-sized state: is it still empty? (no host sync)
            shift.copy_(torch.where(state[0] == 0, values[0], shift))
        centred = values - shift
        ones = torch.ones_like(centred[:, :1])
        # In place (no attribute assignment): one add of [count, S1, S2] per batch.
        state[: 1 + 2 * dim].add_(torch.cat([ones, centred, centred.square()], dim=1).sum(0))

    @override
    def compute(self) -> Any:
        """Return the `ActiveUnitsResult` (or the ``output`` field).

        With a single example in total the variances are NaN (undefined) and no unit is
        active; ``forward`` on a batch of one row returns that as the batch value.

        Raises:
            RuntimeError: no update since the last reset.
        """
        if self.moments.numel() == 0:
            raise RuntimeError("ActiveUnits.compute() called before any update()")
        dim = (self.moments.numel() - 1) // 3
        count, s1, s2, _ = self.moments.split([1, dim, dim, dim])
        variances = (s2 - s1.square() / count) / (count - 1.0)
        active = variances > self.threshold
        return self._select(ActiveUnitsResult(active.sum(), variances, active))

    @override
    def _restore_shapes(self, value: Any) -> Any:
        if isinstance(value, ActiveUnitsResult):
            return value._replace(
                variances=value.variances.reshape(-1), active=value.active.reshape(-1)
            )
        return value.reshape(-1) if self.output in ("variances", "active") else value

    @override
    def extra_repr(self) -> str:
        extra = f"threshold={self.threshold}"
        return extra if self.output is None else f"{extra}, output={self.output!r}"


class RatePerDimension(_Diagnostic):
    """Mean rate (KL) per latent unit over the dataset; ``compute`` returns ``(D,)`` nats.

    Units whose KL is near zero carry no information (posterior collapse of that unit);
    the sum over units is the mean rate.

    Args:
        latent_dim: number of units ``D``; ``None`` sizes the state at the first update.
        **kwargs: ``validate_args`` (default ``True``: NaN/inf in an update raise
            ``ValueError``, at one host synchronisation per update) and the options of
            `torchmetrics.Metric`.

    Examples:
        >>> import torch
        >>> m = RatePerDimension()
        >>> m.update(torch.tensor([[0.5, 0.0], [1.5, 0.0]]))
        >>> m.compute()
        tensor([1., 0.])
    """

    full_state_update = True  # lazily sized state
    rate_sum: Tensor
    count: Tensor

    def __init__(self, *, latent_dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if latent_dim is not None:
            check_positive_int("latent_dim", latent_dim)
        self.latent_dim = latent_dim
        size = 0 if latent_dim is None else latent_dim
        self.add_state("rate_sum", torch.zeros(size), dist_reduce_fx="sum", persistent=True)
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum", persistent=True)

    @override
    def update(self, rate_per_dimension: Tensor | RDOutput) -> None:
        """Add ``(B, D)`` per-unit rates, or an `RDOutput` that has them."""
        if isinstance(rate_per_dimension, RDOutput):
            if rate_per_dimension.rate_per_dimension is None:
                raise ValueError(
                    "this RDOutput has no rate_per_dimension (the KL does not factorise over "
                    "latent dimensions for this posterior/marginal pair)"
                )
            rate_per_dimension = rate_per_dimension.rate_per_dimension
        check_tensor("rate_per_dimension", rate_per_dimension, min_ndim=2)
        if rate_per_dimension.ndim != 2:
            raise ValueError(
                f"rate_per_dimension must have shape (B, D), got {tuple(rate_per_dimension.shape)}"
            )
        self._check_finite(rate_per_dimension=rate_per_dimension)
        values = rate_per_dimension.detach().to(self.rate_sum.dtype)
        if self.rate_sum.numel() == 0:
            self.rate_sum = values.new_zeros(values.shape[1])
        if self.rate_sum.numel() != values.shape[1]:
            raise ValueError(
                f"rate_per_dimension has {values.shape[1]} units but earlier batches had "
                f"{self.rate_sum.numel()}"
            )
        self.rate_sum.add_(values.sum(0))
        self.count.add_(len(values))

    @override
    def compute(self) -> Tensor:
        """Return the ``(D,)`` mean KL per unit."""
        return self.rate_sum / self.count

    @override
    def _restore_shapes(self, value: Any) -> Any:
        return value.reshape(-1)
