"""``rdloss mnist``: the arguments and the run (registered by `rdloss.cli`).

The default run trains 11 models on the shipped 5,000 binarised MNIST digits (4,500 train,
500 held out); ``--data PATH`` reads full static MNIST (``.amat``) or torchvision's IDX files
instead; ``--quick`` is a smoke test whose numbers mean nothing. The two MAF models need zuko
and the figures matplotlib, both in ``pip install "rdloss[demo]"``; without zuko the run
trains the other 9 and says so in its findings and files.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a command runs, not for `rdloss --help`
    from rdloss.demo.mnist import MNISTSpec
    from rdloss.demo.mnist_report import Skipped

__all__ = ["ARTEFACTS", "DEFAULT_EPOCHS", "add_parser", "run", "runnable"]

ARTEFACTS = (
    "mnist_results.csv",
    "mnist_results.json",
    "mnist_rd_plane.png",
    "mnist_trajectory.png",
)

DEFAULT_EPOCHS = 8
DEFAULT_TARGET_RATE = 10.0
BETAS = (0.1, 0.3, 1.0, 3.0)
_QUICK_IMAGES = 200
# The package each marginal needs beyond rdloss's own dependencies.
_NEEDS = {"maf": "zuko"}


def add_parser(sub: Any, common: Any, positive_int: Any, nonnegative: Any) -> None:
    """Add the ``mnist`` subcommand to ``sub`` (an ``argparse`` subparsers action)."""
    parser = sub.add_parser(
        "mnist",
        help="the paper's MNIST findings: PixelCNN collapse, target rate, β sweep "
        "(about 17 minutes on 2 CPU cores)",
        description="Train conv-encoder VAEs with deconvolutional and PixelCNN decoders and "
        "N(0, I), VampPrior and MAF marginals on 5,000 shipped binarised MNIST digits (or "
        "--data); report held-out R, D, ELBO, MI bounds, active units, an IWAE NLL for the best "
        "model and the paper's findings; write mnist_results.csv/json and two PNGs. Uses 2 threads "
        "unless --threads says otherwise.",
    )
    # The PixelCNN's convolutions do gain from a second thread (~1.4x), unlike the toy models.
    common(parser, threads=2, quick=True)
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=DEFAULT_EPOCHS,
        help=f"passes over the training images per model (default: {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--target-rate",
        type=nonnegative,
        default=DEFAULT_TARGET_RATE,
        metavar="SIGMA",
        help=f"sigma of the PixelCNN's TargetRate run, nats (default: {DEFAULT_TARGET_RATE:g})",
    )
    parser.add_argument(
        "--latent-dim", type=positive_int, default=32, help="latent size (default: 32)"
    )
    parser.add_argument(
        "--iwae-samples",
        type=positive_int,
        default=50,
        metavar="K",
        help="importance samples for the best model's IWAE NLL (default: 50)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PATH",
        help="folder with binarized_mnist_{train,test}.amat or MNIST IDX files "
        "(train-images-idx3-ubyte, t10k-images-idx3-ubyte, or a torchvision root with "
        "MNIST/raw); default: the 5,000 shipped digits",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"one epoch on {_QUICK_IMAGES} images, 20 IWAE samples (smoke test; the numbers "
        "mean nothing)",
    )


def _versions() -> dict[str, str]:
    import torch

    import rdloss

    found = {"rdloss": rdloss.__version__, "torch": torch.__version__}
    try:
        import zuko

        found["zuko"] = str(getattr(zuko, "__version__", "unknown"))
    except ImportError:
        pass
    found["python"] = platform.python_version()
    return found


def runnable(specs: list[MNISTSpec]) -> tuple[list[MNISTSpec], list[Skipped]]:
    """Split ``specs`` into those that can run here and those whose package is missing.

    Returns:
        ``(runnable, skipped)``: the specs whose packages import, in order, and one
        `rdloss.demo.mnist_report.Skipped` per other spec, naming the missing package.
    """
    from rdloss.demo.mnist_report import Skipped

    ok: list[MNISTSpec] = []
    skipped: list[Skipped] = []
    for spec in specs:
        package = _NEEDS.get(spec.marginal)
        # find_spec is None when the package is not installed (or hidden as None in sys.modules).
        if package is not None and importlib.util.find_spec(package) is None:
            skipped.append(Skipped(spec.name, package))
        else:
            ok.append(spec)
    return ok, skipped


def run(args: argparse.Namespace, folder: Path, error: type[Exception]) -> None:
    """Run the experiment and write its files to ``folder``; ``error`` reports bad input."""
    import torch
    from tqdm.auto import tqdm

    from rdloss.demo import mnist, mnist_report, outputs, progress
    from rdloss.demo import results as report
    from rdloss.demo.mnist_data import MNIST_ATTRIBUTION, MNISTSplit, load_mnist

    started = time.perf_counter()
    try:
        data = load_mnist(args.data)
    except (OSError, ValueError) as failure:
        raise error(str(failure)) from None
    epochs, iwae_k = args.epochs, args.iwae_samples
    if args.quick:
        data = MNISTSplit(data.train[:_QUICK_IMAGES], data.test[:50], data.source)
        epochs, iwae_k = 1, 20
    specs, skipped = runnable(mnist.default_specs(target_rate=args.target_rate, betas=BETAS))
    if skipped:
        names = ", ".join(s.model for s in skipped)
        missing = ", ".join(sorted({s.package for s in skipped}))
        print(f"(skipped {names}: {missing} missing; {mnist_report.INSTALL_HINT})")
    # Bars on a terminal; elsewhere (a log file, nohup, CI) one line per model.
    bars, lines = progress.modes(args.no_progress)
    runs: list[mnist.MNISTRun] = []
    for index, spec in enumerate(tqdm(specs, desc="rdloss mnist", disable=not bars), 1):
        run = mnist.train_mnist(
            spec,
            data,
            latent_dim=args.latent_dim,
            epochs=epochs,
            seed=args.seed,
            progress=bars,
            device=args.device,
        )
        runs.append(run)
        if lines:
            r = run.result
            line = progress.model_line(
                "mnist", index, len(specs), spec.name, r.seconds, r.rate, r.distortion
            )
            print(line, flush=True)
    results = [r.result for r in runs]
    best = max(range(len(runs)), key=lambda i: results[i].elbo)
    iwae = {best: mnist.iwae_nll(runs[best], data.test.to(args.device), k=iwae_k)}
    # Ĥ: the lowest upper estimate of -log p(x) seen; an estimate of H, not a bound on it.
    entropy = min(iwae[best], *(-r.elbo for r in results))
    rows = mnist_report.rows_from(results, entropy=entropy, iwae=iwae)
    found = mnist_report.findings(rows, skipped=skipped)
    elapsed = time.perf_counter() - started
    print(report.format_table(rows, columns=mnist_report.COLUMNS, digits=2))
    print(
        f"\nĤ = {entropy:.2f} nats (estimate of H: the best model's IWAE NLL, k = {iwae_k}); "
        f"{len(data.train)} train / {len(data.test)} test images from {data.source}"
    )
    suffix = " (--quick: meaningless)" if args.quick else ""
    print(f"\nThe paper's findings at this scale{suffix}")
    print(report.format_findings(found))
    provenance = {
        "command": "mnist",
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seed": args.seed,
        "epochs": epochs,
        "versions": _versions(),
        "machine": f"{platform.machine()} {platform.system()}",
        "threads": torch.get_num_threads(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(elapsed, 1),
        "data": data.source,
        "train_images": len(data.train),
        "test_images": len(data.test),
        "entropy_estimate": entropy if math.isfinite(entropy) else None,
        "iwae_samples": iwae_k,
        "findings": [f._asdict() for f in found],
        "skipped": [s._asdict() for s in skipped],
        "attribution": MNIST_ATTRIBUTION,
    }
    # Staged and renamed together at the end, as `rdloss demo` does: an interrupted run
    # leaves the previous run's files as they were, and --no-plot removes old plots.
    with outputs.Staging(folder, ARTEFACTS) as staged:
        report.write_csv(rows, staged.path("mnist_results.csv"), columns=mnist_report.COLUMNS)
        report.write_json(rows, staged.path("mnist_results.json"), **provenance)
        if not args.no_plot:
            try:
                mnist_report.save_figures(rows, results, entropy, staged.path)
            except ImportError:
                print(f"(plots skipped: matplotlib is missing; {mnist_report.INSTALL_HINT})")
    print(f"\nwrote {', '.join(staged.written)} to {folder}/ in {elapsed:.0f} s")
