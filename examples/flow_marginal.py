"""A zuko normalising flow as the learned marginal ``m(z)``.

A zuko flow is a module whose ``forward()`` returns a distribution, which is exactly what
``RateDistortionLoss`` expects of a marginal. There is no closed-form KL between a Gaussian
posterior and a flow, so the rate is estimated by Monte Carlo with the same ``z`` that fed
the decoder (``out.estimator == "mc"``). The script trains the same VAE on the 8x8 digits
that ship with rdloss twice, with a fixed N(0, I) and with a MAF marginal, and compares.
Needs ``pip install zuko``. Run: ``python examples/flow_marginal.py``.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import torch
import zuko
from torch import nn

import rdloss
from rdloss import helpers, marginals
from rdloss.demo.data import load_digits


class Result(NamedTuple):
    marginal: str
    estimator: str
    rate: float
    distortion: float
    elbo: float


def train(marginal: nn.Module, name: str, latent: int, epochs: int, seed: int) -> Result:
    torch.manual_seed(seed)
    images = load_digits().images
    train_x, test_x = images[:1500], images[1500:]
    encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 2 * latent))
    decoder = nn.Sequential(nn.Linear(latent, 128), nn.ReLU(), nn.Linear(128, 64))
    loss_fn = rdloss.RateDistortionLoss(marginal=marginal)
    # loss_fn.parameters() holds the flow's parameters: the marginal is learned too.
    modules = nn.ModuleList([encoder, decoder, loss_fn])
    optimizer = torch.optim.Adam(modules.parameters(), lr=1e-3)

    def run(x: torch.Tensor, samples: int = 1) -> rdloss.RDOutput:
        mu, logvar = encoder(x).chunk(2, dim=-1)
        return loss_fn(
            x,
            posterior=helpers.normal(mu, logvar=logvar),
            decoder=lambda z: helpers.bernoulli(logits=decoder(z)),
            samples=samples,
        )

    for _ in range(epochs):
        for x in train_x[torch.randperm(len(train_x))].split(64):
            out = run(x)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
    with torch.no_grad():  # 16 samples per test example for a low-variance MC estimate
        out = run(test_x, samples=16)
    return Result(name, out.estimator, *(float(v) for v in (out.rate, out.distortion, out.elbo)))


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--latent-dim", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    latent = args.latent_dim
    flow = zuko.flows.MAF(features=latent, transforms=3, hidden_features=(64, 64))
    results = [
        train(marginals.StandardNormal(latent), "StandardNormal", latent, args.epochs, args.seed),
        train(flow, "zuko MAF", latent, args.epochs, args.seed),
    ]
    for r in results:
        print(
            f"{r.marginal:15s} rate estimator {r.estimator:8s} test R {r.rate:6.3f}  "
            f"D {r.distortion:7.3f}  ELBO {r.elbo:8.3f} nats"
        )
    return results


if __name__ == "__main__":
    main()
