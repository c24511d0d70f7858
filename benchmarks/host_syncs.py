"""Host synchronisations, aten ops and tensor constructions per call, for every component.

Each case is one training-style call of rdloss (with grad enabled, ``train()`` mode) at
B = 128, 32 latent dimensions, 784 Bernoulli pixels, built from `rdloss.helpers` as a
user's model would: the helpers and the loss share one ``validate_args`` flag (``True``
is the default of both). Distributions a user writes by hand (a categorical posterior) are
built outside the counted call. See `benchmarks._counting` for what is counted.

Run: ``python benchmarks/host_syncs.py`` (add ``--where`` for the call chain of every
synchronisation).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import OneHotCategorical

import rdloss
from rdloss import diagnostics, helpers, marginals, objectives

try:
    from benchmarks._counting import Counts, count
except ImportError:  # run as a script from benchmarks/
    from _counting import Counts, count  # type: ignore[no-redef]

B, LATENT, PIXELS = 128, 32, 784

Case = Callable[[bool], Callable[[], object]]
"""Given ``validate_args``, set up a component and return the call to count."""


def _tensors(latent: int = LATENT) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randint(0, 2, (B, PIXELS), generator=g).float(),
        "mu": torch.randn(B, latent, generator=g).requires_grad_(),
        "logvar": (0.1 * torch.randn(B, latent, generator=g)).requires_grad_(),
        "logits": torch.randn(B, PIXELS, generator=g).requires_grad_(),
    }


def _validate(flag: bool) -> bool | None:
    """The helpers' flag: ``None`` is torch.distributions' own default (on)."""
    return None if flag else False


def loss_case(
    objective: Callable[[], objectives.Objective] = lambda: objectives.Beta(0.5),
    marginal: Callable[[], nn.Module | None] = lambda: None,
    *,
    decoder: bool = False,
    weighted: bool = False,
) -> Case:
    """A `RateDistortionLoss` call on a diagonal-Gaussian posterior and a Bernoulli decoder."""

    def make(validate: bool) -> Callable[[], object]:
        t = _tensors()
        m = marginal()
        loss_fn = rdloss.RateDistortionLoss(m, objective(), validate_args=validate)
        weights = torch.randn(LATENT, PIXELS) / LATENT**0.5
        flag = _validate(validate)
        weight = torch.rand(B) if weighted else None

        def decode(z: torch.Tensor) -> torch.distributions.Distribution:
            return helpers.bernoulli(logits=z @ weights, validate_args=flag)

        def call() -> object:
            q = helpers.normal(t["mu"], logvar=t["logvar"], validate_args=flag)
            if decoder or (m is not None and not isinstance(m, marginals.StandardNormal)):
                return loss_fn(t["x"], posterior=q, decoder=decode, weight=weight)
            p = helpers.bernoulli(logits=t["logits"], validate_args=flag)
            return loss_fn(t["x"], posterior=q, likelihood=p, weight=weight)

        return call

    return make


def _vamp_prior() -> nn.Module:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(PIXELS, 2 * LATENT)
            self.validate: bool | None = None

        def forward(self, x: torch.Tensor) -> torch.distributions.Distribution:
            mu, logvar = self.net(x).chunk(2, dim=-1)
            return helpers.normal(mu, logvar=logvar, validate_args=self.validate)

    return marginals.VampPrior(Encoder(), torch.rand(16, PIXELS))


def vamp_case(validate: bool) -> Callable[[], object]:
    """`VampPrior` whose encoder builds its posterior with the same helper and flag."""
    prior = _vamp_prior()
    prior.encoder.validate = _validate(validate)
    return loss_case(marginal=lambda: prior)(validate)


def categorical_case(validate: bool) -> Callable[[], object]:
    """A one-hot categorical latent against `marginals.Categorical`, enumerated."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (B, PIXELS), generator=g).float()
    enc = torch.randn(B, 10, generator=g).requires_grad_()
    weights = torch.randn(10, PIXELS, generator=g)
    loss_fn = rdloss.RateDistortionLoss(
        marginals.Categorical(10, one_hot=True), validate_args=validate
    )
    flag = _validate(validate)
    posterior = OneHotCategorical(logits=enc, validate_args=False)  # the user's, not counted

    def call() -> object:
        def decode(z: torch.Tensor) -> torch.distributions.Distribution:
            return helpers.bernoulli(logits=z @ weights, validate_args=flag)

        return loss_fn(x, posterior=posterior, decoder=decode, samples="enumerate")

    return call


def hierarchical_case(
    objective: Callable[[], objectives.Objective] = lambda: objectives.Beta(0.5),
) -> Case:
    """Two groups, ``p(z1 | z2)`` computed by the model, ``z2`` against N(0, I)."""

    def make(validate: bool) -> Callable[[], object]:
        t = _tensors()
        g = torch.Generator().manual_seed(1)
        mu2 = torch.randn(B, 8, generator=g).requires_grad_()
        logvar2 = (0.1 * torch.randn(B, 8, generator=g)).requires_grad_()
        top_down = nn.Linear(8, 2 * LATENT)
        decode_w = torch.randn(LATENT + 8, PIXELS, generator=g) / (LATENT + 8) ** 0.5
        loss_fn = rdloss.RateDistortionLoss(objective=objective(), validate_args=validate)
        flag = _validate(validate)

        def call() -> object:
            q2 = helpers.normal(mu2, logvar=logvar2, validate_args=flag)
            z2 = q2.rsample()
            q1 = helpers.normal(t["mu"], logvar=t["logvar"], validate_args=flag)
            z1 = q1.rsample()
            p_mu, p_logvar = top_down(z2).chunk(2, dim=-1)
            p1 = helpers.normal(p_mu, logvar=p_logvar, validate_args=flag)
            logits = torch.cat([z1, z2], dim=-1) @ decode_w
            likelihood = helpers.bernoulli(logits=logits, validate_args=flag)
            return loss_fn(
                t["x"],
                posterior={"z1": q1, "z2": q2},
                prior={"z1": p1},
                z={"z1": z1, "z2": z2},
                likelihood=likelihood,
            )

        return call

    return make


LOSS_CASES: dict[str, Case] = {
    "Beta": loss_case(),
    "Beta, decoder=": loss_case(decoder=True),
    "Beta, weight=": loss_case(weighted=True),
    "TargetRate": loss_case(lambda: objectives.TargetRate(5.0)),
    "TargetDistortion": loss_case(lambda: objectives.TargetDistortion(500.0)),
    "FreeBits": loss_case(lambda: objectives.FreeBits(0.25)),
    "Capacity": loss_case(lambda: objectives.Capacity(5.0, gamma=10.0)),
    "GECO": loss_case(lambda: objectives.GECO(500.0)),
    "RateController": loss_case(lambda: objectives.RateController(5.0)),
    "StandardNormal": loss_case(marginal=lambda: marginals.StandardNormal(LATENT)),
    "DiagonalGaussian": loss_case(marginal=lambda: marginals.DiagonalGaussian(LATENT)),
    "GaussianMixture": loss_case(marginal=lambda: marginals.GaussianMixture(LATENT, 16)),
    "VampPrior": vamp_case,
    "Categorical": categorical_case,
    "grouped, Beta": hierarchical_case(),
    "grouped, FreeBits per group": hierarchical_case(
        lambda: objectives.FreeBits(0.25, per="group")
    ),
}
"""Loss calls: every built-in objective (default marginal) and marginal (objective Beta)."""


def _metric_case(metric: Callable[..., object], inputs: Callable[[object], tuple]) -> Case:
    def make(validate: bool) -> Callable[[], object]:
        t = _tensors()
        loss_fn = rdloss.RateDistortionLoss(validate_args=False)
        q = helpers.normal(t["mu"], logvar=t["logvar"], validate_args=False)
        p = helpers.bernoulli(logits=t["logits"], validate_args=False)
        out = loss_fn(t["x"], posterior=q, likelihood=p)
        m = metric(validate_args=validate)
        args = inputs((out, q))
        return lambda: m.update(*args)  # type: ignore[attr-defined]

    return make


METRIC_CASES: dict[str, Case] = {
    "RateDistortion.update": _metric_case(diagnostics.RateDistortion, lambda a: (a[0],)),
    "MutualInformationBounds.update": _metric_case(
        diagnostics.MutualInformationBounds, lambda a: (a[0],)
    ),
    "ActiveUnits.update": _metric_case(diagnostics.ActiveUnits, lambda a: (a[1],)),
    "RatePerDimension.update": _metric_case(diagnostics.RatePerDimension, lambda a: (a[0],)),
    "MutualInformation.update": _metric_case(diagnostics.MutualInformation, lambda a: (a[1],)),
}
"""Diagnostic updates, fed from one loss output (counted: the update alone)."""

CASES: dict[str, Case] = {**LOSS_CASES, **METRIC_CASES}


def measure(case: Case, validate: bool) -> Counts:
    """Counts of the second call (the first one warms caches such as torch's KL memo)."""
    call = case(validate)
    call()
    return count(call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--where", action="store_true", help="print each sync's call chain")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, B={B}, latent={LATENT}, pixels={PIXELS}, CPU")
    print(f"{'case':32}{'default':>26}{'validate_args=False':>26}")
    print(f"{'':32}{'syncs  ops  builds':>26}{'syncs  ops  builds':>26}")
    for name, case in CASES.items():
        on, off = measure(case, True), measure(case, False)
        print(
            f"{name:32}{on.n_syncs:>12}{on.n_ops:>5}{len(on.builds):>8}"
            f"{off.n_syncs:>13}{off.n_ops:>5}{len(off.builds):>8}"
        )
        if args.where:
            for label, counts in (("default", on), ("off", off)):
                for chain in counts.syncs:
                    print(f"    sync ({label}): " + " <- ".join(reversed(chain[-3:])))
                for chain in counts.builds:
                    print(f"    build ({label}): " + " <- ".join(reversed(chain[-2:])))


if __name__ == "__main__":
    main()
