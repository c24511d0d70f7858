"""Train a small VAE on generated binary data with rdloss and print R, D and the ELBO.

The data are 16-pixel binary patterns drawn from 4 prototypes with 10% of the bits flipped,
generated here (nothing is downloaded). Run: ``python examples/quickstart.py``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import rdloss
from rdloss import helpers, marginals, objectives


def make_data(n: int, generator: torch.Generator) -> torch.Tensor:
    prototypes = torch.randint(0, 2, (4, 16), generator=generator).float()
    labels = torch.randint(0, 4, (n,), generator=generator)
    flips = torch.rand(n, 16, generator=generator) < 0.1
    return (prototypes[labels] + flips.float()) % 2


class VAE(nn.Module):
    def __init__(self, data_dim: int = 16, latent_dim: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(data_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, data_dim)
        )

    def posterior(self, x: torch.Tensor) -> torch.distributions.Distribution:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return helpers.normal(mu, logvar=logvar)

    def likelihood(self, z: torch.Tensor) -> torch.distributions.Distribution:
        return helpers.bernoulli(logits=self.decoder(z))


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    data = make_data(2048, torch.Generator().manual_seed(args.seed))
    model = VAE()
    loss_fn = rdloss.RateDistortionLoss(
        marginal=marginals.StandardNormal(2), objective=objectives.Beta(args.beta)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for epoch in range(args.epochs):
        totals = {"rate": 0.0, "distortion": 0.0, "elbo": 0.0}
        for x in data.split(128):
            out = loss_fn(x, posterior=model.posterior(x), decoder=model.likelihood)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            metrics = out.metrics()
            for key in totals:
                totals[key] += metrics[key] * len(x) / len(data)
        history.append(totals)
        print(
            f"epoch {epoch + 1:2d}  R {totals['rate']:6.3f}  D {totals['distortion']:7.3f}  "
            f"ELBO {totals['elbo']:8.3f} nats"
        )
    return history


if __name__ == "__main__":
    main()
