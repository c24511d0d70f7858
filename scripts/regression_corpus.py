#!/usr/bin/env python
"""Regression corpus: the same few hundred loss calls on two commits of rdloss, compared.

Usage::

    python scripts/regression_corpus.py OLD_COMMIT [NEW_COMMIT_OR_WORKTREE]

``OLD_COMMIT`` is checked out into a temporary ``git worktree`` (removed afterwards);
``NEW`` is a directory holding an rdloss tree (default: the current working tree, with its
uncommitted changes) or a commit (checked out like ``OLD``). Each tree runs the corpus in
its own subprocess (this file, the same python, ``PYTHONPATH`` at the tree), which saves
its results with ``torch.save``; this process then compares them and prints a table. The
exit status is 1 if any configuration fails (see "Classes" below), else 0.

Each configuration builds its inputs from a fixed seed (the CRC-32 of its name), calls
`rdloss.RateDistortionLoss` twice in train mode (so stateful objectives move) and records,
per call, ``loss, rate, distortion, elbo, rate_per_example, distortion_per_example,
rate_per_dimension, rate_per_group, rate_per_step, estimator, hyper`` and the gradients of
``loss`` with respect to every leaf input (encoder ``mu``/``logvar`` or logits, per-call
prior parameters, decoder weights, the marginal's and objective's parameters), then the
objective's ``state_dict``. Only rdloss's public API is used.

Classes:

* identical: every recorded tensor is bit-identical (same dtype, shape and bytes) and every
  string is equal; or both trees raised (the messages may differ; a changed exception type
  is listed as a warning).
* within tolerance: every differing tensor's relative difference
  ``max|a - b| / max(max|a|, max|b|)`` is <= 1e-15 in float64 (<= 1e-6 in float32) and
  is explained by a fast path the configuration uses: a rate field (``rate*``) needs a
  posterior (and prior) built by ``rdloss.helpers.normal``; a distortion field needs a
  Bernoulli likelihood with logits (``helpers.bernoulli`` or torch's) or a
  ``helpers.normal`` likelihood; the loss, ELBO, gradients, ``hyper`` and state need
  either. A mixture marginal (GaussianMixture, VampPrior) explains a rate difference too:
  its two log-density kernels became one.
* compile skipped: a ``torch.compile`` configuration that raised in one tree only.
* FAILURE: anything else (a larger difference, a difference without a fast-path
  ingredient, different shapes/dtypes/keys/strings, or raising in one tree only).

The parent process never imports rdloss; ``--run OUT`` is the subprocess entry point.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

B, D, DATA, T, K, S = 6, 3, 10, 4, 4, 3
GROUPS2 = {"top": 2, "bottom": 3}
GROUPS3 = {"top": 2, "mid": 3, "bottom": 2}
TOLERANCE = {"float64": 1e-15, "float32": 1e-6}
# Fast-path tags, and which recorded fields each side may change (loss, ELBO, gradients,
# hyperparameters and state follow both sides).
GAUSSIAN_POSTERIOR = "helpers.normal posterior"
BERNOULLI_LIKELIHOOD = "bernoulli-logits likelihood"
GAUSSIAN_LIKELIHOOD = "helpers.normal likelihood"
# Not a fast path: issue 20 merged the mixture's two log-density kernels into one, which may
# round the mixture marginal's log-density (and so the Monte Carlo rate) differently.
MIXTURE_KERNEL = "mixture marginal (one kernel)"
RATE_FIELDS = {"rate", "rate_per_example", "rate_per_dimension", "rate_per_group", "rate_per_step"}
DISTORTION_FIELDS = {"distortion", "distortion_per_example"}
FIELDS = (
    "loss",
    "rate",
    "distortion",
    "elbo",
    "rate_per_example",
    "distortion_per_example",
    "rate_per_dimension",
    "rate_per_group",
    "rate_per_step",
    "estimator",
    "hyper",
)

# --- the corpus ---------------------------------------------------------------------------

OBJECTIVES = (
    "beta",
    "beta_linear",
    "target_rate",
    "target_rate_adaptive",
    "target_distortion",
    "freebits_dimension",
    "freebits_dimension_example",
    "freebits_total",
    "freebits_total_example",
    "capacity",
    "geco",
    "rate_controller",
    "beta_group_balance",
)
UNGROUPED_OBJECTIVES = OBJECTIVES[:-1]  # Beta(group_balance=True) needs named groups
GROUP_OBJECTIVES = ("freebits_group", "freebits_group_example", "beta_group_balance", "geco")
STEP_OBJECTIVES = ("freebits_step", "freebits_step_example", "rate_controller", "beta_linear")
CONTINUOUS_MARGINALS = ("none", "standard", "diagonal", "fixed", "mixture", "vamp", "flow")
DECODERS = ("bernoulli", "torch_bernoulli", "normal", "laplace")


@dataclass(frozen=True)
class Config:
    """One loss configuration; its name is its identity and its seed."""

    objective: str
    marginal: str
    posterior: str  # helpers | helpers_log_scale | torch | categorical | onehot
    call: str  # likelihood | likelihood_s3 | decoder1 | decoder3 | enumerate
    structure: str  # plain | grouped | prior | steps | mc | kl_balance | weight | hostile_* ...
    decoder: str
    dtype: str
    validate: bool
    compiled: bool = False

    @property
    def name(self) -> str:
        """``structure/posterior/marginal/objective/call/decoder/dtype/validation``."""
        parts = [self.structure, self.posterior, self.marginal, self.objective, self.call]
        parts += [self.decoder, self.dtype, "validate" if self.validate else "novalidate"]
        return "/".join(parts + (["compiled"] if self.compiled else []))

    @property
    def tags(self) -> tuple[str, ...]:
        """The fast-path ingredients this configuration uses (where a formula may change)."""
        tags = []
        if self.posterior.startswith("helpers"):  # its prior= (if any) is built the same way
            tags.append(GAUSSIAN_POSTERIOR)
        if self.decoder in ("bernoulli", "torch_bernoulli"):
            tags.append(BERNOULLI_LIKELIHOOD)
        if self.decoder == "normal":
            tags.append(GAUSSIAN_LIKELIHOOD)
        if self.marginal in ("mixture", "vamp"):
            tags.append(MIXTURE_KERNEL)
        return tuple(tags)

    @property
    def seed(self) -> int:
        """The configuration's seed: the CRC-32 of its name (stable across runs)."""
        return zlib.crc32(self.name.encode())


def _variants(base: Iterable[tuple[str, str, str, str, str, str]]) -> list[Config]:
    """Each base configuration in float64 and float32 with validation, and once without."""
    configs = []
    unique = list(dict.fromkeys(base))  # one sweep may repeat another's configuration
    for i, (objective, marginal, posterior, call, structure, decoder) in enumerate(unique):
        plain = (objective, marginal, posterior, call, structure, decoder)
        configs.append(Config(*plain, dtype="float64", validate=True))
        configs.append(Config(*plain, dtype="float32", validate=True))
        off = "float64" if i % 2 == 0 else "float32"
        configs.append(Config(*plain, dtype=off, validate=False))
    return configs


def corpus(*, flows: bool = True) -> list[Config]:
    """The configurations, in a fixed order (about 400; flow ones only with ``flows``)."""
    base: list[tuple[str, str, str, str, str, str]] = []
    calls = ("likelihood", "decoder1", "decoder3", "likelihood_s3")
    simple = ("none", "standard", "diagonal", "fixed")
    # Every objective, both Gaussian posterior paths.
    for i, (objective, posterior) in enumerate(itertools.product(OBJECTIVES, ("helpers", "torch"))):
        base.append(
            (objective, simple[i % 4], posterior, calls[i % 4], "plain", DECODERS[(i // 2) % 4])
        )
    # Every marginal with every continuous call style.
    marginals = CONTINUOUS_MARGINALS if flows else CONTINUOUS_MARGINALS[:-1]
    for i, (marginal, call) in enumerate(itertools.product(marginals, calls)):
        posterior = ("helpers", "torch")[i % 2]
        objective = UNGROUPED_OBJECTIVES[i % len(UNGROUPED_OBJECTIVES)]
        base.append((objective, marginal, posterior, call, "plain", DECODERS[i % 4]))
    # Structures.
    structures = {
        "grouped": (GROUP_OBJECTIVES, ("none", "standard", "diagonal")),
        "grouped_marginals": (GROUP_OBJECTIVES, ("mixed",)),
        "prior": (UNGROUPED_OBJECTIVES, ("none",)),
        "grouped_prior": (GROUP_OBJECTIVES, ("none", "diagonal")),
        "steps": (STEP_OBJECTIVES, ("none", "standard", "diagonal")),
        "steps_prior": (STEP_OBJECTIVES, ("none",)),
        "mc": (UNGROUPED_OBJECTIVES, ("standard", "diagonal", "mixture")),
        "kl_balance": (UNGROUPED_OBJECTIVES, ("standard", "diagonal", "none")),
        "kl_balance_prior": (UNGROUPED_OBJECTIVES, ("none",)),
        "weight": (UNGROUPED_OBJECTIVES, ("standard", "diagonal", "mixture")),
    }
    for s, (structure, (objectives, options)) in enumerate(structures.items()):
        for i, (call, posterior) in enumerate(
            itertools.product(("likelihood", "decoder1", "decoder3"), ("helpers", "torch"))
        ):
            j = i + s
            base.append(
                (
                    objectives[j % len(objectives)],
                    options[j % len(options)],
                    posterior,
                    call,
                    structure,
                    DECODERS[j % 4],
                )
            )
    # Discrete latents.
    for i, (posterior, call, structure) in enumerate(
        itertools.product(
            ("categorical", "onehot"), ("likelihood", "decoder1", "enumerate"), ("plain", "prior")
        )
    ):
        marginal = posterior if structure == "plain" else "none"
        objective = ("beta", "geco", "target_rate", "beta_linear", "capacity")[i % 5]
        base.append((objective, marginal, posterior, call, structure, DECODERS[i % 4]))
    for call in ("likelihood", "enumerate"):
        base.append(("freebits_step_example", "none", "onehot", call, "steps_prior", "bernoulli"))
    # helpers.normal(mu, log_scale=...) on both sides (VDVAE's and NVAE's parameterisation).
    log_scale_structures = (
        ("plain", UNGROUPED_OBJECTIVES, ("none", "standard", "diagonal")),
        ("prior", UNGROUPED_OBJECTIVES, ("none",)),
        ("grouped_prior", GROUP_OBJECTIVES, ("none", "diagonal")),
        ("steps_prior", STEP_OBJECTIVES, ("none",)),
        ("kl_balance_prior", UNGROUPED_OBJECTIVES, ("none",)),
        ("mc", UNGROUPED_OBJECTIVES, ("standard", "diagonal")),
        ("hostile_logvar_range", ("beta",), ("standard",)),
    )
    for s, (structure, objectives, options) in enumerate(log_scale_structures):
        for i, call in enumerate(("likelihood", "decoder1")):
            j = i + s
            objective, marginal = objectives[j % len(objectives)], options[j % len(options)]
            decoder = DECODERS[j % 4]
            base.append((objective, marginal, "helpers_log_scale", call, structure, decoder))
    # Bad inputs: errors (or NaN outputs without validation) must stay errors.
    for hostile in ("nan_x", "negative_weight", "logvar_range", "nonbinary_x"):
        decoder = "laplace" if hostile == "nan_x" else "bernoulli"
        base.append(("beta", "standard", "helpers", "likelihood", f"hostile_{hostile}", decoder))
        base.append(("geco", "none", "torch", "decoder1", f"hostile_{hostile}", decoder))
    configs = _variants(base)
    compiled = [
        ("beta_linear", "standard", "helpers", "decoder1", "plain", "bernoulli"),
        ("geco", "none", "helpers", "likelihood", "plain", "bernoulli"),
        ("freebits_group", "none", "helpers", "decoder1", "grouped", "bernoulli"),
        ("rate_controller", "diagonal", "torch", "decoder3", "plain", "normal"),
        ("target_rate_adaptive", "mixture", "helpers", "likelihood", "mc", "laplace"),
    ]
    configs += [Config(*c, dtype="float32", validate=True, compiled=True) for c in compiled]
    names = [c.name for c in configs]
    assert len(set(names)) == len(names), "configuration names must be unique"
    return configs


# --- building one configuration (runs in the subprocess: imports rdloss lazily) -----------


class VampEncoder(nn.Module):
    """A small encoder for the VampPrior: ``u -> helpers.normal(mu, logvar)``."""

    def __init__(self, inputs: int, latent: int) -> None:
        super().__init__()
        self.net = nn.Linear(inputs, 2 * latent)

    def forward(self, u: Tensor) -> Any:
        """``(K, inputs)`` pseudo-inputs to the posterior over ``(K, latent)``."""
        from rdloss import helpers

        mu, logvar = self.net(u).chunk(2, dim=-1)
        return helpers.normal(mu, logvar=logvar)


def _objective(name: str) -> Any:
    from rdloss import objectives as o
    from rdloss import schedules as s

    makers: dict[str, Callable[[], Any]] = {
        "beta": lambda: o.Beta(0.5),
        "beta_linear": lambda: o.Beta(s.Linear(0.0, 1.0, steps=3)),
        "target_rate": lambda: o.TargetRate(2.0),
        "target_rate_adaptive": lambda: o.TargetRate(2.0, adaptive=True, lr=0.1),
        "target_distortion": lambda: o.TargetDistortion(5.0, weight=2.0),
        "freebits_dimension": lambda: o.FreeBits(0.5),
        "freebits_dimension_example": lambda: o.FreeBits(0.5, reduction="example"),
        "freebits_total": lambda: o.FreeBits(1.5, per="total"),
        "freebits_total_example": lambda: o.FreeBits(1.5, per="total", reduction="example"),
        "freebits_group": lambda: o.FreeBits(0.75, per="group"),
        "freebits_group_example": lambda: o.FreeBits(0.75, per="group", reduction="example"),
        "freebits_step": lambda: o.FreeBits(0.5, per="step", beta=0.7),
        "freebits_step_example": lambda: o.FreeBits(0.5, per="step", reduction="example"),
        "capacity": lambda: o.Capacity(s.Linear(0.0, 3.0, steps=2), gamma=10.0),
        "geco": lambda: o.GECO(5.0, lr=0.05, alpha=0.5),
        "rate_controller": lambda: o.RateController(2.0, kp=0.5, ki=0.1),
        "beta_group_balance": lambda: o.Beta(s.Linear(0.1, 1.0, steps=3), group_balance=True),
    }
    return makers[name]()


def _zuko() -> Any:
    """Import zuko without its import-time ``Distribution`` default (it turns validation off)."""
    from torch.distributions import Distribution

    before = Distribution._validate_args
    import zuko
    import zuko.flows

    Distribution.set_default_validate_args(before)
    return zuko


def _marginal(name: str, latent: int, dtype: torch.dtype) -> Any:
    from torch.distributions import Independent, Normal

    from rdloss import marginals as m

    if name == "none":
        return None
    if name == "fixed":
        loc = 0.1 * torch.randn(latent, dtype=dtype)
        return Independent(Normal(loc, torch.full((latent,), 1.5, dtype=dtype)), 1)
    made: nn.Module
    if name == "standard":
        made = m.StandardNormal(latent)
    elif name == "diagonal":
        made = m.DiagonalGaussian(latent)
    elif name == "mixture":
        made = m.GaussianMixture(latent, n_components=5)
    elif name == "vamp":
        made = m.VampPrior(VampEncoder(5, latent), torch.randn(4, 5))
    elif name == "flow":
        made = _zuko().flows.MAF(latent, transforms=1, hidden_features=(8,))
    elif name in ("categorical", "onehot"):
        made = m.Categorical(K, one_hot=name == "onehot")
    else:
        raise ValueError(f"unknown marginal {name!r}")
    with torch.no_grad():  # move the learned ones off their symmetric initialisation
        for p in made.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return made.to(dtype)


@dataclass
class Setup:
    """Everything a configuration's calls need."""

    loss: nn.Module
    x: Tensor
    leaves: dict[str, Tensor]
    kwargs: Callable[[], dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)


def _leaf(shape: tuple[int, ...], dtype: torch.dtype, scale: float = 1.0) -> Tensor:
    """A float64 draw (the same numbers in both dtypes) cast to ``dtype``, requiring grad."""
    return (scale * torch.randn(shape, dtype=torch.float64)).to(dtype).requires_grad_()


def build(cfg: Config) -> Setup:
    """Construct the loss, data and input factory of one configuration (seeded)."""
    from torch.distributions import (
        Bernoulli,
        Categorical,
        Independent,
        Normal,
        OneHotCategorical,
    )

    import rdloss
    from rdloss import helpers

    torch.manual_seed(cfg.seed)
    dtype = getattr(torch, cfg.dtype)
    structure = cfg.structure
    discrete = cfg.posterior in ("categorical", "onehot")
    stepped = structure.startswith("steps")
    groups = GROUPS3 if structure == "grouped_prior" else GROUPS2
    grouped = structure.startswith("grouped")
    leaves: dict[str, Tensor] = {}

    # Latent parameters (leaves) and the decoder's input width.
    if discrete and stepped:
        leaves["logits"] = _leaf((B, T, 2, K), dtype)
        width = 2 * K
    elif discrete:
        leaves["logits"] = _leaf((B, K), dtype)
        width = K
    elif grouped:
        for g, size in groups.items():
            leaves[f"mu.{g}"] = _leaf((B, size), dtype)
            leaves[f"logvar.{g}"] = _leaf((B, size), dtype, 0.5)
        width = sum(groups.values())
    else:
        shape = (B, T, D) if stepped else (B, D)
        leaves["mu"] = _leaf(shape, dtype)
        leaves["logvar"] = _leaf(shape, dtype, 0.5)
        width = D
    with_prior = structure.endswith("prior") or structure == "kl_balance_prior"
    if with_prior:
        for name in [n for n in leaves if not n.startswith("logvar")]:
            if grouped and name == "mu.top":
                continue  # the top group keeps its marginal
            leaves["prior." + name] = _leaf(tuple(leaves[name].shape), dtype, 0.5)
            if not discrete:
                lv = name.replace("mu", "logvar")
                leaves["prior." + lv] = _leaf(tuple(leaves[lv].shape), dtype, 0.5)
    leaves["decoder.weight"] = _leaf((width, DATA), dtype, 0.5)
    leaves["decoder.bias"] = _leaf((DATA,), dtype, 0.1)
    if cfg.decoder == "normal":
        leaves["decoder.log_scale"] = _leaf((DATA,), dtype, 0.1)

    # Data.
    x_shape = (B, T, DATA) if stepped else (B, DATA)
    if cfg.decoder in ("bernoulli", "torch_bernoulli"):
        x = torch.randint(0, 2, x_shape).to(dtype)
    else:
        x = torch.randn(x_shape, dtype=torch.float64).to(dtype)
    if structure == "hostile_nan_x":
        x[0, 0] = math.nan
    if structure == "hostile_nonbinary_x":
        x[0, 0] = 0.5
    weight = None
    if structure in ("weight", "hostile_negative_weight"):
        weight = (torch.rand(B, dtype=torch.float64) + 0.1).to(dtype)
        if structure == "hostile_negative_weight":
            weight[0] = -1.0
    if structure == "hostile_logvar_range":
        with torch.no_grad():
            leaves["logvar"][0, 0] = 1000.0

    # The loss.
    latent = 2 * K if discrete and stepped else (K if discrete else D)
    if grouped:
        if structure == "grouped_marginals":
            marginal: Any = {
                "top": _marginal("diagonal", groups["top"], dtype),
                "bottom": _marginal("mixture", groups["bottom"], dtype),
            }
        elif cfg.marginal == "none":
            marginal = None
        else:  # the first group only: the others fall back to N(0, I)
            marginal = {"top": _marginal(cfg.marginal, groups["top"], dtype)}
    else:
        marginal = _marginal(cfg.marginal, latent, dtype)
    options: dict[str, Any] = {"validate_args": cfg.validate}
    if structure == "mc":
        options["rate_estimator"] = "mc"
    if structure.startswith("kl_balance"):
        options["kl_balance"] = 0.8
    loss = rdloss.RateDistortionLoss(marginal, _objective(cfg.objective), **options)
    loss.train()

    def gaussian(mu: Tensor, logvar: Tensor) -> Any:
        event = 1 if stepped else None
        if cfg.posterior == "helpers":
            return helpers.normal(mu, logvar=logvar, event_dims=event)
        if cfg.posterior == "helpers_log_scale":  # the leaf read as log sigma
            return helpers.normal(mu, log_scale=logvar, event_dims=event)
        return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)

    def posterior_and_prior() -> tuple[Any, Any]:
        if discrete:
            family = Categorical if cfg.posterior == "categorical" else OneHotCategorical

            def make(logits: Tensor) -> Any:
                dist = family(logits=logits)
                return Independent(dist, 1) if stepped else dist

            prior = make(leaves["prior.logits"]) if with_prior else None
            return make(leaves["logits"]), prior
        if grouped:
            post = {g: gaussian(leaves[f"mu.{g}"], leaves[f"logvar.{g}"]) for g in groups}
            prior_map = {
                g: gaussian(leaves[f"prior.mu.{g}"], leaves[f"prior.logvar.{g}"])
                for g in groups
                if with_prior and g != "top"
            }
            return post, (prior_map or None)
        prior = gaussian(leaves["prior.mu"], leaves["prior.logvar"]) if with_prior else None
        return gaussian(leaves["mu"], leaves["logvar"]), prior

    def features(z: Any) -> Tensor:
        w, b = leaves["decoder.weight"], leaves["decoder.bias"]
        if isinstance(z, Mapping):
            z = torch.cat([z[g] for g in groups], dim=-1)
        if cfg.posterior == "categorical":
            return w[z] + b
        if discrete and stepped:
            z = z.flatten(-2)
        out: Tensor = z @ w + b
        return out

    def decode(z: Any) -> Any:
        f = features(z)
        event = len(x_shape) - 1
        if cfg.decoder == "bernoulli":
            return helpers.bernoulli(logits=f, event_dims=event)
        if cfg.decoder == "torch_bernoulli":
            return Independent(Bernoulli(logits=f), event)
        if cfg.decoder == "normal":
            scale = torch.exp(leaves["decoder.log_scale"])
            return helpers.normal(f, scale=scale, event_dims=event)
        return helpers.laplace(f, scale=1.0, event_dims=event)

    def kwargs() -> dict[str, Any]:
        post, prior = posterior_and_prior()
        call: dict[str, Any] = {"posterior": post}
        if prior is not None:
            call["prior"] = prior
        if weight is not None:
            call["weight"] = weight
        if cfg.call.startswith("likelihood"):
            shape = torch.Size([S]) if cfg.call == "likelihood_s3" else torch.Size()

            def draw(q: Any) -> Tensor:
                z: Tensor = q.rsample(shape) if q.has_rsample else q.sample(shape)
                return z

            z = {g: draw(q) for g, q in post.items()} if isinstance(post, dict) else draw(post)
            call["likelihood"] = decode(z)
            call["z"] = z
        else:
            call["decoder"] = decode
            call["samples"] = {"decoder1": 1, "decoder3": S, "enumerate": "enumerate"}[cfg.call]
        return call

    for name, p in loss.named_parameters():
        if p.requires_grad:
            leaves["param." + name] = p
    return Setup(loss=loss, x=x, leaves=leaves, kwargs=kwargs)


def _detach(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, Mapping):
        return {str(k): _detach(v) for k, v in value.items()}
    return value


def run_config(cfg: Config) -> dict[str, Any]:
    """Run one configuration: two calls in train mode, outputs, gradients, objective state.

    torch's global ``Distribution`` validation default is restored afterwards: the first
    ``torch.compile`` turns it off for the whole process (``torch._dynamo``), which would
    make every later configuration depend on the order of the corpus.
    """
    from torch.distributions import Distribution

    default = Distribution._validate_args
    try:
        return _run_config(cfg)
    finally:
        Distribution.set_default_validate_args(default)


def _run_config(cfg: Config) -> dict[str, Any]:
    try:
        setup = build(cfg)
        fn: Callable[..., Any] = setup.loss
        if cfg.compiled:
            fn = torch.compile(setup.loss, fullgraph=True, backend="aot_eager")
        names = list(setup.leaves)
        calls = []
        for _ in range(2):
            out = fn(setup.x, **setup.kwargs())
            grads = torch.autograd.grad(
                out.loss, [setup.leaves[n] for n in names], allow_unused=True
            )
            calls.append(
                {
                    "out": {f: _detach(getattr(out, f)) for f in FIELDS},
                    "grad": {n: _detach(g) for n, g in zip(names, grads, strict=True)},
                }
            )
        objective: Any = setup.loss.objective
        state = _detach(dict(objective.state_dict()))
        return {"ok": True, "calls": calls, "state": state}
    except Exception as error:  # recorded: raising is an outcome to compare
        return {"ok": False, "error_type": type(error).__name__, "error": str(error)[:300]}


def run_corpus(configs: Iterable[Config]) -> dict[str, dict[str, Any]]:
    """Run configurations in-process; the results keyed by configuration name."""
    results = {}
    for cfg in configs:
        results[cfg.name] = run_config(cfg)
        results[cfg.name]["tags"] = list(cfg.tags)
        results[cfg.name]["dtype"] = cfg.dtype
        results[cfg.name]["compiled"] = cfg.compiled
    return results


# --- comparison (the parent process) ------------------------------------------------------


_ADDED_STATE = ("_extra_state", "seeded")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for k, v in value.items():
            flat.update(_flatten(v, f"{prefix}/{k}"))
        return flat
    if isinstance(value, (list, tuple)):
        flat = {}
        for i, v in enumerate(value):
            flat.update(_flatten(v, f"{prefix}/{i}"))
        return flat
    return {prefix: value}


def tensor_difference(a: Tensor, b: Tensor) -> float:
    """0.0 when bit-identical, else ``max|a - b| / max(max|a|, max|b|)`` (inf: incomparable)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return math.inf
    if torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)):
        return 0.0
    if not a.is_floating_point():
        return math.inf
    a, b = a.double(), b.double()
    if not torch.equal(a.isnan(), b.isnan()):
        return math.inf
    infinite = a.isinf() | b.isinf()
    if not torch.equal(a[infinite], b[infinite]):
        return math.inf
    finite = ~(a.isnan() | infinite)
    a, b = a[finite], b[finite]
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = max(float(a.abs().max()), float(b.abs().max())) if a.numel() else 0.0
    if diff == 0.0:
        return 5e-324  # equal values, different bits (-0.0 and 0.0): not identical
    return diff / scale


@dataclass
class Verdict:
    """One configuration's class, its worst relative difference and where it was."""

    name: str
    status: str  # identical | raised | tolerance | compile_skipped | FAIL
    relative: float = 0.0
    detail: str = ""


def compare_one(name: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> Verdict:
    """Classify one configuration (see the module docstring)."""
    if old is None or new is None:
        return Verdict(name, "FAIL", math.inf, "missing in " + ("old" if old is None else "new"))
    if not old["ok"] or not new["ok"]:
        if not old["ok"] and not new["ok"]:
            same = old["error_type"] == new["error_type"]
            change = "" if same else f"{old['error_type']} -> {new['error_type']}"
            return Verdict(name, "raised", 0.0, change or old["error_type"])
        which, bad = ("old", old) if not old["ok"] else ("new", new)
        status = "compile_skipped" if new.get("compiled") else "FAIL"
        return Verdict(name, status, math.inf, f"raised in {which} only: {bad['error'][:160]}")
    a = _flatten({"calls": old["calls"], "state": old["state"]})
    b = _flatten({"calls": new["calls"], "state": new["state"]})
    # State the rewrite added on purpose (issue 20): recorded settings and GECO's seed flag.
    added = {k for k in set(b) - set(a) if k.rsplit("/", 1)[-1].endswith(_ADDED_STATE)}
    b = {k: v for k, v in b.items() if k not in added}
    if a.keys() != b.keys():
        keys = sorted(set(a) ^ set(b))[:4]
        return Verdict(name, "FAIL", math.inf, f"recorded keys differ: {keys}")
    tags = set(new.get("tags") or ())
    tolerance = TOLERANCE[new["dtype"]]
    worst, where, unexplained, worst_unexplained = 0.0, "", "", 0.0
    for key in a:
        u, v = a[key], b[key]
        if isinstance(u, Tensor) and isinstance(v, Tensor):
            rel = tensor_difference(u, v)
        else:
            rel = 0.0 if (type(u) is type(v) and u == v) else math.inf
        if rel == 0.0:
            continue
        if rel > worst:
            worst, where = rel, key
        if rel > worst_unexplained and not (rel <= tolerance and _explained(key, tags)):
            unexplained, worst_unexplained = key, rel
    if worst == 0.0:
        return Verdict(name, "identical")
    detail = f"worst at {where}; fast path: {', '.join(sorted(tags)) or 'none'}"
    if unexplained:
        return Verdict(name, "FAIL", worst, f"{detail}; worst unexplained: {unexplained}")
    return Verdict(name, "tolerance", worst, detail)


def _explained(key: str, tags: set[str]) -> bool:
    """Whether a fast path the configuration uses may change this recorded value."""
    parts = key.split("/")  # "", "calls", i, "out", field, ... or "", "state", ...
    field = parts[4] if len(parts) > 4 and parts[3] == "out" else ""
    if field in RATE_FIELDS:
        return bool(tags & {GAUSSIAN_POSTERIOR, MIXTURE_KERNEL})
    if field in DISTORTION_FIELDS:
        return bool(tags & {BERNOULLI_LIKELIHOOD, GAUSSIAN_LIKELIHOOD})
    return bool(tags)


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Verdict]:
    """Classify every configuration of either run, in the new run's order."""
    names = list(new) + [n for n in old if n not in new]
    return [compare_one(n, old.get(n), new.get(n)) for n in names]


def report(verdicts: list[Verdict], old_label: str, new_label: str, seconds: float) -> int:
    """Print the table; return the exit status (1 if anything failed)."""
    count = {
        s: [v for v in verdicts if v.status == s]
        for s in ("identical", "raised", "tolerance", "compile_skipped", "FAIL")
    }
    print(f"\nrdloss regression corpus: {old_label}  vs  {new_label}  ({seconds:.0f} s)")
    print(f"  configurations compared       {len(verdicts):5d}")
    print(f"  bit-identical                 {len(count['identical']):5d}")
    changed = [v for v in count["raised"] if "->" in v.detail]
    print(
        f"  raised in both (same outcome) {len(count['raised']):5d}"
        f"   ({len(changed)} with a changed exception type)"
    )
    for dtype in ("float64", "float32"):
        within = [v for v in count["tolerance"] if f"/{dtype}/" in v.name]
        worst = max((v.relative for v in within), default=0.0)
        print(
            f"  within tolerance ({dtype})   {len(within):5d}"
            f"   (<= {TOLERANCE[dtype]:g} relative, fast-path configs only; max {worst:.3g})"
        )
    compiled = [v for v in verdicts if v.name.endswith("/compiled")]
    ran = sum(v.status in ("identical", "tolerance") for v in compiled)
    print(
        f"  compile skipped (one tree)    {len(count['compile_skipped']):5d}"
        f"   ({len(compiled)} compiled configurations, {ran} ran in both trees)"
    )
    print(f"  FAILURES                      {len(count['FAIL']):5d}")
    for title, rows in (
        ("within tolerance", count["tolerance"]),
        ("changed exception type (warning)", changed),
        ("compile skipped", count["compile_skipped"]),
        ("FAILURES", count["FAIL"]),
    ):
        if rows:
            print(f"\n{title}:")
            for v in rows:
                print(f"  {v.name}  rel={v.relative:.3g}  {v.detail}")
    sys.stdout.flush()
    return 1 if count["FAIL"] else 0


# --- driving two trees --------------------------------------------------------------------


def _git(repo: str, *args: str) -> str:
    done = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _run_tree(tree: str, out: str, only: str | None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = tree + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    command = [sys.executable, os.path.abspath(__file__), "--run", out, "--expect-tree", tree]
    if only:
        command += ["--only", only]
    return subprocess.Popen(command, env=env, cwd=os.path.dirname(out))


def _subprocess_main(out: str, expect_tree: str | None, only: str | None) -> int:
    torch.set_num_threads(1)  # determinism across runs, and two trees share two cores
    import rdloss

    where = os.path.realpath(rdloss.__file__)
    if expect_tree and not where.startswith(os.path.realpath(expect_tree) + os.sep):
        print(f"rdloss imported from {where}, not from {expect_tree}", file=sys.stderr)
        return 2
    try:
        _zuko()
        flows = True
    except ImportError:
        flows = False
    configs = [c for c in corpus(flows=flows) if not only or only in c.name]
    started = time.perf_counter()
    results = run_corpus(configs)
    torch.save({"rdloss": where, "results": results}, out)
    failed = sum(not r["ok"] for r in results.values())
    print(
        f"{where}: {len(results)} configurations ({failed} raised) in "
        f"{time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: compare two trees, or (``--run``) run the corpus in this one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", nargs="?", help="the old commit (checked out temporarily)")
    parser.add_argument("new", nargs="?", help="a directory or commit (default: this tree)")
    parser.add_argument("--only", help="run only configurations whose name contains this")
    parser.add_argument("--run", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--expect-tree", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        return _subprocess_main(args.run, args.expect_tree, args.only)
    if args.old is None:
        parser.error("OLD_COMMIT is required")
    repo = _git(os.getcwd(), "rev-parse", "--show-toplevel")
    scratch = tempfile.mkdtemp(prefix="rdloss-regression-")
    worktrees: list[str] = []

    def checkout(commit: str, label: str) -> tuple[str, str]:
        sha = _git(repo, "rev-parse", "--verify", f"{commit}^{{commit}}")
        path = os.path.join(scratch, label)
        _git(repo, "worktree", "add", "--detach", path, sha)
        worktrees.append(path)
        return path, f"{commit} ({sha[:10]})"

    try:
        old_tree, old_label = checkout(args.old, "old")
        if args.new is None:
            new_tree, new_label = repo, f"working tree {repo}"
        elif os.path.isdir(args.new):
            new_tree, new_label = os.path.abspath(args.new), f"tree {os.path.abspath(args.new)}"
        else:
            new_tree, new_label = checkout(args.new, "new")
        started = time.perf_counter()
        outs = [os.path.join(scratch, f"{label}.pt") for label in ("old_results", "new_results")]
        trees = (old_tree, new_tree)
        procs = [_run_tree(t, o, args.only) for t, o in zip(trees, outs, strict=True)]
        codes = [p.wait() for p in procs]
        if any(codes):
            print(f"a corpus run failed (exit codes {codes})", file=sys.stderr)
            return 2
        old, new = (torch.load(o, weights_only=False)["results"] for o in outs)
        verdicts = compare(old, new)
        return report(verdicts, old_label, new_label, time.perf_counter() - started)
    finally:
        for path in worktrees:
            subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", path], check=False)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
