"""The rate of a latent-diffusion autoencoder (diffusers' ``AutoencoderKL``), in nats and bits.

``AutoencoderKL`` encodes an image into ``DiagonalGaussianDistribution(moments)``: the
``(B, 2C, H, W)`` moments split into ``mean`` and ``logvar`` (clamped to ``[-30, 20]``),
and its ``.kl()`` is the KL to N(0, I) summed over ``(C, H, W)``. Its training loss
(CompVis/stable-diffusion, ``ldm/modules/losses/contperceptual.py``,
``LPIPSWithDiscriminator``) is, without the perceptual and adversarial terms::

    nll = |x - x_rec| / exp(logvar) + logvar          # per pixel, a learned scalar logvar
    loss = sum(nll) / B + kl_weight * sum(kl) / B      # kl_weight = 1e-6

The rate is nearly unconstrained (``beta = kl_weight = 1e-6``), so it is worth measuring.
With rdloss, the one-line conversion of the encoder's output is::

    posterior = helpers.normal(dist.mean, logvar=dist.logvar)

and ``RateDistortionLoss(objective=Beta(kl_weight))`` with a Laplace likelihood of scale
``exp(logvar)`` is LDM's loss plus the constant ``log 2`` per pixel (the Laplace
normaliser that ``nll`` leaves out). Nothing downloads: the classes below are a faithful
small copy of diffusers' ``DiagonalGaussianDistribution``
(``src/diffusers/models/autoencoders/vae.py``) and a tiny randomly initialised conv
encoder/decoder on the 8x8 digits that ship with rdloss. The script checks, in float64 and
float32, that rdloss's rate equals ``dist.kl()`` (values and gradients) and that the loss
is LDM's, then trains for a few steps and reports R in nats and bits per pixel.
Run: ``python examples/autoencoder_kl_rate.py`` (``--quick`` for a reduced run).
"""

from __future__ import annotations

import argparse
import math
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.distributions import Independent, Laplace

import rdloss
from rdloss import helpers
from rdloss.demo.data import load_digits
from rdloss.objectives import Beta

KL_WEIGHT = 1e-6
"""Stable Diffusion's autoencoder configs: ``lossconfig.params.kl_weight: 0.000001``."""


class Check(NamedTuple):
    name: str
    max_abs: float
    max_rel: float


def compare(name: str, got: Tensor, want: Tensor, rtol: float) -> Check:
    """Print and assert the largest absolute and relative differences."""
    got, want = got.detach(), want.detach()
    max_abs = float((got - want).abs().max())
    max_rel = max_abs / max(float(want.abs().max()), 1e-300)
    print(f"check {name}: max abs diff {max_abs:.3e}, max rel diff {max_rel:.3e}")
    if max_rel > rtol:
        raise AssertionError(f"{name}: relative difference {max_rel:.3e} > {rtol:.0e}")
    return Check(name, max_abs, max_rel)


class DiagonalGaussianDistribution:
    """diffusers' encoder output distribution (the parts that matter for the rate)."""

    def __init__(self, parameters: Tensor) -> None:
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self) -> Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def kl(self) -> Tensor:
        """KL to N(0, I), summed over (C, H, W): ``(B,)``."""
        return 0.5 * torch.sum(self.mean**2 + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


class TinyAutoencoderKL(nn.Module):
    """A small ``AutoencoderKL``: 1x8x8 images -> 4x4x4 latents -> 1x8x8 images."""

    def __init__(self, latent_channels: int = 4, width: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * latent_channels, 1),  # the "quant_conv": moments
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, width, 3, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1),
        )
        self.logvar = nn.Parameter(torch.zeros(()))  # LDM's learned output log-scale

    def encode(self, x: Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)


def ldm_loss(
    x: Tensor, x_rec: Tensor, dist: DiagonalGaussianDistribution, logvar: Tensor
) -> Tensor:
    """LDM's autoencoder loss without LPIPS and GAN, written from ``contperceptual.py``."""
    nll = torch.abs(x - x_rec) / torch.exp(logvar) + logvar
    kl = dist.kl()
    return torch.sum(nll) / nll.shape[0] + KL_WEIGHT * torch.sum(kl) / kl.shape[0]


def run_rdloss(
    loss_fn: rdloss.RateDistortionLoss, model: TinyAutoencoderKL, x: Tensor
) -> tuple[rdloss.RDOutput, DiagonalGaussianDistribution, Tensor]:
    """Encode, convert the distribution in one line, decode, and compute the loss."""
    dist = model.encode(x)
    posterior = helpers.normal(dist.mean, logvar=dist.logvar)  # the one-line conversion
    z = dist.sample()
    x_rec = model.decode(z)
    likelihood = Independent(Laplace(x_rec, model.logvar.exp().expand_as(x_rec)), 3)
    return loss_fn(x, posterior=posterior, likelihood=likelihood, z=z), dist, x_rec


def check_against_diffusers(x: Tensor, dtype: torch.dtype, seed: int) -> list[Check]:
    """rdloss's rate = ``dist.kl()`` and its loss = LDM's + log 2 per pixel, values and grads."""
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.manual_seed(seed)
    model = TinyAutoencoderKL().to(dtype)
    with torch.no_grad():
        model.logvar.fill_(-0.7)
        model.encoder[-1].bias[4:].fill_(-3.0)  # small posterior variances, as trained VAEs have
    x = x.to(dtype)
    loss_fn = rdloss.RateDistortionLoss(objective=Beta(KL_WEIGHT))
    torch.manual_seed(seed + 1)
    out, dist, x_rec = run_rdloss(loss_fn, model, x)
    params = list(model.encoder.parameters())
    kl = dist.kl()
    label = str(dtype).removeprefix("torch.")
    checks = [
        compare(f"{label} rate = DiagonalGaussianDistribution.kl()", out.rate_per_example, kl, rtol)
    ]
    ours = torch.autograd.grad(out.rate_per_example.sum(), params, retain_graph=True)
    want = torch.autograd.grad(kl.sum(), params, retain_graph=True)
    checks.append(
        compare(
            f"{label} grad of the rate (encoder)",
            torch.cat([g.flatten() for g in ours]),
            torch.cat([g.flatten() for g in want]),
            rtol,
        )
    )
    ldm = ldm_loss(x, x_rec, dist, model.logvar)
    pixels = x[0].numel()
    checks.append(
        compare(
            f"{label} loss = LDM loss + log 2 per pixel",
            out.loss,
            ldm + pixels * math.log(2.0),
            rtol,
        )
    )
    all_params = list(model.parameters())
    ours = torch.autograd.grad(out.loss, all_params, retain_graph=True)
    want = torch.autograd.grad(ldm, all_params)
    checks.append(
        compare(
            f"{label} grad of the loss (all parameters)",
            torch.cat([g.flatten() for g in ours]),
            torch.cat([g.flatten() for g in want]),
            rtol,
        )
    )
    return checks


def main(argv: list[str] | None = None) -> list[Check]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few training steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_steps = args.steps if args.steps is not None else (5 if args.quick else 500)

    images = rearrange(load_digits().images, "n (c h w) -> n c h w", c=1, h=8)
    train, test = images[:1500], images[1500:]
    checks = [
        c
        for dtype in (torch.float64, torch.float32)
        for c in check_against_diffusers(test[:32], dtype, args.seed)
    ]

    torch.manual_seed(args.seed)
    model = TinyAutoencoderKL()
    loss_fn = rdloss.RateDistortionLoss(objective=Beta(KL_WEIGHT))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(n_steps):
        x = train[torch.randint(0, len(train), (64,))]
        out, _, _ = run_rdloss(loss_fn, model, x)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        out, _, _ = run_rdloss(loss_fn, model, test)
    rate, pixels = out.rate.item(), test[0].numel()
    print(
        f"after {n_steps} steps at beta = kl_weight = {KL_WEIGHT:g}: test R {rate:.1f} nats "
        f"= {rate / math.log(2.0) / pixels:.3f} bits per pixel ({pixels} pixels), "
        f"D {out.distortion.item():.1f} nats"
    )
    return checks


if __name__ == "__main__":
    main()
