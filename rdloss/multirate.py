r"""Multi-Rate VAE gates on a user's existing model (Bae et al., ICLR 2023).

`install_gates` puts a gate after every Linear/Conv layer of a module, through forward
hooks, without changing the module: the layer's output (the pre-activation) ``h`` becomes

$$
h \leftarrow 2\,\sigma(w \hat u + b) \odot h, \qquad
\hat u = \frac{\log\beta - \mu}{s},\quad
\mu = \tfrac12(\log\beta_{min} + \log\beta_{max}),\quad
s = \frac{\log\beta_{max} - \log\beta_{min}}{\sqrt{12}},
$$

with one ``w`` and one ``b`` per output unit or channel. $\hat u$ is $\log\beta$
standardised by the mean and standard deviation of its training distribution (the uniform
on $[\log\beta_{min}, \log\beta_{max}]$ that `rdloss.objectives.MultiRate` draws from), so
the gates see a zero-mean, unit-variance input, as a normalised input layer would; the
range is $[-\sqrt3, \sqrt3]$. ``w = b = 0`` at installation: every gate is then exactly 1
and the model computes bit for bit what it computed before.

```python
import torch
from torch import nn
from rdloss.multirate import install_gates

model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
gates = install_gates(model, beta_min=0.01, beta_max=10.0)
gates.set_beta(torch.tensor([0.1, 1.0, 10.0]))  # one β per example
y = model(torch.randn(3, 4))  # gated; add gates.parameters() to the optimiser
```
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from rdloss._checks import check_beta_range
from rdloss.schedules import check_config_state, config_state

__all__ = ["DEFAULT_LAYERS", "Gates", "install_gates"]

DEFAULT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose2d,
)
"""The layer types `install_gates` gates by default."""


def _channels(layer: nn.Module) -> tuple[int, int]:
    """``(output units, spatial dims)`` of a Linear-like or Conv-like layer."""
    if isinstance(layer, nn.Linear):
        return layer.out_features, 0
    channels = getattr(layer, "out_channels", None)
    kernel = getattr(layer, "kernel_size", None)
    if isinstance(channels, int) and isinstance(kernel, tuple):
        return channels, len(kernel)
    channels = getattr(layer, "out_features", None)
    if isinstance(channels, int):
        return channels, 0
    raise TypeError(
        f"cannot gate a {type(layer).__name__}: a gated layer needs out_features (Linear-like, "
        "channels last) or out_channels and kernel_size (Conv-like, channels after the batch)"
    )


class Gate(nn.Module):
    """The gate of one layer: ``2 * sigmoid(weight * u + bias)`` per output unit.

    Attributes:
        weight: ``(C,)`` parameter, 0 at installation.
        bias: ``(C,)`` parameter, 0 at installation.
        spatial: number of spatial dims after the channel dim (0: channels last).
    """

    def __init__(self, channels: int, spatial: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.spatial = spatial

    def forward(self, u: Tensor, output: Tensor) -> Tensor:
        """``output`` times the gate at the standardised log β ``u``.

        Args:
            u: ``()`` or ``(B,)`` standardised log β.
            output: the layer's output: ``(N, ..., C)`` for Linear, ``(N, C, *spatial)``
                (or unbatched ``(C, *spatial)``) for Conv; with ``u`` of shape ``(B,)``,
                ``N`` must be a multiple of ``B`` (rows ``k*B + i`` are example ``i``, as
                `rdloss.RateDistortionLoss` stacks ``samples`` draws for its decoder).
        """
        channel_dim = output.ndim - 1 - self.spatial
        if channel_dim < 0 or output.shape[channel_dim] != self.weight.shape[0]:
            raise ValueError(
                f"gate of {self.weight.shape[0]} channels cannot apply to a layer output of "
                f"shape {tuple(output.shape)}"
            )
        after = [1] * self.spatial
        if u.ndim == 0:
            gate = 2.0 * torch.sigmoid(self.weight * u + self.bias)
            return output * gate.reshape(-1, *after).to(output.dtype)
        rows, batch = (output.shape[0] if output.ndim else 0), u.shape[0]
        if channel_dim == 0 or rows % batch != 0:
            raise ValueError(
                f"set_beta was given {batch} values of β (one per example), but a gated layer "
                f"produced an output of shape {tuple(output.shape)}, whose first dim is not a "
                f"multiple of {batch}; set one β per example of this batch, or a 0-dim β"
            )
        if rows != batch:  # samples * B rows, sample-major
            u = u.repeat(rows // batch)
        gate = 2.0 * torch.sigmoid(u[:, None] * self.weight + self.bias)  # (N, C)
        middle = [1] * (channel_dim - 1)
        return output * gate.reshape(rows, *middle, -1, *after).to(output.dtype)


class Gates(nn.Module):
    """The Multi-Rate gates of one model: parameters, the current β, and the hooks.

    Made by `install_gates`. Its ``state_dict`` holds only the gates' parameters (keyed by
    layer name, ``.`` written as ``/``) and its β range (a checkpoint of another range or
    other layers is refused); the current β is a buffer that is not saved.

    Attributes:
        gates: ``nn.ModuleDict`` of `Gate`, one per gated layer.
        u: the standardised log β set by `set_beta`: ``()`` or ``(B,)``; empty until set.
        beta_min: lower end of the β range.
        beta_max: upper end of the β range.
    """

    u: Tensor

    def __init__(
        self, layers: Iterable[tuple[str, nn.Module]], *, beta_min: float, beta_max: float
    ) -> None:
        super().__init__()
        self.beta_min, self.beta_max = check_beta_range(beta_min, beta_max)
        named = [(name.replace(".", "/") or "/", layer) for name, layer in layers]
        # Every gate first: a layer that cannot be gated raises before any hook is placed.
        self.gates = nn.ModuleDict({key: Gate(*_channels(layer)) for key, layer in named})
        self._handles: list[RemovableHandle] = [
            layer.register_forward_hook(self._hook(key)) for key, layer in named
        ]
        self.register_buffer("u", torch.empty(0), persistent=False)

    def _hook(self, key: str) -> Any:
        def hook(layer: nn.Module, inputs: Any, output: Tensor) -> Tensor:
            return self.forward(key, output)

        return hook

    @override
    def forward(self, key: str, output: Tensor) -> Tensor:
        """Gate the output of layer ``key`` at the current β (called by its hook)."""
        if self.u.ndim == 1 and self.u.shape[0] == 0:
            raise RuntimeError(
                "the Multi-Rate gates have no β: call gates.set_beta(beta) before the "
                "model's forward pass"
            )
        return self.gates[key](self.u, output)  # type: ignore[no-any-return]

    def standardise(self, beta: Tensor) -> Tensor:
        r"""$\hat u = (\log\beta - \mu) / s$ of the uniform on the log range (module doc)."""
        low, high = math.log(self.beta_min), math.log(self.beta_max)
        return (torch.log(beta) - 0.5 * (low + high)) / ((high - low) / math.sqrt(12.0))

    def set_beta(self, beta: Tensor) -> None:
        """Set the β the gates apply from the next forward pass on.

        Args:
            beta: ``(B,)`` one β per example (training: what
                `rdloss.objectives.MultiRate.sample_beta` returned), or ``()`` one β for
                all (evaluation). β outside ``[beta_min, beta_max]`` extrapolates the gates.

        Raises:
            TypeError: ``beta`` is not a floating tensor.
            ValueError: ``beta`` is not ``()`` or ``(B,)``, or (outside compiled code) not
                finite and ``> 0``.
        """
        if not isinstance(beta, Tensor) or not beta.is_floating_point():
            raise TypeError(
                f"beta must be a floating torch.Tensor of shape () or (B,), got "
                f"{type(beta).__name__ if not isinstance(beta, Tensor) else beta.dtype}"
            )
        if beta.ndim > 1 or (beta.ndim == 1 and beta.shape[0] == 0):
            raise ValueError(
                f"beta must have shape () or (B,) with B >= 1, got {tuple(beta.shape)}"
            )
        if not torch.compiler.is_compiling() and not bool(
            ((beta > 0) & torch.isfinite(beta)).all()
        ):
            raise ValueError(f"beta must be finite and > 0, got {beta}")
        u = self.standardise(beta.detach()).to(device=self.u.device, dtype=self.u.dtype)
        if u.shape == self.u.shape:
            with torch.no_grad():
                self.u.copy_(u)  # in place: compiled code reads the new β without a guard
        else:
            self.u = u

    def remove(self) -> None:
        """Remove the hooks: the model computes as it did before `install_gates`."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def get_extra_state(self) -> Tensor:
        """The β range and the gated layers, recorded in ``state_dict``."""
        return config_state(
            {"beta_min": self.beta_min, "beta_max": self.beta_max, "layers": list(self.gates)}
        )

    def set_extra_state(self, state: Any) -> None:
        """Refuse gates saved with another β range or other layers."""
        check_config_state("Gates", state, self.get_extra_state())

    @override
    def extra_repr(self) -> str:
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}"


def install_gates(
    module: nn.Module,
    *,
    beta_min: float,
    beta_max: float,
    layers: tuple[type[nn.Module], ...] = DEFAULT_LAYERS,
) -> Gates:
    """Gate every layer of ``module`` of the given types by β, without changing ``module``.

    Each such layer gets a forward hook multiplying its output by its gate (see the module
    docstring); the gate's parameters live in the returned `Gates`, not in ``module``, so
    ``module.state_dict()`` is unchanged. Add ``gates.parameters()`` to the optimiser, call
    ``gates.set_beta(beta)`` before each forward pass, and ``gates.remove()`` to take the
    gates off. Install once per module: a second `install_gates` gates the layers twice.
    Move the gates with the model (``gates.to(device)``).

    Args:
        module: the user's model (or its encoder and decoder in one container).
        beta_min: lower end of the β range, as given to `rdloss.objectives.MultiRate`.
        beta_max: upper end of the β range.
        layers: the layer types to gate; each needs ``out_features`` or ``out_channels``.

    Returns:
        `Gates`, on the device and dtype of ``module``'s first parameter.

    Raises:
        TypeError: ``module`` is not an ``nn.Module`` or ``layers`` not a tuple of types.
        ValueError: the β range is invalid or ``module`` has no layer of those types.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not (isinstance(layers, tuple) and layers and all(isinstance(t, type) for t in layers)):
        raise TypeError(f"layers must be a non-empty tuple of nn.Module types, got {layers!r}")
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, layers)]
    if not found:
        names = ", ".join(t.__name__ for t in layers)
        raise ValueError(f"module {type(module).__name__} has no layer of type {names} to gate")
    gates = Gates(found, beta_min=beta_min, beta_max=beta_max)
    first = next(module.parameters(), None)
    if first is not None:
        gates.to(device=first.device, dtype=first.dtype)
    return gates
