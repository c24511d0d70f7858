r"""Objectives over the structure of the rate: free bits at every level, NVAE's balancing.

Free bits (Kingma et al., 2016) gives each unit of the rate ``lam`` nats for free. The unit
is a latent dimension (Kingma), a latent group (IAF-VAE, NVAE), a step of a sequence model
(DreamerV3), or the whole rate; the clamp applies to the unit's batch mean (Kingma's "per
minibatch") or to each example's (and step's) value before the mean (DreamerV3, World
Models). NVAE's group balancing (Vahdat & Kautz, 2020) reweights the groups' rates during
KL warm-up so that no group collapses early.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
from torch import Tensor
from typing_extensions import override

from rdloss._checks import check_nonnegative_number
from rdloss.latents import RateTerms
from rdloss.objectives._base import Objective, ObjectiveOutput, numbers_repr
from rdloss.objectives._groups import PerGroup
from rdloss.objectives._hyperparameters import Hyperparameter

__all__ = [
    "FreeBits",
    "Level",
    "Reduction",
    "check_alpha",
    "nvae_balanced_rate",
    "nvae_coefficients",
]

Level = Literal["dimension", "group", "step", "total"]
Reduction = Literal["batch", "example"]
"""Where a penalty applies: to the batch mean, or to each example before the mean."""


def _units(terms: RateTerms, per: Level) -> Tensor:
    """``(B, K)`` rate of each unit that free bits applies to; an error if the model has none."""
    if per == "total":
        return terms.per_example.unsqueeze(1)
    if per == "dimension":
        if terms.per_dimension is None:
            instead = "per='group') or FreeBits(per='total')" if terms.grouped else "per='total')"
            raise ValueError(
                "FreeBits(per='dimension') needs rate_per_dimension, which is None: the "
                "rate does not factorise over latent dimensions (e.g. a mixture or flow "
                f"marginal, or a KL without a per-dimension form); use FreeBits({instead}"
            )
        return terms.per_dimension
    if per == "group":
        if not terms.grouped:
            raise ValueError(
                "FreeBits(per='group') needs named latent groups (posterior as a mapping), "
                "but the call has one ungrouped latent; use FreeBits(per='total')"
            )
        return torch.stack(list(terms.per_group.values()), dim=1)
    missing = [k for k in terms.per_group if k not in terms.per_step]
    if missing:
        raise ValueError(
            f"FreeBits(per='step') needs a step axis in every group, but {missing} have none "
            "(a posterior of batch_shape (B, T) over non-scalar latents has steps)"
        )
    return torch.cat(list(terms.per_step.values()), dim=1)


def _unit_weights(terms: RateTerms, per: Level, betas: dict[str, Tensor]) -> Tensor:
    """``(K,)`` the β of each unit's group, in `_units`' order (``per`` is not ``"total"``)."""
    if per == "group":
        parts = [betas[g].reshape(1) for g in terms.per_group]
    elif per == "step":
        parts = [betas[g].expand(steps.shape[1]) for g, steps in terms.per_step.items()]
    else:  # per_dimension concatenates the groups' dimensions in group order
        parts = []
        for g, dims in terms.per_group_dimension.items():
            assert dims is not None  # _units refused a group whose KL does not factorise
            parts.append(betas[g].expand(dims.shape[1]))
    return torch.cat(parts)


class FreeBits(Objective):
    r"""Free bits (Kingma et al., 2016): rate below ``lam`` nats per unit costs nothing.

    With units $u$ (latent dimensions, groups, steps, or the total rate; ``per``) and
    ``reduction="batch"`` (Kingma's, the clamp on each unit's batch mean)

    $$
    \bar D + \beta \sum_u \max\big(\lambda, \overline{R_u}\big),
    $$

    and with ``reduction="example"`` (DreamerV3, World Models: the clamp on each example's
    unit before the mean) $\bar D + \beta\,\overline{\sum_u \max(\lambda, R_u)}$. Units
    below ``lam`` receive no gradient from the rate. DreamerV3's world-model KL,
    ``max(1, KL_t)`` per example and step, is ``FreeBits(1.0, per="step",
    reduction="example")``. The loss's reported ``rate`` stays unclamped; the hyper entry
    ``clamped_rate`` is the clamped rate term that enters the loss (before ``beta``).

    ``per="dimension"`` needs the per-dimension rate, which the loss provides where the KL
    factorises over latent dimensions (not for mixture or flow marginals); ``"group"``
    needs named groups, ``"step"`` a step axis in every group.

    ``beta`` may map group names to numbers or schedules (as `Beta`'s): each unit's
    clamped rate is weighted by its group's $\beta_g$ (a group not named weighs 1.0;
    ``out.hyper`` has ``"beta/<group>"`` instead of ``"beta"``). Every level but
    ``per="total"`` takes it: the total's one clamp mixes the groups.

    Args:
        lam: free nats per unit, ``>= 0``, a number or a schedule.
        per: the unit: ``"dimension"``, ``"group"``, ``"step"`` or ``"total"``.
        reduction: ``"batch"`` (clamp the batch mean) or ``"example"`` (clamp each value).
        beta: weight of the clamped rate, ``>= 0``, a number or a schedule (DreamerV3's
            ``dyn_scale + rep_scale``); or a mapping from group name to those.

    Examples:
        >>> import torch
        >>> objective = FreeBits(0.5)
        >>> r = torch.tensor([[0.1, 2.0], [0.3, 4.0]])  # dimension 0 has mean 0.2 < 0.5
        >>> objective(r.sum(1), torch.tensor([1.0, 1.0]), rate_per_dimension=r).loss
        tensor(4.5000)
    """

    _hyperparameters: ClassVar[dict[str, bool]] = {"lam": False, "beta": False}
    _per_group = frozenset({"beta"})
    _config = ("per", "reduction")

    def __init__(
        self,
        lam: Hyperparameter = 0.25,
        *,
        per: Level = "dimension",
        reduction: Reduction = "batch",
        beta: Hyperparameter | Mapping[str, Hyperparameter] = 1.0,
    ) -> None:
        super().__init__()
        self.lam = lam
        if per not in ("dimension", "group", "step", "total"):
            raise ValueError(f"per must be 'dimension', 'group', 'step' or 'total', got {per!r}")
        if reduction not in ("batch", "example"):
            raise ValueError(f"reduction must be 'batch' or 'example', got {reduction!r}")
        self.per: Level = per
        self.reduction: Reduction = reduction
        self.beta = beta

    @override
    def _set_hyperparameter(self, name: str, value: object) -> None:
        if name == "beta" and isinstance(value, Mapping) and self.per == "total":
            raise ValueError(
                "FreeBits(per='total') clamps the total rate, one unit over all groups: beta "
                "per group needs per='group', 'step' or 'dimension'"
            )
        super()._set_hyperparameter(name, value)

    @override
    def compute_terms(
        self, terms: RateTerms, distortion: Tensor, *, weight: Tensor | None = None
    ) -> ObjectiveOutput:
        r"""$\bar D + \beta \sum_u \max(\lambda, \overline{R_u})$ (or per example).

        Raises:
            ValueError: the model has no units of the asked level (no per-dimension rate,
                no groups, or a group without steps).
        """
        units = _units(terms, self.per)
        lam = self.hyperparameter(self.lam, units)
        per_group = self._modules.get("beta")
        if isinstance(per_group, PerGroup):
            betas = self.group_values(per_group, terms, units)
            # The batch mean is linear: mean_i sum_u b_u c_iu = sum_u b_u mean_i c_iu.
            if self.reduction == "batch":
                each = torch.maximum(self.mean(units, weight), lam)
            else:
                each = self.mean(torch.maximum(units, lam), weight)
            weighted = (_unit_weights(terms, self.per, betas) * each).sum()
            loss = self.mean(distortion, weight) + weighted
            hyper = {"free_bits": lam, "clamped_rate": each.sum().detach()}
            return ObjectiveOutput(loss, hyper | {f"beta/{g}": b for g, b in betas.items()})
        beta = self.hyperparameter(self.beta, units)
        # With a step mask (ragged sequences) padded steps are no units at all.
        mask = {"step": terms.step_mask, "dimension": terms.dimension_mask}.get(self.per)
        if self.reduction == "batch":
            if mask is not None:
                raise ValueError(
                    f"FreeBits(per={self.per!r}, reduction='batch') clamps each unit's batch "
                    "mean, which padded steps leave undefined; with mask= use "
                    "reduction='example' (DreamerV3's clamp of each step)"
                )
            clamped = torch.maximum(self.mean(units, weight), lam).sum()
        else:
            floor = torch.maximum(units, lam)
            if mask is not None:
                floor = torch.where(mask, floor, 0.0)
            clamped = self.mean(floor.sum(1), weight)
        loss = self.mean(distortion, weight) + beta * clamped
        return ObjectiveOutput(
            loss, {"free_bits": lam, "clamped_rate": clamped.detach(), "beta": beta}
        )

    @override
    def extra_repr(self) -> str:
        numbers = numbers_repr(lam=self.lam, beta=self.beta)
        return ", ".join(
            filter(None, (numbers, f"per={self.per!r}", f"reduction={self.reduction!r}"))
        )


def check_alpha(alpha: object) -> dict[str, float] | None:
    """Validate NVAE's per-group ``alpha``: ``None`` or a mapping of group names to numbers > 0."""
    if alpha is None:
        return None
    if not isinstance(alpha, Mapping):
        raise TypeError(
            f"alpha must be a mapping from group name to a number > 0, or None, got "
            f"{type(alpha).__name__}"
        )
    return {
        str(k): check_nonnegative_number(f"alpha[{k!r}]", v, positive=True)
        for k, v in alpha.items()
    }


def nvae_balanced_rate(
    objective: Objective,
    terms: RateTerms,
    alpha: Mapping[str, float] | None,
    weight: Tensor | None,
) -> Tensor:
    r"""NVAE's balanced rate per example (Vahdat & Kautz, 2020, ``kl_balancer``).

    With group rates $R_{ig}$, $c_g = \overline{|R_g|} + 0.01$, then
    $c_g \leftarrow (c_g / \alpha_g) \sum_h c_h$ and $c_g \leftarrow c_g / \mathrm{mean}_h c_h$,
    the balanced rate is $\sum_g \mathrm{sg}(c_g) R_{ig}$: a group that carries little
    information is weighted less and so is not pushed to collapse. ``alpha`` defaults to
    each group's size (latent dimensions per example), which is NVAE's ``'square'`` rule
    when every scale has as many groups of as many channels.

    Returns:
        ``(B,)``.

    Raises:
        ValueError: the call has no named groups, or ``alpha`` misses a group.
    """
    rates, coeff = nvae_coefficients(objective, terms, alpha, weight)
    return (rates * coeff.detach()).sum(1)


def nvae_coefficients(
    objective: Objective,
    terms: RateTerms,
    alpha: Mapping[str, float] | None,
    weight: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """NVAE's group rates ``(B, G)`` and balancing coefficients $c_g$ ``(G,)``, group order.

    See `nvae_balanced_rate`; the coefficients are what NVAE reports as ``kl_coeffs``.
    """
    if not terms.grouped:
        raise ValueError(
            "Beta(group_balance=True) balances named latent groups (posterior as a mapping), "
            "but the call has one ungrouped latent"
        )
    names = list(terms.per_group)
    sizes = alpha if alpha is not None else terms.group_size
    missing = [k for k in names if k not in sizes]
    if missing:
        raise ValueError(f"alpha must give every group a value; missing {missing}")
    rates = torch.stack([terms.per_group[k] for k in names], dim=1)
    a = rates.new_tensor([float(sizes[k]) for k in names])
    coeff = objective.mean(rates.abs(), weight) + 0.01
    coeff = coeff / a * coeff.sum()
    return rates, coeff / coeff.mean()
