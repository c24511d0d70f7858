"""`RDOutput`: what one loss call computed, as tensors, and as plain floats for loggers."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from rdloss._means import batch_mean

__all__ = ["RDOutput"]

_LN2 = math.log(2.0)


class RDOutput(NamedTuple):
    """Result of `RateDistortionLoss`.

    Attributes:
        loss: 0-dim training loss from the objective.
        rate: 0-dim batch-mean rate ``R`` in nats.
        distortion: 0-dim batch-mean distortion ``D`` in nats.
        elbo: 0-dim batch-mean ``-(D + R)``.
        rate_per_example: ``(B,)``.
        distortion_per_example: ``(B,)``.
        rate_per_dimension: ``(B, D)`` where the KL factorises over latent dims, else None.
        estimator: how the rate was computed: ``"analytic"``, ``"mc"`` or ``"enumerate"``.
        hyper: the objective's current scalars (``beta``, targets, multipliers).
        rate_per_group: ``(B,)`` rate per named latent group, in the posterior's key
            order; ``None`` for an ungrouped call.
        rate_per_step: ``(B, T)`` rate per step of each group with a step axis (an
            ungrouped call's latent is named ``"z"``); ``None`` when no group has steps.
        rate_per_group_dimension: ``(B, D_g)`` rate per flattened latent dimension of each
            group (steps included), ``None`` for a group whose KL does not factorise;
            ``None`` for an ungrouped call (see ``rate_per_dimension``).
        weight: the ``(B,)`` per-example weights the call was given, or ``None``.
        mask: the ``(B, T)`` step mask the call was given (``True`` at real steps), or
            ``None``; every rate above is 0 at padded steps, so a mean over real steps is
            ``rate_per_step[k].sum() / mask.sum()``.

    For the rate alone (a call without ``x``, ``likelihood`` or ``decoder``) ``distortion``
    and ``distortion_per_example`` are zeros and ``elbo`` is ``-rate``.
    """

    loss: Tensor
    rate: Tensor
    distortion: Tensor
    elbo: Tensor
    rate_per_example: Tensor
    distortion_per_example: Tensor
    rate_per_dimension: Tensor | None
    estimator: str
    hyper: dict[str, Tensor]
    rate_per_group: dict[str, Tensor] | None = None
    rate_per_step: dict[str, Tensor] | None = None
    rate_per_group_dimension: dict[str, Tensor | None] | None = None
    weight: Tensor | None = None
    mask: Tensor | None = None

    def __repr__(self) -> str:
        """The scalars and shapes, not the per-example tensors (one host sync per scalar)."""

        def number(t: Tensor) -> str:
            return f"{float(t.detach()):.6g}" if t.numel() == 1 else f"<{tuple(t.shape)}>"

        scalars = ", ".join(
            f"{k}={number(getattr(self, k))}" for k in ("loss", "rate", "distortion", "elbo")
        )
        hyper = ", ".join(f"{k}={number(v)}" for k, v in self.hyper.items())
        groups = "" if self.rate_per_group is None else f", groups={list(self.rate_per_group)}"
        steps = "" if self.rate_per_step is None else f", steps={list(self.rate_per_step)}"
        return (
            f"RDOutput({scalars}, batch={self.rate_per_example.shape[0]}, "
            f"estimator={self.estimator!r}{groups}{steps}, hyper={{{hyper}}})"
        )

    def metrics(self, prefix: str = "", *, data_dims: int | None = None) -> dict[str, float]:
        r"""Plain floats for any logger (one host synchronisation).

        With the number of data dimensions per example (pixels times channels, tokens, ...)
        the rates per data dimension are added as well, the figure image and sequence models
        report: with $N$ = ``data_dims``,

        $$
        \text{nats/dim} = \frac{\bar D + \bar R}{N} = -\frac{\text{ELBO}}{N},
        \qquad \text{bits/dim} = \frac{\text{nats/dim}}{\ln 2}.
        $$

        VDVAE's logged ``elbo`` (``distortion + rate`` per example, divided by
        ``np.prod(x.shape[1:])``, batch mean) is ``nats_per_dim``; its papers' bits/dim is
        ``bits_per_dim``. Discretised data (8-bit images) needs the discretised likelihood
        for bits/dim to be the usual code length.

        Args:
            prefix: prepended to every key, e.g. ``"train/"``.
            data_dims: data dimensions per example ``N`` (e.g. ``3 * 32 * 32``), a positive
                int; ``None`` (default): no per-dimension figures.

        Returns:
            ``loss``, ``rate``, ``distortion``, ``elbo`` in nats, ``rate_bits`` and
            ``distortion_bits``, the objective's scalars, for a grouped call the batch
            mean rate of each group as ``rate/<group>``, and with ``data_dims`` also
            ``nats_per_dim``, ``bits_per_dim``, ``rate_bits_per_dim`` and
            ``distortion_bits_per_dim``.

        Raises:
            TypeError: ``data_dims`` is not an int.
            ValueError: ``data_dims`` is not positive.
        """
        groups = (self.rate_per_group or {}).items()
        named = {
            "loss": self.loss,
            "rate": self.rate,
            "distortion": self.distortion,
            "elbo": self.elbo,
            "rate_bits": self.rate / _LN2,
            "distortion_bits": self.distortion / _LN2,
            **self.hyper,
            **{f"rate/{k}": batch_mean(v, self.weight) for k, v in groups},
        }
        if data_dims is not None:
            if isinstance(data_dims, bool) or not isinstance(data_dims, int):
                raise TypeError(f"data_dims must be an int, got {type(data_dims).__name__}")
            if data_dims < 1:
                raise ValueError(f"data_dims must be >= 1, got {data_dims}")
            named["nats_per_dim"] = -self.elbo / data_dims
            named["bits_per_dim"] = -self.elbo / (data_dims * _LN2)
            named["rate_bits_per_dim"] = self.rate / (data_dims * _LN2)
            named["distortion_bits_per_dim"] = self.distortion / (data_dims * _LN2)
        values = torch.stack([v.detach().float().reshape(()) for v in named.values()]).tolist()
        return {prefix + k: v for k, v in zip(named, values, strict=True)}
