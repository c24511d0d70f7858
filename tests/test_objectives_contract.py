"""The contract every objective keeps, checked on each one through `RateDistortionLoss`.

A grouped model with a step axis gives every level of the rate (dimension, group, step,
total), so every objective (and free bits at each level) runs on the same calls:

* a ``state_dict`` round trip resumes bit-identically (two continued steps equal);
* ``.double()`` / ``.half()`` never narrow state or hyperparameters;
* a NaN batch makes the loss raise before the objective runs: the state is unchanged;
* a checkpoint of a differently configured objective (or schedule) is refused on load;
* the training step compiles once with ``fullgraph=True``, and assigning a number to a
  hyperparameter between steps neither recompiles nor goes unused.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from torch import Tensor
from torch._dynamo.testing import CompileCounterWithBackend
from torch.distributions import Independent, Normal
from torch.testing import assert_close

from rdloss import RateDistortionLoss, helpers
from rdloss.objectives import (
    GECO,
    Beta,
    Capacity,
    FreeBits,
    Objective,
    RateController,
    TargetDistortion,
    TargetRate,
)
from rdloss.schedules import Linear

B, T, D, P = 6, 3, 2, 5
EXACT = {"rtol": 0.0, "atol": 0.0}


class Case(NamedTuple):
    name: str
    build: Callable[[], Objective]
    other: Callable[[], Objective]  # the same objective in another configuration
    assign: tuple[str, float | dict[str, float]]  # a numeric hyperparameter, a new value


CASES = [
    Case("Beta", lambda: Beta(0.5), lambda: Beta(0.5, group_balance=True), ("beta", 0.75)),
    Case(
        "Beta-group_balance",
        lambda: Beta(0.5, group_balance=True),
        lambda: Beta(0.5, group_balance=True, alpha={"a": 1.0, "b": 2.0}),
        ("beta", 2.0),
    ),
    Case(
        "Beta-per-group",
        lambda: Beta({"a": Linear(0.0, 1.0, steps=4), "b": 0.5}),
        lambda: Beta({"a": Linear(0.0, 1.0, steps=4)}),
        ("beta", {"a": Linear(0.0, 1.0, steps=4), "b": 0.25}),
    ),
    Case(
        "FreeBits-per-group",
        lambda: FreeBits(0.3, per="step", beta={"a": 0.5, "b": 2.0}),
        lambda: FreeBits(0.3, per="step", beta={"a": 0.5}),
        ("beta", {"a": 0.75, "b": 2.0}),
    ),
    Case(
        "TargetRate",
        lambda: TargetRate(2.0, weight=2.0),
        lambda: TargetRate(2.0, weight=2.0, reduction="example"),
        ("sigma", 3.0),
    ),
    Case(
        "TargetRate-adaptive",
        lambda: TargetRate(2.0, adaptive=True, lr=0.1),
        lambda: TargetRate(2.0, adaptive=True, lr=0.1, max_weight=100.0),
        ("sigma", 1.0),
    ),
    Case(
        "TargetDistortion",
        lambda: TargetDistortion(3.0, weight=2.0),
        lambda: TargetDistortion(3.0, weight=2.0, reduction="example"),
        ("delta", 4.0),
    ),
    *(
        Case(
            f"FreeBits-{per}",
            lambda per=per: FreeBits(0.3, per=per),  # type: ignore[misc]
            lambda per=per: FreeBits(0.3, per=per, reduction="example"),  # type: ignore[misc]
            ("lam", 0.6),
        )
        for per in ("dimension", "group", "step", "total")
    ),
    Case(
        "Capacity",
        lambda: Capacity(Linear(0.0, 5.0, steps=4), gamma=10.0),
        lambda: Capacity(Linear(0.0, 5.0, steps=8), gamma=10.0),
        ("gamma", 20.0),
    ),
    Case("GECO", lambda: GECO(3.0, lr=0.05), lambda: GECO(3.0, lr=0.05, alpha=0.9), ("lr", 0.1)),
    Case(
        "RateController",
        lambda: RateController(2.0, kp=0.5, ki=0.1),
        lambda: RateController(2.0, kp=0.5, ki=0.1, error="absolute"),
        ("kp", 1.0),
    ),
]
IDS = [case.name for case in CASES]


class Model(torch.nn.Module):
    """Two latent groups with a step axis and a Bernoulli likelihood, all learned."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mu = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(torch.randn(B, T, D, generator=g)) for k in "ab"}
        )
        self.logits = torch.nn.Parameter(torch.randn(B, P, generator=g))

    def forward(self, loss_fn: RateDistortionLoss, x: Tensor, shift: float = 0.0) -> Tensor:
        posterior = {  # batch (B, T), event (D,); the loss's own value check sees a NaN
            k: Independent(Normal(mu + shift, 1.0, validate_args=False), 1)
            for k, mu in self.mu.items()
        }
        out = loss_fn(x, posterior=posterior, likelihood=helpers.bernoulli(logits=self.logits))
        if out.loss.requires_grad:  # not in the no_grad warm-up
            out.loss.backward()
        return torch.stack([out.loss.detach(), *(v.detach() for v in out.hyper.values())])


def _x() -> Tensor:
    return torch.randint(0, 2, (B, P), generator=torch.Generator().manual_seed(1)).float()


def _numbers(objective: Objective, name: str) -> list[Tensor]:
    """The buffers of a numeric hyperparameter: itself, or each group's number."""
    value = getattr(objective, name)
    return list(value.buffers()) if isinstance(value, torch.nn.Module) else [value]


def _state(objective: Objective) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in objective.state_dict().items()}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_dict_round_trip_resumes_bit_identically(case: Case) -> None:
    model, loss_fn, x = Model(), RateDistortionLoss(objective=case.build()), _x()
    for _ in range(2):
        model(loss_fn, x)
    resumed_model = copy.deepcopy(model)
    resumed = RateDistortionLoss(objective=case.build())
    resumed.load_state_dict(loss_fn.state_dict())
    for _ in range(2):  # the same gradients accumulate in both: only the objective differs
        assert_close(model(loss_fn, x), resumed_model(resumed, x), **EXACT)
        assert_close(_state(resumed.objective), _state(loss_fn.objective), **EXACT)
    assert int(resumed.objective.step) == 4


@pytest.mark.parametrize("cast", ["double", "half", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_casts_never_narrow_state_or_hyperparameters(case: Case, cast: str) -> None:
    objective = case.build()
    before = dict(objective.named_buffers())
    getattr(objective, cast)()
    for name, buffer in objective.named_buffers():
        if buffer.is_floating_point():
            assert torch.finfo(buffer.dtype).bits >= torch.finfo(before[name].dtype).bits, name
    for buffer in _numbers(objective, case.assign[0]):
        assert buffer.dtype == torch.float64


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_nan_batch_raises_and_leaves_the_state_alone(case: Case) -> None:
    model, loss_fn, x = Model(), RateDistortionLoss(objective=case.build()), _x()
    model(loss_fn, x)
    before = _state(loss_fn.objective)
    with pytest.raises(ValueError, match=r"NaN|nan|finite"):
        model(loss_fn, x, shift=float("nan"))
    assert_close(_state(loss_fn.objective), before, **EXACT)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_checkpoint_of_another_configuration_is_refused(case: Case) -> None:
    state = RateDistortionLoss(objective=case.other()).state_dict()
    loss_fn = RateDistortionLoss(objective=case.build())
    before = _state(loss_fn.objective)
    with pytest.raises(ValueError, match=r"was saved with .* but this one has"):
        loss_fn.load_state_dict(state)
    assert_close(_state(loss_fn.objective), before, **EXACT)  # refused before any copy


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compiles_once_and_uses_assigned_numbers(case: Case) -> None:
    torch._dynamo.reset()
    eager_model, x = Model(), _x()
    compiled_model = copy.deepcopy(eager_model)
    eager_fn = RateDistortionLoss(objective=case.build())
    compiled_fn = RateDistortionLoss(objective=case.build())
    with torch.no_grad():  # warm torch.distributions' KL dispatch cache outside the trace
        eager_model(eager_fn.eval(), x)
    eager_fn.train()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_model, backend=counter, fullgraph=True)
    name, value = case.assign
    with torch._dynamo.config.patch(error_on_recompile=True, trace_autograd_ops=True):
        for step in range(3):
            if step == 2:
                setattr(compiled_fn.objective, name, value)
                setattr(eager_fn.objective, name, value)
            compiled_model.zero_grad(set_to_none=True)  # a grad of None is guarded on
            eager_model.zero_grad(set_to_none=True)
            got, want = compiled(compiled_fn, x), eager_model(eager_fn, x)
            assert got.shape == want.shape  # every scalar 0-dim: the loss and its hyper
            assert_close(got, want)
    assert counter.frame_count == 1
    numbers = [float(b) for b in _numbers(compiled_fn.objective, name)]
    assert numbers == (
        [value]
        if isinstance(value, float)
        else [float(v) for v in value.values() if isinstance(v, float)]
    )
    assert_close(_state(compiled_fn.objective), _state(eager_fn.objective))
    torch._dynamo.reset()
