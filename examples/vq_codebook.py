"""A tiny VQ tokenizer and its codebook usage over an epoch.

Each 8x8 digit is cut into four 4x4 patches (the positions); each patch is split into its
top and bottom halves of 8 pixels, and each half is replaced by the nearest of ``K`` code
vectors of its own codebook (product quantisation: two codebooks, so two codes per
position). The codebooks are fitted by a few k-means steps on the training digits, from
randomly chosen training halves; identical starting vectors (binary halves repeat often)
and clusters that empty out leave codes that nothing selects: dead codes.

``diagnostics.CodebookUsage`` counts the held-out digits' codes over the epoch and reports,
per codebook, the usage entropy against ``log K`` (the rate slack), the perplexity and the
dead codes. For comparison the script prints the usual per-batch perplexity, ``exp(H)`` of
each batch's histogram averaged over the batches: it depends on the batch size and
understates the epoch's usage. Data: the 8x8 digits that ship with rdloss.
Run: ``python examples/vq_codebook.py``.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import torch
from torch import Tensor

from rdloss import diagnostics
from rdloss.demo.data import load_digits
from rdloss.diagnostics.functional import CodebookReport

POSITIONS, CODEBOOKS, DIMS = 4, 2, 8  # 4 patches per digit, 2 halves per patch, 8 pixels


class Result(NamedTuple):
    report: CodebookReport
    codes: Tensor  # (N, POSITIONS, CODEBOOKS) the held-out epoch's code indices
    batch_perplexity: Tensor  # (CODEBOOKS,) per-batch perplexity, averaged over batches
    codebooks: Tensor  # (CODEBOOKS, K, DIMS) the fitted code vectors


def halves(images: Tensor) -> Tensor:
    """``(N, 64)`` digits -> ``(N, 4, 2, 8)``: 4 patches of 4x4, each as two halves."""
    x = images.reshape(-1, 2, 4, 2, 4)  # digit, patch row, pixel row, patch column, column
    x = x.permute(0, 1, 3, 2, 4)  # digit, patch row, patch column, pixel row, column
    return x.reshape(-1, POSITIONS, CODEBOOKS, DIMS)  # pixel rows 0-1 | rows 2-3


def quantise(x: Tensor, codebooks: Tensor) -> Tensor:
    """Nearest code of each half: ``(..., G, d)`` and ``(G, K, d)`` -> ``(..., G)`` indices."""
    flat = x.reshape(-1, CODEBOOKS, DIMS).transpose(0, 1)  # (G, M, d)
    nearest = torch.cdist(flat, codebooks).argmin(-1)  # (G, M)
    return nearest.transpose(0, 1).reshape(x.shape[:-1])


def fit(x: Tensor, size: int, iterations: int) -> Tensor:
    """K-means codebooks ``(G, K, d)`` from random halves of ``x``; empty clusters stay put."""
    flat = x.reshape(-1, CODEBOOKS, DIMS).transpose(0, 1)  # (G, M, d)
    codebooks = flat[:, torch.randperm(flat.shape[1])[:size]].clone()
    for _ in range(iterations):
        nearest = torch.cdist(flat, codebooks).argmin(-1)  # (G, M)
        for g in range(CODEBOOKS):
            sums = torch.zeros_like(codebooks[g]).index_add_(0, nearest[g], flat[g])
            used = torch.bincount(nearest[g], minlength=size)
            moved = sums / used.clamp_min(1).unsqueeze(1)
            codebooks[g] = torch.where(used.unsqueeze(1) > 0, moved, codebooks[g])
    return codebooks


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--codebook-size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10, help="k-means steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    images = load_digits().images
    train, test = halves(images[:1500]), halves(images[1500:])
    codebooks = fit(train, args.codebook_size, args.iterations)

    usage = diagnostics.CodebookUsage(
        args.codebook_size, codebooks=CODEBOOKS, data_dims=images.shape[1]
    )
    per_batch, codes = [], []
    for x in test.split(args.batch_size):  # the held-out epoch, batch by batch
        indices = quantise(x, codebooks)  # (B, 4, 2): batch, positions, codebooks
        codes.append(indices)
        per_batch.append(usage(indices).perplexity)  # forward: the batch's own report
    report = usage.compute()  # the epoch's report
    batch_perplexity = torch.stack(per_batch).mean(0)

    print(
        f"K = {args.codebook_size}, {CODEBOOKS} codebooks, {POSITIONS} positions per digit: "
        f"nominal {float(report.nominal_rate_bits):.2f} bits per position, "
        f"{float(report.nominal_bits_per_dim):.3f} bits per pixel"
    )
    for g in range(CODEBOOKS):
        print(
            f"codebook {g}: H = {float(report.entropy_bits[g]):.3f} bits "
            f"(slack {float(report.slack_bits[g]):.3f} bits), "
            f"perplexity {float(report.perplexity[g]):.1f} of {args.codebook_size} over the "
            f"epoch ({float(batch_perplexity[g]):.1f} per batch of {args.batch_size}), "
            f"dead codes {int(report.dead_codes[g])} ({float(report.dead_fraction[g]):.0%})"
        )
    return Result(report, torch.cat(codes), batch_perplexity, codebooks)


if __name__ == "__main__":
    main()
