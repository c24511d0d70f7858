"""AFTER: the classic PyTorch-examples VAE loop (vae/main.py) with its loss replaced by rdloss.

MLP 784-400-(20, 20) encoder, 20-400-784 sigmoid decoder, loss ``BCE(sum) + KLD``, Adam
lr 1e-3, batch 128. Instead of MNIST (nothing may download) the data are the 8x8 digits
that ship with rdloss, upsampled bilinearly to grey-level 28x28 images.
Compare with ``pytorch_examples_before.py``: only the loss lines differ. rdloss's loss is
a batch *mean* (the classic one is a batch sum); Adam does not care about the scale, so the
learning rate stays 1e-3 (with plain SGD multiply the lr by the batch size).
Run: ``python examples/pytorch_examples_after.py``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rdloss
from rdloss import helpers
from rdloss.demo.data import load_digits


def mnist_like(n_train: int = 1500) -> tuple[TensorDataset, TensorDataset]:
    digits = load_digits()
    images = F.interpolate(digits.images.view(-1, 1, 8, 8), size=(28, 28), mode="bilinear")
    return (
        TensorDataset(images[:n_train], digits.labels[:n_train]),
        TensorDataset(images[1500:], digits.labels[1500:]),
    )


class VAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


# Distortion (BCE) + rate (KL) per example, averaged over the batch: the negative ELBO.
loss_fn = rdloss.RateDistortionLoss()


def loss_function(
    recon_x: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> rdloss.RDOutput:
    return loss_fn(
        x.view(-1, 784),
        posterior=helpers.normal(mu, logvar=logvar),
        # Grey-level targets: the Bernoulli density used as a cross-entropy, as BCE does.
        likelihood=helpers.bernoulli(probs=recon_x, validate_args=False),
    )


def main(argv: list[str] | None = None) -> list[tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=1500, help="training images (<= 1500)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    train_set, test_set = mnist_like(args.n_train)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=args.batch_size)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    history = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        train_loss = 0.0
        for data, _ in train_loader:
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            out = loss_function(recon_batch, data, mu, logvar)
            out.loss.backward()
            train_loss += out.loss.item() * len(data)
            optimizer.step()
        train_loss /= len(train_loader.dataset)

        model.eval()
        test_loss = rate = 0.0
        with torch.no_grad():
            for data, _ in test_loader:
                recon_batch, mu, logvar = model(data)
                out = loss_function(recon_batch, data, mu, logvar)
                test_loss += out.loss.item() * len(data)
                rate += out.rate.item() * len(data)
        test_loss /= len(test_loader.dataset)
        rate /= len(test_loader.dataset)
        print(
            f"====> Epoch: {epoch} Train loss: {train_loss:.4f} Test loss: {test_loss:.4f} "
            f"(R {rate:.2f} + D {test_loss - rate:.2f} nats)"
        )
        history.append((train_loss, test_loss))
    return history


if __name__ == "__main__":
    main()
