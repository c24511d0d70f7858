r"""Multi-Rate VAE (Bae et al., ICLR 2023): one training run for every β of a range.

In training each example gets its own β, drawn log-uniformly from
``[beta_min, beta_max]``, and the loss is $\overline{D_i + \beta_i R_i}$; in evaluation
every example has the one β the user fixes. With `rdloss.multirate` gates on the model's
layers (conditioned on the same β), one run learns the model at every β of the range.
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from rdloss._checks import ValueCheck, check_beta_range, check_positive_int
from rdloss.objectives._base import Objective, ObjectiveOutput, numbers_repr
from rdloss.objectives._hyperparameters import Hyperparameter

__all__ = ["MultiRate"]


def _seed(generator_seed: object) -> int:
    """The generator's seed: the given one, or one drawn from torch's global generator."""
    if generator_seed is None:
        # Follows torch.manual_seed, like every other random draw of a training script.
        return int(torch.randint(0, 2**62, (), dtype=torch.long).item())
    if isinstance(generator_seed, bool) or not isinstance(generator_seed, numbers.Integral):
        raise TypeError(
            f"generator_seed must be an int or None, got {type(generator_seed).__name__}"
        )
    if not 0 <= int(generator_seed) < 2**63:
        raise ValueError(f"generator_seed must be in [0, 2**63), got {generator_seed}")
    return int(generator_seed)


class MultiRate(Objective):
    r"""Multi-Rate VAE: a log-uniform β per example in training, a fixed β in evaluation.

    Training (`Objective.advancing`: ``train()`` mode with gradients) minimises
    $\frac1B\sum_i (D_i + \beta_i R_i)$ with $\log\beta_i \sim U[\log\beta_{min},
    \log\beta_{max}]$ (Bae et al., 2023; the paper's range is ``[0.01, 10]``). The gates
    of `rdloss.multirate.install_gates` must see the same β *before* the model's forward
    pass, so each training step draws first:

    ```
    beta = objective.sample_beta(x.shape[0])   # (B,), from the objective's generator
    gates.set_beta(beta)                        # the model's layers see it
    out = loss_fn(x, posterior=..., decoder=...)  # the objective applies it
    ```

    Each draw is used by exactly one training call: the call applies the drawn β and then
    marks it used, so a second training call without a new draw raises ``RuntimeError``
    (when compiled, where that check cannot run, its loss is NaN instead), and a batch of
    another size than the draw raises ``ValueError``. It never falls back to an old β.

    Evaluation (``eval()`` mode, or no gradients) uses the hyperparameter ``beta`` for
    every example, exactly as `Beta` does; set it, and the gates, to the β you evaluate:

    ```
    objective.beta = 1.0
    gates.set_beta(torch.tensor(1.0))
    ```

    The draws come from a CPU ``torch.Generator`` whose whole state is the buffer
    ``generator_state``, so ``state_dict()`` / ``load_state_dict()`` resume the sequence
    of β exactly. ``beta_min`` and ``beta_max`` are fixed at construction and recorded in
    ``state_dict``: a checkpoint of another range is refused.

    Args:
        beta_min: lower end of the training range, ``> 0``.
        beta_max: upper end of the training range, ``> beta_min``.
        beta: β of evaluation, ``>= 0``, a number or a schedule; default 1 (the ELBO).
        generator_seed: seed of the β generator; ``None`` draws one from torch's global
            generator (so ``torch.manual_seed`` makes it reproducible).

    Attributes:
        generator_state: ``uint8`` buffer, the state of the CPU generator of β.
        drawn_beta: ``(B,)`` float64 buffer (not saved), the last draw; NaN once a
            training call has used it.

    Examples:
        >>> import torch
        >>> objective = MultiRate(0.5, 2.0, generator_seed=0)
        >>> beta = objective.sample_beta(3)
        >>> bool(((beta >= 0.5) & (beta <= 2.0)).all())
        True
        >>> _ = objective.eval()
        >>> objective.beta = 0.5
        >>> objective(torch.tensor([2.0]), torch.tensor([10.0])).loss
        tensor(11.)
    """

    generator_state: Tensor
    drawn_beta: Tensor
    _hyperparameters: ClassVar[dict[str, bool]] = {"beta": False}
    _config = ("beta_min", "beta_max")

    def __init__(
        self,
        beta_min: float = 0.01,
        beta_max: float = 10.0,
        *,
        beta: Hyperparameter = 1.0,
        generator_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.beta_min, self.beta_max = check_beta_range(beta_min, beta_max)
        self.beta = beta
        generator = torch.Generator().manual_seed(_seed(generator_seed))
        with torch.inference_mode(False):
            self.register_buffer("generator_state", generator.get_state())
            drawn = torch.empty(0, dtype=torch.float64)
        self.register_buffer("drawn_beta", drawn, persistent=False)

    def sample_beta(self, batch_size: int, *, device: torch.device | str | None = None) -> Tensor:
        r"""Draw this training step's β, one per example, and keep it for the loss.

        $\log\beta_i = \log\beta_{min} + u_i(\log\beta_{max} - \log\beta_{min})$ with
        $u_i \sim U[0, 1)$ from the objective's generator (advanced in
        ``generator_state``).

        Args:
            batch_size: ``B``, the number of examples of the coming loss call.
            device: device of the returned β; default the objective's.

        Returns:
            ``(B,)`` float64 β, also held in ``drawn_beta`` for the next training call.
        """
        batch = check_positive_int("batch_size", batch_size)
        generator = torch.Generator()
        generator.set_state(self.generator_state.cpu())
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
        low, high = math.log(self.beta_min), math.log(self.beta_max)
        beta = torch.exp(low + (high - low) * u)
        with torch.no_grad():
            self.generator_state.copy_(generator.get_state())
        target = self.generator_state.device if device is None else torch.device(device)
        beta = beta.to(target)
        if self.drawn_beta.shape == beta.shape and self.drawn_beta.device == beta.device:
            with torch.no_grad():
                self.drawn_beta.copy_(beta)  # in place: a compiled loss reads the new draw
        else:
            self.drawn_beta = beta.clone()
        return beta

    def _drawn(self, rate: Tensor) -> Tensor:
        """The drawn β for this training call, checked against the batch.

        Whether it was used already is `value_checks`' (in the loss's one value check).
        """
        if self.drawn_beta.shape != rate.shape:
            if self.drawn_beta.numel() == 0:
                raise RuntimeError(
                    "MultiRate draws β per example in training: call "
                    "objective.sample_beta(batch_size) (and gates.set_beta(beta)) before "
                    "each training call of the loss"
                )
            raise ValueError(
                f"MultiRate: the drawn β has shape {tuple(self.drawn_beta.shape)} but the "
                f"batch's rate has shape {tuple(rate.shape)}: draw with "
                "objective.sample_beta(batch_size) for this batch"
            )
        dtype = rate.dtype if rate.dtype in (torch.float32, torch.float64) else torch.float32
        return self.drawn_beta.to(device=rate.device, dtype=dtype, copy=True)

    @override
    def value_checks(self, rate: Tensor) -> list[ValueCheck]:
        """In training: the drawn β is one no training call has used yet (not NaN)."""
        if not self.advancing or self.drawn_beta.shape != rate.shape:
            return []  # nothing to check, or `_drawn` raises the shape error

        def explain() -> None:
            if bool(torch.isnan(self.drawn_beta).any()):
                raise RuntimeError(
                    "MultiRate: the drawn β was already used by a training call; draw a "
                    "new one with objective.sample_beta(batch_size) (and "
                    "gates.set_beta(beta)) before each training call of the loss"
                )

        # A used draw is NaN; without the loss's checks the loss itself comes out NaN.
        return [ValueCheck(~torch.isnan(self.drawn_beta.sum()), explain)]

    def compute(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        r"""$\overline{D_i + \beta_i R_i}$ in training, $\bar D + \beta\bar R$ otherwise.

        See `Objective.compute`. ``hyper["beta"]`` is the (weighted) mean β applied.
        """
        if not self.advancing:
            beta = self.hyperparameter(self.beta, rate)
            loss = self.mean(distortion, weight) + beta * self.mean(rate, weight)
            return ObjectiveOutput(loss, {"beta": beta})
        betas = self._drawn(rate)
        with torch.no_grad():
            self.drawn_beta.fill_(math.nan)  # used: a second call without a draw refuses
        loss = self.mean(distortion, weight) + self.mean(betas * rate, weight)
        return ObjectiveOutput(loss, {"beta": self.mean(betas, weight)})

    @override
    def extra_repr(self) -> str:
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}, " + numbers_repr(
            beta=self.beta
        )
