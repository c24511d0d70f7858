"""A two-group hierarchical VAE (VDVAE/NVAE style): per-group rates, free bits, balancing.

Conv latents at two scales: a top group ``z2`` of shape ``(C, 2, 2)`` with the prior
N(0, I), and ``z1`` of shape ``(C, 4, 4)`` whose prior ``p(z1 | z2)`` comes from the
top-down path; the posterior ``q(z1 | x, z2)`` combines the bottom-up features with the
same top-down features (Ladder VAE, NVAE, VDVAE). Each Gaussian is parametrised by its mean
and log standard deviation, as in VDVAE. The groups go to the loss as mappings; a group
missing from ``prior`` uses its marginal (here N(0, I))::

    out = loss_fn(
        x,
        posterior={"z2": q2, "z1": q1},      # the keys' order is the report's (top first)
        prior={"z1": p1},                    # p(z1 | z2), computed in the same pass
        likelihood=likelihood,
    )
    out.rate_per_group["z1"]                 # (B,), also metrics()["rate/z1"]

Objectives over the groups: free bits per group (Kingma et al. 2016, IAF-VAE:
``sum_g max(lam, mean_batch KL_g)``) is ``FreeBits(lam, per="group")``; NVAE's KL warm-up
with its group balancing (Vahdat & Kautz 2020) is
``Beta(Linear(0.0, 1.0, steps=T), group_balance=True)``.

The script checks, in float64 on identical tensors, values and gradients:

* each group's rate against VDVAE's ``gaussian_analytical_kl`` (openai/vdvae,
  ``vae_helpers.py``) summed over ``(C, H, W)``;
* the NVAE objective against NVAE's ``kl_coeff``, ``kl_balancer`` and
  ``kl_balancer_coeff(..., 'square')`` (NVlabs/NVAE, ``utils.py``), during the warm-up
  (``kl_coeff < 1``) and after it;
* ``FreeBits(per="group")`` against the IAF-VAE formula,

then trains on the 8x8 digits and reports the rate of each group.
Run: ``python examples/hierarchical_vdvae.py`` (``--quick`` for a reduced run).
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn

import rdloss
from rdloss import helpers
from rdloss.demo.data import load_digits
from rdloss.objectives import Beta, FreeBits, Objective
from rdloss.schedules import Linear


class Check(NamedTuple):
    name: str
    max_abs: float
    max_rel: float


def compare(name: str, got: Tensor, want: Tensor, rtol: float = 1e-10) -> Check:
    """Print and assert the largest absolute and relative differences."""
    got, want = got.detach(), want.detach()
    max_abs = float((got - want).abs().max())
    max_rel = max_abs / max(float(want.abs().max()), 1e-300)
    print(f"check {name}: max abs diff {max_abs:.3e}, max rel diff {max_rel:.3e}")
    if max_rel > rtol:
        raise AssertionError(f"{name}: relative difference {max_rel:.3e} > {rtol:.0e}")
    return Check(name, max_abs, max_rel)


# --- The original formulas, written from their sources (not with rdloss). -------------


def vdvae_gaussian_analytical_kl(
    mu1: Tensor, mu2: Tensor, logsigma1: Tensor, logsigma2: Tensor
) -> Tensor:
    """VDVAE's elementwise ``KL(N(mu1, sigma1) || N(mu2, sigma2))`` (``vae_helpers.py``)."""
    return (
        -0.5
        + logsigma2
        - logsigma1
        + 0.5 * (logsigma1.exp() ** 2 + (mu1 - mu2) ** 2) / (logsigma2.exp() ** 2)
    )


def nvae_kl_coeff(step: int, total_step: int, constant_step: int, min_kl_coeff: float) -> float:
    """NVAE's KL warm-up coefficient (``utils.py``, ``kl_coeff``)."""
    return max(min((step - constant_step) / total_step, 1.0), min_kl_coeff)


def nvae_kl_balancer_coeff(num_scales: int, groups_per_scale: list[int]) -> Tensor:
    """NVAE's ``kl_balancer_coeff(..., fun='square')``: alpha per group, top scale first."""
    coeff = torch.cat(
        [
            (2**i) ** 2
            / groups_per_scale[num_scales - i - 1]
            * torch.ones(groups_per_scale[num_scales - i - 1], dtype=torch.float64)
            for i in range(num_scales)
        ]
    )
    return coeff / coeff.min()


def nvae_kl_balancer(kl_all: list[Tensor], coeff: float, alpha: Tensor) -> Tensor:
    """NVAE's ``kl_balancer``: the balanced KL per example, times the warm-up coefficient."""
    kl = torch.stack(kl_all, dim=1)
    if coeff < 1.0:
        kl_coeff_i = kl.abs().mean(0, keepdim=True) + 0.01
        total_kl = kl_coeff_i.sum()
        kl_coeff_i = kl_coeff_i / alpha.unsqueeze(0) * total_kl
        kl_coeff_i = kl_coeff_i / kl_coeff_i.mean(1, keepdim=True)
        return coeff * (kl * kl_coeff_i.detach()).sum(1)
    return coeff * kl.sum(1)


def iaf_free_bits(kl_groups: list[Tensor], lam: float) -> Tensor:
    """Kingma et al. (2016), App. C: ``sum_g max(lam, mean over the minibatch of KL_g)``."""
    return sum(torch.clamp(kl.mean(), min=lam) for kl in kl_groups)  # type: ignore[return-value]


# --- The model. -----------------------------------------------------------------------


class Ladder(nn.Module):
    """Bottom-up 8x8 -> 4x4 -> 2x2, top-down 2x2 -> 4x4 -> 8x8; latents (C,2,2), (C,4,4)."""

    def __init__(self, channels: int = 4, width: int = 32) -> None:
        super().__init__()
        self.up1 = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1), nn.SiLU())
        self.up2 = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.SiLU())
        self.q2 = nn.Conv2d(width, 2 * channels, 1)
        self.down = nn.Sequential(nn.ConvTranspose2d(channels, width, 4, 2, 1), nn.SiLU())
        self.p1 = nn.Conv2d(width, 2 * channels, 1)
        self.q1 = nn.Conv2d(2 * width, 2 * channels, 1)
        self.out = nn.Sequential(
            nn.Conv2d(channels + width, width, 3, 1, 1),
            nn.SiLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1),
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Means and log-sigmas of q2, q1, p1 (``(B, C, H, W)``) and the decoder's logits."""
        h1 = self.up1(x)
        qm2, qs2 = self.q2(self.up2(h1)).chunk(2, 1)
        z2 = qm2 + qs2.exp() * torch.randn_like(qm2)
        top_down = self.down(z2)
        pm1, ps1 = self.p1(top_down).chunk(2, 1)
        qm1, qs1 = self.q1(torch.cat([h1, top_down], 1)).chunk(2, 1)
        z1 = qm1 + qs1.exp() * torch.randn_like(qm1)
        logits = self.out(torch.cat([z1, top_down], 1))
        return dict(qm2=qm2, qs2=qs2, qm1=qm1, qs1=qs1, pm1=pm1, ps1=ps1, logits=logits)


def loss_inputs(t: dict[str, Tensor]) -> dict[str, object]:
    """The model's tensors as the loss's keyword arguments (the lines a user writes)."""
    return dict(
        posterior={
            "z2": helpers.normal(t["qm2"], scale=t["qs2"].exp()),
            "z1": helpers.normal(t["qm1"], scale=t["qs1"].exp()),
        },
        prior={"z1": helpers.normal(t["pm1"], scale=t["ps1"].exp())},
        likelihood=helpers.bernoulli(logits=t["logits"]),
    )


def check_against_vdvae_nvae(x: Tensor, seed: int, warmup: int) -> list[Check]:
    """Per-group rates, NVAE's balanced warm-up and per-group free bits, in float64."""
    torch.manual_seed(seed)
    model = Ladder().double()
    x = x.double()
    torch.manual_seed(seed + 1)
    t = model(x)
    params = list(model.parameters())

    def grads(value: Tensor) -> Tensor:
        gs = torch.autograd.grad(value, params, retain_graph=True, materialize_grads=True)
        return torch.cat([g.flatten() for g in gs])

    zeros = torch.zeros_like(t["qm2"])
    kl = {
        "z2": reduce(
            vdvae_gaussian_analytical_kl(t["qm2"], zeros, t["qs2"], zeros), "b c h w -> b", "sum"
        ),
        "z1": reduce(
            vdvae_gaussian_analytical_kl(t["qm1"], t["pm1"], t["qs1"], t["ps1"]),
            "b c h w -> b",
            "sum",
        ),
    }
    recon = reduce(
        F.binary_cross_entropy_with_logits(t["logits"], x, reduction="none"), "b c h w -> b", "sum"
    )
    checks = []
    out = rdloss.RateDistortionLoss()(x, **loss_inputs(t))
    for g in ("z2", "z1"):
        checks.append(compare(f"rate {g} = VDVAE kl summed", out.rate_per_group[g], kl[g]))
        checks.append(
            compare(f"grad of rate {g}", grads(out.rate_per_group[g].sum()), grads(kl[g].sum()))
        )

    alpha = nvae_kl_balancer_coeff(2, [1, 1])  # one group per scale, top scale first
    print(f"NVAE 'square' alpha (z2, z1) = {alpha.tolist()}")
    objectives: dict[str, Objective] = {
        "default alpha": Beta(Linear(0.0, 1.0, steps=warmup), group_balance=True),
        "NVAE alpha": Beta(
            Linear(0.0, 1.0, steps=warmup),
            group_balance=True,
            alpha={"z2": float(alpha[0]), "z1": float(alpha[1])},
        ),
    }
    for label, objective in objectives.items():
        loss_fn = rdloss.RateDistortionLoss(objective=objective)
        for step in (warmup // 3, warmup):  # during the warm-up (kl_coeff < 1) and after
            objective.step.fill_(step)
            out = loss_fn(x, **loss_inputs(t))
            coeff = nvae_kl_coeff(step, warmup, 0, 1e-4)
            nvae = torch.mean(recon + nvae_kl_balancer([kl["z2"], kl["z1"]], coeff, alpha))
            name = f"NVAE {label}, kl_coeff {coeff:.3f}"
            checks.append(
                compare(
                    f"{name}: beta", out.hyper["beta"], torch.tensor(coeff, dtype=torch.float64)
                )
            )
            checks.append(compare(f"{name}: loss", out.loss, nvae))
            checks.append(compare(f"{name}: grad", grads(out.loss), grads(nvae)))
            if coeff < 1.0:  # the check must see the balancing: it moves the loss
                plain = torch.mean(recon + coeff * (kl["z2"] + kl["z1"]))
                shift = float((nvae - plain).detach().abs() / plain.detach().abs())
                print(f"{name}: balancing moves the loss by {shift:.2e} (relative)")
                if shift < 1e-6:
                    raise AssertionError("the balancing check does not discriminate")

    means = sorted(float(v.detach().mean()) for v in kl.values())
    lam = sum(means) / 2  # one group below the floor, one above
    loss_fn = rdloss.RateDistortionLoss(objective=FreeBits(lam, per="group"))
    out = loss_fn(x, **loss_inputs(t))
    iaf = recon.mean() + iaf_free_bits([kl["z2"], kl["z1"]], lam)
    checks.append(compare(f"FreeBits(per='group', lam={lam:.2f}): loss", out.loss, iaf))
    checks.append(compare("FreeBits(per='group'): grad", grads(out.loss), grads(iaf)))
    return checks


def main(argv: list[str] | None = None) -> list[Check]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few training steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--objective", choices=("nvae", "free-bits"), default="nvae")
    parser.add_argument("--lam", type=float, default=0.25, help="free nats per group")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_steps = args.steps if args.steps is not None else (5 if args.quick else 1000)
    warmup = max(3, int(0.3 * n_steps))  # NVAE anneals the KL over 30% of training

    images = load_digits().images.view(-1, 1, 8, 8)
    train, test = images[:1500], images[1500:]
    checks = check_against_vdvae_nvae(test[:8], args.seed, warmup)

    torch.manual_seed(args.seed)
    model = Ladder()
    objective: Objective = (
        Beta(Linear(0.0, 1.0, steps=warmup), group_balance=True)
        if args.objective == "nvae"
        else FreeBits(args.lam, per="group")
    )
    loss_fn = rdloss.RateDistortionLoss(objective=objective)
    optimizer = torch.optim.Adamax(model.parameters(), lr=3e-3)
    for _ in range(n_steps):
        x = train[torch.randint(0, len(train), (100,))]
        out = loss_fn(x, **loss_inputs(model(x)))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()
    loss_fn.eval()
    with torch.no_grad():
        m = loss_fn(test, **loss_inputs(model(test))).metrics()
    print(
        f"after {n_steps} steps ({args.objective}), test: R {m['rate']:.2f} nats "
        f"(z2 {m['rate/z2']:.2f}, z1 {m['rate/z1']:.2f}), D {m['distortion']:.2f}, "
        f"ELBO {m['elbo']:.2f}"
    )
    return checks


if __name__ == "__main__":
    main()
