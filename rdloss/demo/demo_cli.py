"""``rdloss demo``, ``rdloss toy`` and ``rdloss sweep``: the runs (parsed by `rdloss.cli`).

Imported only to run a command: it imports torch.

The toy models and the digits models are trained in turn; on a terminal a tqdm bar follows
them, elsewhere one line per model says what was trained, how long it took and its R and D
(`rdloss.demo.progress`). The table, the findings and the files come at the end.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rdloss.demo import data, outputs, progress, results, sweep, toy

__all__ = ["run"]


def _specs(args: argparse.Namespace, error: type[Exception]) -> list[sweep.RunSpec]:
    if args.command == "demo":
        specs = [sweep.RunSpec("factorized", "beta", b) for b in (0.1, 0.3, 1.0, 3.0)]
        return [
            *specs,
            sweep.RunSpec("autoregressive", "beta", 1.0),
            sweep.RunSpec("autoregressive", "target_rate", args.target_rate),
        ]
    if args.command != "sweep":
        return []
    betas = args.beta if args.beta is not None else [] if args.target_rate else [0.1, 0.3, 1, 3]
    if not betas and not args.target_rate:
        raise error("nothing to run: give at least one --beta or --target-rate value")
    return [sweep.RunSpec(args.decoder, "beta", float(b)) for b in betas] + [
        sweep.RunSpec(args.decoder, "target_rate", float(s)) for s in args.target_rate
    ]


def run(args: argparse.Namespace, folder: Path, error: type[Exception]) -> None:
    """Run ``rdloss demo``, ``toy`` or ``sweep`` and write its files to ``folder``.

    Args:
        args: the parsed arguments.
        folder: the output folder (exists, writable).
        error: raised with a one-line message for a run that cannot go on.
    """
    from tqdm.auto import tqdm

    started, clock = time.time(), time.perf_counter()
    bars, lines = progress.modes(args.no_progress)
    quick = getattr(args, "quick", False)
    toy_runs: list[toy.ToyResult] = []
    digit_runs: list[sweep.DigitsResult] = []
    specs = _specs(args, error)
    toy_targets: list[float | None] = []
    if args.command in ("demo", "toy"):
        toy_targets = [None, args.target_rate if args.command == "toy" else 0.5]
    steps = 20 if quick else getattr(args, "toy_steps", getattr(args, "steps", 2000))
    epochs = 1 if quick else getattr(args, "epochs", 1)
    total = len(toy_targets) + len(specs)

    def report(what: str, seconds: float, rate: float, distortion: float) -> None:
        if lines:
            done = len(toy_runs) + len(digit_runs)
            line = progress.model_line(args.command, done, total, what, seconds, rate, distortion)
            print(line, flush=True)

    bar = tqdm(total=total, desc="rdloss", disable=not bars)
    if toy_targets:
        distribution = data.toy_data()
        for target in toy_targets:
            begun = time.perf_counter()
            try:
                run = toy.train_toy(
                    distribution,
                    target_rate=target,
                    steps=steps,
                    lr=getattr(args, "lr", 0.01),
                    seed=args.seed,
                    progress=bars,
                )
            except FloatingPointError as failure:
                raise error(f"{failure}; try a smaller --lr") from None
            toy_runs.append(run)
            what = f"toy {run.objective}" + ("" if target is None else f" sigma={target:g}")
            report(what, time.perf_counter() - begun, run.rate, run.distortion)
            bar.update()
    if specs:
        digits = data.load_digits()
        for spec in specs:
            begun = time.perf_counter()
            result = sweep.train_digits(
                spec,
                digits,
                marginal=args.marginal,
                latent_dim=args.latent_dim,
                epochs=epochs,
                seed=args.seed,
                progress=bars,
                device=args.device,
            )
            digit_runs.append(result)
            what = f"digits {spec.decoder} {spec.objective}={spec.value:g}"
            report(what, time.perf_counter() - begun, result.rate, result.distortion)
            bar.update()
    bar.close()
    rows = [results.from_toy(t) for t in toy_runs] + results.from_digits(digit_runs)
    found = results.findings(rows)
    elapsed = time.perf_counter() - clock
    print(results.format_results(rows))
    for t in toy_runs:
        m0, m1 = t.cluster_masses
        print(
            f"toy {t.objective}: cluster masses (left, right) = ({m0:.3f}, {m1:.3f}), "
            f"{t.used_states} latent states hold > 1% of the mass"
        )
    if found:
        print("\nThe paper's findings at this scale" + (" (--quick: meaningless)" if quick else ""))
        print(results.format_findings(found, quick=quick))
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
                print('(plots skipped: matplotlib is missing; pip install "rdloss[demo]")')
    print(f"\nwrote {', '.join(staged.written)} to {folder}/ in {elapsed:.0f} s")
