"""What each value check on the default path costs at B = 128, and what one fused check costs.

Times, in microseconds per call (median over alternating rounds), the primitives behind the
host synchronisations a default `RateDistortionLoss` call with `rdloss.helpers` makes
(see ``benchmarks/host_syncs.py --where``), on the tensors of a 784-pixel Bernoulli VAE with
32 latent dimensions, and the same guarantees folded into one reduction and one
synchronisation. Forward only: none of the checks is differentiated.

Run: ``python benchmarks/check_costs.py [--batch 128] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch.distributions import Bernoulli, Normal

LATENT, PIXELS = 32, 784


def _per_call_us(
    fns: dict[str, Callable[[], object]], rounds: int, number: int
) -> dict[str, float]:
    """Median microseconds per call of each function, all run in turn every round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - start) / number)
    return {k: 1e6 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    b = args.batch
    x = torch.randint(0, 2, (b, PIXELS), generator=g).float()
    mu, logvar = torch.randn(b, LATENT, generator=g), 0.1 * torch.randn(b, LATENT, generator=g)
    sigma = torch.exp(0.5 * logvar)
    logits = torch.randn(b, PIXELS, generator=g)
    rate, distortion = torch.rand(b, generator=g), 500 + torch.rand(b, generator=g)
    low, high = math.log(torch.finfo().tiny), math.log(torch.finfo().max)
    validated = Bernoulli(logits=logits, validate_args=True)

    def fused() -> None:
        # Every guarantee of the default path as 0-dim flags, one reduction, one sync.
        lo, hi = torch.aminmax(logvar)
        flags = torch.stack(
            [
                (lo >= low) & (hi <= high),  # helpers.normal: the variance's range
                torch.isfinite(mu).all(),  # Normal(loc): real
                torch.isfinite(x).all(),  # check_finite(x)
                ((x == 0) | (x == 1)).all(),  # Bernoulli support of x (implies finite x)
                torch.isfinite(logits).all(),  # Bernoulli(logits): real
                torch.isfinite(rate).all() & torch.isfinite(distortion).all(),  # outputs
            ]
        )
        if not bool(flags.all()):
            raise ValueError

    def fused_lean() -> None:
        # As `fused`, without what another flag implies: x in {0, 1} is finite; a
        # finite mean and log-variance in range give a positive finite scale.
        lo, hi = torch.aminmax(logvar)
        flags = torch.stack(
            [
                (lo >= low) & (hi <= high),
                torch.isfinite(mu).all(),
                ((x == 0) | (x == 1)).all(),
                torch.isfinite(logits).all(),
                torch.isfinite(rate).all() & torch.isfinite(distortion).all(),
            ]
        )
        if not bool(flags.all()):
            raise ValueError

    def screened() -> None:
        # The same guarantees from float reductions (vectorised, no (B, 784) bool temporaries):
        # a sum is non-finite if any term is; x (x - 1) is 0 exactly where x is 0 or 1 (and
        # NaN/inf elsewhere), so the sum of its absolute values is 0 iff x lies in {0, 1}.
        # A failed screen is re-checked exactly before raising (a sum may overflow).
        lo, hi = torch.aminmax(logvar)
        flags = torch.stack(
            [
                (lo >= low) & (hi <= high),
                (x * (x - 1)).abs().sum() == 0,
                torch.isfinite(rate.sum() + distortion.sum()),
            ]
        )
        if not bool(flags.all()):
            raise ValueError

    checks: dict[str, Callable[[], object]] = {
        "helpers.normal logvar range (aminmax + tolist)": lambda: torch.stack(
            torch.aminmax(logvar)
        ).tolist(),
        "Normal(loc, scale) argument checks (2 syncs)": lambda: Normal(
            mu, sigma, validate_args=True
        ),
        "Normal(loc, scale), validate_args=False": lambda: Normal(mu, sigma, validate_args=False),
        "Bernoulli(logits) argument check (1 sync)": lambda: Bernoulli(
            logits=logits, validate_args=True
        ),
        "Bernoulli(logits), validate_args=False": lambda: Bernoulli(
            logits=logits, validate_args=False
        ),
        "Bernoulli._validate_sample(x) (1 sync)": lambda: validated._validate_sample(x),
        "check_finite(x) (isfinite + tolist)": lambda: torch.stack(
            [torch.isfinite(x).all()]
        ).tolist(),
        "_check_outputs(rate, distortion) (1 sync)": lambda: torch.stack(
            [torch.isfinite(rate).all(), torch.isfinite(distortion).all()]
        ).tolist(),
        "torch.tensor(0.5) (a constant per call)": lambda: torch.tensor(0.5),
        "one extra batch mean of a (B,) tensor": lambda: rate.mean(),
        "all of the above guarantees fused, 1 sync": fused,
        "fused without implied flags, 1 sync": fused_lean,
        "screened with float reductions, 1 sync": screened,
        "x.sum() (a float reduction over the pixels)": lambda: x.sum(),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), B={b}, "
        f"latent={LATENT}, pixels={PIXELS}; microseconds per call, median of {args.rounds}"
    )
    for name, us in _per_call_us(checks, args.rounds, 50).items():
        print(f"{name:52s}{us:9.1f}")


if __name__ == "__main__":
    main()
