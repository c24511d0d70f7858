"""Where a training step's extra time goes: each phase of the step, rdloss against two baselines.

`benchmarks/training_step.py` times whole steps; this script splits the MLP step of that
script (784-512-256-2x32 encoder, 32-256-512-784 decoder, Adam, binarised inputs) into four
phases and times each with ``time.perf_counter`` on each side, the steps alternating
(A B C, then B C A, then C A B, ...), ``--steps`` times after a warm-up:

* ``model``: ``zero_grad``, the encoder, ``helpers.normal(mu, logvar=...)``, its
  ``rsample()`` and the decoder (the same code on both sides);
* ``loss``: the loss's forward: ``RateDistortionLoss`` (``likelihood=`` style, with
  ``helpers.bernoulli(logits=...)`` built inside the phase) against the hand-written
  ``BCE-with-logits`` plus the closed-form Gaussian KL, batch mean, and against the same
  loss on ``torch.distributions`` objects (``kl_divergence`` of ``Independent(Normal)``
  to N(0, I) minus the ``Independent(Bernoulli(logits))`` log-density, checks off);
* ``backward`` and ``optimizer``: ``loss.backward()`` and ``Adam.step()``.

Then the same loss forwards alone, in a tight loop on the same tensors (the
distributions built once, outside the timing), ``timeit``-style: how much slower a loss
runs inside a step, after the model has filled the caches, than in a loop of its own.

The three losses are checked to agree on the same tensors first. Prints the median
microseconds per phase and side, and each side's difference from the hand-written one.
Run: ``python benchmarks/step_phases.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import timeit
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

import rdloss
from rdloss import helpers

try:
    from benchmarks.training_step import LATENT, MLPVAE, PIXELS, _bce, _gaussian_kl
except ImportError:  # run as a script from benchmarks/
    from training_step import LATENT, MLPVAE, PIXELS, _bce, _gaussian_kl  # type: ignore[no-redef]

PHASES = ("model", "loss", "backward", "optimizer")
SIDES = ("hand-written", "torch.distributions", "rdloss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per side")
    parser.add_argument(
        "--checks", action="store_true", help="rdloss and the helpers with their default checks"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 steps")
    args = parser.parse_args()
    if args.quick:
        args.steps = 10
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    flag = None if args.checks else False  # None: the helpers' own default (checked)
    loss_fn = rdloss.RateDistortionLoss(validate_args=args.checks)
    x = torch.randint(0, 2, (args.batch, PIXELS), generator=torch.Generator().manual_seed(0))
    x = x.float()
    model = MLPVAE()
    models = {side: copy.deepcopy(model) for side in SIDES}
    optimisers = {side: torch.optim.Adam(m.parameters(), lr=1e-4) for side, m in models.items()}
    times: dict[str, dict[str, list[float]]] = {s: {p: [] for p in PHASES} for s in SIDES}

    standard = Independent(
        Normal(torch.zeros(LATENT), torch.ones(LATENT), validate_args=False), 1, validate_args=False
    )

    def losses(side: str, mu: Tensor, logvar: Tensor, q: object, logits: Tensor) -> Tensor:
        if side == "hand-written":
            return (_bce(logits, x) + _gaussian_kl(mu, logvar)).mean()
        if side == "torch.distributions":
            posterior = Independent(
                Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1, validate_args=False
            )
            bernoulli = Bernoulli(logits=logits, validate_args=False)
            p = Independent(bernoulli, 1, validate_args=False)
            return (kl_divergence(posterior, standard) - p.log_prob(x)).mean()
        likelihood = helpers.bernoulli(logits=logits, validate_args=flag)
        out: rdloss.RDOutput = loss_fn(x, posterior=q, likelihood=likelihood)
        return out.loss

    def step(side: str, record: bool) -> None:
        net, optimiser = models[side], optimisers[side]
        t0 = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        mu, logvar = net.encoder(x).chunk(2, dim=-1)
        q = helpers.normal(mu, logvar=logvar, validate_args=flag)
        logits = net.decoder(q.rsample())
        t1 = time.perf_counter()
        loss = losses(side, mu, logvar, q, logits)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimiser.step()
        t4 = time.perf_counter()
        if record:
            for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                times[side][phase].append(seconds)

    # The losses agree on the same tensors before anything is timed.
    with torch.no_grad():
        mu, logvar = models["rdloss"].encoder(x).chunk(2, dim=-1)
        q = helpers.normal(mu, logvar=logvar, validate_args=flag)
        logits = models["rdloss"].decoder(q.rsample())
        reference = losses("hand-written", mu, logvar, q, logits)
        for side in SIDES:
            torch.testing.assert_close(losses(side, mu, logvar, q, logits), reference)
    for _ in range(10):  # warm-up
        for side in SIDES:
            step(side, record=False)
    for i in range(args.steps):
        shift = i % len(SIDES)  # each side takes each place in the order equally often
        for side in SIDES[shift:] + SIDES[:shift]:
            step(side, record=True)

    # The same loss forwards in a tight loop, on tensors of the same shapes.
    net = models["rdloss"]
    with torch.no_grad():
        mu, logvar = (t.requires_grad_() for t in net.encoder(x).chunk(2, dim=-1))
        logits = net.decoder(mu).requires_grad_()
    q = helpers.normal(mu, logvar=logvar, validate_args=flag)
    likelihood = helpers.bernoulli(logits=logits, validate_args=flag)
    loops: dict[str, Callable[[], object]] = {
        "hand-written": lambda: (_bce(logits, x) + _gaussian_kl(mu, logvar)).mean(),
        "torch.distributions": lambda: losses("torch.distributions", mu, logvar, q, logits),
        "rdloss": lambda: loss_fn(x, posterior=q, likelihood=likelihood).loss,
    }
    number = 20 if args.quick else 200
    tight = {
        side: min(timeit.repeat(fn, number=number, repeat=5)) / number for side, fn in loops.items()
    }

    load = os.getloadavg()
    checks = "default checks" if args.checks else "validate_args=False"
    print(
        f"rdloss from {os.path.dirname(os.path.dirname(rdloss.__file__))}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), MLP VAE, B={args.batch}, "
        f"{checks}; median of {args.steps} alternating steps; load average {load[0]:.1f}"
    )

    def row(name: str, hand: float, dists: float, ours: float) -> None:
        cells = " | ".join(f"{t * 1e6:.0f} us" for t in (hand, dists, ours))
        print(
            f"| {name} | {cells} | {(dists - hand) * 1e6:+.0f} us | {(ours - hand) * 1e6:+.0f} us |"
        )

    print(
        "| phase | hand-written | torch.distributions | rdloss "
        "| torch.distributions - hand | rdloss - hand |"
    )
    print("|---|---|---|---|---|---|")
    medians = {s: {p: statistics.median(times[s][p]) for p in PHASES} for s in SIDES}
    for phase in PHASES:
        row(phase, *(medians[s][phase] for s in SIDES))
    row("sum of medians", *(sum(medians[s].values()) for s in SIDES))
    row("loss forward, tight loop", *(tight[s] for s in SIDES))


if __name__ == "__main__":
    main()
