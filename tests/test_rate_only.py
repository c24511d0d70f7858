"""The rate alone (no x, likelihood or decoder) and ragged sequences (a ``(B, T)`` step mask).

References are written here from the source of the code users port from, never through
rdloss, on identical float64 tensors:

* DreamerV3's world-model KL: danijar/dreamerv3 at e3f02248693a79dc8b0ebd62c93683888ddaccfe,
  ``dreamerv3/rssm.py`` (``RSSM.loss``: ``dyn = KL(sg(post) || prior)``,
  ``rep = KL(post || sg(prior))``, each ``jnp.maximum(., free_nats)``; ``RSSM._dist``:
  ``OneHot(logits, unimix)`` aggregated by a sum over the 32 latents),
  ``embodied/jax/outs.py`` (``Categorical.__init__``'s unimix: ``probs = (1 - unimix) *
  softmax(logits) + unimix / K``, ``logits = log(probs)``; ``Categorical.kl``:
  ``sum(softmax(l) * (log_softmax(l) - log_softmax(l_other)))``) and
  ``dreamerv3/agent.py`` (``loss = sum(v.mean() * scales[k])`` over ``(B, T)`` losses).
* Pyro's deep Markov model: pyro-ppl/pyro at ff6ae1c9572591791aae8842bcd702fcf0b46fd6,
  ``examples/dmm.py`` (``z_t`` sampled from ``Normal(loc, scale).mask(mask[:, t-1:t])
  .to_event(1)`` under ``poutine.scale(annealing_factor)`` in model and guide),
  ``pyro/distributions/torch_distribution.py`` (``_kl_masked_masked``: the KL of the base
  distributions through ``scale_and_mask``, i.e. ``torch.where(mask, kl, 0)``) and
  ``pyro/infer/trace_mean_field_elbo.py`` (the KL term ``scale_and_mask(kl, scale, mask)``
  summed over the plate).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.distributions import Independent, Normal, OneHotCategorical, kl_divergence
from torch.testing import assert_close

import rdloss
from rdloss import helpers, objectives

EXACT = {"rtol": 1e-10, "atol": 1e-12}
B, T, LATENTS, CLASSES = 3, 5, 32, 32


def _grads(value: Tensor, leaves: list[Tensor]) -> tuple[Tensor, ...]:
    return torch.autograd.grad(value, leaves, retain_graph=True)


def _rssm_logits() -> tuple[Tensor, Tensor]:
    """Raw posterior and prior logits over (B, T, 32, 32); the KL per step spans 0 .. > 1."""
    g = torch.Generator().manual_seed(0)
    post = torch.randn(B, T, LATENTS, CLASSES, generator=g, dtype=torch.float64)
    noise = torch.randn(B, T, LATENTS, CLASSES, generator=g, dtype=torch.float64)
    closeness = torch.linspace(0.0, 0.6, B * T, dtype=torch.float64).reshape(B, T, 1, 1)
    return post.requires_grad_(), (post.detach() + closeness * noise).requires_grad_()


# --- DreamerV3, written out from its source ------------------------------------------------


def _unimix_logits(logits: Tensor, unimix: float = 0.01) -> Tensor:
    # outs.Categorical.__init__: probs = (1 - unimix) * softmax + unimix * uniform; log.
    probs = logits.softmax(-1)
    probs = (1 - unimix) * probs + unimix * torch.ones_like(probs) / probs.shape[-1]
    return probs.log()


def _dreamer_kl(logits: Tensor, other: Tensor) -> Tensor:
    # outs.Categorical.kl, then Agg(out, 1, jnp.sum) over the 32 latents: (B, T).
    logprob, logother = logits.log_softmax(-1), other.log_softmax(-1)
    return (logits.softmax(-1) * (logprob - logother)).sum(-1).sum(-1)


def _dreamer_losses(post: Tensor, prior: Tensor, free_nats: float = 1.0) -> tuple[Tensor, Tensor]:
    # rssm.RSSM.loss: dyn = KL(sg(post) || prior), rep = KL(post || sg(prior)), each clamped.
    post_l, prior_l = _unimix_logits(post), _unimix_logits(prior)
    dyn = _dreamer_kl(post_l.detach(), prior_l)
    rep = _dreamer_kl(post_l, prior_l.detach())
    return dyn.clamp(min=free_nats), rep.clamp(min=free_nats)


def _onehot(logits: Tensor) -> Independent:
    probs = 0.99 * logits.softmax(-1) + 0.01 / logits.shape[-1]
    return Independent(OneHotCategorical(probs=probs), 1)


def _dreamer_rdloss(
    dyn_scale: float, rep_scale: float, steps: int = T
) -> rdloss.RateDistortionLoss:
    # agent.py averages over (B, T); rdloss sums steps, so beta carries 1 / T.
    return rdloss.RateDistortionLoss(
        objective=objectives.FreeBits(
            1.0, per="step", reduction="example", beta=(dyn_scale + rep_scale) / steps
        ),
        kl_balance=dyn_scale / (dyn_scale + rep_scale),
    )


@pytest.mark.parametrize(("dyn_scale", "rep_scale"), [(0.5, 0.1), (1.0, 0.1)])
def test_rate_alone_equals_dreamerv3_kl_loss(dyn_scale: float, rep_scale: float) -> None:
    post, prior = _rssm_logits()
    dyn, rep = _dreamer_losses(post, prior)
    kl = _dreamer_kl(_unimix_logits(post), _unimix_logits(prior))
    assert bool((kl < 1).any()) and bool((kl > 1).any())  # the clamp acts on some steps only
    ref = dyn.mean() * dyn_scale + rep.mean() * rep_scale  # agent.py's sum of scaled means

    out = _dreamer_rdloss(dyn_scale, rep_scale)(posterior=_onehot(post), prior=_onehot(prior))
    assert out.rate_per_step is not None
    assert_close(out.rate_per_step["z"], kl, **EXACT)  # per (b, t)
    assert_close(out.rate_per_example, kl.sum(1), **EXACT)
    assert_close(out.loss, ref, **EXACT)
    for got, want in zip(_grads(out.loss, [post, prior]), _grads(ref, [post, prior]), strict=True):
        assert_close(got, want, **EXACT)
    # Per (b, t): the balanced KL's gradient is dyn's and rep's, unclamped, in proportion.
    alpha = dyn_scale / (dyn_scale + rep_scale)
    post_l, prior_l = _unimix_logits(post), _unimix_logits(prior)
    raw = alpha * _dreamer_kl(post_l.detach(), prior_l) + (1 - alpha) * _dreamer_kl(
        post_l, prior_l.detach()
    )
    v = torch.randn(B, T, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = _grads((v * out.rate_per_step["z"]).sum(), [post, prior])
    for g, w in zip(got, _grads((v * raw).sum(), [post, prior]), strict=True):
        assert_close(g, w, **EXACT)
    # The distortion of the rate alone is 0 and the ELBO is the rate's share.
    assert_close(out.distortion_per_example, torch.zeros(B, dtype=torch.float64))
    assert_close(out.elbo, -out.rate)


def test_rate_alone_equals_the_full_loss_with_its_distortion_removed() -> None:
    post, prior = _rssm_logits()
    loss_fn = _dreamer_rdloss(0.5, 0.1)
    x = torch.zeros(B, 4, dtype=torch.float64)
    full = loss_fn(x, posterior=_onehot(post), prior=_onehot(prior), likelihood=Normal(x, 1.0))
    alone = loss_fn(posterior=_onehot(post), prior=_onehot(prior))
    assert_close(alone.loss, full.loss - full.distortion, **EXACT)
    assert_close(alone.rate_per_example, full.rate_per_example, **EXACT)
    assert alone.metrics()["distortion"] == 0.0


def test_rate_alone_advances_state_only_when_training_and_keeps_groups() -> None:
    loss_fn = rdloss.RateDistortionLoss(objective=objectives.Beta(0.5))
    q = {"a": helpers.normal(torch.randn(B, 2), logvar=torch.zeros(B, 2))}
    out = loss_fn(posterior=q)
    assert int(loss_fn.objective.step) == 1 and out.rate_per_group is not None
    loss_fn.eval()
    loss_fn(posterior=q)
    assert int(loss_fn.objective.step) == 1
    assert_close(out.loss, 0.5 * out.rate)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": torch.zeros(B, 2)}, "or neither and no x for the rate alone"),
        ({"likelihood": Normal(torch.zeros(B, 2), 1.0)}, "x is required with likelihood="),
        ({"decoder": lambda z: Normal(z, 1.0)}, "x is required with decoder="),
    ],
)
def test_rate_alone_refuses_half_a_distortion(kwargs: dict[str, object], message: str) -> None:
    q = helpers.normal(torch.zeros(B, 2), logvar=torch.zeros(B, 2))
    with pytest.raises(ValueError, match=message):
        rdloss.RateDistortionLoss()(posterior=q, **kwargs)


@pytest.mark.parametrize(
    "objective", [objectives.TargetDistortion(1.0), objectives.GECO(target_distortion=1.0)]
)
def test_rate_alone_refuses_objectives_of_the_distortion(objective: objectives.Objective) -> None:
    q = helpers.normal(torch.zeros(B, 2), logvar=torch.zeros(B, 2))
    with pytest.raises(ValueError, match=type(objective).__name__ + ", whose loss reads"):
        rdloss.RateDistortionLoss(objective=objective)(posterior=q)


# --- ragged sequences: the step mask -------------------------------------------------------


def _lengths_mask(lengths: list[int], steps: int = T) -> Tensor:
    return torch.tensor(lengths)[:, None] > torch.arange(steps)


@pytest.mark.parametrize(("dyn_scale", "rep_scale"), [(0.5, 0.1), (1.0, 0.1)])
def test_masked_rate_equals_the_written_out_masked_dreamerv3_kl(
    dyn_scale: float, rep_scale: float
) -> None:
    post, prior = _rssm_logits()
    mask = _lengths_mask([5, 2, 4])
    dyn, rep = _dreamer_losses(post, prior)
    kl = _dreamer_kl(_unimix_logits(post), _unimix_logits(prior))
    # Padded steps add nothing; the real steps keep agent.py's scales and 1 / T.
    zero = torch.zeros((), dtype=torch.float64)
    ref = (torch.where(mask, dyn_scale * dyn + rep_scale * rep, zero).sum(1) / T).mean()

    out = _dreamer_rdloss(dyn_scale, rep_scale)(
        posterior=_onehot(post), prior=_onehot(prior), mask=mask
    )
    assert out.rate_per_step is not None and out.mask is mask
    assert_close(out.rate_per_step["z"], torch.where(mask, kl, zero), **EXACT)
    assert_close(out.rate_per_example, torch.where(mask, kl, zero).sum(1), **EXACT)
    assert_close(out.loss, ref, **EXACT)
    for got, want in zip(_grads(out.loss, [post, prior]), _grads(ref, [post, prior]), strict=True):
        assert_close(got, want, **EXACT)
    # Nothing of a padded step reaches the gradient, whatever it holds.
    g_post = _grads(out.loss, [post])[0]
    assert bool((g_post[~mask] == 0).all()) and bool((g_post[mask] != 0).any())


def _dmm_tensors(d: int = 3) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(7)

    def leaf(scale: float = 1.0) -> Tensor:
        return (scale * torch.randn(B, T, d, generator=g, dtype=torch.float64)).requires_grad_()

    return {"q_loc": leaf(), "q_log": leaf(0.3), "p_loc": leaf(), "p_log": leaf(0.3)}


def _pyro_dmm_kl_term(t: dict[str, Tensor], mask: Tensor, annealing: float) -> Tensor:
    """The KL part of Pyro's DMM -ELBO (TraceMeanField_ELBO), written from its source."""
    total = torch.zeros((), dtype=torch.float64)
    for step in range(T):  # for t in pyro.markov(range(1, T_max + 1))
        q = Normal(t["q_loc"][:, step], t["q_log"][:, step].exp())
        p = Normal(t["p_loc"][:, step], t["p_log"][:, step].exp())
        kl = kl_divergence(q, p)  # (B, D), the base distributions
        # .mask(mask[:, t-1:t]) broadcasts over D; scale_and_mask: where(mask, kl * scale, 0)
        kl = torch.where(mask[:, step : step + 1], kl * annealing, kl.new_zeros(()))
        total = total + kl.sum(-1).sum()  # .to_event(1), then summed over the plate
    return total


def test_masked_rate_equals_pyro_dmm_masked_kl_term() -> None:
    t = _dmm_tensors()
    mask = _lengths_mask([3, 5, 1])
    annealing = 0.3
    ref = _pyro_dmm_kl_term(t, mask, annealing)
    q = Independent(Normal(t["q_loc"], t["q_log"].exp()), 1)
    p = Independent(Normal(t["p_loc"], t["p_log"].exp()), 1)
    out = rdloss.RateDistortionLoss(objective=objectives.Beta(annealing))(
        posterior=q, prior=p, mask=mask
    )
    # Pyro sums over the minibatch plate; rdloss takes the batch mean.
    assert_close(B * out.loss, ref, **EXACT)
    leaves = list(t.values())
    for got, want in zip(_grads(B * out.loss, leaves), _grads(ref, leaves), strict=True):
        assert_close(got, want, **EXACT)


def test_mask_reaches_every_level_and_leaves_groups_without_steps() -> None:
    t = _dmm_tensors()
    mask = _lengths_mask([3, 5, 1])
    q = {
        "z": Independent(Normal(t["q_loc"], t["q_log"].exp()), 1),
        "g": helpers.normal(t["q_loc"][:, 0].detach(), logvar=torch.zeros(B, 3)),
    }
    out = rdloss.RateDistortionLoss()(posterior=q, mask=mask)
    plain = rdloss.RateDistortionLoss()(posterior=q)
    assert out.rate_per_group is not None and plain.rate_per_group is not None
    assert out.rate_per_group_dimension is not None and out.rate_per_dimension is not None
    assert_close(out.rate_per_group["g"], plain.rate_per_group["g"], **EXACT)
    dims = out.rate_per_group_dimension["z"]
    assert dims is not None
    by_step = dims.reshape(B, T, 3)
    assert bool((by_step[~mask] == 0).all())
    assert_close(by_step.sum(-1), out.rate_per_step["z"] if out.rate_per_step else None)
    assert_close(out.rate_per_dimension.sum(1), out.rate_per_example, **EXACT)
    assert_close(out.rate_per_group["z"] + out.rate_per_group["g"], out.rate_per_example)


def test_free_bits_per_dimension_skips_padded_steps() -> None:
    t = _dmm_tensors()
    mask = _lengths_mask([3, 5, 1])
    q = Independent(Normal(t["q_loc"], t["q_log"].exp()), 1)
    loss_fn = rdloss.RateDistortionLoss(
        objective=objectives.FreeBits(0.4, per="dimension", reduction="example")
    )
    out = loss_fn(posterior=q, mask=mask)
    # Written out: N(0, I) KL per dimension, clamped at 0.4, real steps only.
    sigma = t["q_log"].exp()
    kl = 0.5 * (t["q_loc"] ** 2 + sigma**2 - 1) - t["q_log"]
    zero = torch.zeros((), dtype=torch.float64)
    ref = torch.where(mask[..., None], kl.clamp(min=0.4), zero).sum((1, 2)).mean()
    assert_close(out.loss, ref, **EXACT)
    with pytest.raises(ValueError, match="reduction='example'"):
        rdloss.RateDistortionLoss(objective=objectives.FreeBits(0.4, per="step"))(
            posterior=q, mask=mask
        )


@pytest.mark.parametrize(
    ("mask", "error", "message"),
    [
        (torch.ones(B, T), TypeError, "dtype torch.bool"),
        ([[True] * T] * B, TypeError, "must be a torch.Tensor"),
        (torch.ones(B, T + 1, dtype=torch.bool), ValueError, r"shape \(B, T\) = \(3, 5\)"),
        (torch.ones(T, B, dtype=torch.bool), ValueError, r"got \(5, 3\)"),
    ],
)
def test_mask_refused_clearly(mask: object, error: type[Exception], message: str) -> None:
    q = Independent(Normal(torch.zeros(B, T, 2), 1.0), 1)
    with pytest.raises(error, match=message):
        rdloss.RateDistortionLoss()(posterior=q, mask=mask)


def test_mask_without_steps_refused() -> None:
    q = helpers.normal(torch.zeros(B, 2), logvar=torch.zeros(B, 2))
    with pytest.raises(ValueError, match="no latent has a step axis"):
        rdloss.RateDistortionLoss()(posterior=q, mask=torch.ones(B, 2, dtype=torch.bool))


# --- cost: no host synchronisation added ---------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_rate_alone_and_mask_add_no_host_sync(masked: bool) -> None:
    from benchmarks._counting import count

    nv = {"validate_args": False}
    post = Independent(Normal(torch.randn(B, T, 4), torch.ones(B, T, 4), **nv), 1, **nv)
    prior = Independent(Normal(torch.zeros(B, T, 4), torch.ones(B, T, 4), **nv), 1, **nv)
    mask = _lengths_mask([5, 2, 4]) if masked else None
    objective = objectives.FreeBits(1.0, per="step", reduction="example")
    off = rdloss.RateDistortionLoss(objective=objective, kl_balance=0.8, validate_args=False)
    on = rdloss.RateDistortionLoss(objective=objective, kl_balance=0.8)
    for loss_fn, most in ((off, 0), (on, 1)):
        loss_fn(posterior=post, prior=prior, mask=mask)  # warm torch's KL memo
        n = count(lambda f=loss_fn: f(posterior=post, prior=prior, mask=mask)).n_syncs
        assert n <= most


# --- the mask with a likelihood: the distortion leaves padded steps out too ----------------


def test_mask_leaves_padded_steps_out_of_the_likelihoods_distortion() -> None:
    t = _dmm_tensors()
    mask = _lengths_mask([3, 5, 1])
    g = torch.Generator().manual_seed(11)
    x = (torch.rand(B, T, 4, generator=g) < 0.5).double()
    logits = torch.randn(B, T, 4, generator=g, dtype=torch.float64).requires_grad_()
    q = Independent(Normal(t["q_loc"], t["q_log"].exp()), 1)
    p = Independent(Normal(t["p_loc"], t["p_log"].exp()), 1)
    out = rdloss.RateDistortionLoss()(
        x,
        posterior=q,
        prior=p,
        likelihood=helpers.bernoulli(logits=logits, event_dims=1),  # batch (B, T)
        mask=mask,
    )
    # Pyro's DMM masks the emission the same way: Bernoulli(...).mask(mask[:, t-1:t]).
    nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    zero = torch.zeros((), dtype=torch.float64)
    ref_d = torch.where(mask, nll.sum(-1), zero).sum(1)
    assert_close(out.distortion_per_example, ref_d, **EXACT)
    ref = B * out.loss
    want = _pyro_dmm_kl_term(t, mask, 1.0) + ref_d.sum()
    assert_close(ref, want, **EXACT)
    leaves = [logits, *t.values()]
    for a, b in zip(_grads(ref, leaves), _grads(want, leaves), strict=True):
        assert_close(a, b, **EXACT)


def test_mask_needs_the_step_axis_in_the_likelihood_and_refuses_a_decoder() -> None:
    q = Independent(Normal(torch.zeros(B, T, 2), 1.0), 1)
    x = torch.zeros(B, T, 4)
    mask = _lengths_mask([3, 5, 1])
    swallowed = Independent(Normal(torch.zeros(B, T, 4), 1.0), 2)  # event (T, 4)
    with pytest.raises(ValueError, match="must keep the step axis"):
        rdloss.RateDistortionLoss()(x, posterior=q, likelihood=swallowed, mask=mask)
    with pytest.raises(ValueError, match="mask= with decoder= is not supported"):
        rdloss.RateDistortionLoss()(x, posterior=q, decoder=lambda z: Normal(z, 1.0), mask=mask)


def test_rate_alone_with_mask_compiles_once_fullgraph() -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    post_logits, prior_logits = (t.detach() for t in _rssm_logits())
    mask = _lengths_mask([5, 2, 4])
    loss_fn = _dreamer_rdloss(1.0, 0.1)

    def step(post: Tensor, prior: Tensor, m: Tensor) -> Tensor:
        return loss_fn(posterior=_onehot(post), prior=_onehot(prior), mask=m).loss

    eager = step(post_logits, prior_logits, mask)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for _ in range(2):
        assert_close(compiled(post_logits, prior_logits, mask), eager, **EXACT)
    assert counter.frame_count == 1
