r"""Schedules: hyperparameters as pure functions of the training step.

A schedule maps the step ``t`` (a 0-dim tensor) to a 0-dim floating tensor. Schedules are
stateless ``nn.Module`` subclasses: they have no parameters and no buffers; their
``state_dict`` records only their settings (``_extra_state``), so that a checkpoint of a
differently configured schedule is refused on load. The step itself is a buffer of the
objective that uses them (`rdloss.objectives.Objective.step`), which is what makes
checkpoint and resume exact. Because the step enters as a tensor, a compiled loss
does not recompile as it changes.

Every objective hyperparameter that takes a number also takes a schedule, e.g.
``Beta(Linear(0.0, 1.0, steps=10_000))`` for KL warm-up. Write your own by subclassing
`Schedule` and implementing `Schedule.forward` with tensor operations only; implement
`Schedule.value_range` as well if objectives should check its values when they are built
(the built-in schedules do, so ``Beta(Linear(-1.0, 1.0, steps=T))`` is rejected at once).

Two pieces build a schedule from another: `Shifted` moves it in time and `Clamp` bounds its
values. NVAE's KL coefficient over a run of ``n`` steps is
``Clamp(Shifted(Linear(0.0, 1.0, steps=0.3 * n), steps=0.0001 * n), min=1e-4)``; Pyro's
deep Markov model anneals with ``Shifted(Linear(0.2, 1.0, steps=T), steps=-1)``.

The step is evaluated in float64 (float32 cannot count past 2**24) and the output takes the
step's dtype if it is floating, else the default dtype (objectives pass a float64 step).
"""

from rdloss.schedules._base import Schedule
from rdloss.schedules._base import check_config_state as check_config_state
from rdloss.schedules._base import config_state as config_state
from rdloss.schedules._pieces import Clamp, Shifted
from rdloss.schedules._ramps import Constant, Cosine, Cyclical, Linear, Sigmoid

__all__ = ["Clamp", "Constant", "Cosine", "Cyclical", "Linear", "Schedule", "Shifted", "Sigmoid"]
