r"""The β-VAE objective: one weight of the rate, or one per latent group; NVAE's balancing.

``beta`` takes a number or a `Schedule` of the step (KL warm-up, cyclical annealing), or a
mapping from group name to those (scvi-tools' warm-up of ``z`` alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from rdloss.latents import RateTerms
from rdloss.objectives._base import Objective, ObjectiveOutput, numbers_repr
from rdloss.objectives._groups import PerGroup
from rdloss.objectives._hyperparameters import Hyperparameter
from rdloss.objectives._structured import check_alpha, nvae_coefficients

__all__ = ["Beta"]


class Beta(Objective):
    r"""The β-VAE objective $\bar D + \beta \bar R$ (Higgins et al., 2017).

    ``beta = 1`` is the negative ELBO; ``beta < 1`` moves towards the auto-encoding limit
    (more rate, less distortion), which the paper recommends with powerful decoders. The
    slope of the rate-distortion frontier at the optimum is ``-beta``. CompressAI's
    ``lambda * D + R`` corresponds to ``beta = 1 / lambda`` (and uses bits per pixel).
    See Alemi et al. (2018), Eq. 6. A schedule gives KL warm-up (Bowman et al., 2016:
    ``Beta(Linear(0.0, 1.0, steps=T))``) or cyclical annealing (Fu et al., 2019:
    ``Beta(Cyclical(steps=T))``). With named latent groups, ``group_balance=True`` adds
    NVAE's balancing (`nvae_balanced_rate`) while the warm-up keeps ``beta < 1``;
    ``out.hyper["balance/<group>"]`` is each group's coefficient applied (1 once
    ``beta >= 1``), what NVAE logs as ``kl_coeff/layer_i``.

    **Per group.** ``beta`` may map group names to numbers or schedules, each group's rate
    weighted by its own: $\bar D + \overline{\sum_g \beta_g R_g}$. scvi-tools warms up the
    KL of ``z`` and keeps the library size ``l`` at 1: ``Beta({"z": Linear(0.0, 1.0,
    steps=T)})``. A group the mapping does not name weighs 1.0 (the ELBO's weight); a name
    the call does not have is refused, naming the call's groups; ``out.hyper`` then has
    ``"beta/<group>"`` for every group instead of ``"beta"``. Not with
    ``group_balance=True``, which balances the groups under one warm-up coefficient.

    Args:
        beta: non-negative weight of the rate, a number or a schedule; or a mapping from
            group name to those.
        group_balance: NVAE's KL balancing over named groups while ``beta < 1``.
        alpha: NVAE's per-group divisor ``alpha_g`` (its ``kl_balancer_coeff``); default
            each group's number of latent dimensions.

    Examples:
        >>> import torch
        >>> Beta(0.5)(torch.tensor([2.0]), torch.tensor([10.0])).loss
        tensor(11.)
    """

    _hyperparameters: ClassVar[dict[str, bool]] = {"beta": False}
    _per_group = frozenset({"beta"})
    _config = ("group_balance", "alpha")

    def __init__(
        self,
        beta: Hyperparameter | Mapping[str, Hyperparameter] = 1.0,
        *,
        group_balance: bool = False,
        alpha: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(group_balance, bool):
            raise TypeError(f"group_balance must be a bool, got {type(group_balance).__name__}")
        if alpha is not None and not group_balance:
            raise ValueError("alpha weights NVAE's group balancing: pass group_balance=True")
        self.group_balance = group_balance
        self.alpha = check_alpha(alpha)
        self.beta = beta

    @override
    def _set_hyperparameter(self, name: str, value: object) -> None:
        if isinstance(value, Mapping) and self.group_balance:
            raise ValueError(
                "beta per group cannot be combined with group_balance=True: NVAE balances "
                "the groups under one warm-up coefficient (its kl_coeff); give beta one "
                "number or schedule, and weight the groups with alpha"
            )
        super()._set_hyperparameter(name, value)

    @override
    def compute_terms(
        self, terms: RateTerms, distortion: Tensor, *, weight: Tensor | None = None
    ) -> ObjectiveOutput:
        r"""$\bar D + \beta \bar R$, with NVAE's group balancing while $\beta < 1$.

        With β per group, $\bar D + \overline{\sum_g \beta_g R_g}$.

        Raises:
            ValueError: β per group on a call without those groups; balancing on a call
                without named groups, or ``alpha`` missing one of its groups.
        """
        per_group = self._modules.get("beta")  # a dict look-up: the scalar path stays as is
        if isinstance(per_group, PerGroup):
            return self._per_group_loss(per_group, terms, distortion, weight)
        if not self.group_balance:
            return super().compute_terms(terms, distortion, weight=weight)
        beta = self.hyperparameter(self.beta, terms.per_example)
        rates, coeff = nvae_coefficients(self, terms, self.alpha, weight)
        balanced = (rates * coeff.detach()).sum(1)
        # NVAE balances only during warm-up (kl_coeff < 1); torch.where keeps it sync-free.
        balancing = beta < 1.0
        rate = torch.where(balancing, balanced, terms.per_example)
        loss = self.mean(distortion, weight) + beta * self.mean(rate, weight)
        applied = torch.where(balancing, coeff.detach(), 1.0).unbind()
        hyper = {
            "beta": beta,
            **{f"balance/{g}": c for g, c in zip(terms.per_group, applied, strict=True)},
        }
        return ObjectiveOutput(loss, hyper)

    def _per_group_loss(
        self, per_group: PerGroup, terms: RateTerms, distortion: Tensor, weight: Tensor | None
    ) -> ObjectiveOutput:
        betas = self.group_values(per_group, terms, terms.per_example)
        rate: Tensor | None = None
        for group, beta in betas.items():  # in the call's group order, summed per example
            term = beta * terms.per_group[group]
            rate = term if rate is None else rate + term
        assert rate is not None  # a grouped call has at least one group
        loss = self.mean(distortion, weight) + self.mean(rate, weight)
        return ObjectiveOutput(loss, {f"beta/{g}": b for g, b in betas.items()})

    def compute(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        r"""$\bar D + \beta \bar R$; see `Objective.compute`."""
        beta = self.hyperparameter(self.beta, rate)
        loss = self.mean(distortion, weight) + beta * self.mean(rate, weight)
        return ObjectiveOutput(loss, {"beta": beta})

    @override
    def extra_repr(self) -> str:
        balance = ", group_balance=True" if self.group_balance else ""
        return numbers_repr(beta=self.beta) + balance
