r"""The paper's toy experiment with exact expectations (Alemi et al., 2018, Sec. 4, App. E).

The encoder $e(z|x)$ and the decoder $d(x|z)$ are free ``30 x 30`` logit tables,
the marginal is `rdloss.marginals.Categorical` ``(30)``, and every expectation is a
sum: the loss enumerates the latent (``samples="enumerate"``) over the 30 values of ``x`` as
one batch weighted by the exact $p^*(x)$, so R and D are exact, and
$I(x; z)$ is computed from the joint $p^*(x)\,e(z|x)$.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution

from rdloss import RateDistortionLoss, marginals, objectives
from rdloss.demo.data import ToyData
from rdloss.diagnostics import functional as DF

__all__ = ["ToyModel", "ToyResult", "cluster_masses", "train_toy"]


class ToyModel(nn.Module):
    """Tabular encoder and decoder of the toy model.

    Args:
        n_bins: number of data values.
        n_states: number of latent values.
        init_scale: standard deviation of the initial logits; small values start both
            tables near the uninformative state (uniform encoder and decoder).
        generator: seeds the small random initial logits.
    """

    def __init__(
        self,
        n_bins: int = 30,
        n_states: int = 30,
        *,
        init_scale: float = 0.01,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        init = init_scale * torch.randn(
            2, n_states, n_bins, dtype=torch.float64, generator=generator
        )
        self.encoder_logits = nn.Parameter(init[0].T.contiguous())  # (x, z)
        self.decoder_logits = nn.Parameter(init[1])  # (z, x)

    def posterior(self, x: Tensor) -> Categorical:
        """``e(z|x)`` for bin indices ``x`` of shape ``(B,)``."""
        return Categorical(logits=self.encoder_logits[x], validate_args=False)

    def decoder(self, z: Tensor) -> Distribution:
        """``d(x|z)`` for latent indices ``z`` of shape ``(N,)``."""
        return Categorical(logits=self.decoder_logits[z], validate_args=False)


class ToyResult(NamedTuple):
    r"""Exact quantities of one trained toy model (nats).

    Attributes:
        objective: ``"elbo"`` or ``"target_rate"``.
        hyper: β (1 for the ELBO) or the target rate sigma.
        rate: exact R.
        distortion: exact D.
        elbo: ``-(D + R)``.
        entropy: H of $p^*(x)$.
        mutual_information: exact $I(x; z)$ of the joint $p^*(x) e(z|x)$.
        cluster_masses: ``(m_0, m_1)`` aggregate-posterior mass of the latent states that
            decode to the left and the right component (see `cluster_masses`).
        used_states: number of latent states with more than 1% aggregate mass.
        history: ``(steps, 2)`` float tensor of (R, D) during training.
    """

    objective: str
    hyper: float
    rate: float
    distortion: float
    elbo: float
    entropy: float
    mutual_information: float
    cluster_masses: tuple[float, float]
    used_states: int
    history: Tensor


def cluster_masses(data: ToyData, model: ToyModel, encoder_probs: Tensor) -> tuple[float, float]:
    r"""Aggregate-posterior mass of the latent states grouped by where they decode.

    With the aggregate posterior $p_e(z) = \sum_x p^*(x) e(z|x)$, state ``z`` joins
    cluster 0 if its decoder $d(x|z)$ has its mean bin centre below the midpoint of the
    two component means (it stands for the $z^* = 0$ component on the left), else
    cluster 1. A model that ignores ``x`` decodes every state to $p^*(x)$, whose mean
    lies right of the midpoint, so all its mass lands in cluster 1: one cluster. The paper's
    target-rate model has two clusters holding about 30% and 70%, the component weights.

    Args:
        data: the toy distribution.
        model: the trained tables.
        encoder_probs: ``(n_bins, K)`` rows $e(z|x)$.

    Returns:
        ``(m_0, m_1)``, summing to one.
    """
    aggregate = data.probs @ encoder_probs
    centres = 0.5 * (data.edges[1:] + data.edges[:-1])
    decoded_mean = model.decoder_logits.softmax(-1) @ centres
    left = decoded_mean < 0.5 * (data.means[0] + data.means[1])
    m0 = float(aggregate[left].sum())
    return m0, 1.0 - m0


def train_toy(
    data: ToyData,
    *,
    target_rate: float | None = None,
    steps: int = 3000,
    lr: float = 0.01,
    init_scale: float = 0.01,
    seed: int = 0,
    progress: bool = False,
) -> ToyResult:
    """Train the toy model with the ELBO (``target_rate=None``) or ``TargetRate(target_rate)``.

    Full-batch Adam on the exact objective, float64.

    Args:
        data: the toy distribution from `rdloss.demo.data.toy_data`.
        target_rate: sigma in nats, or ``None`` for the ELBO (``Beta(1)``).
        steps: Adam steps.
        lr: Adam learning rate.
        init_scale: standard deviation of the initial logits (see `ToyModel`).
        seed: seeds the initial logits.
        progress: show a tqdm bar.

    Returns:
        `ToyResult` with exact R, D, ELBO, H and I.

    Raises:
        FloatingPointError: the parameters stopped being finite (too large an ``lr``).
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    n_bins = data.probs.shape[0]
    model = ToyModel(n_bins, n_bins, init_scale=init_scale, generator=generator)
    marginal = marginals.Categorical(n_bins).double()
    objective = objectives.Beta(1.0) if target_rate is None else objectives.TargetRate(target_rate)
    loss_fn = RateDistortionLoss(marginal, objective, validate_args=False)
    params = [*model.parameters(), *loss_fn.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    # Annealing the step size lets the target-rate model settle instead of overshooting.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    x = torch.arange(n_bins)
    name = "elbo" if target_rate is None else "target_rate"
    history = torch.empty(steps, 2, dtype=torch.float64)
    for step in tqdm(range(steps), desc=f"toy {name}", disable=not progress, leave=False):
        out = loss_fn(
            x,
            posterior=model.posterior(x),
            decoder=model.decoder,
            samples="enumerate",
            weight=data.probs,
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        scheduler.step()
        # A 30 x 30 float64 table: checking it every step costs nothing and names the cause.
        if not all(bool(p.isfinite().all()) for p in params):
            raise FloatingPointError(
                f"training diverged at step {step + 1} of {steps}: non-finite parameters "
                f"with lr={lr:g}"
            )
        history[step] = torch.stack([out.rate, out.distortion]).detach()
    with torch.no_grad():
        out = loss_fn.eval()(
            x,
            posterior=model.posterior(x),
            decoder=model.decoder,
            samples="enumerate",
            weight=data.probs,
        )
        encoder_probs = model.posterior(x).probs
        info = DF.discrete_mutual_information(encoder_probs, marginal.probs, data.probs)
        masses = cluster_masses(data, model, encoder_probs)
        aggregate = data.probs @ encoder_probs
    return ToyResult(
        objective=name,
        hyper=1.0 if target_rate is None else float(target_rate),
        rate=float(out.rate),
        distortion=float(out.distortion),
        elbo=float(out.elbo),
        entropy=data.entropy,
        mutual_information=float(info.mutual_information),
        cluster_masses=masses,
        used_states=int((aggregate > 0.01).sum()),
        history=history.float(),
    )
