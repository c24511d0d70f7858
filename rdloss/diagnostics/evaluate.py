r"""``evaluate``: every diagnostic of a trained model on held-out data, in one call.

One pass over the batches updates the streaming metrics (`RateDistortion`,
`MutualInformationBounds`, `ActiveUnits`, `MutualInformation`; DDP-correct through
torchmetrics) and the importance-weighted bound of Burda et al. (2015); the result is an
`Evaluation`: R, D and the ELBO (nats, bits, bits per dimension), per group and per step
where the model has them, active units, the sandwich $H - D \le I(X;Z) \le R$
(Alemi et al., 2018, Eq. 2) with ``H`` given or estimated by the IWAE NLL, the
aggregate-posterior $I(n;z)$ and marginal gap (Hoffman & Johnson, 2016), and the IWAE NLL.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal
from torchmetrics import CatMetric, SumMetric

from rdloss._checks import check_nonnegative_number, check_positive_int
from rdloss.diagnostics._progress import Progress
from rdloss.diagnostics.aggregate import AggregatePosterior
from rdloss.diagnostics.functional import ActiveUnitsResult
from rdloss.diagnostics.iwae import importance_weighted_bound
from rdloss.diagnostics.metrics import ActiveUnits, MutualInformationBounds, RateDistortion
from rdloss.diagnostics.mutual_information import MutualInformation
from rdloss.loss import RateDistortionLoss
from rdloss.output import RDOutput

__all__ = ["Evaluation", "evaluate"]

_LN2 = math.log(2.0)
_KEYS = ("x", "posterior", "prior", "likelihood", "decoder", "z", "samples")


class Evaluation(NamedTuple):
    r"""What `evaluate` measured, in nats unless a name says ``bits``.

    Attributes:
        rate: mean rate ``R`` (0-dim).
        distortion: mean distortion ``D``.
        elbo: ``-(D + R)``.
        rate_bits: ``R / ln 2``.
        distortion_bits: ``D / ln 2``.
        bits_per_dim: ``(D + R) / (ln 2 * data_dims)``, the ELBO's NLL bound per dimension.
        data_dims: data dimensions per example (given, or ``x[0].numel()``).
        rate_per_group: mean rate of each latent group (they sum to ``rate``), or ``None``.
        rate_per_step: ``(T,)`` mean rate per step of each group with steps, or ``None``.
        active_units: `ActiveUnitsResult` (``per_group`` for grouped latents).
        mi_lower: ``H - D`` with ``H`` = ``entropy``: a lower bound on $I(X;Z)$ for a
            given ``H``, an **estimate** when ``H`` is the IWAE NLL (an upper estimate of
            ``H``); ``None`` without either.
        mi_upper: ``R``, an upper bound on $I(X;Z)$.
        entropy: the ``H`` used for ``mi_lower``, or ``None``.
        entropy_source: ``"given"`` (``data_entropy=``), ``"iwae estimate"`` or ``"none"``.
        entropy_stderr: standard error of an IWAE estimate of ``H`` (else ``None``).
        aggregate: `AggregatePosterior`: $I(n;z)$, marginal gap, saturation ``log N``, or
            ``None`` where not defined (see ``notes``).
        nll: IWAE estimate of ``-E log p(x)`` (mean of ``-L_k``), or ``None``.
        nll_stderr: its standard error (standard deviation of ``-L_k`` over ``sqrt N``).
        nll_bits_per_dim: ``nll / (ln 2 * data_dims)``, or ``None``.
        iwae_samples: ``k`` of the IWAE bound (0: not computed).
        num_examples: examples seen (over all processes).
        notes: what was skipped and why.
    """

    rate: Tensor
    distortion: Tensor
    elbo: Tensor
    rate_bits: Tensor
    distortion_bits: Tensor
    bits_per_dim: Tensor
    data_dims: int
    rate_per_group: dict[str, Tensor] | None
    rate_per_step: dict[str, Tensor] | None
    active_units: ActiveUnitsResult
    mi_lower: Tensor | None
    mi_upper: Tensor
    entropy: Tensor | None
    entropy_source: str
    entropy_stderr: Tensor | None
    aggregate: AggregatePosterior | None
    nll: Tensor | None
    nll_stderr: Tensor | None
    nll_bits_per_dim: Tensor | None
    iwae_samples: int
    num_examples: int
    notes: tuple[str, ...]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The scalars as plain floats for any logger (``None`` fields are left out)."""
        named: dict[str, Tensor | None] = {
            "rate": self.rate,
            "distortion": self.distortion,
            "elbo": self.elbo,
            "bits_per_dim": self.bits_per_dim,
            "active_units": self.active_units.num_active,
            "mi_lower": self.mi_lower,
            "mi_upper": self.mi_upper,
            "entropy": self.entropy,
            "mutual_information": None
            if self.aggregate is None
            else self.aggregate.mutual_information,
            "marginal_gap": None if self.aggregate is None else self.aggregate.marginal_gap,
            "nll": self.nll,
            "nll_stderr": self.nll_stderr,
            **{f"rate/{k}": v for k, v in (self.rate_per_group or {}).items()},
        }
        return {prefix + k: float(v) for k, v in named.items() if v is not None}


def _to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (in nested tuples, lists and mappings) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [_to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def _inputs(value: object) -> dict[str, Any]:
    """The loss's keyword arguments returned by ``fn``, checked."""
    if not isinstance(value, Mapping):
        raise TypeError(
            "fn(batch) must return a mapping of the loss's inputs, e.g. {'x': x, 'posterior': "
            f"q, 'decoder': decoder}}, got {type(value).__name__}"
        )
    if "weight" in value:
        raise ValueError(
            "fn(batch) returned weight=: evaluate reports unweighted means over examples "
            "(the IWAE NLL and the data entropy are unweighted); drop the weight"
        )
    unknown = [k for k in value if k not in _KEYS]
    missing = [k for k in ("x", "posterior") if k not in value]
    if unknown or missing:
        raise ValueError(
            f"fn(batch) must return a mapping with keys among {list(_KEYS)} including 'x' and "
            f"'posterior'; unknown keys {unknown}, missing keys {missing}"
        )
    return dict(value)


def _is_diagonal_gaussian(posterior: object) -> bool:
    base = posterior.base_dist if isinstance(posterior, Independent) else posterior
    return isinstance(base, Normal) and len(base.batch_shape) >= 1


class _Metrics:
    """The metrics of one evaluation, built from the first batch (groups, device)."""

    def __init__(
        self,
        out: RDOutput,
        inputs: dict[str, Any],
        marginal: Distribution | None,
        *,
        data_dims: int,
        data_entropy: float | None,
        threshold: float,
        mutual_information: bool,
        iwae: bool,
        notes: list[str],
    ) -> None:
        groups = None if out.rate_per_group is None else list(out.rate_per_group)
        self.steps = None if out.rate_per_step is None else list(out.rate_per_step)
        self.step_sizes = [int(v.shape[1]) for v in (out.rate_per_step or {}).values()]
        self.rd = RateDistortion(data_dims=data_dims, groups=groups)
        self.bounds = MutualInformationBounds(data_entropy)
        self.active = ActiveUnits(threshold, groups=groups)
        self.count = SumMetric(nan_strategy="disable")
        self.per_step = CatMetric(nan_strategy="disable") if self.steps else None
        self.iwae = CatMetric(nan_strategy="disable") if iwae else None
        self.mi: MutualInformation | None = None
        if mutual_information:
            posterior = inputs["posterior"]
            if groups is not None or self.steps is not None:
                notes.append("I(n;z): not computed for grouped or stepped latents")
            elif not _is_diagonal_gaussian(posterior):
                notes.append(
                    f"I(n;z): needs a diagonal-Gaussian posterior, got {type(posterior).__name__}"
                )
            else:
                if marginal is None:
                    notes.append("marginal gap: not defined with a per-example prior=")
                self.mi = MutualInformation(marginal, tc_samples=0)
        device = inputs["x"].device
        for metric in self.all():
            metric.to(device)
            if device.type != "mps":  # MPS has no float64
                metric.set_dtype(torch.float64)

    def all(self) -> list[Any]:
        found = (self.rd, self.bounds, self.active, self.count, self.per_step, self.iwae, self.mi)
        return [m for m in found if m is not None]


@torch.no_grad()
def evaluate(
    batches: Iterable[Any],
    fn: Callable[[Any], Mapping[str, Any]],
    *,
    loss: RateDistortionLoss | None = None,
    modules: nn.Module | Sequence[nn.Module] = (),
    iwae_samples: int = 50,
    data_entropy: float | None = None,
    data_dims: int | None = None,
    mutual_information: bool = True,
    threshold: float = 0.01,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> Evaluation:
    r"""Evaluate a model on held-out batches: every diagnostic of rdloss in one call.

    For each batch, ``fn(batch)`` runs your encoder and returns the loss's inputs; the loss
    computes R and D (as in training), the metrics stream them, and, with a ``decoder``, the
    IWAE bound $\mathcal L_k(x)$ is drawn for the batch. Runs under ``torch.no_grad()``
    with ``loss`` and ``modules`` in eval mode; every submodule's train/eval mode is
    restored afterwards. Under DDP each process passes its own shard (at least one batch)
    and every process returns the value of the union. States accumulate in float64 (except
    on MPS). Randomness comes from the global generator (seed it to reproduce).

    Args:
        batches: held-out batches, e.g. a ``DataLoader``.
        fn: maps a batch to a mapping with ``x`` ``(B, ...)``, ``posterior`` and one of
            ``likelihood`` (with ``z`` if the rate is Monte Carlo) or ``decoder``, and
            optionally ``prior`` and ``samples``: the keywords of
            `rdloss.RateDistortionLoss`. The IWAE NLL needs ``decoder``.
        loss: the `RateDistortionLoss` (its marginal); default ``N(0, I)``.
        modules: your encoder/decoder modules, put in eval mode for the call.
        iwae_samples: ``k`` of the IWAE bound; 0 skips it.
        data_entropy: ``H`` in nats if known; else the IWAE NLL is used as an estimate.
        data_dims: data dimensions per example for bits per dimension; default
            ``x[0].numel()``.
        mutual_information: compute $I(n;z)$ and the marginal gap (stores ``N x D``
            posterior parameters, ``O(N^2 D)`` time at the end).
        threshold: active-unit threshold on $\mathrm{Var}_x \mathbb E[z_u]$.
        progress: a tqdm bar on a terminal, otherwise a line on stderr per ~10% of the
            batches (every 25 batches without ``len``); rank 0 only; ``False`` silences.
        device: move the tensors of each batch (nested tuples, lists, dicts) here first.

    Returns:
        `Evaluation`.

    Raises:
        TypeError: an argument or ``fn``'s result has the wrong type.
        ValueError: ``batches`` is empty, or ``fn``'s result is malformed.

    Examples:
        >>> import torch, rdloss
        >>> from rdloss import helpers
        >>> data = torch.randn(40, 3).split(10)
        >>> def fn(x):
        ...     q = helpers.normal(0.5 * x, scale=0.8)
        ...     return {"x": x, "posterior": q, "decoder": lambda z: helpers.normal(z, scale=1.0)}
        >>> ev = rdloss.evaluate(data, fn, iwae_samples=10, progress=False)
        >>> ev.num_examples, ev.entropy_source, ev.nll is not None
        (40, 'iwae estimate', True)
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (batch -> loss inputs), got {type(fn).__name__}")
    loss = RateDistortionLoss() if loss is None else loss
    if not isinstance(loss, RateDistortionLoss):
        raise TypeError(f"loss must be an rdloss.RateDistortionLoss, got {type(loss).__name__}")
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    if not all(isinstance(m, nn.Module) for m in modules):
        raise TypeError(f"modules must be nn.Modules, got {[type(m).__name__ for m in modules]}")
    if iwae_samples != 0:
        check_positive_int("iwae_samples", iwae_samples)
    if data_entropy is not None:
        data_entropy = check_nonnegative_number("data_entropy", data_entropy)
    if data_dims is not None:
        check_positive_int("data_dims", data_dims)
    threshold = check_nonnegative_number("threshold", threshold)
    for name, flag in (("mutual_information", mutual_information), ("progress", progress)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    target = None if device is None else torch.device(device)

    modes = [(m, m.training) for root in (loss, *modules) for m in root.modules()]
    for root in (loss, *modules):
        root.eval()
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    bar = Progress(progress, total)
    try:
        return _run(batches, fn, loss, iwae_samples, data_entropy, data_dims,
                    mutual_information, threshold, target, bar)  # fmt: skip
    finally:
        bar.close()
        for module, training in modes:
            module.training = training


def _run(
    batches: Iterable[Any],
    fn: Callable[[Any], Mapping[str, Any]],
    loss: RateDistortionLoss,
    k: int,
    data_entropy: float | None,
    data_dims: int | None,
    mutual_information: bool,
    threshold: float,
    device: torch.device | None,
    bar: Progress,
) -> Evaluation:
    notes: list[str] = []
    metrics: _Metrics | None = None
    count = examples = 0
    for batch in batches:
        inputs = _inputs(fn(batch if device is None else _to_device(batch, device)))
        out: RDOutput = loss(**inputs)
        x, posterior = inputs["x"], inputs["posterior"]
        prior = inputs.get("prior")
        single = isinstance(posterior, Distribution) and out.rate_per_step is None
        marginal = None
        if single and (prior is None or not prior.batch_shape):
            marginal = loss.marginal_distribution(posterior) if prior is None else prior
        if metrics is None:
            data_dims = x[0].numel() if data_dims is None else data_dims
            why = [
                reason
                for reason, missing in (
                    ("decoder= (a likelihood= alone cannot be resampled)", "decoder" not in inputs),
                    ("one latent without steps (not groups or steps)", not single),
                    ("an unconditional marginal (not a per-example prior=)", marginal is None),
                )
                if missing
            ]
            iwae = k > 0 and not why
            if k > 0 and why:
                notes.append(f"IWAE NLL: not computed; it needs {' and '.join(why)}")
            metrics = _Metrics(out, inputs, marginal, data_dims=data_dims,
                               data_entropy=data_entropy, threshold=threshold,
                               mutual_information=mutual_information, iwae=iwae,
                               notes=notes)  # fmt: skip
        metrics.rd.update(out)
        metrics.bounds.update(out)
        metrics.active.update(posterior)
        metrics.count.update(x.shape[0])
        if metrics.per_step is not None:
            assert out.rate_per_step is not None  # the model's structure is fixed
            metrics.per_step.update(torch.cat(list(out.rate_per_step.values()), dim=1))
        if metrics.mi is not None:
            metrics.mi.update(posterior)
        if metrics.iwae is not None:
            metrics.iwae.update(
                importance_weighted_bound(x, posterior, inputs["decoder"], marginal, k=k)
            )
        count, examples = count + 1, examples + x.shape[0]
        bar.step(count, examples)
    if metrics is None:
        raise ValueError("batches is empty: evaluate needs at least one batch (on every process)")
    return _result(metrics, k, data_entropy, notes, bar)


def _result(
    metrics: _Metrics, k: int, data_entropy: float | None, notes: list[str], bar: Progress
) -> Evaluation:
    rd = metrics.rd.compute()
    bounds = metrics.bounds.compute()
    num = int(metrics.count.compute())
    per_step = None
    if metrics.per_step is not None and metrics.steps is not None:
        means = metrics.per_step.compute().mean(0)
        per_step = dict(zip(metrics.steps, means.split(metrics.step_sizes), strict=True))
    nll = stderr = None
    if metrics.iwae is not None:
        bound = metrics.iwae.compute()
        nll = -bound.mean()
        stderr = bound.std() / math.sqrt(bound.numel()) if bound.numel() > 1 else None
    entropy, source, entropy_stderr = bounds.lower, "none", None
    if data_entropy is not None:
        entropy, source = torch.tensor(data_entropy).to(rd.rate), "given"
    elif nll is not None:
        entropy, source, entropy_stderr = nll, "iwae estimate", stderr
    else:
        entropy = None
        notes.append("mi_lower: no data_entropy and no IWAE estimate of H")
    aggregate = None
    if metrics.mi is not None:
        bar.say(f"aggregate posterior over {num} points")
        aggregate = metrics.mi.compute()
    data_dims = metrics.rd.data_dims
    bits_per_dim = rd.bits_per_dim
    assert data_dims is not None and bits_per_dim is not None  # data_dims always given
    return Evaluation(
        rate=rd.rate,
        distortion=rd.distortion,
        elbo=rd.elbo,
        rate_bits=rd.rate_bits,
        distortion_bits=rd.distortion_bits,
        bits_per_dim=bits_per_dim,
        data_dims=data_dims,
        rate_per_group=rd.rate_per_group,
        rate_per_step=per_step,
        active_units=metrics.active.compute(),
        mi_lower=None if entropy is None else entropy - rd.distortion,
        mi_upper=bounds.upper,
        entropy=entropy,
        entropy_source=source,
        entropy_stderr=entropy_stderr,
        aggregate=aggregate,
        nll=nll,
        nll_stderr=stderr,
        nll_bits_per_dim=None if nll is None else nll / (_LN2 * data_dims),
        iwae_samples=k if metrics.iwae is not None else 0,
        num_examples=num,
        notes=tuple(notes),
    )
