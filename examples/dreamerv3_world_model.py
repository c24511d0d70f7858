"""DreamerV3's whole world-model loss: the KL term from rdloss, the prediction heads your own.

DreamerV3's world model (danijar/dreamerv3, ``dreamerv3/agent.py``, ``Agent.loss``) trains
on ``(B, T)`` losses, each averaged and weighted by its ``loss_scales`` entry::

    loss = rec * dec_loss.mean() + rew * rew_loss.mean() + con * con_loss.mean()
           + dyn * max(1, KL(sg(post) || prior)).mean() + rep * max(1, KL(post || sg(prior))).mean()

(``dreamerv3/configs.yaml``: rec, rew, con, dyn = 1.0 and rep = 0.1; the first release had
dyn = 0.5). The heads (decoder, reward, continue) are the user's; only the KL term is a
rate. rdloss computes it alone, called without ``x``, likelihood or decoder::

    kl_fn = rdloss.RateDistortionLoss(
        objective=FreeBits(1.0, per="step", reduction="example", beta=(dyn + rep) / T),
        kl_balance=dyn / (dyn + rep),
    )
    kl = kl_fn(posterior=post, prior=prior, mask=mask)   # RDOutput: distortion 0
    loss = kl.loss + heads                                # heads: your own, same mask

``beta`` carries ``1 / T`` because rdloss sums the rate over steps and averages over the
batch, while DreamerV3 averages over both. With padded sequences (``mask``: ``True`` at real
steps) a padded step adds nothing to the KL, and the heads below use the same mask and the
same normaliser ``B * T``, so without padding every term is DreamerV3's own.

The script first checks the KL term against DreamerV3's formula written out (float64,
values and gradients, both scale settings, with and without a mask), then trains a small
world model on sequences of the 8x8 digits of random lengths, with a reward and a continue
head. Run: ``python examples/dreamerv3_world_model.py`` (``--quick`` for a reduced run).
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.distributions import Independent, OneHotCategoricalStraightThrough

import rdloss
from rdloss.demo.data import load_digits
from rdloss.objectives import FreeBits

SCALES = {"rec": 1.0, "rew": 1.0, "con": 1.0, "dyn": 1.0, "rep": 0.1}
"""DreamerV3's ``loss_scales`` for the world model (``configs.yaml``)."""


class Result(NamedTuple):
    max_rel_diff: float
    first_loss: float
    last_loss: float
    last_terms: dict[str, float]


def latent(logits: Tensor) -> Independent:
    """``(B, T, L, K)`` logits, 1% unimix -> L one-hot latents per step: batch (B, T)."""
    probs = 0.99 * logits.softmax(-1) + 0.01 / logits.shape[-1]
    return Independent(OneHotCategoricalStraightThrough(probs=probs), 1)


def kl_fn(dyn: float, rep: float, steps: int) -> rdloss.RateDistortionLoss:
    """DreamerV3's KL term as rdloss's rate alone."""
    return rdloss.RateDistortionLoss(
        objective=FreeBits(1.0, per="step", reduction="example", beta=(dyn + rep) / steps),
        kl_balance=dyn / (dyn + rep),
    )


def dreamer_kl_term(post: Tensor, prior: Tensor, dyn: float, rep: float, mask: Tensor) -> Tensor:
    """DreamerV3's KL term written out (``rssm.py``, ``outs.py``), padded steps left out."""

    def kl(a: Tensor, b: Tensor) -> Tensor:  # outs.Categorical.kl, summed over the latents
        return (a.softmax(-1) * (a.log_softmax(-1) - b.log_softmax(-1))).sum((-2, -1))

    def mixed(logits: Tensor) -> Tensor:  # outs.Categorical: log of the unimixed probs
        return (0.99 * logits.softmax(-1) + 0.01 / logits.shape[-1]).log()

    a, b = mixed(post), mixed(prior)
    per_step = dyn * kl(a.detach(), b).clamp(min=1.0) + rep * kl(a, b.detach()).clamp(min=1.0)
    return torch.where(mask, per_step, 0.0).sum() / mask.numel()


def check(batch: int, steps: int, latents: int, classes: int) -> float:
    """The largest relative difference of rdloss's KL term to DreamerV3's, over all cases."""
    g = torch.Generator().manual_seed(0)
    shape = (batch, steps, latents, classes)
    post = torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
    spread = torch.linspace(0.0, 2.0, steps, dtype=torch.float64).view(1, steps, 1, 1)
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    prior = (post.detach() + spread * noise).requires_grad_()
    lengths = torch.tensor([steps, steps // 2 + 1, steps - 1])[:batch]  # padded sequences
    worst = 0.0
    for dyn in (0.5, 1.0):  # the first release's and the current dyn scale
        for mask in (
            torch.ones(batch, steps, dtype=torch.bool),
            lengths[:, None] > torch.arange(steps),
        ):
            ours = kl_fn(dyn, 0.1, steps)(posterior=latent(post), prior=latent(prior), mask=mask)
            want = dreamer_kl_term(post, prior, dyn, 0.1, mask)
            kl = ours.rate_per_step["z"][mask] if ours.rate_per_step else None
            if kl is None or not 0 < int((kl < 1).sum()) < kl.numel():
                raise AssertionError("the check must cover clamped and unclamped steps")
            pairs = [(ours.loss, want)]
            pairs += zip(
                torch.autograd.grad(ours.loss, (post, prior)),
                torch.autograd.grad(want, (post, prior)),
                strict=True,
            )
            for a, b in ((a.detach(), b.detach()) for a, b in pairs):
                rel = float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))
                worst = max(worst, rel)
    print(f"check: KL term = DreamerV3's, values and gradients, max rel diff {worst:.2e}")
    if worst > 1e-10:
        raise AssertionError(f"rdloss's KL term differs from DreamerV3's by {worst:.2e}")
    return worst


class WorldModel(nn.Module):
    """A small RSSM with DreamerV3's three heads: decoder, reward and continue."""

    def __init__(self, obs: int, latents: int, classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.latents, self.classes, self.hidden = latents, classes, hidden
        self.cell = nn.GRUCell(latents * classes, hidden)
        self.prior_net = nn.Linear(hidden, latents * classes)
        self.post_net = nn.Sequential(
            nn.Linear(hidden + obs, hidden), nn.ELU(), nn.Linear(hidden, latents * classes)
        )
        feat = hidden + latents * classes
        self.decoder, self.reward, self.cont = (
            nn.Linear(feat, obs),
            nn.Linear(feat, 1),
            nn.Linear(feat, 1),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, T, obs)`` -> posterior and prior logits ``(B, T, L, K)``, features."""
        batch, steps, _ = x.shape
        h = x.new_zeros(batch, self.hidden)
        z = x.new_zeros(batch, self.latents * self.classes)
        posts, priors, feats = [], [], []
        for t in range(steps):
            h = self.cell(z, h)
            prior = self.prior_net(h).view(batch, self.latents, self.classes)
            post = self.post_net(torch.cat([h, x[:, t]], -1)).view_as(prior)
            z = rearrange(latent(post).rsample(), "b l k -> b (l k)")  # straight-through
            posts.append(post)
            priors.append(prior)
            feats.append(torch.cat([h, z], -1))
        return torch.stack(posts, 1), torch.stack(priors, 1), torch.stack(feats, 1)


def heads_loss(
    model: WorldModel, feat: Tensor, x: Tensor, reward: Tensor, cont: Tensor, mask: Tensor
) -> dict[str, Tensor]:
    """The user's own heads, each a ``(B, T)`` loss, masked and normalised by ``B * T``."""
    losses = {
        "rec": F.binary_cross_entropy_with_logits(model.decoder(feat), x, reduction="none").sum(-1),
        "rew": 0.5 * (model.reward(feat).squeeze(-1) - reward) ** 2,
        "con": F.binary_cross_entropy_with_logits(
            model.cont(feat).squeeze(-1), cont, reduction="none"
        ),
    }
    return {
        k: SCALES[k] * torch.where(mask, v, 0.0).sum() / mask.numel() for k, v in losses.items()
    }


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    latents, classes, length = (4, 8, 6) if args.quick else (32, 32, 16)
    n_steps = args.steps if args.steps is not None else (5 if args.quick else 200)
    worst = check(batch=3, steps=length, latents=latents, classes=classes)

    torch.manual_seed(args.seed)
    images = load_digits().images
    model = WorldModel(images.shape[1], latents, classes)
    kl_loss = kl_fn(SCALES["dyn"], SCALES["rep"], length)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses: list[float] = []
    terms: dict[str, float] = {}
    for step in range(n_steps):
        # 16 episodes of consecutive digits, each ending after 2..T steps, padded to T.
        start = torch.randint(0, len(images) - length, (16, 1))
        x = images[start + torch.arange(length)]
        lengths = torch.randint(2, length + 1, (16,))
        mask = lengths[:, None] > torch.arange(length)
        reward = x.mean(-1)  # a reward the model can predict from the observation
        cont = (torch.arange(length) < lengths[:, None] - 1).float()  # 0 at the last step
        post, prior, feat = model(x)
        kl = kl_loss(posterior=latent(post), prior=latent(prior), mask=mask)
        heads = heads_loss(model, feat, x, reward, cont, mask)
        loss = kl.loss + sum(heads.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % max(1, n_steps // 5) == 0 or step == n_steps - 1:
            m = kl.metrics()
            real = int(mask.sum())
            terms = {
                "kl": float(kl.loss.detach()),
                **{k: float(v.detach()) for k, v in heads.items()},
            }
            print(
                f"step {step}: loss {losses[-1]:.3f} = KL term {terms['kl']:.3f} + rec "
                f"{terms['rec']:.3f} + rew {terms['rew']:.4f} + con {terms['con']:.3f}; "
                f"KL {m['rate'] * 16 / real:.2f} nats per real step"
            )
    return Result(worst, losses[0], losses[-1], terms)


if __name__ == "__main__":
    main()
