r"""The digits experiment: β sweep and target rate on the embedded binarised 8x8 digits.

Each run trains `MLPEncoder` with a factorised or an
autoregressive (MADE) Bernoulli decoder through `rdloss.RateDistortionLoss`, then
reports R, D, ELBO, the mutual-information bounds and the active units on a held-out split,
the way a user would with `rdloss.diagnostics` (Alemi et al., 2018, Sec. 4).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from rdloss import RateDistortionLoss, marginals, objectives
from rdloss.demo.data import Digits
from rdloss.demo.models import FactorizedDecoder, MADEDecoder, MLPEncoder
from rdloss.diagnostics import ActiveUnits, MutualInformationBounds

__all__ = [
    "HELD_OUT",
    "DecoderKind",
    "DigitsResult",
    "MarginalKind",
    "RunSpec",
    "split",
    "train_digits",
]

DecoderKind = Literal["factorized", "autoregressive"]
MarginalKind = Literal["normal", "mixture", "vamp"]
HELD_OUT = 297
"""The last 297 of the 1,797 digits are held out; the models train on the other 1,500."""


class RunSpec(NamedTuple):
    """One training run of the sweep.

    Attributes:
        decoder: ``"factorized"`` or ``"autoregressive"``.
        objective: ``"beta"`` or ``"target_rate"``.
        value: β for ``"beta"``, the target rate sigma (nats) for ``"target_rate"``.
    """

    decoder: DecoderKind
    objective: Literal["beta", "target_rate"]
    value: float


class DigitsResult(NamedTuple):
    """Held-out diagnostics of one trained digits model (nats per image).

    Attributes:
        spec: the run.
        rate: R.
        distortion: D.
        elbo: ``-(D + R)``.
        mi_upper: the upper bound ``R`` on ``I(X;Z)``.
        entropy_upper: ``D + R``, this model's upper estimate of ``H``.
        active_units: units with ``Var_x E[z_u] > 0.01``.
        history: ``(epochs, 2)`` training (R, D) per epoch.
    """

    spec: RunSpec
    rate: float
    distortion: float
    elbo: float
    mi_upper: float
    entropy_upper: float
    active_units: int
    history: Tensor


def split(data: Digits) -> tuple[Tensor, Tensor]:
    """Fixed train / test split of the images: the first 1,500 and the last 297."""
    return data.images[:-HELD_OUT], data.images[-HELD_OUT:]


def _marginal(kind: MarginalKind, encoder: nn.Module, train: Tensor, latent_dim: int) -> nn.Module:
    if kind == "normal":
        return marginals.StandardNormal(latent_dim)
    if kind == "mixture":
        return marginals.GaussianMixture(latent_dim, n_components=10)
    # VampPrior starts its pseudo-inputs from a fixed data subset, as Tomczak & Welling do.
    return marginals.VampPrior(encoder, train[:: len(train) // 20][:20].clone())


def train_digits(
    spec: RunSpec,
    data: Digits,
    *,
    marginal: MarginalKind = "normal",
    latent_dim: int = 8,
    epochs: int = 40,
    batch_size: int = 100,
    lr: float = 3e-3,
    seed: int = 0,
    eval_samples: int = 8,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> DigitsResult:
    """Train one model of the sweep and evaluate it on the held-out digits.

    Args:
        spec: decoder, objective and its value.
        data: the embedded digits.
        marginal: ``"normal"`` (N(0, I)), ``"mixture"`` (10 learned Gaussians) or ``"vamp"``
            (VampPrior with 20 learned pseudo-inputs and weights).
        latent_dim: latent size.
        epochs: passes over the 1,500 training images.
        batch_size: images per Adam step.
        lr: Adam learning rate.
        seed: seeds initialisation, shuffling and sampling.
        eval_samples: latent draws per test image for D (and R where it is sampled).
        progress: show a tqdm bar.
        device: torch device.

    Returns:
        `DigitsResult`.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    train, test = (t.to(device) for t in split(data))
    data_dim = train.shape[1]
    encoder = MLPEncoder(data_dim, latent_dim)
    decoder: nn.Module = (
        FactorizedDecoder(latent_dim, data_dim)
        if spec.decoder == "factorized"
        else MADEDecoder(latent_dim, data_dim)
    )
    objective: objectives.Objective = (
        objectives.Beta(spec.value)
        if spec.objective == "beta"
        else objectives.TargetRate(spec.value)
    )
    loss_fn = RateDistortionLoss(_marginal(marginal, encoder, train, latent_dim), objective)
    model = nn.ModuleDict({"encoder": encoder, "decoder": decoder, "loss": loss_fn}).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = torch.zeros(epochs, 2)
    desc = f"{spec.decoder} {spec.objective}={spec.value:g}"
    for epoch in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        sums = torch.zeros(2, device=device)
        for batch in train[torch.randperm(len(train), device=device)].split(batch_size):
            q = encoder(batch)
            z = q.rsample()
            out = loss_fn(batch, posterior=q, likelihood=decoder(z, batch), z=z)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            sums += torch.stack([out.rate, out.distortion]).detach() * len(batch)
        history[epoch] = (sums / len(train)).cpu()
    return _evaluate(spec, encoder, decoder, loss_fn.eval(), test, eval_samples, history)


@torch.no_grad()
def _evaluate(
    spec: RunSpec,
    encoder: nn.Module,
    decoder: nn.Module,
    loss_fn: RateDistortionLoss,
    test: Tensor,
    samples: int,
    history: Tensor,
) -> DigitsResult:
    bounds, units = MutualInformationBounds(), ActiveUnits()
    q = encoder(test)
    units.update(q.mean)
    for _ in range(samples):
        z = q.sample()
        bounds.update(loss_fn(test, posterior=q, likelihood=decoder(z, test), z=z))
    mi = bounds.compute()
    rate, upper = float(mi.upper), float(mi.entropy_upper)
    return DigitsResult(
        spec=spec,
        rate=rate,
        distortion=upper - rate,
        elbo=-upper,
        mi_upper=rate,
        entropy_upper=upper,
        active_units=int(units.compute().num_active),
        history=history,
    )
