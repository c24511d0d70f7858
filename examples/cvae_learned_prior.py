"""A conditional VAE with a learned prior ``p(z|y)``: the rate is ``KL(q(z|x,y) || p(z|y))``.

The conditional VAE of Sohn, Lee & Yan (2015, "Learning Structured Output Representation
using Deep Conditional Generative Models") has a recognition net ``q(z|x, y)``, a *prior
net* ``p(z|y)`` and a decoder ``p(x|z, y)``; its loss per batch is the classic::

    bce = binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = kl_divergence(q, p).sum()         # both sides diagonal Gaussians, both learned
    loss = bce + kld

(the Probabilistic U-Net of Kohl et al. 2018 computes the same KL, SimonKohl/
probabilistic_unet ``model/probabilistic_unet.py``, ``kl()``: ``tfd.kl_divergence(q, p)``).
The prior is computed by the model in the same forward pass, one per example, so it goes
to the loss's ``prior=`` argument (the constructor's ``marginal`` is the unconditional
``m(z)``)::

    out = loss_fn(x, posterior=q, prior=p, likelihood=likelihood, z=z)

and gradients reach the recognition net and the prior net. ``out.loss`` is a batch mean:
the classic ``bce + kld`` equals ``B * out.loss``. The rate is then an upper bound on
``I(X; Z | Y)``: what the code carries about the image beyond its label. The script checks
rdloss against the closed-form KL written below (and against ``kl_divergence`` on the
same tensors), values and gradients in float64, then trains on the 8x8 digits with their
labels and reports R and D. Run: ``python examples/cvae_learned_prior.py``
(``--quick`` for a reduced run).
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence

import rdloss
from rdloss import helpers
from rdloss.demo.data import load_digits


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


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """``KL(N(mu_q, var_q) || N(mu_p, var_p))`` summed over latent dims: ``(B,)``."""
    kl = logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0
    return 0.5 * kl.sum(-1)


class CVAE(nn.Module):
    """Recognition net q(z|x,y), prior net p(z|y), decoder p(x|z,y); y one-hot."""

    def __init__(self, pixels: int = 64, classes: int = 10, latent: int = 8, hidden: int = 128):
        super().__init__()
        self.classes = classes
        self.recognition = nn.Sequential(
            nn.Linear(pixels + classes, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent)
        )
        self.prior_net = nn.Sequential(
            nn.Linear(classes, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent + classes, hidden), nn.ReLU(), nn.Linear(hidden, pixels)
        )

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Posterior and prior ``(mu, logvar)``, ``(B, latent)`` each, and decoder logits."""
        onehot = F.one_hot(y, self.classes).to(x.dtype)
        mu_q, logvar_q = self.recognition(torch.cat([x, onehot], -1)).chunk(2, -1)
        mu_p, logvar_p = self.prior_net(onehot).chunk(2, -1)
        z = mu_q + (0.5 * logvar_q).exp() * torch.randn_like(mu_q)
        logits = self.decoder(torch.cat([z, onehot], -1))
        return mu_q, logvar_q, mu_p, logvar_p, logits


def rdloss_step(
    loss_fn: rdloss.RateDistortionLoss, model: CVAE, x: Tensor, y: Tensor
) -> tuple[rdloss.RDOutput, tuple[Tensor, ...]]:
    """The training step's loss: the prior net's output goes to ``prior=``."""
    mu_q, logvar_q, mu_p, logvar_p, logits = outputs = model(x, y)
    out = loss_fn(
        x,
        posterior=helpers.normal(mu_q, logvar=logvar_q),
        prior=helpers.normal(mu_p, logvar=logvar_p),
        likelihood=helpers.bernoulli(logits=logits),
    )
    return out, outputs


def check_against_cvae(x: Tensor, y: Tensor, seed: int) -> list[Check]:
    """rdloss = the classic CVAE loss / B, its rate = KL(q || p): values and gradients."""
    torch.manual_seed(seed)
    model = CVAE().double()
    x = x.double()
    torch.manual_seed(seed + 1)
    out, (mu_q, logvar_q, mu_p, logvar_p, logits) = rdloss_step(
        rdloss.RateDistortionLoss(), model, x, y
    )
    kl = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)
    torch_kl = kl_divergence(
        Independent(Normal(mu_q, (0.5 * logvar_q).exp()), 1),
        Independent(Normal(mu_p, (0.5 * logvar_p).exp()), 1),
    )
    classic = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") + kl.sum()
    checks = [
        compare("rate = closed-form KL(q(z|x,y) || p(z|y))", out.rate_per_example, kl),
        compare("rate = torch kl_divergence(q, p)", out.rate_per_example, torch_kl),
        compare("B * loss = classic bce + kld", len(x) * out.loss, classic),
    ]
    for part in ("recognition", "prior_net"):
        params = list(getattr(model, part).parameters())
        ours = torch.autograd.grad(out.rate_per_example.sum(), params, retain_graph=True)
        want = torch.autograd.grad(kl.sum(), params, retain_graph=True)
        flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
        checks.append(compare(f"grad of the rate ({part})", flat(ours), flat(want)))
    params = list(model.parameters())
    ours = torch.autograd.grad(len(x) * out.loss, params, retain_graph=True)
    want = torch.autograd.grad(classic, params)
    checks.append(compare("grad of B * loss = grad of the classic loss", flat(ours), flat(want)))
    return checks


def main(argv: list[str] | None = None) -> list[Check]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few training steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_steps = args.steps if args.steps is not None else (5 if args.quick else 2000)

    digits = load_digits()
    images, labels = digits.images, digits.labels
    checks = check_against_cvae(images[1500:1532], labels[1500:1532], args.seed)

    torch.manual_seed(args.seed)
    model = CVAE()
    loss_fn = rdloss.RateDistortionLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(n_steps):
        idx = torch.randint(0, 1500, (100,))
        out, _ = rdloss_step(loss_fn, model, images[idx], labels[idx])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        out, _ = rdloss_step(loss_fn, model, images[1500:], labels[1500:])
    m = out.metrics()
    print(
        f"after {n_steps} steps, test: R {m['rate']:.2f} nats (>= I(X; Z | Y)), "
        f"D {m['distortion']:.2f}, ELBO {m['elbo']:.2f} (estimator {out.estimator!r})"
    )
    return checks


if __name__ == "__main__":
    main()
