"""Mixture ``log_prob``: rdloss's expanded square against ``MixtureSameFamily``.

Times forward + backward of ``log_prob(z).sum()`` with respect to ``z`` and the mixture
parameters (logits, means, pre-softplus scales) at B = 1024 points, K = 512 components,
D = 64 dimensions, float32 on CPU, for

* ``rdloss``: :class:`rdloss.distributions.DiagonalGaussianMixture` (two matrix products,
  ``O(B K)`` memory), and
* ``torch``: ``MixtureSameFamily(Categorical, Independent(Normal))``, which builds
  ``(B, K, D)`` tensors.

Time: both variants in this process, one call each in alternation, ``--repeats`` rounds
after two warm-up rounds; the ratio is the median of the per-round ratios, repeated
``--runs`` times (median and range printed), on one thread by default (``--threads``).
One thread compares the algorithms, not the thread pool: on a shared machine, each of
rdloss's many small parallel kernels waits for a descheduled second OpenMP thread (a few
ms per kernel), which inflates its time several-fold while barely touching the few large
kernels of the baseline.

Peak memory: ``tracemalloc`` does not see torch's allocations, so each variant runs in a
fresh subprocess with ``MALLOC_MMAP_THRESHOLD_=65536``: every tensor of 64 KiB or more is
then its own ``mmap``, resident while alive and returned to the system when freed, so the
process's peak resident set tracks the peak of live tensors. After imports and input
allocation the child resets its peak (``echo 5 > /proc/self/clear_refs``, Linux), runs one
forward + backward and reports the peak (``VmHWM``) minus the resident set before the call;
``--runs`` processes per variant (median and range printed).
This counts the intermediates of forward and backward, the gradients, and one-off runtime
buffers (the latter make the figure conservative for the smaller side). Linux only.

Accuracy: the float32 ``log_prob`` of each variant against a float64 reference on the same
(float32-representable) inputs, max relative error, for typical ``z`` and for ``z``
large against the component scales (mixture 1000 away from the origin with scales about
0.05, points drawn from it).

Run: ``python benchmarks/mixture_logprob.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from rdloss.distributions import DiagonalGaussianMixture

try:
    from benchmarks._timing import Timing, compare_runs
except ImportError:  # run as a script from benchmarks/
    from _timing import Timing, compare_runs  # type: ignore[no-redef]

B, K, D = 1024, 512, 64
VARIANTS = ("rdloss", "torch")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1])


def make_inputs(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(K, generator=g, dtype=dtype)
    loc = torch.randn(K, D, generator=g, dtype=dtype)
    raw_scale = torch.randn(K, D, generator=g, dtype=dtype) * 0.3
    z = 1.5 * torch.randn(B, D, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (logits, loc, raw_scale, z)]


def log_prob(variant: str, logits, loc, scale, z) -> torch.Tensor:
    if variant == "rdloss":
        return DiagonalGaussianMixture(logits, loc, scale, validate_args=False).log_prob(z)
    components = Independent(Normal(loc, scale, validate_args=False), 1)
    mixture = MixtureSameFamily(
        Categorical(logits=logits, validate_args=False), components, validate_args=False
    )
    return mixture.log_prob(z)


def step(variant: str, inputs: list[torch.Tensor]) -> None:
    logits, loc, raw_scale, z = inputs
    log_prob(variant, logits, loc, F.softplus(raw_scale), z).sum().backward()
    for t in inputs:
        t.grad = None


def measure_memory(variant: str) -> None:
    """Child process: print the peak resident increase of one forward + backward (KiB)."""
    inputs = make_inputs()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set
    base = _status_kib("VmRSS")
    step(variant, inputs)
    print(json.dumps({"peak_kib": _status_kib("VmHWM") - base}))


def peak_memory_mib(variant: str, threads: int) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, __file__, "--memory", variant, "--threads", str(threads)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_kib"]) / 1024


def time_ratio(runs: int, repeats: int) -> Timing:
    """rdloss against torch, one forward + backward each, in alternation, ``runs`` times."""
    inputs = make_inputs()
    return compare_runs(
        lambda: step("rdloss", inputs),
        lambda: step("torch", inputs),
        runs=runs,
        repeats=repeats,
        number=1,
        warmup=2,
    )


def max_relative_error(large: bool) -> dict[str, float]:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(K, generator=g, dtype=torch.float64)
    loc = torch.randn(K, D, generator=g, dtype=torch.float64)
    scale = 0.3 + torch.rand(K, D, generator=g, dtype=torch.float64)
    if large:
        loc, scale = 1000.0 + loc, 0.05 * scale
        torch.manual_seed(2)
        z = DiagonalGaussianMixture(logits, loc, scale).sample((B,))
    else:
        z = 1.5 * torch.randn(B, D, generator=g, dtype=torch.float64)
    params32 = [t.float() for t in (logits, loc, scale, z)]
    with torch.no_grad():
        reference = log_prob("torch", *[t.double() for t in params32])
        errors = {}
        for variant in ("rdloss", "torch"):
            got = log_prob(variant, *params32).double()
            errors[variant] = ((got - reference).abs() / reference.abs()).max().item()
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="alternating rounds per run")
    parser.add_argument("--runs", type=int, default=5, help="timing runs and memory processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--memory", choices=["rdloss", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory:
        measure_memory(args.memory)
        return

    print(
        f"B={B} K={K} D={D} float32, forward + backward, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    t = time_ratio(args.runs, args.repeats)
    # torch / rdloss: how many times faster and leaner rdloss is; medians and ranges.
    speedups = sorted(1 / r for r in (t.low, t.high))
    memory = {v: [peak_memory_mib(v, args.threads) for _ in range(args.runs)] for v in VARIANTS}
    savings = sorted(
        a / max(b, 1e-3) for a, b in zip(memory["torch"], memory["rdloss"], strict=True)
    )
    print(f"{'':24}{'rdloss':>12}{'torch':>12}{'ratio':>10}  range over {args.runs} runs")
    print(
        f"{'time, median (ms)':24}{t.ours * 1e3:12.2f}{t.baseline * 1e3:12.2f}"
        f"{1 / t.ratio:9.1f}x  {speedups[0]:.1f}-{speedups[1]:.1f}x"
    )
    peak = {v: statistics.median(m) for v, m in memory.items()}
    print(
        f"{'peak memory (MiB)':24}{peak['rdloss']:12.1f}{peak['torch']:12.1f}"
        f"{statistics.median(savings):9.1f}x  {savings[0]:.1f}-{savings[-1]:.1f}x"
    )
    print(
        f"(a (B, K, D) float32 tensor is {B * K * D * 4 / 2**20:.0f} MiB; "
        f"a (B, K) one {B * K * 4 / 2**20:.1f} MiB; load average {os.getloadavg()[0]:.1f})"
    )
    for label, large in (("typical z", False), ("|z| large vs scales", True)):
        errors = max_relative_error(large)
        print(
            f"float32 vs float64, {label}: max relative error rdloss {errors['rdloss']:.1e}, "
            f"torch {errors['torch']:.1e}"
        )


if __name__ == "__main__":
    main()
