r"""The Multi-Rate VAE (Bae et al., ICLR 2023) on the shipped MNIST digits: ``rdloss multirate``.

One Multi-Rate run trains the conv encoder and a decoder of `rdloss.demo.mnist_models` for
every β of ``[0.01, 10]`` at once: `rdloss.multirate.install_gates` gates every Linear and
Conv layer of both by the standardised log β, `rdloss.objectives.MultiRate` draws a
log-uniform β per example, and the loss is the batch mean of $D_i + \beta_i R_i$. The same
training loop as ``rdloss mnist`` (`rdloss.demo.mnist.fit`) trains it, and trains the
separately trained β-VAEs it is compared with; every model is evaluated on the held-out
images by `rdloss.evaluate`, the Multi-Rate ones at each β of a grid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

import rdloss
from rdloss import RateDistortionLoss, marginals, objectives
from rdloss.demo.mnist import DecoderKind, _decoder, fit
from rdloss.demo.mnist_models import ConvEncoder
from rdloss.diagnostics import Evaluation
from rdloss.multirate import Gates, install_gates

__all__ = [
    "BETA_MAX",
    "BETA_MIN",
    "SWEEP",
    "Point",
    "Trained",
    "beta_grid",
    "evaluate_at",
    "train_model",
]

BETA_MIN, BETA_MAX = 0.01, 10.0  # the paper's range
SWEEP = (0.1, 0.3, 1.0, 3.0)  # the separately trained β-VAEs, as in `rdloss mnist`
EVAL_SAMPLES = 4  # latent draws per test image for D, as `rdloss mnist`


def beta_grid(points: int = 12) -> tuple[float, ...]:
    """``points`` β log-spaced over ``[BETA_MIN, BETA_MAX]`` and the sweep's, sorted.

    Examples:
        >>> grid = beta_grid()
        >>> len(grid), grid[0], grid[-1], 0.3 in grid
        (16, 0.01, 10.0, True)
    """
    low, high = math.log(BETA_MIN), math.log(BETA_MAX)
    spaced = [math.exp(low + (high - low) * i / (points - 1)) for i in range(points)]
    spaced[0], spaced[-1] = BETA_MIN, BETA_MAX  # exact ends, not exp(log(.)) round-offs
    return tuple(sorted({*spaced, *SWEEP}))


class Trained(NamedTuple):
    """One trained model.

    Attributes:
        decoder_kind: ``"deconv"`` or ``"pixelcnn"``.
        beta: the β of a β-VAE, or ``None`` for a Multi-Rate model.
        encoder: ``e(z|x)``.
        decoder: ``(z, x) -> d(x|z)``.
        loss: its `RateDistortionLoss` (N(0, I) marginal).
        gates: the Multi-Rate gates, or ``None``.
        history: ``(epochs, 2)`` training (R, D) per epoch.
        seconds: wall time of the training (model construction and `fit`).
    """

    decoder_kind: DecoderKind
    beta: float | None
    encoder: nn.Module
    decoder: nn.Module
    loss: RateDistortionLoss
    gates: Gates | None
    history: Tensor
    seconds: float

    @property
    def name(self) -> str:
        """E.g. ``deconv β=0.3`` or ``pixelcnn Multi-Rate``."""
        return f"{self.decoder_kind} " + ("Multi-Rate" if self.beta is None else f"β={self.beta:g}")


class Point(NamedTuple):
    """A model evaluated on the held-out images at one β (nats per image).

    Attributes:
        beta: the β (of training for a β-VAE, of the gates for a Multi-Rate model).
        rate: R.
        distortion: D.
        elbo: ``-(D + R)``.
        active_units: units with ``Var_x E[z_u] > 0.01``.
        mutual_information: the aggregate-posterior ``I(n; z)`` (saturates at ``log N``).
        nll: IWAE estimate of ``-log p(x)``, or NaN where not computed.
    """

    beta: float
    rate: float
    distortion: float
    elbo: float
    active_units: int
    mutual_information: float
    nll: float


def train_model(
    decoder_kind: DecoderKind,
    train: Tensor,
    *,
    beta: float | None,
    latent_dim: int = 32,
    epochs: int = 8,
    seed: int = 0,
    desc: str | None = None,
) -> Trained:
    """Train a β-VAE (``beta``) or a Multi-Rate model (``beta=None``) on ``train``.

    Both start from the same seed, so they share their initial weights; the Multi-Rate
    model's gates start at exactly 1, and its β come from the objective's own generator
    (seeded with ``seed``), so the shuffling of the batches is the same too.

    Args:
        decoder_kind: ``"deconv"`` or ``"pixelcnn"``.
        train: ``(N, 1, 28, 28)`` images on the device to train on.
        beta: the β-VAE's β, or ``None`` for Multi-Rate over ``[BETA_MIN, BETA_MAX]``.
        latent_dim: latent size.
        epochs: passes over ``train``.
        seed: seeds initialisation, shuffling and sampling.
        desc: a tqdm bar over the epochs with this label; ``None``: none.

    Returns:
        `Trained`.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    encoder, decoder = ConvEncoder(latent_dim), _decoder(decoder_kind, latent_dim)
    model = nn.ModuleDict({"encoder": encoder, "decoder": decoder})
    gates: Gates | None = None
    objective: objectives.Objective
    if beta is None:
        objective = objectives.MultiRate(BETA_MIN, BETA_MAX, generator_seed=seed)
        gates = install_gates(model, beta_min=BETA_MIN, beta_max=BETA_MAX)
    else:
        objective = objectives.Beta(beta)
    loss_fn = RateDistortionLoss(marginals.StandardNormal(latent_dim), objective)
    model.to(train.device)
    loss_fn.to(train.device)
    parameters = [*model.parameters(), *loss_fn.parameters()]
    step = None
    if gates is not None:
        gates.to(train.device)
        parameters += list(gates.parameters())
        multirate, gated = objective, gates

        def step(batch: Tensor) -> None:  # one β per example, seen by the gates and the loss
            assert isinstance(multirate, objectives.MultiRate)
            gated.set_beta(multirate.sample_beta(len(batch)))

    history = fit(
        encoder, decoder, loss_fn, train, parameters, epochs=epochs, before_step=step, desc=desc
    )
    seconds = time.perf_counter() - started
    return Trained(decoder_kind, beta, encoder, decoder, loss_fn, gates, history, seconds)


def evaluate_at(
    trained: Trained,
    test: Tensor,
    beta: float,
    *,
    iwae_samples: int = 0,
    progress: bool = False,
) -> Point:
    """Evaluate ``trained`` on ``test`` at ``beta`` with `rdloss.evaluate`.

    A Multi-Rate model's gates (and objective) are set to ``beta``; a β-VAE is evaluated
    as it is (``beta`` should be its own). D is the mean over `EVAL_SAMPLES` latent draws
    per image; R is the closed-form KL.

    Args:
        trained: the model.
        test: ``(M, 1, 28, 28)`` held-out images on the model's device.
        beta: the β.
        iwae_samples: ``k`` of an IWAE estimate of ``-log p(x)``; 0: none.
        progress: `rdloss.evaluate`'s progress.

    Returns:
        `Point`.
    """
    if trained.gates is not None:
        trained.gates.set_beta(torch.tensor(beta, device=test.device))
        trained.loss.objective.beta = beta
    encoder, decoder = trained.encoder, trained.decoder

    def fn(x: Tensor) -> dict[str, Any]:
        def decode(z: Tensor) -> Distribution:
            # The loss and the IWAE bound stack draws sample-major: row k*B + i is image i.
            rows = x.expand(len(z) // len(x), *x.shape).reshape(len(z), *x.shape[1:])
            likelihood: Distribution = decoder(z, rows)
            return likelihood

        return {"x": x, "posterior": encoder(x), "decoder": decode, "samples": EVAL_SAMPLES}

    # The IWAE bound decodes 100 draws of a batch in one call: small batches bound memory.
    batches = test.split(5 if iwae_samples else 100)
    found: Evaluation = rdloss.evaluate(
        batches,
        fn,
        loss=trained.loss,
        modules=[encoder, decoder],
        iwae_samples=iwae_samples,
        progress=progress,
    )
    mi = math.nan if found.aggregate is None else float(found.aggregate.mutual_information)
    return Point(
        beta,
        float(found.rate),
        float(found.distortion),
        float(found.elbo),
        int(found.active_units.num_active),
        mi,
        math.nan if found.nll is None else float(found.nll),
    )


def curve(trained: Trained, test: Tensor, betas: Sequence[float]) -> list[Point]:
    """A Multi-Rate model evaluated at each of ``betas``, in order."""
    if trained.gates is None:
        raise ValueError(f"{trained.name} is a β-VAE: it has one point, not a curve")
    return [evaluate_at(trained, test, b) for b in betas]
