"""rdloss.distortion: the ``decoder=`` path with latent groups, steps and samples.

The decoder sees every group's ``z`` (drawn, straight-through or enumerated); its
distortion and the rate are checked against computations written here (issues 12 and 13).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _builders import EXACT, B, _gen, _q, _qs, _unimix, _x
from torch import Tensor
from torch.distributions import (
    Categorical,
    Independent,
    Normal,
    OneHotCategorical,
    kl_divergence,
)
from torch.testing import assert_close

import rdloss

# --- the decoder= path with groups, steps and samples --------------------------------------


def _recording_decoder(seen: dict[str, Any]) -> Any:
    """A decoder whose likelihood mean is a fixed function of every group's z."""

    def decoder(z: dict[str, Tensor]) -> Normal:
        seen.update(z)
        mean = z["s"].flatten(1)[:, :2] + z["g"][:, :1]
        return Normal(mean, torch.ones_like(mean))

    return decoder


@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("estimator", ["analytic", "mc"])
def test_decoder_with_groups_steps_and_samples(samples: int, estimator: str) -> None:
    post = {"s": _qs(B, 3, 2, seed=1), "g": _q(B, 2, seed=2)}
    prior = {"s": _qs(B, 3, 2, seed=3)}
    seen: dict[str, Tensor] = {}
    g = _gen(4)
    x = torch.randn(B, 2, generator=g, dtype=torch.float64)
    loss = rdloss.RateDistortionLoss(rate_estimator=estimator)  # type: ignore[arg-type]
    out = loss(x, posterior=post, prior=prior, decoder=_recording_decoder(seen), samples=samples)
    assert seen["s"].shape == (samples * B, 3, 2) and seen["g"].shape == (samples * B, 2)
    zs = {k: v.reshape(samples, B, *v.shape[1:]) for k, v in seen.items()}  # rows are (s b)
    mean = zs["s"].flatten(2)[..., :2] + zs["g"][..., :1]
    ref_d = -Normal(mean, 1.0).log_prob(x).sum(-1).mean(0)
    assert_close(out.distortion_per_example, ref_d, **EXACT)
    unit = Independent(Normal(torch.zeros(2, dtype=torch.float64), 1.0), 1)
    assert out.rate_per_group is not None and out.rate_per_step is not None
    if estimator == "analytic":
        ref_s = kl_divergence(post["s"], prior["s"])
        ref_g = kl_divergence(post["g"], unit)
    else:
        ref_s = (post["s"].log_prob(zs["s"]) - prior["s"].log_prob(zs["s"])).mean(0)
        ref_g = (post["g"].log_prob(zs["g"]) - unit.log_prob(zs["g"])).mean(0)
    assert_close(out.rate_per_step["s"], ref_s, **EXACT)
    assert_close(out.rate_per_group["g"], ref_g, **EXACT)
    assert_close(out.rate_per_example, ref_s.sum(1) + ref_g, **EXACT)


def test_decoder_gets_one_tensor_for_an_ungrouped_stepped_latent() -> None:
    seen: list[Tensor] = []

    def decoder(z: Tensor) -> Normal:
        seen.append(z)
        return Normal(z.flatten(1)[:, :2], 1.0)

    x, _ = _x()
    out = rdloss.RateDistortionLoss()(x, posterior=_qs(B, 3, 2), decoder=decoder, samples=2)
    assert isinstance(seen[0], Tensor) and seen[0].shape == (2 * B, 3, 2)
    assert out.rate_per_step is not None and list(out.rate_per_step) == ["z"]
    assert out.rate_per_group is None


def test_decoder_path_with_a_discrete_group_without_rsample_is_refused() -> None:
    q = Independent(OneHotCategorical(probs=_unimix(torch.zeros(B, 3, 4, 5))), 1)
    x, _ = _x(torch.float32)
    with pytest.raises(ValueError, match="rsample"):
        rdloss.RateDistortionLoss()(
            x,
            posterior={"c": q},
            prior={"c": q},
            decoder=lambda z: Normal(z["c"].flatten(1)[:, :2], 1.0),
            samples=2,
        )


def test_decoder_path_with_straight_through_onehot_steps() -> None:
    from torch.distributions import OneHotCategoricalStraightThrough

    g = _gen(5)
    pq = _unimix(torch.randn(B, 3, 4, 5, generator=g, dtype=torch.float64))
    pp = _unimix(torch.randn(B, 3, 4, 5, generator=g, dtype=torch.float64))
    q = Independent(OneHotCategoricalStraightThrough(probs=pq), 1)
    p = Independent(OneHotCategorical(probs=pp), 1)
    x, _ = _x()
    out = rdloss.RateDistortionLoss()(
        x,
        posterior={"c": q},
        prior={"c": p},
        decoder=lambda z: Normal(z["c"].flatten(1)[:, :2], 1.0),
        samples=2,
    )
    assert out.rate_per_step is not None
    assert_close(out.rate_per_step["c"], (pq * (pq.log() - pp.log())).sum((-1, -2)), **EXACT)


def test_enumerate_with_a_per_example_prior() -> None:
    g = _gen(6)
    lq, lp = torch.randn(B, 5, generator=g), torch.randn(B, 5, generator=g)
    q, p = Categorical(logits=lq), Categorical(logits=lp)
    x = torch.zeros(B, 2)

    def decoder(z: Tensor) -> Normal:
        return Normal(torch.nn.functional.one_hot(z, 5).float()[..., :2], 1.0)

    out = rdloss.RateDistortionLoss()(x, posterior=q, prior=p, decoder=decoder, samples="enumerate")
    ref = (lq.softmax(-1) * (lq.log_softmax(-1) - lp.log_softmax(-1))).sum(-1)
    assert_close(out.rate_per_example, ref)


def test_enumerate_with_groups_is_refused() -> None:
    q = Categorical(logits=torch.zeros(B, 5))
    with pytest.raises(ValueError, match="enumerate"):
        rdloss.RateDistortionLoss()(
            torch.zeros(B, 2),
            posterior={"c": q},
            prior={"c": q},
            decoder=lambda z: Normal(z["c"], 1.0),
            samples="enumerate",
        )


def test_z_with_decoder_is_refused_for_groups() -> None:
    with pytest.raises(ValueError, match="do not pass z"):
        rdloss.RateDistortionLoss()(
            torch.zeros(B, 2, dtype=torch.float64),
            posterior={"a": _q(B, 2)},
            z={"a": torch.zeros(B, 2)},
            decoder=lambda z: Normal(z["a"], 1.0),
        )
