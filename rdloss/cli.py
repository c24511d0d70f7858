"""The ``rdloss`` command: reproduce "Fixing a Broken ELBO" on data shipped with the package.

Subcommands:

* ``rdloss demo``: the toy experiment and a small β sweep on 8x8 digits; a table, the
  paper's findings checked, ``results.csv``, ``results.json`` and plots in a folder.
* ``rdloss toy``: the paper's toy model with exact expectations, ELBO vs target rate.
* ``rdloss sweep``: a β / target-rate sweep on the digits with your choice of decoder and
  marginal.
* ``rdloss mnist``: the paper's MNIST findings on 5,000 shipped binarised MNIST digits.
* ``rdloss multirate``: the Multi-Rate VAE (Bae et al., 2023) on the same digits: one run
  for the whole rate-distortion curve against separately trained β-VAEs.

Run ``rdloss <command> --help`` for the options. Errors in the arguments exit with code 2,
errors while running (e.g. an unwritable output folder) with code 1. Each command writes to
its own folder, ``./rdloss-output/<command>`` (``<command>-quick`` for ``--quick``) unless
``--out`` is given, and keeps the results of a run with other arguments found there unless
``--overwrite`` is given.

torch is imported only once the arguments are parsed, so ``rdloss --help`` and
``rdloss --version`` answer at once.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rdloss._version import __version__

__all__ = ["main"]

DEFAULT_OUT = "rdloss-output"
# Measured: `time rdloss demo --no-progress` on 2 shared CPU cores (docs/reproducing.md).
DEMO_TIME = "about a minute on 2 CPU cores"
# The file holding each command's arguments: a run with others does not replace it.
_REPORTS = {
    "demo": "results.json",
    "toy": "results.json",
    "sweep": "results.json",
    "mnist": "mnist_results.json",
    "multirate": "multirate_results.json",
}


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


def _common(parser: argparse.ArgumentParser, *, threads: int = 1, quick: bool = False) -> None:
    """The options every command has; ``threads``: its default; ``quick``: it has --quick."""
    command = parser.prog.split()[-1]
    parser.add_argument(
        "--out",
        default=None,
        type=Path,
        metavar="DIR",
        help=f"output folder, created if needed (default: ./{DEFAULT_OUT}/{command}"
        + (f", ./{DEFAULT_OUT}/{command}-quick for --quick)" if quick else ")"),
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of a run with other arguments in the output folder "
        "(without it they are kept and the run stops before training)",
    )
    parser.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=threads,
        metavar="N",
        help=f"torch CPU threads, at most the CPU count (default: {threads})",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress (bars on a terminal, else one line per model)",
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
    _common(demo, quick=True)
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
    from rdloss.demo import mnist_cli, mnist_multirate_cli

    mnist_cli.add_parser(sub, _common, _positive_int, _nonnegative)
    mnist_multirate_cli.add_parser(sub, _common, _positive_int)
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
    """The output folder, writable, and holding no other run's results unless --overwrite."""
    _check_device(getattr(args, "device", "cpu"))
    from rdloss.demo import outputs

    quick = getattr(args, "quick", False)
    own = Path(DEFAULT_OUT) / (f"{args.command}-quick" if quick else args.command)
    folder: Path = own if args.out is None else args.out
    full = Path(DEFAULT_OUT) / args.command
    if args.out is None and quick and (full / _REPORTS[args.command]).exists():
        print(f"rdloss: note: --quick writes to {folder}/; the full run's results in {full}/ stay")
    why = outputs.replaced_run(folder / _REPORTS[args.command], vars(args))
    if why is not None and not args.overwrite:
        raise _RunError(
            f"kept {why} in {folder}/: pass --overwrite to replace them, "
            "or --out DIR to write elsewhere"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".rdloss-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise _RunError(f"cannot write to output folder {folder}: {error.strerror}") from None
    return folder


def _run(args: argparse.Namespace) -> None:
    folder = _prepare(args)
    if args.command == "mnist":
        from rdloss.demo import mnist_cli

        return mnist_cli.run(args, folder, _RunError)
    if args.command == "multirate":
        from rdloss.demo import mnist_multirate_cli

        return mnist_multirate_cli.run(args, folder, _RunError)
    from rdloss.demo import demo_cli

    return demo_cli.run(args, folder, _RunError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rdloss`` command.

    Args:
        argv: arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code: 0 on success (and for ``--help``, ``--version`` or no command,
        which print the help), 1 on a runtime error (one line on stderr) or when the reader
        of stdout has gone (``rdloss demo | head -3``: the run stops without a traceback),
        2 on bad arguments (the usage of the command concerned and argparse's message on
        stderr).
    """
    try:
        return _main(argv)
    except BrokenPipeError:
        _silence_stdout()
        return 1


def _main(argv: Sequence[str] | None) -> int:
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


def _silence_stdout() -> None:
    """Point stdout at the null device after a broken pipe, as the Python docs advise.

    Python flushes stdout once more at exit; into the closed pipe that flush would fail
    again and print a second error. Where stdout is no file (an in-process caller's
    capture), there is nothing to redirect.
    """
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        pass


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


if __name__ == "__main__":
    raise SystemExit(main())
