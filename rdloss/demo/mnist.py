r"""The MNIST experiment of "Fixing a Broken ELBO" (Alemi et al., 2018, Sec. 5) at CPU size.

Each run trains `ConvEncoder` with a deconvolutional or a PixelCNN decoder and a marginal
(N(0, I), a VampPrior with learned weights, or a zuko MAF) through
`rdloss.RateDistortionLoss`, then reports held-out R, D, ELBO, the active units and the
training trajectory, the way a user would with `rdloss.diagnostics`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from rdloss import RateDistortionLoss, marginals, objectives
from rdloss.demo.mnist_data import MNISTSplit
from rdloss.demo.mnist_models import ConvEncoder, DeconvDecoder, PixelCNNDecoder
from rdloss.diagnostics import ActiveUnits, MutualInformationBounds, importance_weighted_bound

__all__ = [
    "DecoderKind",
    "MarginalKind",
    "MNISTResult",
    "MNISTRun",
    "MNISTSpec",
    "default_specs",
    "fit",
    "iwae_nll",
    "train_mnist",
]

DecoderKind = Literal["deconv", "pixelcnn"]
MarginalKind = Literal["normal", "vamp", "maf"]
PAPER_CODES = {"deconv": "-", "pixelcnn": "+", "normal": "-", "maf": "+", "vamp": "v"}


class MNISTSpec(NamedTuple):
    """One training run.

    Attributes:
        decoder: ``"deconv"`` (factorised) or ``"pixelcnn"`` (autoregressive).
        marginal: ``"normal"``, ``"vamp"`` or ``"maf"``.
        objective: ``"beta"`` or ``"target_rate"``.
        value: β, or the target rate sigma in nats.
    """

    decoder: DecoderKind
    marginal: MarginalKind
    objective: Literal["beta", "target_rate"]
    value: float

    @property
    def code(self) -> str:
        """The paper's name: encoder, decoder, marginal (``-`` small, ``+`` strong, ``v``)."""
        return "-" + PAPER_CODES[self.decoder] + PAPER_CODES[self.marginal]

    @property
    def name(self) -> str:
        """Short label, e.g. ``-+- β=1`` or ``-+- sigma=10``."""
        symbol = "β" if self.objective == "beta" else "sigma"
        return f"{self.code} {symbol}={self.value:g}"


class MNISTResult(NamedTuple):
    """Held-out diagnostics of one trained model (nats per image).

    Attributes:
        spec: the run.
        rate: R.
        distortion: D.
        elbo: ``-(D + R)``.
        active_units: units with ``Var_x E[z_u] > 0.01``.
        seconds: training and evaluation time.
        history: ``(epochs, 2)`` training (R, D) per epoch.
    """

    spec: MNISTSpec
    rate: float
    distortion: float
    elbo: float
    active_units: int
    seconds: float
    history: Tensor


class MNISTRun(NamedTuple):
    """A trained model and its result (the modules are kept for the IWAE of the best).

    Attributes:
        result: the held-out diagnostics.
        encoder: ``e(z|x)``.
        decoder: ``(z, x) -> d(x|z)``.
        loss: the `RateDistortionLoss`, holding the marginal.
    """

    result: MNISTResult
    encoder: nn.Module
    decoder: nn.Module
    loss: RateDistortionLoss


def default_specs(*, target_rate: float, betas: tuple[float, ...]) -> list[MNISTSpec]:
    """The default grid, in order.

    Every decoder x marginal family at β = 1 (findings 1 and the grid), the PixelCNN with
    N(0, I) at ``TargetRate(target_rate)`` and at β = 0.5 (finding 2), and the
    deconvolutional N(0, I) model at the other ``betas`` (finding 3).
    """
    specs = [
        MNISTSpec(decoder, marginal, "beta", 1.0)
        for decoder in ("deconv", "pixelcnn")
        for marginal in ("normal", "vamp", "maf")
    ]
    specs.append(MNISTSpec("pixelcnn", "normal", "target_rate", target_rate))
    specs.append(MNISTSpec("pixelcnn", "normal", "beta", 0.5))
    specs += [MNISTSpec("deconv", "normal", "beta", b) for b in betas if b != 1.0]
    return specs


def _marginal(kind: MarginalKind, encoder: nn.Module, train: Tensor, latent_dim: int) -> nn.Module:
    if kind == "normal":
        return marginals.StandardNormal(latent_dim)
    if kind == "vamp":
        # 50 pseudo-inputs started at evenly spaced training images; weights learned (paper).
        start = train[:: max(len(train) // 50, 1)][:50].clone()
        return marginals.VampPrior(encoder, start)
    import zuko  # in the demo extra (and flows); a zuko flow is a marginal as it is

    flow: nn.Module = zuko.flows.MAF(features=latent_dim, transforms=4, hidden_features=(64, 64))
    return flow


def _decoder(kind: DecoderKind, latent_dim: int) -> nn.Module:
    return DeconvDecoder(latent_dim) if kind == "deconv" else PixelCNNDecoder(latent_dim)


def fit(
    encoder: nn.Module,
    decoder: nn.Module,
    loss_fn: RateDistortionLoss,
    train: Tensor,
    parameters: list[nn.Parameter],
    *,
    epochs: int,
    batch_size: int = 50,
    lr: float = 2e-3,
    before_step: Callable[[Tensor], None] | None = None,
    desc: str | None = None,
) -> Tensor:
    """The training loop of every ``rdloss mnist`` model: Adam over shuffled batches.

    Each step encodes a batch, draws one ``z``, decodes with teacher forcing and steps on
    ``loss_fn``'s loss. The shuffling draws from torch's global generator.

    Args:
        encoder: ``x -> e(z|x)``.
        decoder: ``(z, x) -> d(x|z)``.
        loss_fn: the loss (its objective decides the training objective).
        train: ``(N, 1, 28, 28)`` images, on the models' device.
        parameters: what Adam trains.
        epochs: passes over ``train``.
        batch_size: images per Adam step.
        lr: Adam learning rate.
        before_step: called with each batch before its forward pass (e.g. a Multi-Rate
            run draws the batch's β and sets the gates).
        desc: a tqdm bar over the epochs with this label; ``None``: no bar.

    Returns:
        ``(epochs, 2)`` training (R, D) per epoch (batch means weighted by batch size).
    """
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam(parameters, lr=lr)
    device = train.device
    history = torch.zeros(epochs, 2)
    loss_fn.train()
    bar = tqdm(range(epochs), desc=desc, disable=desc is None, leave=False)
    for epoch in bar:
        sums = torch.zeros(2, device=device)
        for batch in train[torch.randperm(len(train), device=device)].split(batch_size):
            if before_step is not None:
                before_step(batch)
            q = encoder(batch)
            z = q.rsample()
            out = loss_fn(batch, posterior=q, likelihood=decoder(z, batch), z=z)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            sums += torch.stack([out.rate, out.distortion]).detach() * len(batch)
        history[epoch] = (sums / len(train)).cpu()
        bar.set_postfix(R=f"{history[epoch, 0]:.1f}", D=f"{history[epoch, 1]:.1f}")
    return history


def train_mnist(
    spec: MNISTSpec,
    data: MNISTSplit,
    *,
    latent_dim: int = 32,
    epochs: int = 8,
    batch_size: int = 50,
    lr: float = 2e-3,
    seed: int = 0,
    eval_samples: int = 4,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> MNISTRun:
    """Train one model on ``data.train`` and evaluate it on ``data.test``.

    Args:
        spec: decoder, marginal, objective and its value.
        data: binarised images.
        latent_dim: latent size.
        epochs: passes over the training images.
        batch_size: images per Adam step.
        lr: Adam learning rate.
        seed: seeds initialisation, shuffling and sampling.
        eval_samples: latent draws per test image for D (and R where it is sampled).
        progress: show a tqdm bar over the epochs.
        device: torch device.

    Returns:
        `MNISTRun`.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    train, test = data.train.to(device), data.test.to(device)
    encoder = ConvEncoder(latent_dim)
    decoder = _decoder(spec.decoder, latent_dim)
    objective: objectives.Objective = (
        objectives.Beta(spec.value)
        if spec.objective == "beta"
        else objectives.TargetRate(spec.value)
    )
    loss_fn = RateDistortionLoss(_marginal(spec.marginal, encoder, train, latent_dim), objective)
    model = nn.ModuleDict({"encoder": encoder, "decoder": decoder, "loss": loss_fn}).to(device)
    history = fit(
        encoder,
        decoder,
        loss_fn,
        train,
        list(model.parameters()),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        desc=spec.name if progress else None,
    )
    model.eval()
    rate, distortion, units = _evaluate(encoder, decoder, loss_fn, test, eval_samples)
    result = MNISTResult(
        spec,
        rate,
        distortion,
        -(rate + distortion),
        units,
        time.perf_counter() - started,
        history,
    )
    return MNISTRun(result, encoder, decoder, loss_fn)


@torch.no_grad()
def _evaluate(
    encoder: nn.Module,
    decoder: nn.Module,
    loss_fn: RateDistortionLoss,
    test: Tensor,
    samples: int,
    chunk: int = 250,
) -> tuple[float, float, int]:
    bounds, units = MutualInformationBounds(), ActiveUnits()
    for x in test.split(chunk):
        q = encoder(x)
        units.update(q.mean)
        for _ in range(samples):
            z = q.sample()
            bounds.update(loss_fn(x, posterior=q, likelihood=decoder(z, x), z=z))
    mi = bounds.compute()
    rate = float(mi.upper)
    return rate, float(mi.entropy_upper) - rate, int(units.compute().num_active)


def iwae_nll(run: MNISTRun, test: Tensor, *, k: int, chunk: int = 50) -> float:
    """Mean IWAE estimate of ``-log p(x)`` over ``test`` with ``k`` samples (Burda et al.).

    Args:
        run: a trained model.
        test: ``(M, 1, 28, 28)`` held-out images.
        k: importance samples per image.
        chunk: images per call.

    Returns:
        The mean of ``-L_k(x)`` in nats, an upper estimate of the model's test NLL.
    """
    total = 0.0
    marginal = run.loss.marginal
    for x in test.split(chunk):
        posterior = run.encoder(x)
        samples_per_call = max(1, 500 // len(x))  # 500 decoder rows per call

        def decode(z: Tensor, x: Tensor = x) -> Distribution:
            rows = x.expand(len(z) // len(x), *x.shape).reshape(len(z), *x.shape[1:])
            likelihood: Distribution = run.decoder(z, rows)
            return likelihood

        bound = importance_weighted_bound(
            x, posterior, decode, marginal, k=k, chunk_size=samples_per_call
        )
        total -= float(bound.sum())
    return total / len(test) if len(test) else math.nan
