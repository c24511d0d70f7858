"""A DreamerV3-style sequence model: categorical latents per step, free bits, KL balancing.

The world model of DreamerV3 (Hafner et al., 2023) has, at every step ``t``, a posterior
``q(z_t | h_t, x_t)`` and a prior ``p(z_t | h_t)`` from a recurrent state ``h_t``; both are
32 categorical latents of 32 classes mixed with 1% uniform ("unimix"). Its KL loss is, per
example and step (danijar/dreamerv3, ``dreamerv3/rssm.py``, ``RSSM.loss``)::

    dyn = max(1, KL(sg(post) || prior))      # trains the prior
    rep = max(1, KL(post || sg(prior)))      # trains the posterior
    loss = mean over (B, T) of dyn_scale * dyn + rep_scale * rep

with the KL summed over the 32 latents before the clamp, and scales 0.5 / 0.1 in the first
release, 1.0 / 0.1 in the current code. In rdloss the same loss is::

    loss_fn = rdloss.RateDistortionLoss(
        objective=FreeBits(1.0, per="step", reduction="example", beta=dyn + rep),
        kl_balance=dyn / (dyn + rep),
    )
    out = loss_fn(x, posterior=post, prior=prior, likelihood=likelihood)

A posterior of ``batch_shape (B, T)`` over ``(32, 32)`` one-hot events has a step axis:
``out.rate_per_step["z"]`` is the unclamped ``(B, T)`` KL. rdloss sums the rate (and the
distortion) over steps and averages over the batch; DreamerV3 averages over both, so
rdloss's loss is ``T`` times DreamerV3's. The script first checks that identity in float64
on identical tensors, values and gradients to the posterior's and the prior's logits, for
both scale settings, then trains a small model on sequences of the 8x8 digits.
Run: ``python examples/dreamer_sequence.py`` (``--quick`` for a reduced run).
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.distributions import Independent, OneHotCategoricalStraightThrough

import rdloss
from rdloss import helpers
from rdloss.demo.data import load_digits
from rdloss.objectives import FreeBits

SCALES = {"first": (0.5, 0.1), "current": (1.0, 0.1)}
"""DreamerV3's (dyn_scale, rep_scale): the first release, and the code since 2024-04."""


class Check(NamedTuple):
    name: str
    max_abs: float
    max_rel: float


def compare(name: str, got: Tensor, want: Tensor, rtol: float = 1e-10) -> Check:
    """Print and assert the largest absolute and relative differences."""
    got, want = got.detach(), want.detach()
    max_abs = float((got - want).abs().max())
    max_rel = max_abs / max(float(want.abs().max()), 1e-300)
    print(f"check {name}: max abs diff {max_abs:.3e}, max rel diff {max_rel:.3e}")
    if max_rel > rtol:
        raise AssertionError(f"{name}: relative difference {max_rel:.3e} > {rtol:.0e}")
    return Check(name, max_abs, max_rel)


def unimix(logits: Tensor, mix: float = 0.01) -> Tensor:
    """DreamerV3's class probabilities: ``(1 - mix) * softmax + mix / K``."""
    return (1.0 - mix) * logits.softmax(-1) + mix / logits.shape[-1]


def latent(logits: Tensor) -> Independent:
    """``(B, T, L, K)`` logits -> L one-hot latents per step: batch (B, T), event (L, K)."""
    return Independent(OneHotCategoricalStraightThrough(probs=unimix(logits)), 1)


def dreamer_kl_loss(post_logits: Tensor, prior_logits: Tensor, dyn: float, rep: float) -> Tensor:
    """DreamerV3's world-model KL loss, written from ``rssm.py`` (not with rdloss).

    ``KL(p || q) = sum_k p_k (log p_k - log q_k)``, summed over the L latents of a step,
    clamped at 1 nat, weighted, then averaged over (B, T).
    """

    def kl(p: Tensor, q: Tensor) -> Tensor:
        return (p * (p.log() - q.log())).sum((-2, -1))

    post, prior = unimix(post_logits), unimix(prior_logits)
    dyn_loss = kl(post.detach(), prior).clamp_min(1.0)
    rep_loss = kl(post, prior.detach()).clamp_min(1.0)
    return (dyn * dyn_loss + rep * rep_loss).mean()


def rdloss_fn(dyn: float, rep: float) -> rdloss.RateDistortionLoss:
    """DreamerV3's KL loss as an rdloss loss (the lines a DreamerV3 user writes)."""
    return rdloss.RateDistortionLoss(
        objective=FreeBits(1.0, per="step", reduction="example", beta=dyn + rep),
        kl_balance=dyn / (dyn + rep),
    )


def check_against_dreamer(
    *, batch: int, steps: int, latents: int, classes: int, seed: int
) -> list[Check]:
    """rdloss's loss = T x DreamerV3's KL loss, values and gradients, in float64."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, steps, latents, classes)
    # Logit scales growing along the steps: early steps below the 1-nat floor, late above.
    spread = torch.linspace(0.05, 1.5, steps, dtype=torch.float64).view(1, steps, 1, 1)
    post_logits = (torch.randn(shape, generator=gen, dtype=torch.float64) * spread).requires_grad_()
    prior_logits = (
        torch.randn(shape, generator=gen, dtype=torch.float64) * spread
    ).requires_grad_()
    x = torch.randn(batch, steps, 3, generator=gen, dtype=torch.float64)
    # A likelihood that does not depend on the logits: loss - distortion is the KL part.
    likelihood = helpers.normal(torch.zeros_like(x), scale=1.0)
    checks = []
    for version, (dyn, rep) in SCALES.items():
        out = rdloss_fn(dyn, rep)(
            x, posterior=latent(post_logits), prior=latent(prior_logits), likelihood=likelihood
        )
        ours = out.loss - out.distortion
        want = steps * dreamer_kl_loss(post_logits, prior_logits, dyn, rep)
        grads = torch.autograd.grad(ours, (post_logits, prior_logits))
        ref_grads = torch.autograd.grad(want, (post_logits, prior_logits))
        kl = out.rate_per_step["z"].detach()
        print(
            f"{version} release (dyn {dyn}, rep {rep}): {int((kl < 1).sum())} of {kl.numel()} "
            "(b, t) KLs below the 1-nat floor"
        )
        if not 0 < int((kl < 1).sum()) < kl.numel():
            raise AssertionError("the check must cover clamped and unclamped steps")
        checks.append(compare(f"{version} loss = T x DreamerV3 loss", ours, want))
        checks.append(compare(f"{version} grad posterior logits", grads[0], ref_grads[0]))
        checks.append(compare(f"{version} grad prior logits", grads[1], ref_grads[1]))
    post, prior = unimix(post_logits.detach()), unimix(prior_logits.detach())
    unclamped = (post * (post.log() - prior.log())).sum((-2, -1))
    checks.append(compare("rate_per_step = unclamped KL per (b, t)", kl, unclamped))
    return checks


class WorldModel(nn.Module):
    """A small RSSM: GRU state h_t, prior p(z_t | h_t), posterior q(z_t | h_t, x_t)."""

    def __init__(self, obs: int, latents: int, classes: int, hidden: int) -> None:
        super().__init__()
        self.latents, self.classes = latents, classes
        self.cell = nn.GRUCell(latents * classes, hidden)
        self.prior_net = nn.Linear(hidden, latents * classes)
        self.post_net = nn.Sequential(
            nn.Linear(hidden + obs, hidden), nn.ELU(), nn.Linear(hidden, latents * classes)
        )
        self.decoder = nn.Sequential(
            nn.Linear(hidden + latents * classes, hidden), nn.ELU(), nn.Linear(hidden, obs)
        )
        self.hidden = hidden

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, T, obs)`` -> posterior and prior logits ``(B, T, L, K)``, decoder logits."""
        batch, steps, _ = x.shape
        h = x.new_zeros(batch, self.hidden)
        z = x.new_zeros(batch, self.latents * self.classes)
        posts, priors, recons = [], [], []
        for t in range(steps):
            h = self.cell(z, h)
            prior = self.prior_net(h).view(batch, self.latents, self.classes)
            post = self.post_net(torch.cat([h, x[:, t]], -1)).view_as(prior)
            z = rearrange(latent(post).rsample(), "b l k -> b (l k)")  # straight-through
            posts.append(post)
            priors.append(prior)
            recons.append(self.decoder(torch.cat([h, z], -1)))
        stack = lambda xs: torch.stack(xs, 1)  # noqa: E731  (the T axis)
        return stack(posts), stack(priors), stack(recons)


def main(argv: list[str] | None = None) -> list[Check]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--scales", choices=sorted(SCALES), default="current")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    latents, classes, length = (4, 8, 6) if args.quick else (32, 32, 16)
    n_steps = args.steps if args.steps is not None else (5 if args.quick else 100)

    checks = check_against_dreamer(
        batch=4, steps=length, latents=latents, classes=classes, seed=args.seed
    )

    torch.manual_seed(args.seed)
    images = load_digits().images
    model = WorldModel(images.shape[1], latents, classes, hidden=64)
    dyn, rep = SCALES[args.scales]
    loss_fn = rdloss_fn(dyn, rep)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(n_steps):
        # Sequences of T consecutive digits of the embedded set, 16 sequences per batch.
        start = torch.randint(0, len(images) - length, (16, 1))
        x = images[start + torch.arange(length)]
        post, prior, recon = model(x)
        out = loss_fn(
            x,
            posterior=latent(post),
            prior=latent(prior),
            likelihood=helpers.bernoulli(logits=recon),
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if step % max(1, n_steps // 5) == 0 or step == n_steps - 1:
            m = out.metrics()
            print(
                f"step {step}: R {m['rate']:.2f} nats per sequence "
                f"({m['rate'] / length:.2f} per step, DreamerV3's mean), "
                f"D {m['distortion']:.2f}, loss {m['loss']:.2f}"
            )
    return checks


if __name__ == "__main__":
    main()
