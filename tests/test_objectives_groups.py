"""Per-group weights and the coefficients objectives report (issue 22).

* scvi-tools warms up the KL of ``z`` only and keeps the library-size latent ``l`` at
  weight 1: ``Beta({"z": Linear(0.0, 1.0, steps=T), "l": 1.0})`` equals its loss, written out
  here from its source, in values and gradients at every step of the warm-up;
* groups not named weigh 1.0, names the call does not have are refused (naming the call's
  groups), and every misuse names the argument;
* ``FreeBits(beta={...})`` weights each unit by its group's β at every level;
* state: in-place assignment, ``state_dict`` round trip, refused checkpoints of another
  configuration, casts that never narrow;
* ``out.hyper``: ``beta/<group>``, and NVAE's balancing coefficients ``balance/<group>``
  equal to the ``kl_coeffs`` its ``kl_balancer`` reports.
"""

from __future__ import annotations

import math

import pytest
import torch
from _builders import EXACT, F64, B, _gaussian_kl, _nll, _x
from test_objective_structured import WEIGHTS, _model, _ref_terms, _wmean
from test_structured import _nvae_kl_balancer
from torch import Tensor
from torch.distributions import Normal, Poisson
from torch.testing import assert_close

import rdloss
from rdloss import helpers
from rdloss.objectives import Beta, FreeBits, Objective, TargetRate
from rdloss.schedules import Linear

# --- scvi-tools: VAE.loss with a warm-up of z only ------------------------------------------
#
# scverse/scvi-tools at 93dc4fae21917406673206320c8a3002433c4a5d:
# src/scvi/module/_vae.py, VAE.loss:
#   kl_divergence_z = kl_divergence(qz, pz).sum(dim=-1)   (pz = Normal(0, 1))
#   kl_divergence_l = kl_divergence(ql, pl).sum(dim=1)    (pl = Normal(library means,
#                                                            library vars.sqrt()))
#   reconst_loss = -px.log_prob(x).sum(-1)
#   loss = mean(reconst_loss + kl_weight * kl_divergence_z + kl_divergence_l)
# src/scvi/train/_trainingplans.py, _compute_kl_weight with n_steps_kl_warmup:
#   slope * (step / n_steps_kl_warmup) + min_kl_weight while step < n_steps_kl_warmup,
#   else max_kl_weight; the step is the trainer's global step (0 at the first batch).

N_GENES, N_LATENT, WARMUP = 7, 3, 4


def _scvi_kl_weight(step: int, n_steps: int, max_kl: float, min_kl: float) -> float:
    slope = max_kl - min_kl
    if step < n_steps:
        return slope * (step / n_steps) + min_kl
    return max_kl


def _scvi_leaves() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(22)

    def leaf(*shape: int, positive: bool = False) -> Tensor:
        t = torch.randn(*shape, generator=g, dtype=F64)
        t = t.exp() * 0.5 + 0.1 if positive else t
        return t.requires_grad_()

    return {
        "qz_m": leaf(B, N_LATENT),
        "qz_v": leaf(B, N_LATENT, positive=True),
        "ql_m": leaf(B, 1),
        "ql_v": leaf(B, 1, positive=True),
        "library_log_means": leaf(B, 1),  # per cell's batch, as scvi indexes them
        "library_log_vars": leaf(B, 1, positive=True),
        "px_rate": leaf(B, N_GENES, positive=True),
    }


def _counts() -> Tensor:
    return torch.poisson(torch.full((B, N_GENES), 3.0, dtype=F64), torch.Generator().manual_seed(5))


def _scvi_loss(v: dict[str, Tensor], x: Tensor, kl_weight: float) -> Tensor:
    """VAE.loss written out: analytic Gaussian KLs and the Poisson log-likelihood."""
    kl_z = _gaussian_kl(
        v["qz_m"], v["qz_v"].sqrt(), torch.zeros_like(v["qz_m"]), torch.ones_like(v["qz_m"])
    ).sum(-1)
    kl_l = _gaussian_kl(
        v["ql_m"], v["ql_v"].sqrt(), v["library_log_means"], v["library_log_vars"].sqrt()
    ).sum(1)
    log_px = x * v["px_rate"].log() - v["px_rate"] - torch.lgamma(x + 1.0)
    reconst_loss = -log_px.sum(-1)
    return torch.mean(reconst_loss + kl_weight * kl_z + kl_l)


def _rdloss_call(loss_fn: rdloss.RateDistortionLoss, v: dict[str, Tensor], x: Tensor):  # type: ignore[no-untyped-def]
    posterior = {"z": Normal(v["qz_m"], v["qz_v"].sqrt()), "l": Normal(v["ql_m"], v["ql_v"].sqrt())}
    prior = {"l": Normal(v["library_log_means"], v["library_log_vars"].sqrt())}
    return loss_fn(x, posterior=posterior, prior=prior, likelihood=Poisson(v["px_rate"]))


@pytest.mark.parametrize(("min_kl", "max_kl"), [(0.0, 1.0), (0.2, 1.0)])
def test_per_group_warm_up_equals_scvi_tools_vae_loss(min_kl: float, max_kl: float) -> None:
    leaves, x = _scvi_leaves(), _counts()
    objective = Beta({"z": Linear(min_kl, max_kl, steps=WARMUP), "l": 1.0})
    loss_fn = rdloss.RateDistortionLoss(objective=objective)
    for step in range(WARMUP + 2):  # through the warm-up and past its end
        kl_weight = _scvi_kl_weight(step, WARMUP, max_kl, min_kl)
        out = _rdloss_call(loss_fn, leaves, x)  # training: advances the step
        ref = _scvi_loss(leaves, x, kl_weight)
        assert_close(out.loss, ref, **EXACT)
        assert_close(out.hyper["beta/z"], torch.tensor(kl_weight, dtype=F64), **EXACT)
        assert_close(out.hyper["beta/l"], torch.tensor(1.0, dtype=F64), **EXACT)
        got = torch.autograd.grad(out.loss, list(leaves.values()))
        want = torch.autograd.grad(ref, list(leaves.values()))
        for name, a, b in zip(leaves, got, want, strict=True):
            assert_close(a, b, **EXACT, msg=lambda m, name=name: f"{name}: {m}")  # type: ignore[misc]
    assert int(objective.step) == WARMUP + 2


def test_a_single_beta_warm_up_is_not_scvi_tools_loss() -> None:
    # Why per-group weights: Beta's warm-up also weights l's KL, which scvi-tools keeps at 1.
    leaves, x = _scvi_leaves(), _counts()
    out = _rdloss_call(
        rdloss.RateDistortionLoss(objective=Beta(Linear(0.0, 1.0, steps=4))), leaves, x
    )
    kl_l = _gaussian_kl(
        leaves["ql_m"], leaves["ql_v"].sqrt(),
        leaves["library_log_means"], leaves["library_log_vars"].sqrt(),
    ).sum(1)  # fmt: skip
    ref = _scvi_loss(leaves, x, 0.0)
    assert_close(out.loss, ref - kl_l.mean(), **EXACT)
    # docs/objectives.md quotes it: l's KL is 5.5% of scvi's loss here at kl_weight = 0.
    assert float((kl_l.mean() / ref).detach()) == pytest.approx(0.0547, abs=5e-4)


def test_per_group_warm_up_resumes_mid_warm_up_from_a_checkpoint() -> None:
    leaves, x = _scvi_leaves(), _counts()

    def build() -> rdloss.RateDistortionLoss:
        return rdloss.RateDistortionLoss(objective=Beta({"z": Linear(0.0, 1.0, steps=WARMUP)}))

    first = build()
    for _ in range(2):
        _rdloss_call(first, leaves, x)
    resumed = build()
    resumed.load_state_dict(first.state_dict())
    for step in (2, 3):
        out = _rdloss_call(resumed, leaves, x)
        assert_close(out.loss, _scvi_loss(leaves, x, step / WARMUP), **EXACT)


# --- the mapping: defaults, refusals -----------------------------------------------------


def _grouped() -> tuple[dict[str, Normal], Tensor, Normal]:
    post, _, _ = _model()
    x, lik = _x()
    return post, x, lik  # type: ignore[return-value]


def test_groups_not_named_weigh_one() -> None:
    post, x, lik = _grouped()
    some = rdloss.RateDistortionLoss(objective=Beta({"s1": 0.3}))
    every = rdloss.RateDistortionLoss(objective=Beta({"s1": 0.3, "s2": 1.0, "g": 1.0}))
    a = some(x, posterior=post, likelihood=lik)
    b = every(x, posterior=post, likelihood=lik)
    assert_close(a.loss, b.loss, rtol=0.0, atol=0.0)
    assert list(a.hyper) == ["beta/s1", "beta/s2", "beta/g"]  # the call's group order
    kl = _ref_terms(post, {})
    rates = {k: kl[k].flatten(1).sum(1) for k in post}
    expected = _nll(x).mean() + (0.3 * rates["s1"] + rates["s2"] + rates["g"]).mean()
    assert_close(a.loss, expected, **EXACT)


def test_a_group_the_call_does_not_have_is_refused_naming_the_calls_groups() -> None:
    post, x, lik = _grouped()
    loss_fn = rdloss.RateDistortionLoss(objective=Beta({"s1": 0.3, "S2": 0.5}))
    with pytest.raises(
        ValueError, match=r"names groups \['S2'\].*call's groups are \['s1', 's2', 'g'\]"
    ):
        loss_fn(x, posterior=post, likelihood=lik)
    assert int(loss_fn.objective.step) == 0


def test_per_group_beta_on_an_ungrouped_call_is_refused() -> None:
    post, x, lik = _grouped()
    loss_fn = rdloss.RateDistortionLoss(objective=Beta({"z": 0.3}))
    with pytest.raises(ValueError, match="one ungrouped latent"):
        loss_fn(x, posterior=post["g"], likelihood=lik)
    with pytest.raises(ValueError, match="one ungrouped latent"):
        Beta({"z": 0.3})(torch.ones(2), torch.ones(2))


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Beta({}), ValueError, "at least one group"),
        (lambda: Beta({1: 0.5}), TypeError, "group names"),
        (lambda: Beta({"z": -0.5}), ValueError, r"beta\['z'\] must be >= 0, got -0.5"),
        (lambda: Beta({"z": "1"}), TypeError, r"beta\['z'\] must be a real number"),
        (lambda: Beta({"z": Linear(-1.0, 1.0, steps=3)}), ValueError, r"beta\['z'\] must be >= 0"),
        (lambda: Beta({"z": 0.5}, group_balance=True), ValueError, "group_balance"),
        (lambda: TargetRate({"z": 1.0}), TypeError, "TargetRate.sigma takes one number"),
        (lambda: FreeBits(0.1, per="total", beta={"z": 1.0}), ValueError, "per='total'"),
        (lambda: FreeBits({"z": 0.1}, per="group"), TypeError, "FreeBits.lam takes one number"),
    ],
)
def test_misuse_names_the_argument(build, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        build()


def test_compute_on_the_total_rate_refuses_a_per_group_beta() -> None:
    with pytest.raises(ValueError, match=r"given per group \['z'\]"):
        Beta({"z": 0.5}).compute(torch.ones(2), torch.ones(2))


# --- FreeBits with β per group -----------------------------------------------------------


@pytest.mark.parametrize("weight", WEIGHTS, ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", ["batch", "example"])
@pytest.mark.parametrize("per", ["dimension", "group", "step"])
def test_free_bits_weights_each_unit_by_its_groups_beta(
    per: str, reduction: str, weight: Tensor | None
) -> None:
    post, prior, leaves = _model()
    if per == "step":
        del post["g"]  # every group needs steps
    lam, betas = 0.7, {"s1": 0.25, "s2": 2.0, "g": 0.5}
    given = {k: betas[k] for k in post if k != "s2"} | {"s2": Linear(2.0, 0.0, steps=10)}
    objective = FreeBits(lam, per=per, reduction=reduction, beta=given)  # type: ignore[arg-type]
    x, lik = _x()
    out = rdloss.RateDistortionLoss(objective=objective)(
        x, posterior=post, prior=prior, likelihood=lik, weight=weight
    )
    kl = _ref_terms(post, prior)
    if per == "dimension":
        parts = [kl[k].flatten(1) for k in post]
    elif per == "group":
        parts = [kl[k].flatten(1).sum(1, keepdim=True) for k in post]
    else:
        parts = [kl[k].sum(-1) for k in post]
    units = torch.cat(parts, 1)
    unit_beta = torch.cat(
        [torch.full((p.shape[1],), betas[k], dtype=F64) for k, p in zip(post, parts, strict=True)]
    )
    if reduction == "batch":
        each = torch.clamp(_wmean(units, weight), min=lam)
    else:
        each = _wmean(torch.clamp(units, min=lam), weight)
    expected = _wmean(_nll(x), weight) + (unit_beta * each).sum()
    assert_close(out.loss, expected, **EXACT)
    assert_close(out.hyper["clamped_rate"], each.sum(), **EXACT)
    assert {k: float(v) for k, v in out.hyper.items() if k.startswith("beta/")} == {
        f"beta/{k}": betas[k] for k in post
    }
    got = torch.autograd.grad(out.loss, leaves, allow_unused=True)
    want = torch.autograd.grad(expected, leaves, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        if b is not None:
            assert_close(a, b, **EXACT)


# --- state: assignment, checkpoints, casts -----------------------------------------------


def test_assigning_the_same_groups_writes_in_place() -> None:
    objective = Beta({"a": 0.5, "b": Linear(0.0, 1.0, steps=2)})
    buffer = objective.beta.get_buffer("0")
    objective.beta = {"a": 0.25, "b": Linear(0.0, 1.0, steps=2)}
    assert objective.beta.get_buffer("0") is buffer and float(buffer) == 0.25
    with pytest.raises(ValueError, match=r"beta\['a'\] must be >= 0"):
        objective.beta = {"a": -1.0, "b": 0.5}  # checked before anything is written
    assert float(buffer) == 0.25 and isinstance(objective.beta.get_submodule("1"), Linear)
    objective.beta = {"c": 0.5}  # other groups: a new mapping
    assert objective.beta.groups == ("c",)
    objective.beta = 0.75  # back to one number: a buffer again, the submodule gone
    assert float(objective.beta) == 0.75 and not list(objective.children())
    assert Beta(0.75).state_dict().keys() == objective.state_dict().keys()


def test_the_order_of_the_mapping_does_not_change_the_checkpoint() -> None:
    a = Beta({"z": Linear(0.0, 1.0, steps=3), "l": 1.0}).state_dict()
    b = Beta({"l": 1.0, "z": Linear(0.0, 1.0, steps=3)}).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_scalar_checkpoint_is_unchanged_by_the_feature() -> None:
    extra = Beta(0.5).state_dict()["_extra_state"]
    assert bytes(extra.tolist()) == b'{"alpha": null, "group_balance": false}'


@pytest.mark.parametrize(
    ("saved", "loaded", "match"),
    [
        (
            lambda: Beta(0.5),
            lambda: Beta({"z": 0.5}),
            r"beta_groups=None but this one has beta_groups=\['z'\]",
        ),
        (
            lambda: Beta({"z": 0.5}),
            lambda: Beta(0.5),
            r"beta_groups=\['z'\] but this one has beta_groups=None",
        ),
        (lambda: Beta({"z": 0.5, "l": 1.0}), lambda: Beta({"z": 0.5}), "beta_groups"),
        (
            lambda: FreeBits(beta={"z": 0.5}, per="group"),
            lambda: FreeBits(per="group"),
            "beta_groups",
        ),
    ],
)
def test_a_checkpoint_with_other_groups_is_refused(saved, loaded, match) -> None:  # type: ignore[no-untyped-def]
    objective: Objective = loaded()
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        objective.load_state_dict(saved().state_dict())
    after = objective.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_loaded_negative_group_value_is_refused() -> None:
    state = Beta({"z": 0.5}).state_dict()
    state["beta.0"] = torch.tensor([-1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"beta\['z'\].*>= 0"):
        Beta({"z": 0.5}).load_state_dict(state)


@pytest.mark.parametrize("cast", ["half", "bfloat16", "double", "float"])
def test_casts_never_narrow_group_values(cast: str) -> None:
    objective = Beta({"z": 0.1, "l": Linear(0.0, 1.0, steps=3)})
    getattr(objective, cast)()
    assert objective.beta.get_buffer("1").dtype == F64  # sorted: "l" is 0, "z" is 1
    assert float(objective.beta.get_buffer("1")) == 0.1  # 0.1 is not a bfloat16 number


# --- what users log: out.hyper -------------------------------------------------------------


def _nvae_kl_balancer_coeffs(kl_all: list[Tensor], kl_coeff: float, alpha_i: Tensor) -> Tensor:
    """The ``kl_coeffs`` NVAE's ``kl_balancer`` returns "for reporting".

    NVlabs/NVAE at 9fc1a288fb831c87d93a4e2663bc30ccf9225b29, utils.py, kl_balancer with
    kl_balance=True: while kl_coeff < 1, kl_coeff_i = mean(|kl_all|, dim=0) + 0.01 (its
    kl_per_group), kl_coeff_i = kl_coeff_i / alpha_i * sum(kl_coeff_i), kl_coeff_i =
    kl_coeff_i / mean(kl_coeff_i); kl_coeffs = kl_coeff_i.squeeze(0); else ones. train.py
    logs each as 'kl_coeff/layer_%d'.
    """
    if kl_coeff >= 1.0:
        return torch.ones(len(kl_all), dtype=F64)
    coeff = torch.stack(kl_all, 1).abs().mean(0, keepdim=True) + 0.01
    coeff = coeff / alpha_i.unsqueeze(0) * torch.sum(coeff)
    return (coeff / torch.mean(coeff, dim=1, keepdim=True)).squeeze(0)


@pytest.mark.parametrize("kl_coeff", [0.3, 1.0])
def test_hyper_reports_nvaes_balancing_coefficients(kl_coeff: float) -> None:
    post, prior, _ = _model()
    x, lik = _x()
    alpha = {"s1": 1.0, "s2": 4.0, "g": 2.0}
    loss_fn = rdloss.RateDistortionLoss(objective=Beta(kl_coeff, group_balance=True, alpha=alpha))
    out = loss_fn(x, posterior=post, prior=prior, likelihood=lik)
    kl = _ref_terms(post, prior)
    kl_all = [kl[k].flatten(1).sum(1) for k in post]
    alpha_i = torch.tensor([alpha[k] for k in post], dtype=F64)
    coeffs = _nvae_kl_balancer_coeffs(kl_all, kl_coeff, alpha_i)
    # The coefficients are the ones the loss applied: NVAE's balanced KL from them is the
    # existing reference's (tests/test_structured.py).
    balanced = kl_coeff * (torch.stack(kl_all, 1) * coeffs).sum(1)
    assert_close(balanced, _nvae_kl_balancer(kl_all, kl_coeff, alpha_i), **EXACT)
    assert_close(out.loss, (_nll(x) + balanced).mean(), **EXACT)
    for i, k in enumerate(post):
        assert_close(out.hyper[f"balance/{k}"], coeffs[i], **EXACT)
        assert not out.hyper[f"balance/{k}"].requires_grad
    metrics = out.metrics()
    assert metrics["beta"] == pytest.approx(kl_coeff)  # metrics are float32
    assert [k for k in metrics if k.startswith("balance/")] == [
        "balance/s1",
        "balance/s2",
        "balance/g",
    ]
    assert metrics["balance/s2"] == pytest.approx(float(coeffs[1].detach()), rel=1e-6)


def test_hyper_reports_each_groups_beta_in_metrics() -> None:
    post, x, lik = _grouped()
    objective = Beta({"s1": Linear(0.0, 1.0, steps=4), "g": 0.5})
    loss_fn = rdloss.RateDistortionLoss(objective=objective)
    loss_fn(x, posterior=post, likelihood=lik)
    metrics = loss_fn(x, posterior=post, likelihood=lik).metrics(prefix="train/")
    assert {k: v for k, v in metrics.items() if "beta" in k} == {
        "train/beta/s1": 0.25,
        "train/beta/s2": 1.0,
        "train/beta/g": 0.5,
    }
    assert math.isfinite(metrics["train/loss"])


def test_per_group_weights_of_one_example_with_helpers() -> None:
    # The documented one-liner, through helpers: z warmed up, l at 1 by default.
    loss_fn = rdloss.RateDistortionLoss(objective=Beta({"z": Linear(0.0, 1.0, steps=10)}))
    q = {
        "z": helpers.normal(torch.zeros(2, 3), logvar=torch.zeros(2, 3)),
        "l": helpers.normal(torch.ones(2, 1), logvar=torch.zeros(2, 1)),
    }
    lik = Normal(torch.zeros(2, 4), torch.ones(2, 4))
    out = loss_fn(torch.zeros(2, 4), posterior=q, likelihood=lik)
    assert float(out.hyper["beta/z"]) == 0.0 and float(out.hyper["beta/l"]) == 1.0
    # l's KL against N(0, 1) with mean 1: 0.5 nats, the whole weighted rate at step 0.
    assert_close(out.loss - out.distortion, torch.tensor(0.5))


# --- cost: the per-group path adds no host synchronisation ---------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: Beta({"s1": Linear(0.0, 1.0, steps=4), "g": 0.5}),
        lambda: FreeBits(0.2, per="group", beta={"s2": Linear(0.0, 1.0, steps=4)}),
        lambda: Beta(0.5, group_balance=True),
    ],
    ids=["Beta", "FreeBits", "Beta-group_balance"],
)
def test_per_group_coefficients_cost_no_host_synchronisation(build) -> None:  # type: ignore[no-untyped-def]
    from benchmarks._counting import count

    post, x, _ = _grouped()  # _model's posteriors skip torch's checks; so does lik here
    lik = Normal(torch.zeros_like(x), torch.ones_like(x), validate_args=False)
    loss_fn = rdloss.RateDistortionLoss(objective=build(), validate_args=False)
    loss_fn(x, posterior=post, likelihood=lik)  # warm torch's KL memo
    assert count(lambda: loss_fn(x, posterior=post, likelihood=lik)).n_syncs == 0
