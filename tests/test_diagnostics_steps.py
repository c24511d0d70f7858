"""Per-step diagnostics of sequence models: StepRate, steps=True, rate_per_variable, masks.

Every metric is checked against a direct float64 computation over the whole epoch, for
batch sizes 1, 7 and the whole epoch; the free-bits clamp fraction against DreamerV3's
own clamp (danijar/dreamerv3, commit e3f02248693a79dc8b0ebd62c93683888ddaccfe):

* ``embodied/jax/outs.py``, ``Categorical.__init__``: with ``unimix``,
  ``probs = (1 - unimix) * softmax(logits) + unimix / classes``, ``logits = log(probs)``;
  ``Categorical.kl``: ``sum_k softmax(l)_k (log_softmax(l)_k - log_softmax(m)_k)``;
  ``Agg(OneHot(...), 1, jnp.sum)``: summed over the ``stoch`` axis.
* ``dreamerv3/rssm.py``, ``RSSM.loss``: ``dyn = kl(sg(post), prior)``,
  ``rep = kl(post, sg(prior))`` per ``(b, t)``; ``jnp.maximum(dyn, free_nats)`` with
  ``free_nats = 1.0``, ``stoch = classes = 32``, ``unimix = 0.01``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.distributions import Independent, Normal, OneHotCategorical, kl_divergence
from torch.testing import assert_close

import rdloss
from rdloss.diagnostics import ActiveUnits, RatePerDimension, StepRate
from rdloss.diagnostics.functional import rate_per_variable

F64 = torch.float64
N, T, STOCH, CLASSES = 23, 6, 32, 32
SIZES = ([1] * N, [7, 7, 7, 2], [N])  # batch sizes 1, 7 and the whole epoch


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mask(n: int = N, t: int = T, seed: int = 0) -> Tensor:
    """Sequences padded after a random length in 0..t (0: a sequence of padding only)."""
    lengths = torch.randint(0, t + 1, (n, 1), generator=_gen(seed))
    mask = torch.arange(t) < lengths
    assert (~mask).any() and mask.any()
    return mask


def _padded(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` with NaN in the padded steps: whatever padding holds counts nothing."""
    nan = torch.full_like(values, float("nan"))
    return torch.where(mask.reshape(*mask.shape, *([1] * (values.ndim - 2))), values, nan)


def _batches(sizes: list[int]) -> list[slice]:
    out, start = [], 0
    for size in sizes:
        out.append(slice(start, start + size))
        start += size
    assert start == N
    return out


def _stream(metric: Any, update: Callable[[Any, slice], None], sizes: list[int]) -> Any:
    for s in _batches(sizes):
        update(metric, s)
    return metric.compute()


# --- StepRate -----------------------------------------------------------------------------


def test_step_rate_equals_the_direct_weighted_computation_for_any_batching() -> None:
    g = _gen(1)
    rate = torch.rand(N, T, generator=g, dtype=F64) * 3
    weight = torch.rand(N, generator=g, dtype=F64) + 0.5
    mask = _mask()
    w = (weight[:, None] * mask)[mask]
    r = rate[mask]
    mean = (w * r).sum() / w.sum()
    std = ((w * (r - mean) ** 2).sum() / w.sum()).sqrt()
    clamped = (w * (r < 1.5)).sum() / w.sum()
    padded = _padded(rate, mask)
    for sizes in SIZES:
        got = _stream(
            StepRate(free_bits=1.5).set_dtype(F64),
            lambda m, s: m.update(padded[s], weight=weight[s], mask=mask[s]),
            sizes,
        )
        assert_close(got.mean, mean)
        assert_close(got.std, std)
        assert_close(got.clamped_fraction, clamped)
        assert_close(got.steps, w.sum())
    assert 0 < clamped < 1  # both sides of the clamp occur


def test_step_rate_without_mask_or_weight_is_torch_mean_and_std() -> None:
    rate = torch.rand(N, T, generator=_gen(2), dtype=F64) * 4 + 100  # a large offset
    got = StepRate().set_dtype(F64)
    got.update(rate)
    result = got.compute()
    assert_close(result.mean, rate.mean())
    assert_close(result.std, rate.std(correction=0))
    assert result.clamped_fraction is None
    # float32 states: the shifted sums keep the spread of steps around 100 nats
    f32 = StepRate()
    f32.update(rate.float())
    assert_close(f32.compute().std, rate.std(correction=0).float(), rtol=1e-4, atol=1e-5)


def _dreamer_logits(seed: int, b: int = 6, t: int = 5) -> tuple[Tensor, Tensor]:
    """Posterior and prior logits whose per-step KL spans both sides of 1 nat."""
    g = _gen(seed)
    post = torch.randn(b, t, STOCH, CLASSES, generator=g, dtype=F64)
    gap = torch.linspace(0.0, 0.6, b * t, dtype=F64).reshape(b, t, 1, 1)
    prior = post + gap * torch.randn(b, t, STOCH, CLASSES, generator=g, dtype=F64)
    return post, prior


def _dreamer_kl(post_logits: Tensor, prior_logits: Tensor, unimix: float = 0.01) -> Tensor:
    """DreamerV3's per-(b, t) KL, written from outs.py (see the module docstring)."""

    def mixed(logits: Tensor) -> Tensor:
        probs = (1 - unimix) * torch.softmax(logits, -1) + unimix / logits.shape[-1]
        return torch.log(probs)

    lq, lp = mixed(post_logits), mixed(prior_logits)
    per_variable = (
        torch.softmax(lq, -1) * (torch.log_softmax(lq, -1) - torch.log_softmax(lp, -1))
    ).sum(-1)
    return per_variable.sum(-1)  # Agg(..., 1, jnp.sum) over the stoch axis


def _one_hot(logits: Tensor, unimix: float = 0.01) -> Independent:
    probs = (1 - unimix) * logits.softmax(-1) + unimix / logits.shape[-1]
    return Independent(OneHotCategorical(probs=probs), 1)


def test_clamp_fraction_is_dreamerv3s_fraction_of_clamped_steps() -> None:
    post_logits, prior_logits = _dreamer_logits(3)
    free = 1.0
    kl = _dreamer_kl(post_logits, prior_logits)
    dyn = torch.maximum(kl, torch.tensor(free, dtype=F64))  # rssm.py: jnp.maximum(dyn, free)
    expected = (dyn > kl).to(F64).mean()  # where the max returned the constant
    assert 0.2 < expected < 0.8
    b = post_logits.shape[0]
    x = torch.zeros(b, 2, dtype=F64)
    out = rdloss.RateDistortionLoss()(
        x,
        posterior={"stoch": _one_hot(post_logits)},
        prior={"stoch": _one_hot(prior_logits)},
        likelihood=Independent(Normal(torch.zeros_like(x), 1.0), 1),
    )
    assert out.rate_per_step is not None
    assert_close(out.rate_per_step["stoch"], kl)  # the loss's per-step rate is DreamerV3's KL
    metric = StepRate(free_bits=free).set_dtype(F64)
    for s in (slice(0, 1), slice(1, 4), slice(4, b)):
        metric.update(out.rate_per_step["stoch"][s])
    streamed = StepRate(free_bits=free).set_dtype(F64)
    streamed.update(out)  # the RDOutput's only stepped group
    for result in (metric.compute(), streamed.compute()):
        assert_close(result.clamped_fraction, expected)
        assert_close(result.mean, kl.mean())  # DreamerV3's unclamped mean KL


def test_step_rate_reads_the_named_group_of_an_rdoutput() -> None:
    post_logits, prior_logits = _dreamer_logits(4, b=3, t=4)
    g = _gen(5)
    x = torch.zeros(3, 2, dtype=F64)
    slow = Independent(Normal(torch.randn(3, 4, 2, generator=g, dtype=F64), 1.0), 1)
    out = rdloss.RateDistortionLoss()(
        x,
        posterior={"stoch": _one_hot(post_logits), "slow": slow},
        prior={"stoch": _one_hot(prior_logits), "slow": None},
        likelihood=Independent(Normal(torch.zeros_like(x), 1.0), 1),
    )
    assert out.rate_per_step is not None
    with pytest.raises(ValueError, match=r"StepRate\(group=\.\.\.\)"):
        StepRate().update(out)
    with pytest.raises(ValueError, match="'other' is not among"):
        StepRate(group="other").update(out)
    metric = StepRate(group="slow").set_dtype(F64)
    metric.update(out)
    assert_close(metric.compute().mean, out.rate_per_step["slow"].mean())


def test_step_rate_refuses_what_has_no_steps() -> None:
    x = torch.zeros(3, 2)
    out = rdloss.RateDistortionLoss()(
        x,
        posterior=Independent(Normal(torch.zeros(3, 4), 1.0), 1),
        likelihood=Independent(Normal(x, 1.0), 1),
    )
    with pytest.raises(ValueError, match="no rate_per_step"):
        StepRate().update(out)
    with pytest.raises(ValueError, match="carries its own weight"):
        StepRate().update(out, weight=torch.ones(3))
    with pytest.raises(ValueError, match=r"\(B, T\) tensor"):
        StepRate().update(torch.ones(3))
    with pytest.raises(ValueError, match=r"weight must have shape \(B,\) = \(3,\)"):
        StepRate().update(torch.ones(3, 2), weight=torch.ones(2))
    with pytest.raises(ValueError, match="free_bits must be >= 0"):
        StepRate(free_bits=-1.0)
    with pytest.raises(ValueError, match="needs free_bits"):
        StepRate(output="clamped_fraction")
    with pytest.raises(TypeError, match="group must be"):
        StepRate(group="")


# --- steps=True -----------------------------------------------------------------------------


def test_active_units_per_step_count_a_steps_latent_over_real_steps() -> None:
    g = _gen(6)
    scales = torch.tensor([1.0, 0.3, 0.05, 0.001], dtype=F64)
    means = 7.0 + torch.randn(N, T, 4, generator=g, dtype=F64) * scales
    mask = _mask(seed=1)
    expected = means[mask].var(0, correction=1)
    padded = _padded(means, mask)
    for sizes in SIZES:
        got = _stream(
            ActiveUnits(steps=True).set_dtype(F64),
            lambda m, s: m.update(padded[s], mask=mask[s]),
            sizes,
        )
        assert_close(got.variances, expected)
        assert int(got.num_active) == int((expected > 0.01).sum()) == 2


def test_active_units_per_step_of_a_one_hot_latent_has_a_steps_units() -> None:
    # DreamerV3's 32 x 32 latent: 1,024 units per step, not T x 1,024 per sequence.
    post_logits, _ = _dreamer_logits(7, b=4, t=5)
    posterior = _one_hot(post_logits)
    metric = ActiveUnits(steps=True).set_dtype(F64)
    metric.update(posterior)
    result = metric.compute()
    probs = posterior.mean.reshape(4 * 5, STOCH * CLASSES)
    assert result.variances.shape == (STOCH * CLASSES,)
    assert_close(result.variances, probs.var(0, correction=1))
    per_sequence = ActiveUnits()
    per_sequence.update(posterior)
    assert per_sequence.compute().variances.shape == (5 * STOCH * CLASSES,)


def test_rate_per_dimension_per_step_of_a_gaussian_rdoutput() -> None:
    g = _gen(8)
    b, t, d = 5, 4, 3
    q = Independent(
        Normal(
            torch.randn(b, t, d, generator=g, dtype=F64),
            0.5 + torch.rand(b, t, d, generator=g, dtype=F64),
        ),
        1,
    )
    p = Independent(Normal(torch.randn(b, t, d, generator=g, dtype=F64), 1.0), 1)
    x = torch.zeros(b, 2, dtype=F64)
    lik = Independent(Normal(torch.zeros_like(x), 1.0), 1)
    weight = torch.rand(b, generator=g, dtype=F64) + 0.5
    mask = _mask(b, t, seed=2)
    direct = kl_divergence(q.base_dist, p.base_dist)  # (b, t, d)
    w = (weight[:, None] * mask)[..., None]
    expected = (w * direct).sum((0, 1)) / w.sum()
    for grouped in (False, True):
        if grouped:
            out = rdloss.RateDistortionLoss()(
                x, posterior={"h": q}, prior={"h": p}, likelihood=lik, weight=weight
            )
            metric = RatePerDimension(steps=True, groups=["h"]).set_dtype(F64)
        else:
            out = rdloss.RateDistortionLoss()(
                x, posterior=q, prior=p, likelihood=lik, weight=weight
            )
            metric = RatePerDimension(steps=True).set_dtype(F64)
        metric.update(out, mask=mask)
        got = metric.compute()
        assert_close(got["h"] if grouped else got, expected)


def test_rate_per_variable_of_dreamerv3s_latent_and_its_per_step_mean() -> None:
    post_logits, prior_logits = _dreamer_logits(9, b=N, t=T)
    posterior, prior = _one_hot(post_logits), _one_hot(prior_logits)
    per_variable = rate_per_variable(posterior, prior)
    assert per_variable.shape == (N, T, STOCH)
    # each variable's KL, from DreamerV3's Categorical.kl (outs.py), without the stoch sum
    mixed_q = torch.log(0.99 * post_logits.softmax(-1) + 0.01 / CLASSES)
    mixed_p = torch.log(0.99 * prior_logits.softmax(-1) + 0.01 / CLASSES)
    direct = (mixed_q.softmax(-1) * (mixed_q.log_softmax(-1) - mixed_p.log_softmax(-1))).sum(-1)
    assert_close(per_variable, direct)
    assert_close(per_variable.sum(-1), _dreamer_kl(post_logits, prior_logits))
    mask = _mask(seed=3)
    expected = direct[mask].mean(0)  # (32,): mean KL of each variable over real steps
    padded = _padded(per_variable, mask)
    for sizes in SIZES:
        got = _stream(
            RatePerDimension(steps=True).set_dtype(F64),
            lambda m, s: m.update(padded[s], mask=mask[s]),
            sizes,
        )
        assert_close(got, expected)


def test_rate_per_dimension_points_one_hot_latents_to_rate_per_variable() -> None:
    post_logits, prior_logits = _dreamer_logits(10, b=3, t=2)
    x = torch.zeros(3, 2, dtype=F64)
    out = rdloss.RateDistortionLoss()(
        x,
        posterior={"stoch": _one_hot(post_logits)},
        prior={"stoch": _one_hot(prior_logits)},
        likelihood=Independent(Normal(torch.zeros_like(x), 1.0), 1),
    )
    with pytest.raises(ValueError, match="rate_per_variable"):
        RatePerDimension(steps=True, groups=["stoch"]).update(out)


def test_rate_per_variable_refuses_what_it_cannot_split() -> None:
    q = Independent(OneHotCategorical(logits=torch.zeros(2, 3, 4, 5)), 1)
    with pytest.raises(ValueError, match="Independent over its variables"):
        rate_per_variable(OneHotCategorical(logits=torch.zeros(2, 5)), q)
    shared = Independent(OneHotCategorical(logits=torch.zeros(4, 5)), 1)
    with pytest.raises(ValueError, match="nothing is broadcast"):
        rate_per_variable(q, shared)
    with pytest.raises(TypeError, match="posterior"):
        rate_per_variable(torch.zeros(2), q)  # type: ignore[arg-type]


# --- masks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: StepRate(free_bits=1.0),
        lambda: ActiveUnits(steps=True),
        lambda: RatePerDimension(steps=True),
    ],
    ids=["StepRate", "ActiveUnits", "RatePerDimension"],
)
def test_padded_steps_count_nothing(build: Callable[[], Any]) -> None:
    # the masked epoch equals the same real steps fed as unmasked one-step sequences
    g = _gen(11)
    mask = _mask(seed=4)
    is_step_rate = isinstance(build(), StepRate)
    values = torch.rand(N, T, *(() if is_step_rate else (3,)), generator=g, dtype=F64) * 2
    masked = build().set_dtype(F64)
    masked.update(_padded(values, mask), mask=mask)
    real = build().set_dtype(F64)
    real.update(values[mask].unsqueeze(1))  # (steps, 1, ...): each real step alone
    want = _flat(real.compute())
    assert_close(_flat(masked.compute()), want)
    unmasked = build().set_dtype(F64)
    unmasked.update(values)
    assert not torch.allclose(_flat(unmasked.compute()), want)  # the mask matters


def _flat(result: Any) -> Tensor:
    """Every tensor of a result, as one float64 vector."""
    fields = result if isinstance(result, tuple) else (result,)
    return torch.cat([f.reshape(-1).to(F64) for f in fields if isinstance(f, Tensor)])


@pytest.mark.parametrize("build", [lambda: StepRate(), lambda: ActiveUnits(steps=True)])
def test_bad_masks_are_refused(build: Callable[[], Any]) -> None:
    values = torch.rand(3, 4) if isinstance(build(), StepRate) else torch.rand(3, 4, 2)
    with pytest.raises(TypeError, match=r"mask\.bool\(\)"):
        build().update(values, mask=torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, T\) = \(3, 4\)"):
        build().update(values, mask=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be"):
        build().update(values, mask=[[True] * 4] * 3)


def test_mask_without_steps_and_steps_without_a_step_axis_are_refused() -> None:
    with pytest.raises(ValueError, match="steps=True"):
        ActiveUnits().update(torch.rand(3, 4), mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, T, \.\.\.\)"):
        RatePerDimension(steps=True).update(torch.rand(3, 4))
    with pytest.raises(TypeError, match="steps must be a bool"):
        ActiveUnits(steps=1)  # type: ignore[arg-type]
    a, b = ActiveUnits(steps=True), ActiveUnits()
    a.update(torch.rand(3, 4, 2))
    b.update(torch.rand(3, 8))
    with pytest.raises(ValueError, match="steps=True"):
        a.merge_state(b)


def test_step_rate_forward_returns_the_batch_and_accumulates_the_epoch() -> None:
    g = _gen(12)
    first = torch.rand(3, 4, generator=g, dtype=F64) * 2
    second = torch.rand(5, 4, generator=g, dtype=F64) * 2 + 10  # another level: shifts differ
    metric = StepRate(free_bits=1.0).set_dtype(F64)
    assert_close(metric(first).mean, first.mean())
    assert_close(metric(second).std, second.std(correction=0))
    epoch = torch.cat([first, second])
    result = metric.compute()
    assert_close(result.mean, epoch.mean())
    assert_close(result.std, epoch.std(correction=0))
    assert_close(result.clamped_fraction, (epoch < 1.0).to(F64).mean())


def test_grouped_steps_are_counted_per_group_over_the_same_real_steps() -> None:
    g = _gen(13)
    means = {
        "stoch": torch.randn(N, T, 2, 3, generator=g, dtype=F64),
        "deter": 5 + torch.randn(N, T, 4, generator=g, dtype=F64),
    }
    mask = _mask(seed=5)
    metric = ActiveUnits(groups=["stoch", "deter"], steps=True).set_dtype(F64)
    for s in _batches([7, 7, 7, 2]):
        metric.update({k: _padded(v, mask)[s] for k, v in means.items()}, mask=mask[s])
    per_group = metric.compute().per_group
    assert_close(per_group["stoch"].variances, means["stoch"][mask].flatten(1).var(0))
    assert_close(per_group["deter"].variances, means["deter"][mask].var(0))
    other = {"stoch": means["stoch"][:, :3], "deter": means["deter"]}  # T differs
    with pytest.raises(ValueError, match=r"different batch and step sizes \(B, T\)"):
        metric.update(other)
