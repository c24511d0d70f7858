"""A VDVAE-style rate over many latent groups with top-down priors: rdloss against VDVAE's KL.

A hierarchical VAE in the style of VDVAE (Child, 2021, "Very Deep VAEs Generalize
Autoregressive Models and Can Outperform Them on Images", arXiv:2011.10650) has one latent
group per decoder block: ``--groups`` (default 40) convolutional groups of shape
``(B, C, H, W)`` (default ``(8, 16, 8, 8)``), each with a diagonal-Gaussian posterior and a
diagonal-Gaussian top-down prior, both given by a mean and a log standard deviation. The
rate is the sum over groups of each group's KL summed over ``(C, H, W)``; forward +
backward of the batch-mean rate (no model), to all four tensors of every group.

The baseline is VDVAE's own closed form, ``gaussian_analytical_kl`` in ``vae_helpers.py``
of https://github.com/openai/vdvae (written out again here from its formula)::

    -0.5 + logsigma2 - logsigma1 + 0.5 * (exp(logsigma1)**2 + (mu1 - mu2)**2) / exp(logsigma2)**2

summed per group per example; the groups are summed with one ``stack`` and one ``sum``
(VDVAE accumulates them in a loop of in-place additions, which costs more operators).

rdloss sides, posteriors and priors built with ``rdloss.helpers.normal(mu, scale=exp(logsigma))``
(or ``log_scale=logsigma`` where `rdloss.helpers.normal` accepts it, unless ``--scale``
is given: the form the figures before issue 20 used), with the helpers'
default checks or ``validate_args=False``:

* ``rate()``: ``rdloss.functional.rate(posterior, prior=prior).per_example`` per group,
  summed like the baseline;
* ``loss``: ``RateDistortionLoss`` (default, or ``validate_args=False``) called with
  ``posterior={name: ...}``, ``prior={name: ...}`` of all groups and a Bernoulli
  likelihood over a ``(B, 3, 32, 32)`` image; its baseline adds the same distortion
  (``bce_with_logits`` summed per example) to VDVAE's rate, batch mean.

All sides are timed in alternation in one process (`benchmarks._timing.compare_sides`) and
checked to compute the same value first. Issue 20's target, printed, not asserted: every
rdloss side within 1.1 times its baseline.
Run: ``python benchmarks/many_groups.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as tnf
from torch import Tensor
from torch.distributions import Distribution

import rdloss
from rdloss import functional, helpers

try:
    from benchmarks._counting import count
    from benchmarks._timing import compare_sides
except ImportError:  # run as a script from benchmarks/
    from _counting import count  # type: ignore[no-redef]
    from _timing import compare_sides  # type: ignore[no-redef]

B, GROUPS, SHAPE, IMAGE = 8, 40, (16, 8, 8), (3, 32, 32)
TARGET = 1.1
LOG_SCALE = "log_scale" in inspect.signature(helpers.normal).parameters


class Group(NamedTuple):
    """One latent group's tensors, each ``(B, C, H, W)``."""

    mu1: Tensor  # posterior mean
    logsigma1: Tensor  # posterior log standard deviation
    mu2: Tensor  # prior mean
    logsigma2: Tensor  # prior log standard deviation


def gaussian_analytical_kl(
    mu1: Tensor, mu2: Tensor, logsigma1: Tensor, logsigma2: Tensor
) -> Tensor:
    """KL(N(mu1, sigma1) || N(mu2, sigma2)) elementwise, VDVAE's ``vae_helpers.py`` formula."""
    return (
        -0.5
        + logsigma2
        - logsigma1
        + 0.5 * (logsigma1.exp() ** 2 + (mu1 - mu2) ** 2) / (logsigma2.exp() ** 2)
    )


def vdvae_rate(groups: list[Group]) -> Tensor:
    """``(B,)`` total rate: each group's KL summed over ``(C, H, W)``, summed over groups."""
    kls = [
        gaussian_analytical_kl(g.mu1, g.mu2, g.logsigma1, g.logsigma2).sum(dim=(1, 2, 3))
        for g in groups
    ]
    return torch.stack(kls).sum(0)


def _bce(logits: Tensor, x: Tensor) -> Tensor:
    return tnf.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=(1, 2, 3))


def normal(mu: Tensor, logsigma: Tensor, validate: bool, log_scale: bool) -> Distribution:
    """``helpers.normal`` from a mean and a log standard deviation, as a user would call it."""
    flag = None if validate else False  # None: the helper's own default
    if log_scale:
        return helpers.normal(mu, log_scale=logsigma, validate_args=flag)  # type: ignore[call-arg]
    return helpers.normal(mu, scale=torch.exp(logsigma), validate_args=flag)


def make_rate(validate: bool, log_scale: bool) -> Callable[[list[Group]], Tensor]:
    def rate(groups: list[Group]) -> Tensor:
        per_group = [
            functional.rate(
                normal(g.mu1, g.logsigma1, validate, log_scale),
                prior=normal(g.mu2, g.logsigma2, validate, log_scale),
            ).per_example
            for g in groups
        ]
        return torch.stack(per_group).sum(0).mean()

    return rate


def make_loss(validate: bool, log_scale: bool) -> Callable[[Tensor, Tensor, list[Group]], Tensor]:
    loss_fn = rdloss.RateDistortionLoss(validate_args=validate)
    flag = None if validate else False

    def loss(x: Tensor, logits: Tensor, groups: list[Group]) -> Tensor:
        posterior = {
            f"z{i}": normal(g.mu1, g.logsigma1, validate, log_scale) for i, g in enumerate(groups)
        }
        prior = {
            f"z{i}": normal(g.mu2, g.logsigma2, validate, log_scale) for i, g in enumerate(groups)
        }
        likelihood = helpers.bernoulli(logits=logits, validate_args=flag)
        return loss_fn(x, posterior=posterior, prior=prior, likelihood=likelihood).loss

    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="repeated comparisons")
    parser.add_argument("--repeats", type=int, default=20, help="alternating rounds per run")
    parser.add_argument("--number", type=int, default=5, help="calls per side per round")
    parser.add_argument("--batch", type=int, default=B, help=f"batch size (default {B})")
    parser.add_argument("--groups", type=int, default=GROUPS, help=f"groups (default {GROUPS})")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=SHAPE, metavar=("C", "H", "W"), help="group shape"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="build the Gaussians with scale=exp(logsigma) even where log_scale= exists",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run of 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.repeats, args.number = 1, 3, 2
    torch.set_num_threads(args.threads)
    batch, shape = args.batch, (args.batch, *args.shape)
    log_scale = LOG_SCALE and not args.scale

    torch.manual_seed(0)
    groups = [
        Group(*(torch.randn(shape).mul_(0.5).requires_grad_() for _ in range(4)))
        for _ in range(args.groups)
    ]
    leaves = [t for g in groups for t in g]
    x = torch.randint(0, 2, (batch, *IMAGE)).float()
    logits = torch.randn(batch, *IMAGE, requires_grad=True)

    def vdvae_loss() -> Tensor:
        return (_bce(logits, x) + vdvae_rate(groups)).mean()

    rate_on, rate_off, loss_on, loss_off = (
        make_rate(True, log_scale),
        make_rate(False, log_scale),
        make_loss(True, log_scale),
        make_loss(False, log_scale),
    )
    sides: dict[str, Callable[[], Tensor]] = {
        "VDVAE rate": lambda: vdvae_rate(groups).mean(),
        "rate(), default": lambda: rate_on(groups),
        "rate(), validate_args=False": lambda: rate_off(groups),
        "VDVAE rate + distortion": vdvae_loss,
        "loss, default": lambda: loss_on(x, logits, groups),
        "loss, validate_args=False": lambda: loss_off(x, logits, groups),
    }
    base_rate, base_loss = sides["VDVAE rate"](), vdvae_loss()
    for name, fn in sides.items():
        torch.testing.assert_close(fn(), base_loss if "loss" in name or "+" in name else base_rate)
    counts = {name: count(fn) for name, fn in sides.items()}

    def run(fn: Callable[[], Tensor]) -> Callable[[], None]:
        def call() -> None:
            fn().backward()
            for t in leaves:
                t.grad = None

        return call

    load = os.getloadavg()
    built = "log_scale=logsigma" if log_scale else "scale=exp(logsigma)"
    print(
        f"rdloss from {os.path.dirname(os.path.dirname(rdloss.__file__))}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), B={batch}, "
        f"{args.groups} groups of {tuple(args.shape)}, image {IMAGE}, helpers.normal(mu, "
        f"{built}); forward+backward; ratio: median and range of {args.runs} runs of "
        f"{args.repeats} alternating rounds; load average {load[0]:.1f} {load[1]:.1f} "
        f"{load[2]:.1f}"
    )
    pairs = [
        ("rate(), default", "VDVAE rate"),
        ("rate(), validate_args=False", "VDVAE rate"),
        ("loss, default", "VDVAE rate + distortion"),
        ("loss, validate_args=False", "VDVAE rate + distortion"),
    ]
    timings = compare_sides(
        {name: run(fn) for name, fn in sides.items()},
        pairs,
        runs=args.runs,
        repeats=args.repeats,
        number=args.number,
    )
    header = ["rdloss side", "baseline", "rdloss", "baseline", "ratio", "range"]
    header += ["forward ops", "syncs", "target"]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for side, base in pairs:
        t = timings[side, base]
        ops = f"{counts[side].n_ops} / {counts[base].n_ops}"
        print(
            f"| {side} | {base} | {t.ours * 1e3:.2f} ms | {t.baseline * 1e3:.2f} ms | "
            f"{t.ratio:.2f} | {t.range()} | {ops} | {counts[side].n_syncs} | <= {TARGET} |"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
