"""An scvi-tools style model with two latent groups: KL warm-up on ``z`` only, ``l`` at weight 1.

scvi-tools' ``VAE`` (scverse/scvi-tools, ``src/scvi/module/_vae.py``, ``VAE.loss``) has a
cell-state latent ``z`` with prior ``N(0, I)`` and a library-size latent ``l`` with a
log-normal prior whose mean and variance are those of the log library size in the cell's
batch (``_init_library_size``); the counts follow a negative binomial with mean
``exp(l) * softmax(decoder(z))``. Its loss per batch is::

    kl_z = kl_divergence(qz, pz).sum(-1)
    kl_l = kl_divergence(ql, pl).sum(1)
    loss = mean(-px.log_prob(x).sum(-1) + kl_weight * kl_z + kl_l)

with ``kl_weight`` rising linearly from 0 to 1 over ``n_steps_kl_warmup`` steps
(``src/scvi/train/_trainingplans.py``, ``_compute_kl_weight``). Only ``z``'s KL is warmed
up: a single ``Beta(Linear(0.0, 1.0, steps=T))`` would also drop ``l``'s KL at the start.
With rdloss the two groups are a mapping and the warm-up a per-group β::

    loss_fn = rdloss.RateDistortionLoss(
        objective=Beta({"z": Linear(0.0, 1.0, steps=T), "l": 1.0})  # "l" may be left out
    )
    out = loss_fn(x, posterior={"z": qz, "l": ql}, prior={"l": pl}, likelihood=px)

``out.hyper`` has ``beta/z`` and ``beta/l``, ``out.metrics()`` the rate of each group as
``rate/z`` and ``rate/l``. The script checks rdloss against the loss above written out
(analytic Gaussian KLs; scvi's ``log_nb_positive`` with its ``eps`` set to 0, since torch's
``NegativeBinomial`` has none), values and gradients in float64 at steps before, in and
after the warm-up, then trains on synthetic counts from two batches of cells and prints
each group's rate and weight. Run: ``python examples/scvi_two_group.py`` (``--quick`` for a
reduced run).
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import NegativeBinomial, Normal

import rdloss
from rdloss.objectives import Beta
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


class Counts(NamedTuple):
    x: Tensor  # (N, G) counts
    library_log_mean: Tensor  # (N, 1): the mean log library size of each cell's batch
    library_log_var: Tensor  # (N, 1): its variance


def synthetic_counts(n_cells: int = 1200, n_genes: int = 40, seed: int = 0) -> Counts:
    """Three cell types in two batches whose library sizes differ (e^6 and e^7 counts)."""
    g = torch.Generator().manual_seed(seed)
    cell_type = torch.randint(0, 3, (n_cells,), generator=g)
    batch = torch.randint(0, 2, (n_cells,), generator=g)
    programmes = 1.5 * torch.randn(3, n_genes, generator=g)
    noise = 0.3 * torch.randn(n_cells, n_genes, generator=g)
    profile = torch.softmax(programmes[cell_type] + noise, -1)
    log_library = 6.0 + batch.float() + 0.3 * torch.randn(n_cells, generator=g)
    mu, theta = log_library.exp()[:, None] * profile, torch.full((n_genes,), 5.0)
    torch.manual_seed(seed)
    x = NegativeBinomial(total_count=theta, logits=mu.log() - theta.log()).sample()
    # scvi-tools' _init_library_size: mean and (population) variance of log(sum of counts)
    # over each batch's cells.
    log_sum = x.sum(1).log()
    mean, var = torch.zeros(n_cells, 1), torch.ones(n_cells, 1)
    for b in (0, 1):
        cells = batch == b
        mean[cells] = log_sum[cells].mean()
        var[cells] = log_sum[cells].var(unbiased=False)
    return Counts(x, mean, var)


class Outputs(NamedTuple):
    qz_m: Tensor
    qz_v: Tensor
    ql_m: Tensor
    ql_v: Tensor
    px_rate: Tensor
    theta: Tensor


class SCVILike(nn.Module):
    """scvi-tools' VAE reduced to its loss-relevant parts: two encoders, one NB decoder."""

    def __init__(self, n_genes: int, latent: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.z_encoder = nn.Sequential(
            nn.Linear(n_genes, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent)
        )
        self.l_encoder = nn.Sequential(nn.Linear(n_genes, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, n_genes)
        )
        self.log_theta = nn.Parameter(torch.zeros(n_genes))  # gene-wise inverse dispersion

    def forward(self, x: Tensor) -> Outputs:
        h = torch.log1p(x)  # scvi's log_variational=True
        qz_m, qz_logv = self.z_encoder(h).chunk(2, -1)
        ql_m, ql_logv = self.l_encoder(h).chunk(2, -1)
        qz_v, ql_v = qz_logv.exp() + 1e-4, ql_logv.exp() + 1e-4  # scvi's var_eps
        z = qz_m + qz_v.sqrt() * torch.randn_like(qz_m)
        library = ql_m + ql_v.sqrt() * torch.randn_like(ql_m)
        px_rate = library.exp() * torch.softmax(self.decoder(z), -1)
        return Outputs(qz_m, qz_v, ql_m, ql_v, px_rate, self.log_theta.exp())


def rdloss_step(loss_fn: rdloss.RateDistortionLoss, o: Outputs, data: Counts) -> rdloss.RDOutput:
    """The loss of one batch: two named groups, ``l``'s prior from the cell's batch."""
    posterior = {"z": Normal(o.qz_m, o.qz_v.sqrt()), "l": Normal(o.ql_m, o.ql_v.sqrt())}
    prior = {"l": Normal(data.library_log_mean, data.library_log_var.sqrt())}
    # scvi's NB(mu, theta) is torch's NegativeBinomial(total_count=theta, logits=log(mu/theta)).
    px = NegativeBinomial(total_count=o.theta, logits=o.px_rate.log() - o.theta.log())
    return loss_fn(data.x, posterior=posterior, prior=prior, likelihood=px)


def scvi_kl_weight(step: int, n_steps_kl_warmup: int) -> float:
    """scvi-tools' ``_compute_kl_weight`` per step, min 0 and max 1 (its defaults)."""
    return step / n_steps_kl_warmup if step < n_steps_kl_warmup else 1.0


def scvi_loss(o: Outputs, data: Counts, kl_weight: float) -> Tensor:
    """``VAE.loss`` written out: Gaussian KLs and ``log_nb_positive`` (``eps = 0``)."""

    def gaussian_kl(m: Tensor, v: Tensor, mp: Tensor, vp: Tensor) -> Tensor:
        return 0.5 * (vp.log() - v.log() + (v + (m - mp) ** 2) / vp - 1.0)

    kl_z = gaussian_kl(o.qz_m, o.qz_v, torch.zeros_like(o.qz_m), torch.ones_like(o.qz_v)).sum(-1)
    kl_l = gaussian_kl(o.ql_m, o.ql_v, data.library_log_mean, data.library_log_var).sum(1)
    x, mu, theta = data.x, o.px_rate, o.theta
    log_theta_mu = torch.log(theta + mu)
    log_nb = (
        theta * (torch.log(theta) - log_theta_mu)
        + x * (torch.log(mu) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )
    reconst_loss = -log_nb.sum(-1)
    return torch.mean(reconst_loss + kl_weight * kl_z + kl_l)


def check_against_scvi(data: Counts, warmup: int, seed: int) -> list[Check]:
    """rdloss with β per group = scvi's loss, values and gradients, in float64."""
    torch.manual_seed(seed)
    model = SCVILike(data.x.shape[1]).double()
    data = Counts(*(t[:64].double() for t in data))
    loss_fn = rdloss.RateDistortionLoss(objective=Beta({"z": Linear(0.0, 1.0, steps=warmup)}))
    checks = []
    params = list(model.parameters())
    for step in (0, warmup // 2, warmup + 1):
        loss_fn.objective.step.fill_(step)  # the buffer the schedule reads
        torch.manual_seed(seed + step)
        outputs = model(data.x)
        out = rdloss_step(loss_fn, outputs, data)
        ref = scvi_loss(outputs, data, scvi_kl_weight(step, warmup))
        checks.append(compare(f"loss at step {step}", out.loss, ref))
        ours = torch.autograd.grad(out.loss, params, retain_graph=True)
        want = torch.autograd.grad(ref, params)
        flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
        checks.append(compare(f"gradient at step {step}", flat(ours), flat(want)))
    return checks


class Result(NamedTuple):
    checks: list[Check]
    beta_z: list[float]  # hyper["beta/z"] at every training step
    beta_l: list[float]
    metrics: dict[str, float]  # the held-out cells after training


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few training steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--warmup", type=int, default=None, help="n_steps_kl_warmup")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_steps = args.steps if args.steps is not None else (12 if args.quick else 1500)
    warmup = args.warmup if args.warmup is not None else max(n_steps // 3, 1)

    data = synthetic_counts(seed=args.seed)
    checks = check_against_scvi(data, warmup, args.seed)
    train, test = (Counts(*(t[s] for t in data)) for s in (slice(0, 1000), slice(1000, None)))

    torch.manual_seed(args.seed)
    model = SCVILike(data.x.shape[1])
    objective = Beta({"z": Linear(0.0, 1.0, steps=warmup), "l": 1.0})
    loss_fn = rdloss.RateDistortionLoss(objective=objective)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    beta_z, beta_l = [], []
    for step in range(n_steps):
        idx = torch.randint(0, len(train.x), (128,))
        batch = Counts(*(t[idx] for t in train))
        out = rdloss_step(loss_fn, model(batch.x), batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        beta_z.append(float(out.hyper["beta/z"]))
        beta_l.append(float(out.hyper["beta/l"]))
        if step % max(n_steps // 5, 1) == 0:
            m = out.metrics()
            print(
                f"step {step}: beta/z {m['beta/z']:.3f}, beta/l {m['beta/l']:.1f}, "
                f"R(z) {m['rate/z']:.2f}, R(l) {m['rate/l']:.3f}, D {m['distortion']:.1f}"
            )
    model.eval()
    with torch.no_grad():
        metrics = rdloss_step(loss_fn.eval(), model(test.x), test).metrics()
    print(
        f"after {n_steps} steps, held-out cells: R(z) {metrics['rate/z']:.2f}, "
        f"R(l) {metrics['rate/l']:.3f} nats, D {metrics['distortion']:.1f}, "
        f"ELBO {metrics['elbo']:.1f}"
    )
    return Result(checks, beta_z, beta_l, metrics)


if __name__ == "__main__":
    main()
