"""A custom objective needs one method: `compute` or `compute_terms` (issue 22).

docs/structured.md tells users to override ``compute_terms`` for an objective over groups;
that used to fail with "Can't instantiate abstract class ... with abstract method compute".
Either method now suffices, and a class with neither is refused when instantiated, naming
both.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from _builders import EXACT, F64, _nll, _x
from test_objective_structured import _model, _ref_terms
from torch import Tensor
from torch.testing import assert_close

import rdloss
from rdloss.latents import RateTerms
from rdloss.objectives import Objective, ObjectiveOutput


class MaxGroup(Objective):
    """Only compute_terms: D + the largest group's batch-mean rate (over groups)."""

    def compute_terms(
        self, terms: RateTerms, distortion: Tensor, *, weight: Tensor | None = None
    ) -> ObjectiveOutput:
        rates = torch.stack([self.mean(r, weight) for r in terms.per_group.values()])
        return ObjectiveOutput(self.mean(distortion, weight) + rates.amax(), {})


class HalfRate(Objective):
    """Only compute: D + R / 2 on the total rate."""

    def compute(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        half = torch.tensor(0.5, dtype=rate.dtype)
        return ObjectiveOutput(self.mean(distortion, weight) + half * self.mean(rate, weight), {})


def test_an_objective_with_only_compute_terms_runs_on_groups() -> None:
    post, prior, leaves = _model()
    x, lik = _x()
    objective = MaxGroup()
    out = rdloss.RateDistortionLoss(objective=objective)(
        x, posterior=post, prior=prior, likelihood=lik
    )
    kl = _ref_terms(post, prior)
    expected = _nll(x).mean() + torch.stack([kl[k].flatten(1).sum(1).mean() for k in post]).amax()
    assert_close(out.loss, expected, **EXACT)
    for a, b in zip(
        torch.autograd.grad(out.loss, leaves, allow_unused=True),
        torch.autograd.grad(expected, leaves, allow_unused=True),
        strict=True,
    ):
        if b is not None:
            assert_close(a, b, **EXACT)
    assert int(objective.step) == 1


def test_an_objective_with_only_compute_terms_runs_on_the_total_rate() -> None:
    # Called directly (and through compute), it sees one ungrouped latent named "z".
    rate, distortion = torch.tensor([1.0, 3.0], dtype=F64), torch.tensor([2.0, 2.0], dtype=F64)
    objective = MaxGroup()
    assert_close(objective(rate, distortion).loss, torch.tensor(4.0, dtype=F64), **EXACT)
    assert_close(objective.compute(rate, distortion).loss, torch.tensor(4.0, dtype=F64))


def test_an_objective_with_only_compute_runs_on_groups_through_the_total() -> None:
    post, prior, _ = _model()
    x, lik = _x()
    out = rdloss.RateDistortionLoss(objective=HalfRate())(
        x, posterior=post, prior=prior, likelihood=lik
    )
    kl = _ref_terms(post, prior)
    total = sum(kl[k].flatten(1).sum(1) for k in post)
    assert_close(out.loss, _nll(x).mean() + 0.5 * total.mean(), **EXACT)


def test_an_objective_with_neither_method_is_refused_when_instantiated() -> None:
    class Neither(Objective):
        pass

    with pytest.raises(TypeError, match="Neither defines neither compute nor compute_terms"):
        Neither()
    with pytest.raises(TypeError, match="override one of them"):
        Objective()


def test_an_intermediate_base_without_either_may_exist() -> None:
    # Only instances are refused: a mixin base class with neither method is fine.
    class Base(Objective):
        scale = 2.0

    class Child(Base):
        def compute_terms(
            self, terms: RateTerms, distortion: Tensor, *, weight: Tensor | None = None
        ) -> ObjectiveOutput:
            return ObjectiveOutput(self.mean(distortion, weight) * self.scale, {})

    out = Child()(torch.ones(2), torch.ones(2))
    assert float(out.loss) == 2.0


class WeightedGroups(Objective):
    """A custom per-group hyperparameter: D + sum_g w_g mean(R_g)."""

    _hyperparameters: ClassVar[dict[str, bool]] = {"w": False}
    _per_group = frozenset({"w"})

    def __init__(self, w: float | dict[str, float] = 1.0) -> None:
        super().__init__()
        self.w = w

    def compute_terms(
        self, terms: RateTerms, distortion: Tensor, *, weight: Tensor | None = None
    ) -> ObjectiveOutput:
        w = self.group_values(self.w, terms, distortion)
        rate = sum(w[g] * self.mean(r, weight) for g, r in terms.per_group.items())
        return ObjectiveOutput(self.mean(distortion, weight) + rate, {})


@pytest.mark.parametrize("w", [0.5, {"s1": 0.5}, {"s1": 0.5, "s2": 0.5, "g": 0.5}])
def test_a_custom_per_group_hyperparameter_takes_a_number_or_a_mapping(
    w: float | dict[str, float],
) -> None:
    post, prior, _ = _model()
    x, lik = _x()
    out = rdloss.RateDistortionLoss(objective=WeightedGroups(w))(
        x, posterior=post, prior=prior, likelihood=lik
    )
    kl = _ref_terms(post, prior)
    per_group = {k: kl[k].flatten(1).sum(1).mean() for k in post}
    w_of = {k: (w.get(k, 1.0) if isinstance(w, dict) else w) for k in post}
    expected = _nll(x).mean() + sum(w_of[k] * per_group[k] for k in post)
    assert_close(out.loss, expected, **EXACT)


def test_compute_terms_alone_calling_the_default_is_refused_not_a_recursion() -> None:
    class Fallback(Objective):
        def compute_terms(
            self, terms: RateTerms, distortion: Tensor, *, weight: Tensor | None = None
        ) -> ObjectiveOutput:
            return super().compute_terms(terms, distortion, weight=weight)

    with pytest.raises(TypeError, match=r"Fallback\.compute_terms called Objective\.compute_terms"):
        Fallback()(torch.ones(2), torch.ones(2))
