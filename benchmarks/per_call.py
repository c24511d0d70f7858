"""The per-call cost of the loss alone on tiny tensors: rdloss against two baselines.

B = 8 examples, 16 latent dimensions, 64 Bernoulli data dimensions, one thread by default:
the regime of a small VAE on a GPU, where the loss costs what Python and the kernel
launches cost, not what the arithmetic costs. Forward + backward of the loss alone (no
model) to the encoder's ``(mu, logvar)`` and the decoder's logits. Six sides, timed in
alternation in one process (A B C D A B C D ...; `benchmarks._timing.compare_sides`):

* ``hand-written``: ``bce_with_logits(logits, x).sum(-1)
  + 0.5 * (mu**2 + exp(logvar) - 1 - logvar).sum(-1)``, batch mean;
* ``torch.distributions``: the same loss from ``Independent(Normal(mu, exp(logvar / 2)), 1)``,
  ``kl_divergence`` against ``Independent(Normal(0, 1), 1)`` (built once, outside the
  call) and ``-Independent(Bernoulli(logits=logits), 1).log_prob(x)``, with
  ``validate_args=False`` on every distribution;
* ``rdloss default``: ``RateDistortionLoss()(x, posterior=helpers.normal(mu, logvar=logvar),
  likelihood=helpers.bernoulli(logits=logits)).loss``;
* ``rdloss validate_args=False``: the same with ``validate_args=False`` on the loss and the
  helpers;
* ``hand-written + R, D, ELBO`` and ``torch.distributions + R, D, ELBO``: the two
  baselines computing, besides the loss, what `RDOutput` reports and a training loop logs:
  the batch means of the rate and the distortion and the ELBO, each a differentiable
  0-dim tensor, and the loss as ``D + beta * R`` with ``beta = 1.0`` a Python float.

All six are checked to compute the same loss before timing. The script prints the
microseconds per call, the ratios rdloss / hand-written and rdloss / torch.distributions
(median and range of ``--runs`` runs) beside issue 20's targets (printed, not asserted),
and the aten operators and host synchronisations of each side's forward call
(`benchmarks._counting`).
Run: ``python benchmarks/per_call.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch
import torch.nn.functional as tnf
from torch import Tensor
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

import rdloss
from rdloss import helpers

try:
    from benchmarks._counting import count
    from benchmarks._timing import compare_sides
except ImportError:  # run as a script from benchmarks/
    from _counting import count  # type: ignore[no-redef]
    from _timing import compare_sides  # type: ignore[no-redef]

B, LATENT, DATA = 8, 16, 64
Loss = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]

HAND, DISTS, DEFAULT, OFF = (
    "hand-written",
    "torch.distributions",
    "rdloss default",
    "rdloss validate_args=False",
)
HAND_RD, DISTS_RD = "hand-written + R, D, ELBO", "torch.distributions + R, D, ELBO"
BETA = 1.0
# Issue 20's targets, printed beside the figures: (rdloss side, baseline) -> largest ratio.
TARGETS = {(OFF, DISTS): 1.0, (OFF, HAND): 1.5, (DEFAULT, HAND): 2.0}


def handwritten(x: Tensor, mu: Tensor, logvar: Tensor, logits: Tensor) -> Tensor:
    distortion = tnf.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    rate = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
    return (distortion + rate).mean()


def handwritten_rd(x: Tensor, mu: Tensor, logvar: Tensor, logits: Tensor) -> Tensor:
    distortion = tnf.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    rate = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
    return _reported(rate, distortion)


def _reported(rate: Tensor, distortion: Tensor) -> Tensor:
    """The loss ``D + beta * R`` from the batch means, with the ELBO a training loop logs."""
    mean_rate, mean_distortion = rate.mean(), distortion.mean()
    elbo = -(mean_distortion + mean_rate)
    assert elbo.requires_grad  # computed as RDOutput.elbo is, not thrown away
    return mean_distortion + BETA * mean_rate


def make_distributions(latent: int, *, report: bool = False) -> Loss:
    """The loss written with ``torch.distributions`` objects, value checks off.

    ``report``: also the batch means of R and D and the ELBO (`_reported`).
    """
    standard = Independent(
        Normal(torch.zeros(latent), torch.ones(latent), validate_args=False),
        1,
        validate_args=False,
    )

    def loss(x: Tensor, mu: Tensor, logvar: Tensor, logits: Tensor) -> Tensor:
        q = Independent(
            Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1, validate_args=False
        )
        p = Independent(Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)
        if report:
            return _reported(kl_divergence(q, standard), -p.log_prob(x))
        return (kl_divergence(q, standard) - p.log_prob(x)).mean()

    return loss


def make_rdloss(validate: bool) -> Loss:
    """rdloss with its defaults, or with ``validate_args=False`` on the loss and helpers."""
    loss_fn = rdloss.RateDistortionLoss(validate_args=validate)

    if validate:

        def loss(x: Tensor, mu: Tensor, logvar: Tensor, logits: Tensor) -> Tensor:
            posterior = helpers.normal(mu, logvar=logvar)
            likelihood = helpers.bernoulli(logits=logits)
            return loss_fn(x, posterior=posterior, likelihood=likelihood).loss

        return loss

    def unchecked(x: Tensor, mu: Tensor, logvar: Tensor, logits: Tensor) -> Tensor:
        posterior = helpers.normal(mu, logvar=logvar, validate_args=False)
        likelihood = helpers.bernoulli(logits=logits, validate_args=False)
        return loss_fn(x, posterior=posterior, likelihood=likelihood).loss

    return unchecked


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="repeated comparisons")
    parser.add_argument("--repeats", type=int, default=30, help="alternating rounds per run")
    parser.add_argument("--number", type=int, default=50, help="calls per side per round")
    parser.add_argument("--batch", type=int, default=B, help=f"batch size (default {B})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run of 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.repeats, args.number = 1, 3, 5
    torch.set_num_threads(args.threads)
    batch = args.batch

    torch.manual_seed(0)
    x = torch.randint(0, 2, (batch, DATA)).float()
    leaves = [
        torch.randn(batch, LATENT, requires_grad=True),
        torch.randn(batch, LATENT, requires_grad=True),
        torch.randn(batch, DATA, requires_grad=True),
    ]
    losses: dict[str, Loss] = {
        HAND: handwritten,
        DISTS: make_distributions(LATENT),
        DEFAULT: make_rdloss(True),
        OFF: make_rdloss(False),
        HAND_RD: handwritten_rd,
        DISTS_RD: make_distributions(LATENT, report=True),
    }
    reference = handwritten(x, *leaves)
    for fn in losses.values():
        torch.testing.assert_close(fn(x, *leaves), reference)
    counts = {name: count(lambda fn=fn: fn(x, *leaves)) for name, fn in losses.items()}

    def run(fn: Loss) -> Callable[[], None]:
        def call() -> None:
            fn(x, *leaves).backward()
            for t in leaves:
                t.grad = None  # as zero_grad() does: no accumulation kernels

        return call

    load = os.getloadavg()
    print(
        f"rdloss from {os.path.dirname(os.path.dirname(rdloss.__file__))}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), B={batch}, "
        f"latent={LATENT}, data={DATA}, forward+backward of the loss alone; ratio: median "
        f"and range of {args.runs} runs of {args.repeats} alternating rounds; "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    pairs = [(side, base) for side in (DEFAULT, OFF) for base in (HAND, DISTS, HAND_RD, DISTS_RD)]
    timings = compare_sides(
        {name: run(fn) for name, fn in losses.items()},
        pairs,
        runs=args.runs,
        repeats=args.repeats,
        number=args.number,
    )
    per_side = {base: timings[OFF, base].baseline for base in (HAND, DISTS, HAND_RD, DISTS_RD)}
    per_side.update({side: timings[side, HAND].ours for side in (DEFAULT, OFF)})
    print("| side | time per call | forward ops | host syncs |")
    print("|---|---|---|---|")
    for name in losses:
        c = counts[name]
        print(f"| {name} | {_us(per_side[name])} | {c.n_ops} | {c.n_syncs} |")
    print()
    print("| rdloss | baseline | ratio | range | target |")
    print("|---|---|---|---|---|")
    for side, base in pairs:
        t = timings[side, base]
        target = TARGETS.get((side, base))
        goal = "" if target is None else f"<= {target:.1f}"
        print(f"| {side} | {base} | {t.ratio:.2f} | {t.range()} | {goal} |")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
