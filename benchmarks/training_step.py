"""A whole VAE training step with rdloss against the same step with a hand-written loss.

One step is ``zero_grad``, encoder, reparameterised sample, decoder, loss, ``backward`` and
``Adam.step``. Each side has its own copy of the model (same initial weights) and its own
optimiser; the two steps are timed in alternation in one process (``benchmarks._timing``),
so machine load affects both alike, and the whole comparison is repeated ``--runs`` times:
the printed ratio is the median over runs, with the range of the run ratios.

Models (binarised 28x28 inputs, 784 Bernoulli pixels, 32 latent dimensions):

* ``mlp``: encoder 784-512-256-2x32, decoder 32-256-512-784; rdloss in the ``decoder=``
  call style with `rdloss.helpers.normal` / `rdloss.helpers.bernoulli`;
* ``conv``: two stride-2 convolutions (32, 64 channels) to the latent and two transposed
  convolutions back;
* ``hierarchical``: two groups, ``z2`` (16 dims) against N(0, I) and ``z1`` (32 dims)
  against the prior ``p(z1 | z2)`` the model computes (a top-down network), in the
  ``likelihood=`` style with ``posterior={"z1", "z2"}`` and ``prior={"z1"}``.

Settings: ``default`` (the loss and the helpers with their default value checks),
``validate_args=False`` (on the loss and on every helper), and ``compiled``:
``torch.compile(fullgraph=True)`` of the forward pass and the loss on both sides (the
backward of the compiled graph and the optimiser step run as torch runs them; random draws
use torch's generator, ``fallback_random``, so both sides draw the same noise).
The hand-written loss is ``BCE-with-logits`` summed over pixels plus the closed-form
Gaussian KL, batch-mean reduced; both sides compute the same loss on the same draws
(checked before timing).

Run: ``python benchmarks/training_step.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch._inductor.config
import torch.nn.functional as F
from torch import Tensor, nn

import rdloss
from rdloss import helpers

try:
    from benchmarks._timing import compare_runs
except ImportError:  # run as a script from benchmarks/
    from _timing import compare_runs  # type: ignore[no-redef]

LATENT, TOP, PIXELS = 32, 16, 784
Forward = Callable[[nn.Module, Tensor], Tensor]


def _mlp(*sizes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last dim (Kingma & Welling, App. B)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)


def _bce(logits: Tensor, x: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)


class MLPVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _mlp(PIXELS, 512, 256, 2 * LATENT)
        self.decoder = _mlp(LATENT, 256, 512, PIXELS)


class ConvVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1),  # 14x14
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),  # 7x7
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 2 * LATENT),
        )
        self.decoder = nn.Sequential(
            nn.Linear(LATENT, 64 * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),
        )


class HierarchicalVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(_mlp(PIXELS, 512, 256), nn.ReLU())
        self.q_top = nn.Linear(256, 2 * TOP)
        self.q_bottom = nn.Linear(256, 2 * LATENT)
        self.top_down = _mlp(TOP, 128, 2 * LATENT)
        self.decoder = _mlp(LATENT + TOP, 256, 512, PIXELS)


def rdloss_vae(validate: bool) -> Forward:
    """The MLP and conv VAE with rdloss, ``decoder=`` style."""
    loss_fn = rdloss.RateDistortionLoss(validate_args=validate)
    flag = None if validate else False  # None: the helpers' own default

    def forward(model: nn.Module, x: Tensor) -> Tensor:
        mu, logvar = model.encoder(x).chunk(2, dim=-1)
        posterior = helpers.normal(mu, logvar=logvar, validate_args=flag)

        def decode(z: Tensor) -> torch.distributions.Distribution:
            return helpers.bernoulli(logits=model.decoder(z), validate_args=flag)

        out: rdloss.RDOutput = loss_fn(x, posterior=posterior, decoder=decode)
        return out.loss

    return forward


def handwritten_vae(model: nn.Module, x: Tensor) -> Tensor:
    mu, logvar = model.encoder(x).chunk(2, dim=-1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    return (_bce(model.decoder(z), x) + _gaussian_kl(mu, logvar)).mean()


def rdloss_hierarchical(validate: bool) -> Forward:
    loss_fn = rdloss.RateDistortionLoss(validate_args=validate)
    flag = None if validate else False

    def forward(model: nn.Module, x: Tensor) -> Tensor:
        h = model.body(x)
        mu2, logvar2 = model.q_top(h).chunk(2, dim=-1)
        mu1, logvar1 = model.q_bottom(h).chunk(2, dim=-1)
        q2 = helpers.normal(mu2, logvar=logvar2, validate_args=flag)
        z2 = q2.rsample()
        q1 = helpers.normal(mu1, logvar=logvar1, validate_args=flag)
        z1 = q1.rsample()
        prior_mu, prior_logvar = model.top_down(z2).chunk(2, dim=-1)
        p1 = helpers.normal(prior_mu, logvar=prior_logvar, validate_args=flag)
        logits = model.decoder(torch.cat([z1, z2], dim=-1))
        out: rdloss.RDOutput = loss_fn(
            x,
            posterior={"z1": q1, "z2": q2},
            prior={"z1": p1},
            z={"z1": z1, "z2": z2},
            likelihood=helpers.bernoulli(logits=logits, validate_args=flag),
        )
        return out.loss

    return forward


def handwritten_hierarchical(model: nn.Module, x: Tensor) -> Tensor:
    h = model.body(x)
    mu2, logvar2 = model.q_top(h).chunk(2, dim=-1)
    mu1, logvar1 = model.q_bottom(h).chunk(2, dim=-1)
    z2 = mu2 + torch.exp(0.5 * logvar2) * torch.randn_like(mu2)
    z1 = mu1 + torch.exp(0.5 * logvar1) * torch.randn_like(mu1)
    prior_mu, prior_logvar = model.top_down(z2).chunk(2, dim=-1)
    # KL between diagonal Gaussians: 1/2 [log s_p^2/s_q^2 + (s_q^2 + (m_q - m_p)^2)/s_p^2 - 1].
    kl1 = 0.5 * (
        prior_logvar - logvar1 + (logvar1.exp() + (mu1 - prior_mu).pow(2)) / prior_logvar.exp() - 1
    ).sum(-1)
    distortion = _bce(model.decoder(torch.cat([z1, z2], dim=-1)), x)
    return (distortion + kl1 + _gaussian_kl(mu2, logvar2)).mean()


class Model(NamedTuple):
    build: Callable[[], nn.Module]
    data_shape: tuple[int, ...]
    ours: Callable[[bool], Forward]
    handwritten: Forward


MODELS = {
    "mlp": Model(MLPVAE, (PIXELS,), rdloss_vae, handwritten_vae),
    "conv": Model(ConvVAE, (1, 28, 28), rdloss_vae, handwritten_vae),
    "hierarchical": Model(
        HierarchicalVAE, (PIXELS,), rdloss_hierarchical, handwritten_hierarchical
    ),
}
SETTINGS = ("default", "validate_args=False", "compiled")


def make_step(model: nn.Module, forward: Forward, x: Tensor) -> Callable[[], None]:
    """One training step of ``model`` (own Adam) on the fixed batch ``x``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward(model, x).backward()
        optimizer.step()

    return step


def sides(name: str, setting: str, x: Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """The rdloss and hand-written steps of one model and setting, checked to agree."""
    spec = MODELS[name]
    torch.manual_seed(0)
    model = spec.build()
    ours: Forward = spec.ours(setting != "validate_args=False")
    theirs: Forward = spec.handwritten
    if setting == "compiled":
        # Compiled random ops draw from inductor's own generator unless they fall back to
        # torch's: with the fallback both sides draw the same eps, so their losses agree.
        torch._inductor.config.fallback_random = True
        ours = torch.compile(ours, fullgraph=True)  # type: ignore[assignment]
        theirs = torch.compile(theirs, fullgraph=True)  # type: ignore[assignment]
    twin = copy.deepcopy(model)
    torch.manual_seed(1)
    expected = theirs(twin, x)
    torch.manual_seed(1)
    torch.testing.assert_close(ours(model, x), expected, rtol=1e-5, atol=1e-3)
    return make_step(model, ours, x), make_step(twin, theirs, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--compile-models", nargs="*", choices=list(MODELS), default=["mlp"])
    parser.add_argument("--runs", type=int, default=3, help="repeated comparisons per row")
    parser.add_argument("--repeats", type=int, default=10, help="alternating rounds per run")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny, no compile")
    args = parser.parse_args()
    if args.quick:
        args.threads, args.batch, args.runs, args.repeats = [1], [32], 1, 2
        args.settings = [s for s in args.settings if s != "compiled"]

    print(
        f"torch {torch.__version__}, rdloss {rdloss.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start; ratio = rdloss step / hand-written "
        f"step, median over {args.runs} run(s) of {args.repeats} alternating rounds"
    )
    print(f"{'model':13}{'setting':21}{'thr':>4}{'B':>5}{'rdloss':>10}{'hand':>10}  ratio  range")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch:
            x = torch.randint(0, 2, (batch, PIXELS), generator=torch.Generator().manual_seed(0))
            for name in args.models:
                data = x.float().reshape(batch, *MODELS[name].data_shape)
                for setting in args.settings:
                    if setting == "compiled" and name not in args.compile_models:
                        continue
                    ours, theirs = sides(name, setting, data)
                    number = 1 if args.quick else max(1, 256 // batch)  # steps per measurement
                    t = compare_runs(
                        ours, theirs, runs=args.runs, repeats=args.repeats, number=number
                    )
                    print(
                        f"{name:13}{setting:21}{threads:>4}{batch:>5}"
                        f"{t.ours * 1e3:8.2f}ms{t.baseline * 1e3:8.2f}ms"
                        f"  {t.ratio:5.3f}  {t.range()}",
                        flush=True,
                    )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
