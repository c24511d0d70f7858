r"""Codebook usage of discrete codes (VQ-VAE, FSQ, LFQ tokenizers) over a whole epoch.

A tokenizer with ``G`` codebooks of ``K`` codes has a nominal rate of $G \log K$ nats per
position; what it uses is the entropy $H_g$ of each codebook's empirical code
distribution, **counted over the whole epoch**. Perplexities computed per batch (the usual
``exp(H)`` of a batch's code histogram) depend on the batch size: a batch of ``B``
positions can show at most ``B`` codes, so small batches understate usage. Here the code
counts are an ``int64`` ``(G, K)`` state reduced by sum, so every batching of an epoch and
every split across processes gives the same counts, bit for bit, and the same report.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import torch
from torch import Tensor
from typing_extensions import override

from rdloss._checks import check_positive_int, check_tensor, should_validate
from rdloss.diagnostics._metric import _Diagnostic

__all__ = ["CodebookReport", "CodebookUsage", "codebook_usage"]

LN2 = math.log(2.0)
_PER_CODEBOOK = (
    "entropy",
    "entropy_bits",
    "perplexity",
    "slack",
    "slack_bits",
    "dead_codes",
    "dead_fraction",
)


class CodebookReport(NamedTuple):
    r"""Usage of ``G`` codebooks of ``K`` codes over an epoch; float fields are float64.

    With $n_{g,k}$ the uses of code ``k`` of codebook ``g`` and $N = \sum_k n_{g,k}$ the
    positions, $p_{g,k} = n_{g,k} / N$. With no positions counted, the entropies,
    perplexities and slacks are NaN and every code is dead.

    Attributes:
        entropy: ``(G,)`` usage entropy $H_g = -\sum_k p_{g,k} \log p_{g,k}$ in nats
            ($0 \log 0 = 0$), between 0 and $\log K$.
        entropy_bits: ``(G,)`` $H_g / \ln 2$.
        perplexity: ``(G,)`` $e^{H_g}$, the number of equally used codes with the same
            entropy: 1 for one code, ``K`` for uniform use.
        slack: ``(G,)`` the rate slack $\log K - H_g \ge 0$ in nats: nominal rate a
            codebook pays for but does not use (0 for uniform use).
        slack_bits: ``(G,)`` the slack in bits.
        dead_codes: ``(G,)`` int64, the codes used at most ``dead_threshold`` times.
        dead_fraction: ``(G,)`` ``dead_codes / K``.
        nominal_rate: 0-dim, $G \log K$ nats per position.
        nominal_rate_bits: 0-dim, $G \log_2 K$ bits per position.
        nominal_bits_per_dim: 0-dim, the nominal bits per data dimension,
            $\bar L\, G \log_2 K / d$ with $\bar L$ the mean positions per example and
            $d$ = ``data_dims``; ``None`` without ``data_dims``.
        positions: 0-dim int64 $N$, the positions counted (each holds one code per codebook).
        examples: 0-dim int64, the examples counted (the first dimension of the indices).
        counts: ``(G, K)`` int64 $n_{g,k}$.
    """

    entropy: Tensor
    entropy_bits: Tensor
    perplexity: Tensor
    slack: Tensor
    slack_bits: Tensor
    dead_codes: Tensor
    dead_fraction: Tensor
    nominal_rate: Tensor
    nominal_rate_bits: Tensor
    nominal_bits_per_dim: Tensor | None
    positions: Tensor
    examples: Tensor
    counts: Tensor

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The scalars as plain floats for any logger (``None`` fields are left out).

        Per-codebook fields are named ``entropy`` etc. for one codebook and ``entropy/0``,
        ``entropy/1``, ... for several; ``counts`` is left out.

        Args:
            prefix: prepended to every key, e.g. ``"val/codebook/"``.
        """
        out: dict[str, float] = {}
        several = self.entropy.numel() > 1
        for name in _PER_CODEBOOK:
            values = getattr(self, name).reshape(-1).tolist()
            for g, value in enumerate(values):
                out[f"{prefix}{name}/{g}" if several else prefix + name] = float(value)
        for name in ("nominal_rate", "nominal_rate_bits", "nominal_bits_per_dim", "positions"):
            value = getattr(self, name)
            if value is not None:
                out[prefix + name] = float(value)
        return out


def check_count(name: str, value: object) -> int:
    """Return ``value`` if it is an int ``>= 0`` (``bool`` excluded), else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def flat_codes(
    indices: object, codebook_size: int, codebooks: int, validate: bool, mask: object = None
) -> tuple[Tensor, Tensor | None]:
    """Check code indices; return them as ``(N, G)`` int64, one row per position.

    Args:
        indices: ``(B, ..., G)`` integer codes, or ``(B, ...)`` when ``G == 1``.
        codebook_size: ``K``; every index must lie in ``[0, K)``.
        codebooks: ``G``.
        validate: check the range (one host synchronisation; skipped while compiling).
        mask: ``None``, or a bool tensor of the positions' shape ``(B, ...)``, ``False``
            for padded positions (whose indices, e.g. a pad id of -1, are not read).

    Returns:
        The codes (padded positions as code 0) and the ``(N,)`` mask, or ``None``.

    Raises:
        TypeError: ``indices`` is not an integer tensor, or ``mask`` not a bool tensor.
        ValueError: a wrong shape, or (if ``validate``) an index outside ``[0, K)``.
    """
    indices = check_tensor("indices", indices, min_ndim=1)
    if indices.is_floating_point() or indices.dtype == torch.bool:
        raise TypeError(
            f"indices must be an integer tensor of code indices (e.g. torch.long), got dtype "
            f"{indices.dtype}"
        )
    if codebooks > 1 and (indices.ndim < 2 or indices.shape[-1] != codebooks):
        raise ValueError(
            f"indices must have shape (B, ..., codebooks) = (B, ..., {codebooks}), batch first "
            f"and one code per codebook last, got {tuple(indices.shape)}"
        )
    keep = None
    if mask is not None:
        positions = tuple(indices.shape[:-1] if codebooks > 1 else indices.shape)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(
                f"mask must be a bool tensor (True for real positions), got {got}; pass "
                "mask.bool() for a 0/1 mask"
            )
        if tuple(mask.shape) != positions:
            raise ValueError(
                f"mask must have the positions' shape (B, ...) = {positions}, got "
                f"{tuple(mask.shape)}"
            )
        keep = mask.to(indices.device)
        where = keep[..., None] if codebooks > 1 else keep
        indices = torch.where(where, indices, torch.zeros((), dtype=indices.dtype))
    if should_validate(validate) and indices.numel():
        low, high = torch.aminmax(indices)
        if not bool((low >= 0) & (high < codebook_size)):
            raise ValueError(
                f"indices must lie in [0, codebook_size) = [0, {codebook_size}), got values "
                f"from {int(low)} to {int(high)}"
            )
    codes = indices.detach().reshape(-1, codebooks).long()
    return codes, None if keep is None else keep.reshape(-1)


def count_codes(codes: Tensor, codebook_size: int, keep: Tensor | None = None) -> Tensor:
    """``(G * K,)`` int64 histogram of ``(N, G)`` codes, codebook ``g`` at ``g * K``.

    ``index_add_`` rather than ``bincount``: its output size is fixed, so it never reads
    the largest index back to the host. Rows where the ``(N,)`` bool ``keep`` is
    ``False`` add 0.
    """
    codebooks = codes.shape[1]
    offsets = torch.arange(codebooks, device=codes.device) * codebook_size
    flat = (codes + offsets).reshape(-1)
    hist = torch.zeros(codebooks * codebook_size, dtype=torch.long, device=codes.device)
    ones = torch.ones_like(codes) if keep is None else keep[:, None].long().expand_as(codes)
    return hist.index_add_(0, flat, ones.reshape(-1))


def usage_report(
    counts: Tensor, examples: Tensor, dead_threshold: int, data_dims: int | None
) -> CodebookReport:
    """`CodebookReport` of ``(G, K)`` counts over ``examples`` examples (float64 off MPS)."""
    codebooks, size = counts.shape
    dtype = torch.float32 if counts.device.type == "mps" else torch.float64
    positions = counts[0].sum()
    probs = counts.to(dtype) / positions.to(dtype)
    entropy = torch.special.entr(probs).sum(-1) + 0.0  # entr(0) = 0; + 0.0 turns -0 into 0
    log_k = math.log(size)
    slack = (log_k - entropy).clamp_min(0.0)
    dead = (counts <= dead_threshold).sum(-1)
    nominal = torch.tensor(codebooks * log_k, dtype=dtype, device=counts.device)
    nominal_bits = torch.tensor(codebooks * math.log2(size), dtype=dtype, device=counts.device)
    per_dim = None
    if data_dims is not None:
        per_dim = positions.to(dtype) / examples.to(dtype) * nominal_bits / data_dims
    return CodebookReport(
        entropy=entropy,
        entropy_bits=entropy / LN2,
        perplexity=entropy.exp(),
        slack=slack,
        slack_bits=slack / LN2,
        dead_codes=dead,
        dead_fraction=dead.to(dtype) / size,
        nominal_rate=nominal,
        nominal_rate_bits=nominal_bits,
        nominal_bits_per_dim=per_dim,
        positions=positions,
        examples=examples,
        counts=counts,
    )


def codebook_usage(
    indices: Tensor,
    codebook_size: int,
    *,
    codebooks: int = 1,
    dead_threshold: int = 0,
    data_dims: int | None = None,
    mask: Tensor | None = None,
) -> CodebookReport:
    r"""Codebook usage of a whole set of code indices: entropy against $\log K$, dead codes.

    The one-shot twin of `CodebookUsage`: pass the indices of a whole epoch (not of a
    batch, whose perplexity depends on the batch size).

    Args:
        indices: integer code indices, batch first, one code per codebook last:
            ``(B, ..., G)``, or ``(B, ...)`` when ``codebooks == 1`` (every entry one code,
            e.g. ``(B, H, W)`` tokens of an image). The dimensions between batch and
            codebook are positions.
        codebook_size: ``K``, the codes per codebook (FSQ: the product of its levels;
            LFQ: ``2 ** bits``); every index lies in ``[0, K)``.
        codebooks: ``G``, the codebooks (groups, or residual VQ levels) per position.
        dead_threshold: a code used at most this many times is dead (0: never used).
        data_dims: data dimensions per example (784 for MNIST) for
            ``nominal_bits_per_dim``.
        mask: bool, the positions' shape (``indices.shape`` without the codebook
            dimension), ``False`` for padded positions: they are not counted and their
            indices are not read.

    Returns:
        `CodebookReport`.

    Raises:
        TypeError: ``indices`` is not an integer tensor, or an argument has the wrong type.
        ValueError: a wrong shape, an index outside ``[0, K)``, or a bad argument value.

    Examples:
        >>> import torch
        >>> report = codebook_usage(torch.tensor([[0, 1], [2, 3]]), 4)  # 2 examples x 2
        >>> report.perplexity, report.slack, report.dead_codes
        (tensor([4.], dtype=torch.float64), tensor([0.], dtype=torch.float64), tensor([0]))
    """
    size = check_positive_int("codebook_size", codebook_size)
    groups = check_positive_int("codebooks", codebooks)
    threshold = check_count("dead_threshold", dead_threshold)
    dims = None if data_dims is None else check_positive_int("data_dims", data_dims)
    codes, keep = flat_codes(indices, size, groups, validate=True, mask=mask)
    counts = count_codes(codes, size, keep).reshape(groups, size)
    examples = torch.tensor(indices.shape[0], device=counts.device)
    return usage_report(counts, examples, threshold, dims)


class CodebookUsage(_Diagnostic):
    r"""Codebook usage over an epoch: usage entropy against $\log K$, perplexity, dead codes.

    For discrete codes (VQ-VAE, FSQ, LFQ tokenizers). ``update`` counts the code indices of
    a batch into an ``int64`` ``(G, K)`` state (reduced by sum across processes), so the
    report depends only on the epoch's codes: the same, bit for bit, for any batching and
    under DDP. ``compute`` returns a `CodebookReport`
    (``report.metrics("codebook/")`` gives plain floats for a logger), or one field with
    ``output=``.

    The counts stay ``int64`` whatever the module's dtype: ``.half()``, ``.double()`` and
    ``set_dtype`` leave them as they are (counts are exact in any dtype that holds them),
    and the report is computed in float64 (float32 on MPS).

    Args:
        codebook_size: ``K``, the codes per codebook.
        codebooks: ``G``, the codebooks per position; ``update`` then takes
            ``(B, ..., G)`` indices.
        dead_threshold: a code used at most this many times in the epoch is dead.
        data_dims: data dimensions per example for ``nominal_bits_per_dim``.
        output: return only this field, e.g. ``"perplexity"``, for ``self.log`` in Lightning.
        **kwargs: ``validate_args`` (default ``True``: an index outside ``[0, K)`` raises
            ``ValueError``, at one host synchronisation per update; with ``False`` such an
            index is counted in the wrong codebook or raises ``IndexError``) and the options
            of `torchmetrics.Metric`.

    Examples:
        >>> import torch
        >>> m = CodebookUsage(4)
        >>> m.update(torch.tensor([[0, 1], [0, 2]]))  # 2 examples x 2 positions
        >>> m.update(torch.tensor([[0, 1]]))
        >>> r = m.compute()
        >>> r.counts, r.dead_codes
        (tensor([[3, 2, 1, 0]]), tensor([1]))
        >>> round(r.perplexity.item(), 4), round(r.slack.item(), 4)
        (2.7495, 0.3749)
    """

    _fields = CodebookReport._fields
    counts: Tensor
    examples: Tensor

    def __init__(
        self,
        codebook_size: int,
        *,
        codebooks: int = 1,
        dead_threshold: int = 0,
        data_dims: int | None = None,
        output: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(output=output, **kwargs)
        self.codebook_size = check_positive_int("codebook_size", codebook_size)
        self.codebooks = check_positive_int("codebooks", codebooks)
        self.dead_threshold = check_count("dead_threshold", dead_threshold)
        self.data_dims = None if data_dims is None else check_positive_int("data_dims", data_dims)
        self._require(("nominal_bits_per_dim",), data_dims is not None, "data_dims")
        shape = (self.codebooks, self.codebook_size)
        self.add_state(
            "counts", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum", persistent=True
        )
        self.add_state(
            "examples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum", persistent=True
        )

    @override
    def update(self, indices: Tensor, *, mask: Tensor | None = None) -> None:
        """Count a batch of code indices: ``(B, ..., G)``, or ``(B, ...)`` for one codebook.

        The first dimension is the batch (examples); the last is the codebook when
        ``codebooks > 1``; every other dimension is positions. ``mask`` (bool, the
        positions' shape ``(B, ...)``, ``False`` for padding) leaves padded positions
        uncounted; their indices (e.g. a pad id) are not read.
        """
        codes, keep = flat_codes(
            indices, self.codebook_size, self.codebooks, self.validate_args, mask
        )
        device = self.counts.device
        hist = count_codes(
            codes.to(device), self.codebook_size, None if keep is None else keep.to(device)
        )
        self.counts.add_(hist.view_as(self.counts))
        self.examples.add_(indices.shape[0])

    @override
    def compute(self) -> Any:
        """Return the `CodebookReport` (or the ``output`` field)."""
        report = usage_report(self.counts, self.examples, self.dead_threshold, self.data_dims)
        return self._select(report)

    @override
    def set_dtype(self, dst_type: str | torch.dtype) -> CodebookUsage:
        """Return the metric unchanged: the counts stay ``int64``, the report float64."""
        return self

    def _check_counts(self, counts: object, source: str) -> None:
        shape = (self.codebooks, self.codebook_size)
        if not isinstance(counts, Tensor) or tuple(counts.shape) != shape:
            got = tuple(counts.shape) if isinstance(counts, Tensor) else type(counts).__name__
            raise ValueError(
                f"{source} has counts of shape {got}, but this metric counts "
                f"(codebooks, codebook_size) = {shape}"
            )
        # The counts stay exact int64 sums: a float or negative count is not one of ours.
        if counts.dtype != torch.int64:
            raise TypeError(f"{source} has counts of dtype {counts.dtype}, expected torch.int64")
        if not counts.is_meta and bool((counts < 0).any()):
            raise ValueError(f"{source} has negative counts (smallest {int(counts.min())})")

    @override
    def merge_state(self, incoming_state: Any) -> None:
        """Add another `CodebookUsage`'s (or its state dict's) counts to this one's."""
        if isinstance(incoming_state, CodebookUsage):
            self._check_counts(incoming_state.counts, "incoming_state")
        elif isinstance(incoming_state, dict):
            self._check_counts(incoming_state.get("counts"), "incoming_state")
        super().merge_state(incoming_state)  # torchmetrics refuses anything else

    @override
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if prefix + "counts" in state_dict:
            self._check_counts(state_dict[prefix + "counts"], "the state dict")
        elif any(key.startswith(prefix) for key in state_dict):
            # torchmetrics loads whichever states are there: a partial one would leave the
            # counts at zero beside the loaded rest.
            raise ValueError(
                f"the state dict has no {prefix}counts beside this metric's other states"
            )
        super()._load_from_state_dict(state_dict, prefix, *args)

    @override
    def _restore_shapes(self, value: Any) -> Any:
        groups = self.codebooks
        if isinstance(value, CodebookReport):
            fields = {name: getattr(value, name).reshape(groups) for name in _PER_CODEBOOK}
            return value._replace(counts=value.counts.reshape(groups, -1), **fields)
        if self.output in _PER_CODEBOOK:
            return value.reshape(groups)
        return value.reshape(groups, -1) if self.output == "counts" else value

    @override
    def extra_repr(self) -> str:
        extra = (
            f"codebook_size={self.codebook_size}, codebooks={self.codebooks}, "
            f"dead_threshold={self.dead_threshold}"
        )
        return extra if self.output is None else f"{extra}, output={self.output!r}"
