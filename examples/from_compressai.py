r"""Coming from CompressAI: ``lambda * 255^2 * MSE + bpp`` is ``D + beta * R``, ``beta = 1/lambda``.

CompressAI's rate-distortion loss for images ``x`` in ``[0, 1]`` of shape ``(B, C, H, W)``
is ``L = lambda * 255**2 * mse + bpp``: ``bpp = sum(-log2 p(y~)) / (B * H * W)`` is the rate in
bits per pixel (``p`` the entropy model's likelihoods of the noisy latents ``y~ = y + u``,
``u ~ U(-1/2, 1/2)``), and ``mse`` the mean squared error over all ``B*C*H*W`` values.

In rdloss's terms (Ballé et al., 2017; Alemi et al., 2018) the posterior is the unit-width
uniform ``e(y~|x) = U(y - 1/2, y + 1/2)`` (``log e = 0``), so ``R = -log m(y~)`` in nats per
image, and ``lambda * 255**2 * mse`` is, up to a constant, the distortion in bits per pixel
of a Gaussian decoder ``N(x_hat, s^2)`` with ``s^2 = C / (2 ln 2 * 255**2)`` (about one grey
level). Multiplying ``L`` by ``ln 2 * H * W / lambda`` turns it into nats per image:

    ln2 * H * W / lambda * L  =  D + (1 / lambda) * R  -  H * W * C / 2 * log(2 pi s^2)

so the two objectives have the same minimiser and parallel gradients. This script computes
both numbers on the same tensors (no compressai import) and prints the correspondence.
Run: ``python examples/from_compressai.py``.
"""

from __future__ import annotations

import argparse
import math
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Uniform, constraints

import rdloss
from rdloss import helpers, objectives

LN2 = math.log(2.0)


class DiscretizedGaussian(Distribution):
    """CompressAI's ``GaussianConditional``-style likelihood: the N(0, s) mass of a unit bin."""

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {"scale": constraints.positive}
    support = constraints.real

    def __init__(self, scale: Tensor) -> None:
        self.scale = scale
        super().__init__(event_shape=scale.shape, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        normal = torch.distributions.Normal(0.0, self.scale)
        mass = normal.cdf(value + 0.5) - normal.cdf(value - 0.5)
        # CompressAI's likelihood lower bound, 1e-9.
        return mass.clamp_min(1e-9).log().flatten(-len(self.event_shape)).sum(-1)


def compressai_loss(
    x: Tensor, x_hat: Tensor, likelihoods: Tensor, lmbda: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, bpp, mse)`` as CompressAI's ``RateDistortionLoss`` computes them."""
    batch, _, height, width = x.shape
    bpp = likelihoods.log().sum() / (-LN2 * batch * height * width)
    mse = torch.nn.functional.mse_loss(x_hat, x)
    return lmbda * 255**2 * mse + bpp, bpp, mse


class Correspondence(NamedTuple):
    compressai_loss: float
    compressai_loss_in_nats: float
    rdloss_loss: float
    constant: float
    bpp: float
    rdloss_rate_bpp: float
    beta: float
    gradient_cosine: float


def main(argv: list[str] | None = None) -> Correspondence:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lmbda", type=float, default=0.0130, help="CompressAI's lambda")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    b, c, h = args.batch, 3, args.size
    x = torch.rand(b, c, h, h, dtype=torch.float64)
    x_hat = (x + 0.05 * torch.randn_like(x)).requires_grad_()  # a codec's reconstruction
    y = 4 * torch.randn(b, 8, h // 4, h // 4, dtype=torch.float64)  # latents
    y_noisy = y + torch.rand_like(y) - 0.5
    prior = DiscretizedGaussian(torch.full(y.shape[1:], 3.0, dtype=torch.float64))

    # CompressAI: the entropy model's per-element likelihoods of the noisy latents.
    normal = torch.distributions.Normal(0.0, prior.scale)
    likelihoods = (normal.cdf(y_noisy + 0.5) - normal.cdf(y_noisy - 0.5)).clamp_min(1e-9)
    loss_c, bpp, mse = compressai_loss(x, x_hat, likelihoods, args.lmbda)

    # rdloss: uniform posterior, Gaussian decoder with s^2 = C / (2 ln2 255^2), beta = 1/lambda.
    s = math.sqrt(c / (2 * LN2)) / 255
    loss_fn = rdloss.RateDistortionLoss(
        marginal=prior, objective=objectives.Beta(1 / args.lmbda), rate_estimator="mc"
    )
    out = loss_fn(
        x,
        posterior=Independent(Uniform(y - 0.5, y + 0.5), 3),
        likelihood=helpers.normal(x_hat, scale=s),
        z=y_noisy,
    )
    to_nats = LN2 * h * h / args.lmbda  # bits per pixel -> nats per image, divided by lambda
    constant = c * h * h / 2 * math.log(2 * math.pi * s**2)
    (grad_c,) = torch.autograd.grad(loss_c, x_hat)
    (grad_r,) = torch.autograd.grad(out.loss, x_hat)
    result = Correspondence(
        compressai_loss=float(loss_c.detach()),
        compressai_loss_in_nats=float(loss_c.detach()) * to_nats,
        rdloss_loss=float(out.loss.detach()),
        constant=constant,
        bpp=float(bpp),
        rdloss_rate_bpp=float(out.rate) / (LN2 * h * h),
        beta=float(out.hyper["beta"]),
        gradient_cosine=float(torch.cosine_similarity(grad_c.flatten(), grad_r.flatten(), 0)),
    )
    print(
        f"CompressAI: lambda={args.lmbda}  bpp {result.bpp:.4f}  mse {float(mse.detach()):.3e}  "
        f"loss {result.compressai_loss:.4f}\n"
        f"rdloss:     beta=1/lambda={result.beta:.3f}  R/(ln2 H W) {result.rdloss_rate_bpp:.4f} "
        f"bpp  loss D + beta R = {result.rdloss_loss:.2f} nats/image\n"
        f"ln2 H W / lambda * CompressAI loss = {result.compressai_loss_in_nats:.2f} = "
        f"rdloss loss - constant ({result.rdloss_loss:.2f} - ({result.constant:.2f}) = "
        f"{result.rdloss_loss - result.constant:.2f})\n"
        f"cosine of the two gradients w.r.t. x_hat: {result.gradient_cosine:.6f}"
    )
    return result


if __name__ == "__main__":
    main()
