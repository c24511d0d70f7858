"""``rdloss multirate``: the arguments and the run (registered by `rdloss.cli`).

The default run trains, on the shipped 5,000 binarised MNIST digits (4,500 train, 500 held
out), four deconvolutional β-VAEs (β = 0.1, 0.3, 1, 3), one Multi-Rate deconvolutional
model and one Multi-Rate PixelCNN model, all for the same number of epochs, and evaluates
the Multi-Rate models at 16 β with `rdloss.evaluate`. ``--quick`` is a smoke test whose
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from pathlib import Path
from typing import Any

__all__ = ["ARTEFACTS", "DEFAULT_EPOCHS", "add_parser", "run"]

ARTEFACTS = ("multirate_results.csv", "multirate_results.json", "multirate_rd_curve.png")
DEFAULT_EPOCHS = 8  # as `rdloss mnist`, and as the paper's MNIST comparison
_WARM_UP = 64  # images of the untimed warm-up step
_QUICK_IMAGES = 200


def add_parser(sub: Any, common: Any, positive_int: Any) -> None:
    """Add the ``multirate`` subcommand to ``sub`` (an ``argparse`` subparsers action)."""
    parser = sub.add_parser(
        "multirate",
        help="Multi-Rate VAE on MNIST: one run for the whole RD curve vs 4 β-VAEs, and "
        "where a PixelCNN's rate collapses (about 4 minutes on 2 CPU cores)",
        description="Reproduce the Multi-Rate VAE (Bae et al., ICLR 2023) on 5,000 shipped "
        "binarised MNIST digits (or --data): one gated conv-encoder/deconv-decoder model "
        "trained for every β in [0.01, 10] against four β-VAEs trained separately at β = 0.1, "
        "0.3, 1, 3, and one Multi-Rate PixelCNN model; held-out R, D, ELBO at 16 β; the "
        "findings; multirate_results.csv/json and multirate_rd_curve.png.",
    )
    # One thread: on a machine shared with other jobs two threads ran these small models
    # 5-20 times slower (threads waiting for each other), one never did.
    common(parser, threads=1, quick=True)
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=DEFAULT_EPOCHS,
        help=f"passes over the training images, for every model (default: {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--latent-dim", type=positive_int, default=32, help="latent size (default: 32)"
    )
    parser.add_argument(
        "--iwae-samples",
        type=positive_int,
        default=50,
        metavar="K",
        help="importance samples of the IWAE estimate of H (default: 50)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PATH",
        help="folder with static MNIST .amat or MNIST IDX files, as for rdloss mnist; "
        "default: the 5,000 shipped digits",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"one epoch on {_QUICK_IMAGES} images, 5 IWAE samples (smoke test; the numbers "
        "mean nothing)",
    )


def run(args: argparse.Namespace, folder: Path, error: type[Exception]) -> None:
    """Run the experiment and write its files to ``folder``; ``error`` reports bad input."""
    from rdloss.demo import mnist_multirate as mr
    from rdloss.demo import mnist_multirate_report as report
    from rdloss.demo import outputs, progress
    from rdloss.demo import results as tables
    from rdloss.demo.mnist import DecoderKind
    from rdloss.demo.mnist_data import MNIST_ATTRIBUTION, MNISTSplit, load_mnist

    started, clock = time.time(), time.perf_counter()
    try:
        data = load_mnist(args.data)
    except (OSError, ValueError) as failure:
        raise error(str(failure)) from None
    epochs, iwae_k = args.epochs, args.iwae_samples
    if args.quick:
        data = MNISTSplit(data.train[:_QUICK_IMAGES], data.test[:50], data.source)
        epochs, iwae_k = 1, 5
    train, test = data.train.to(args.device), data.test.to(args.device)
    grid = mr.beta_grid()
    bars, lines = progress.modes(args.no_progress)
    plan: list[tuple[DecoderKind, float | None]] = [
        *(("deconv", b) for b in mr.SWEEP),
        ("deconv", None),
        ("pixelcnn", None),
    ]
    # One untimed step of each decoder first: the first model trained in a process pays
    # torch's one-time start-up (seconds), which would be charged to the first β-VAE and
    # bias check 2 towards the Multi-Rate run. Each model seeds itself: nothing else moves.
    for kind in ("deconv", "pixelcnn"):
        mr.train_model(
            kind, train[:_WARM_UP], beta=1.0, latent_dim=args.latent_dim, epochs=1, seed=args.seed
        )
    rows: list[report.Row] = []
    separate_seconds, eval_seconds = 0.0, 0.0
    pixelcnn: mr.Trained | None = None
    for index, (kind, beta) in enumerate(plan, 1):
        name = f"{kind} " + ("Multi-Rate" if beta is None else f"β={beta:g}")
        desc = name if bars else None
        model = mr.train_model(
            kind,
            train,
            beta=beta,
            latent_dim=args.latent_dim,
            epochs=epochs,
            seed=args.seed,
            desc=desc,
        )
        begun = time.perf_counter()
        if beta is None:
            pixelcnn = model if kind == "pixelcnn" else pixelcnn
            points = mr.curve(model, test, grid)
            rows += report.rows_from(kind, "curve", points, model.seconds)
            shown = next(p for p in points if p.beta == 1.0)
        else:
            separate_seconds += model.seconds
            shown = mr.evaluate_at(model, test, beta)
            rows += report.rows_from(kind, "separate", [shown], model.seconds)
        eval_seconds += time.perf_counter() - begun
        if lines:
            what = name + (" (R, D at β=1)" if beta is None else "")
            seconds = time.perf_counter() - begun + model.seconds
            line = progress.model_line(
                "multirate", index, len(plan), what, seconds, shown.rate, shown.distortion
            )
            print(line, flush=True)
    # Ĥ: an IWAE estimate of -log p(x) by the PixelCNN at its best β, or a lower -ELBO.
    assert pixelcnn is not None  # the plan's last model
    at = max(
        (i for i, r in enumerate(rows) if (r.decoder, r.kind) == ("pixelcnn", "curve")),
        key=lambda i: rows[i].elbo,
    )
    best = rows[at]
    nll = mr.evaluate_at(pixelcnn, test, best.beta, iwae_samples=iwae_k).nll
    rows[at] = best._replace(iwae_nll=nll)
    entropy = min(nll, *(-r.elbo for r in rows))
    found = report.findings(rows, separate_seconds=separate_seconds)
    elapsed = time.perf_counter() - clock
    provenance = outputs.provenance(vars(args), started)
    with outputs.Staging(folder, ARTEFACTS) as staged:
        tables.write_csv(rows, staged.path("multirate_results.csv"), columns=report.COLUMNS)
        tables.write_json(
            rows,
            staged.path("multirate_results.json"),
            command="multirate",
            seconds=round(elapsed, 1),
            epochs=epochs,
            separate_train_seconds=round(separate_seconds, 1),
            evaluation_seconds=round(eval_seconds, 1),
            train_images=len(data.train),
            test_images=len(data.test),
            data=data.source,
            entropy_estimate=entropy if math.isfinite(entropy) else None,
            iwae_samples=iwae_k,
            beta_grid=list(grid),
            seed=args.seed,
            command_line=command_line(args),
            provenance={**provenance, "threads": _threads()},
            findings=[f._asdict() for f in found],
            attribution=MNIST_ATTRIBUTION,
        )
        plotted = args.no_plot
        if not args.no_plot:
            try:
                report.save_figure(rows, entropy, staged.path)
                plotted = True
            except ImportError:
                pass
    # Printed after the files are written: a reader that closes the pipe early (| head)
    # ends the printing, not the results of the run.
    print(tables.format_table(rows, columns=report.COLUMNS, digits=2))
    print(
        f"\nĤ = {entropy:.2f} nats (estimate of H: the lowest of the PixelCNN's IWAE NLL at "
        f"β = {best.beta:.3g}, k = {iwae_k}, and every -ELBO); {len(data.train)} train / "
        f"{len(data.test)} test images from {data.source}; epochs per model: {epochs}; "
        f"evaluation {eval_seconds:.0f} s; {elapsed:.0f} s in all"
    )
    suffix = " (--quick: meaningless)" if args.quick else ""
    print(f"\nThe Multi-Rate VAE's findings at this scale{suffix}")
    print(report.format_findings(found))
    if not plotted:
        print('(plot skipped: matplotlib is missing; pip install "rdloss[demo]")')
    print(f"\nwrote {', '.join(staged.written)} to {folder}/ in {elapsed:.0f} s")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def command_line(args: argparse.Namespace) -> str:
    """A command line that repeats this run (every option spelled out).

    Examples:
        >>> parsed = argparse.Namespace(epochs=8, latent_dim=32, iwae_samples=50, seed=0,
        ...     threads=1, device="cpu", quick=True, data=None, out=None, overwrite=False,
        ...     no_progress=False, no_plot=False)
        >>> line = command_line(parsed)
        >>> line[:43], line[-41:]
        ('rdloss multirate --epochs 8 --latent-dim 32', '--seed 0 --threads 1 --device cpu --quick')
    """
    words = ["rdloss", "multirate"]
    for key in ("epochs", "latent_dim", "iwae_samples", "seed", "threads", "device", "data", "out"):
        value = getattr(args, key)
        if value is not None:
            words += [f"--{key.replace('_', '-')}", str(value)]
    for flag in ("quick", "overwrite", "no_progress", "no_plot"):
        if getattr(args, flag):
            words.append(f"--{flag.replace('_', '-')}")
    return shlex.join(words)
