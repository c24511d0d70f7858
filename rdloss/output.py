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

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Plain floats for any logger (one host synchronisation).

        Args:
            prefix: prepended to every key, e.g. ``"train/"``.

        Returns:
            ``loss``, ``rate``, ``distortion``, ``elbo`` in nats, ``rate_bits`` and
            ``distortion_bits``, the objective's scalars, and for a grouped call the batch
            mean rate of each group as ``rate/<group>``.
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
        values = torch.stack([v.detach().float().reshape(()) for v in named.values()]).tolist()
        return {prefix + k: v for k, v in zip(named, values, strict=True)}
