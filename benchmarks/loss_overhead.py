"""Overhead of RateDistortionLoss against a hand-written beta-VAE loss on identical tensors.

B = 128, 32 latent dims, 784 Bernoulli pixels, CPU; forward + backward to the encoder and
decoder outputs. Both are timed in alternation in one process, ``--runs`` times, and the
median ratio and the range over runs are printed, in eager mode (with rdloss' value checks
on, the default, and off) and under ``torch.compile(fullgraph=True)``. A third function,
`distributions_floor`, writes out by hand the least a loss built on ``torch.distributions``
objects computes, to separate the cost of that design from rdloss' own.
Run: ``python benchmarks/loss_overhead.py``.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as tnf
from torch.distributions import Bernoulli, Independent, Normal

import rdloss
from rdloss import helpers, objectives

try:
    from benchmarks._timing import compare_runs
except ImportError:  # run as a script from benchmarks/
    from _timing import compare_runs  # type: ignore[no-redef]

B, LATENT, PIXELS, BETA = 128, 32, 784, 0.5


def handwritten(x, mu, logvar, logits):
    distortion = tnf.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    rate = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
    return (distortion + BETA * rate).mean()


def distributions_floor(x, mu, logvar, logits):
    """The least any loss built on torch.distributions objects does, written out by hand.

    What rdloss' interface (distributions in, rate and distortion reported) costs before
    rdloss adds anything: the posterior and likelihood objects, the rate per dimension (it
    is reported), the four-op closed form, both batch means (reported), the ELBO and the
    objective's step counter.
    """
    q = Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1)
    p = Independent(Bernoulli(logits=logits, validate_args=False), 1)
    loc, scale = q.base_dist.loc, q.base_dist.scale
    per_dim = torch.addcmul(-0.5 - scale.log(), loc, loc, value=0.5)
    rate = torch.addcmul(per_dim, scale, scale, value=0.5).sum(-1)
    distortion = tnf.binary_cross_entropy_with_logits(p.base_dist.logits, x, reduction="none").sum(
        -1
    )
    mean_rate, mean_distortion = rate.mean(), distortion.mean()
    _FLOOR_STEP.add_(1)
    _ = -(mean_rate + mean_distortion)  # the ELBO
    return mean_distortion + BETA * mean_rate


_FLOOR_STEP = torch.zeros((), dtype=torch.long)


def make_rdloss(validate: bool):
    loss_fn = rdloss.RateDistortionLoss(objective=objectives.Beta(BETA), validate_args=validate)
    # None: torch.distributions' own default (explicit True cannot be traced by dynamo).
    dist_validate = None if validate else False

    def step(x, mu, logvar, logits):
        posterior = helpers.normal(mu, logvar=logvar, validate_args=dist_validate)
        likelihood = helpers.bernoulli(logits=logits, validate_args=dist_validate)
        return loss_fn(x, posterior=posterior, likelihood=likelihood).loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5, help="repeated comparisons per row")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--batch", type=int, default=B, help="batch size (default 128)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch

    torch.manual_seed(0)
    x = torch.randint(0, 2, (batch, PIXELS)).float()
    leaves = [
        torch.randn(batch, LATENT, requires_grad=True),
        torch.randn(batch, LATENT, requires_grad=True),
        torch.randn(batch, PIXELS, requires_grad=True),
    ]

    def run(fn):
        def call():
            fn(x, *leaves).backward()

        return call

    reference = handwritten(x, *leaves)
    torch.testing.assert_close(make_rdloss(True)(x, *leaves), reference)
    torch.testing.assert_close(distributions_floor(x, *leaves), reference)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={batch}, "
        f"latent={LATENT}, pixels={PIXELS}, forward+backward; ratio: median and range "
        f"over {args.runs} runs, load average {os.getloadavg()[0]:.1f}"
    )
    rows = [
        ("eager, value checks on (default)", make_rdloss(True), handwritten),
        ("eager, value checks off", make_rdloss(False), handwritten),
        ("eager, distributions floor (no rdloss)", distributions_floor, handwritten),
        ("eager, value checks off vs the floor", make_rdloss(False), distributions_floor),
    ]
    if not args.no_compile:
        compiled_ours = torch.compile(make_rdloss(True), fullgraph=True)
        compiled_base = torch.compile(handwritten, fullgraph=True)
        torch.testing.assert_close(compiled_ours(x, *leaves), reference)
        compiled_floor = torch.compile(distributions_floor, fullgraph=True)
        rows.append(("torch.compile(fullgraph=True), both compiled", compiled_ours, compiled_base))
        rows.append(("torch.compile, the floor", compiled_floor, compiled_base))
    for label, ours, base in rows:
        t = compare_runs(run(ours), run(base), runs=args.runs, repeats=args.repeats)
        print(
            f"{label:48s} rdloss {t.ours * 1e6:8.1f} us  hand-written {t.baseline * 1e6:8.1f} us"
            f"  ratio {t.ratio:5.3f}  range {t.range()}",
            flush=True,
        )


if __name__ == "__main__":
    main()
