"""A learned marginal over one discrete latent (the toy model of Alemi et al., 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Categorical as TorchCategorical
from torch.distributions import Distribution
from typing_extensions import override

from rdloss._checks import check_positive_int
from rdloss.families import one_hot
from rdloss.marginals._base import Marginal

__all__ = ["Categorical"]


class Categorical(Marginal):
    r"""Learned $m(z = i) = \pi_i$, $\pi = \operatorname{softmax}(\text{logits})$.

    The marginal of the paper's toy model (Alemi et al., 2018, Sec. 4): one discrete latent
    with ``n_categories`` values. ``torch.distributions`` registers the closed-form KL
    between two categoricals, so the rate is exact, and ``samples="enumerate"`` in
    `rdloss.RateDistortionLoss` makes the distortion exact too. The weights start
    uniform.

    Args:
        n_categories: number of values ``K``.
        one_hot: return ``OneHotCategorical`` (event ``(K,)``, for one-hot posteriors)
            instead of ``Categorical`` (event ``()``, for index posteriors).

    Examples:
        >>> m = Categorical(30)
        >>> m().probs.shape, m().event_shape
        (torch.Size([30]), torch.Size([]))
        >>> Categorical(3, one_hot=True)().event_shape
        torch.Size([3])
    """

    def __init__(self, n_categories: int, *, one_hot: bool = False) -> None:
        super().__init__()
        self.n_categories = check_positive_int("n_categories", n_categories)
        if not isinstance(one_hot, bool):
            raise TypeError(f"one_hot must be a bool, got {type(one_hot).__name__}")
        self.one_hot = one_hot
        self.logits = nn.Parameter(torch.zeros(n_categories))

    @property
    def probs(self) -> Tensor:
        r"""``(K,)`` the current weights $\pi$."""
        return self.logits.softmax(-1)

    def forward(self) -> Distribution:
        """Return ``Categorical(logits)`` (or ``OneHotCategorical`` with ``one_hot=True``)."""
        # Its own logits, valid by construction: no argument checks (a host sync each).
        weights = TorchCategorical(logits=self.logits, validate_args=False)
        return one_hot(weights) if self.one_hot else weights

    @override
    def extra_repr(self) -> str:
        return f"n_categories={self.n_categories}, one_hot={self.one_hot}"
