"""The ``rdloss`` command: reproduce "Fixing a Broken ELBO" on data shipped with the package.

Subcommands:

* ``rdloss demo``: the toy experiment and a small β sweep on 8x8 digits; a table, the
  paper's findings checked, ``results.csv``, ``results.json`` and plots in a folder.
* ``rdloss toy``: the paper's toy model with exact expectations, ELBO vs target rate.
* ``rdloss sweep``: a β / target-rate sweep on the digits with your choice of decoder and
  marginal.
* ``rdloss mnist``: the paper's MNIST findings on 5,000 shipped binarised MNIST digits.

Run ``rdloss <command> --help`` for the options. Errors in the arguments exit with code 2,
errors while running (e.g. an unwritable output folder) with code 1. Each command writes to
its own folder, ``./rdloss-output/<command>`` unless ``--out`` is given.

torch is imported only once the arguments are parsed, so ``rdloss --help`` and
``rdloss --version`` answer at once.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rdloss._version import __version__

__all__ = ["main"]

DEFAULT_OUT = "rdloss-output"
# Measured: `time rdloss demo --no-progress` on 2 shared CPU cores (docs/reproducing.md).
DEMO_TIME = "about 2 minutes"


class _RunError(Exception):
    """A runtime error reported as one line on stderr with exit code 1."""


def _number(text: str, *, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text!r}")
    return value


def _nonnegative(text: str) -> float:
    return _number(text, positive=False)


def _positive(text: str) -> float:
    return _number(text, positive=True)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**64:  # torch.manual_seed's range
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64), got {text!r}")
    return value


def _cpu_count() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default=None,
        type=Path,
        metavar="DIR",
        help=f"output folder, created if needed (default: ./{DEFAULT_OUT}/<command>)",
    )
    parser.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="torch CPU threads, at most the CPU count (default: 1; the models are tiny "
        "and gain nothing from more)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bars (they are shown only on a terminal)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG figures")


def _digits_options(parser: argparse.ArgumentParser, *, epochs: int) -> None:
    parser.add_argument(
        "--marginal",
        choices=("normal", "mixture", "vamp"),
        default="normal",
        help="marginal m(z): N(0, I), a learned Gaussian mixture, or a VampPrior (default: normal)",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=epochs,
        help=f"passes over the 1,500 training digits per model (default: {epochs})",
    )
    parser.add_argument(
        "--latent-dim", type=_positive_int, default=8, help="latent size (default: 8)"
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdloss",
        description="Rate-distortion losses for VAEs: reproduce 'Fixing a Broken ELBO' "
        "(Alemi et al., 2018) on data shipped with the package. Nothing downloads.",
        epilog="Start with: rdloss demo",
    )
    parser.add_argument("--version", action="version", version=f"rdloss {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help=f"toy model + digits β sweep, table and plots ({DEMO_TIME})",
        description="Run the toy experiment and a small β sweep on the "
        "embedded 8x8 digits; print the table and the paper's findings; write "
        "results.csv, results.json, rd_plane.png and trajectory.png.",
    )
    _common(demo)
    _digits_options(demo, epochs=100)
    demo.add_argument(
        "--toy-steps",
        type=_positive_int,
        default=2000,
        help="Adam steps per toy model (default: 2000)",
    )
    demo.add_argument(
        "--target-rate",
        type=_nonnegative,
        default=6.0,
        metavar="SIGMA",
        help="target rate for the autoregressive digits model (default: 6 nats)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a few steps only (smoke test; the numbers mean nothing)",
    )
    toy = sub.add_parser(
        "toy",
        help="the paper's toy model, exact expectations",
        description="Train the toy model (30 bins, 30 latent states, exact "
        "expectations) with the ELBO and with a target rate; report R, D, ELBO, "
        "H, the exact I(x;z) and the cluster masses.",
    )
    _common(toy)
    toy.add_argument("--steps", type=_positive_int, default=2000, help="Adam steps (default: 2000)")
    toy.add_argument(
        "--lr", type=_positive, default=0.01, help="Adam learning rate, > 0 (default: 0.01)"
    )
    toy.add_argument(
        "--target-rate",
        type=_nonnegative,
        default=0.5,
        metavar="SIGMA",
        help="sigma in nats (default: the paper's 0.5)",
    )
    sweep = sub.add_parser(
        "sweep",
        help="β / target-rate sweep on the 8x8 digits",
        description="Train one digits model per β and per target rate and "
        "report held-out R, D, ELBO, MI bounds and active units.",
    )
    _common(sweep)
    _digits_options(sweep, epochs=100)
    sweep.add_argument(
        "--beta",
        type=_nonnegative,
        nargs="*",
        default=None,
        metavar="B",
        help="β values (default: 0.1 0.3 1 3, or none if --target-rate is given)",
    )
    sweep.add_argument(
        "--target-rate",
        type=_nonnegative,
        nargs="*",
        default=[],
        metavar="SIGMA",
        help="target rates sigma in nats (default: none)",
    )
    sweep.add_argument(
        "--decoder",
        choices=("factorized", "autoregressive"),
        default="factorized",
        help="factorised Bernoulli or autoregressive MADE (default: factorized)",
    )
    from rdloss.demo import mnist_cli

    mnist_cli.add_parser(sub, _common, _positive_int, _nonnegative)
    return parser


def _check_device(device: str) -> None:
    """Fail with one line, before any training, on a device that cannot hold the models."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise _RunError(f"unknown --device {device!r}; try cpu or cuda") from None
    if kind == "meta":  # a meta tensor has no data: every reported number would be missing
        raise _RunError("--device meta holds no data; use a device that computes, e.g. cpu")
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as error:  # AssertionError: torch built without CUDA
        # torch's first sentence says why; the rest lists its dispatch keys.
        reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error) else "no device"
        raise _RunError(f"--device {device} is not available here: {reason}") from None


def _prepare(args: argparse.Namespace) -> Path:
    _check_device(getattr(args, "device", "cpu"))
    folder: Path = args.out if args.out is not None else Path(DEFAULT_OUT) / args.command
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".rdloss-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise _RunError(f"cannot write to output folder {folder}: {error.strerror}") from None
    return folder


def _run(args: argparse.Namespace) -> None:
    from rdloss.demo import data, outputs, results, sweep, toy

    folder = _prepare(args)
    if args.command == "mnist":
        from rdloss.demo import mnist_cli

        return mnist_cli.run(args, folder, _RunError)
    started, clock = time.time(), time.perf_counter()
    # Outside a terminal tqdm cannot redraw nested bars: it would leave escape codes behind.
    progress = not args.no_progress and sys.stderr.isatty()
    quick = getattr(args, "quick", False)
    toy_runs: list[toy.ToyResult] = []
    digit_runs: list[sweep.DigitsResult] = []
    specs: list[sweep.RunSpec] = []
    toy_targets: list[float | None] = []
    if args.command in ("demo", "toy"):
        toy_targets = [None, args.target_rate if args.command == "toy" else 0.5]
    if args.command == "demo":
        specs = [sweep.RunSpec("factorized", "beta", b) for b in (0.1, 0.3, 1.0, 3.0)]
        specs += [
            sweep.RunSpec("autoregressive", "beta", 1.0),
            sweep.RunSpec("autoregressive", "target_rate", args.target_rate),
        ]
    elif args.command == "sweep":
        betas = args.beta if args.beta is not None else [] if args.target_rate else [0.1, 0.3, 1, 3]
        if not betas and not args.target_rate:
            raise _RunError("nothing to run: give at least one --beta or --target-rate value")
        specs = [sweep.RunSpec(args.decoder, "beta", float(b)) for b in betas]
        specs += [sweep.RunSpec(args.decoder, "target_rate", float(s)) for s in args.target_rate]
    steps = 20 if quick else getattr(args, "toy_steps", getattr(args, "steps", 2000))
    epochs = 1 if quick else getattr(args, "epochs", 1)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(toy_targets) + len(specs), desc="rdloss", disable=not progress)
    if toy_targets:
        distribution = data.toy_data()
        for target in toy_targets:
            try:
                run = toy.train_toy(
                    distribution,
                    target_rate=target,
                    steps=steps,
                    lr=getattr(args, "lr", 0.01),
                    seed=args.seed,
                    progress=progress,
                )
            except FloatingPointError as error:
                raise _RunError(f"{error}; try a smaller --lr") from None
            toy_runs.append(run)
            bar.update()
    if specs:
        digits = data.load_digits()
        for spec in specs:
            digit_runs.append(
                sweep.train_digits(
                    spec,
                    digits,
                    marginal=args.marginal,
                    latent_dim=args.latent_dim,
                    epochs=epochs,
                    seed=args.seed,
                    progress=progress,
                    device=args.device,
                )
            )
            bar.update()
    bar.close()
    rows = [results.from_toy(t) for t in toy_runs] + results.from_digits(digit_runs)
    found = results.findings(rows)
    elapsed = time.perf_counter() - clock
    print(results.format_table(rows))
    for t in toy_runs:
        m0, m1 = t.cluster_masses
        print(
            f"toy {t.objective}: cluster masses (left, right) = ({m0:.3f}, {m1:.3f}), "
            f"{t.used_states} latent states hold > 1% of the mass"
        )
    if found:
        print("\nThe paper's findings at this scale" + (" (--quick: meaningless)" if quick else ""))
        print(results.format_findings(found))
    # Every file is staged under a temporary name and all are renamed at the end, so an
    # interrupted run leaves the previous run's files as they were, and a run that draws no
    # plots removes the previous run's plots instead of leaving them beside new numbers.
    with outputs.Staging(folder) as staged:
        results.write_csv(rows, staged.path("results.csv"))
        results.write_json(
            rows,
            staged.path("results.json"),
            command=args.command,
            seconds=round(elapsed, 1),
            provenance=outputs.provenance(vars(args), started),
            findings=[f._asdict() for f in found],
            attribution=data.DIGITS_ATTRIBUTION,
        )
        if not args.no_plot:
            try:
                from rdloss.demo.figures import save_figures

                save_figures(rows, toy_runs, digit_runs, staged.path)
            except ImportError:
                print("(plots skipped: matplotlib is missing; pip install rdloss[plot])")
    print(f"\nwrote {', '.join(staged.written)} to {folder}/ in {elapsed:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rdloss`` command.

    Args:
        argv: arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code: 0 on success (and for ``--help``, ``--version`` or no command,
        which print the help), 1 on a runtime error (one line on stderr), 2 on bad arguments
        (the usage of the command concerned and argparse's message on stderr).
    """
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # report them with the subcommand's usage, not the top-level one
            commands = _subcommands(parser)
            culprit = commands.get(args.command, parser) if args.command else parser
            culprit.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # argparse: --help (0) or a bad argument (2, message printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    import torch

    threads, wanted = torch.get_num_threads(), args.threads
    if wanted > _cpu_count():  # torch crashes (not raises) far past the CPU count
        args.threads = _cpu_count()
        print(f"rdloss: note: --threads {wanted} capped at {args.threads}, the CPU count")
    torch.set_num_threads(args.threads)
    try:
        _run(args)
    except _RunError as error:
        print(f"rdloss: error: {error}", file=sys.stderr)
        return 1
    finally:  # callers of main() in the same process keep their thread count
        torch.set_num_threads(threads)
    return 0


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


if __name__ == "__main__":
    raise SystemExit(main())
