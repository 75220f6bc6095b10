"""recurjax cells as Equinox modules (needs `equinox`: `pip install "recurjax[equinox]"`).

`Recurrent` is an `eqx.Module` holding a recurjax cell (static), its params and its initial
state, so `eqx.filter_value_and_grad` and optax train it like any Equinox model; as
Equinox's own cells, it takes the carried state as an argument and returns the new one.
Only this module imports Equinox.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import equinox as eqx

from ._contracts import PyTree
from ._recur import Recur, no_states
from ._scan import ScanOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Recurrent"]


class Recurrent(eqx.Module):
    """A recurjax cell as an Equinox module: `state, ys = model(xs)` runs a sequence,
    `state, y = model.step(state, x)` one step.

    The sequence call starts from `state` (the module's `state0` when omitted) and takes
    `rj.scan`'s options (`time_axis`, `lengths`, `resets`, `reverse`, `truncate_every`,
    `strategy`, `remat`, `unroll`); it computes exactly `rj.scan(cell, params, state, xs,
    ...)`, resets included (to `state0`).

    `state0` is a field like `params`: `eqx.filter_value_and_grad` differentiates it too, so
    the initial state is learned (Flux's default). To keep it fixed, wrap it in
    `jax.lax.stop_gradient` or filter it out (`eqx.partition`).

    Args:
      cell: a recurjax cell, or any function `(params, h, x) -> (h, y)` (then pass `params`
        and `state0`).
      params: the cell's params; made by `cell.init(key)` when omitted.
      state0: the initial state; `cell.initial_state(params)` by default.
      key: a PRNG key for `cell.init`.

    Examples:
      >>> import equinox as eqx, jax, jax.numpy as jnp, optax, recurjax as rj
      >>> from recurjax.equinox import Recurrent
      >>> model = Recurrent(rj.LSTMCell(3, 4), key=jax.random.key(0))
      >>> xs = jnp.ones((5, 2, 3))        # (time, batch, in)
      >>> state, ys = model(xs)
      >>> ys.shape, state.h.shape
      ((5, 2, 4), (2, 4))
      >>> optim = optax.sgd(0.1)
      >>> opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
      >>> @eqx.filter_jit
      ... def train_step(model, opt_state, xs):
      ...     loss = lambda m: jnp.mean(m(xs)[1] ** 2)
      ...     value, grads = eqx.filter_value_and_grad(loss)(model)
      ...     updates, opt_state = optim.update(grads, opt_state, model)
      ...     return eqx.apply_updates(model, updates), opt_state, value
      >>> model, opt_state, first = train_step(model, opt_state, xs)
      >>> model, opt_state, second = train_step(model, opt_state, xs)
      >>> bool(second < first)
      True
    """

    cell: Any = eqx.field(static=True)
    params: PyTree
    state0: PyTree

    def __init__(
        self, cell: Any, params: PyTree = None, state0: PyTree = None, *, key: Any = None
    ) -> None:
        handle = Recur(cell, params, state0, key=key)
        self.cell = handle.cell
        self.params = handle.params
        self.state0 = handle.state0

    def handle(self, state: PyTree = None) -> Recur:
        """An immutable `Recur` handle at `state` (`state0` when omitted)."""
        return Recur(
            self.cell, self.params, self.state0 if state is None else state, state0=self.state0
        )

    def __call__(
        self, xs: PyTree, state: PyTree = None, **options: Unpack[ScanOptions]
    ) -> tuple[PyTree, PyTree]:
        """Every step of `xs` from `state` (or `state0`): `(final state, ys)`, as `rj.scan`
        with its keyword options."""
        no_states(self, options)
        handle, ys = self.handle(state).scan(xs, **options)
        return handle.state, ys

    def step(self, state: PyTree, x: PyTree) -> tuple[PyTree, PyTree]:
        """One step from `state`: `(new state, y)`."""
        return self.cell(self.params, state, x)
