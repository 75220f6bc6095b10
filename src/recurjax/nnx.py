"""recurjax cells as Flax NNX modules (needs `flax`: `pip install "recurjax[nnx]"`).

`Recurrent` wraps any recurjax cell: its params become `nnx.Param`s, so `nnx.Optimizer(model,
tx, wrt=nnx.Param)` trains them, and the carried state lives in `RecurrentState` variables,
which it leaves alone. Only this module imports Flax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
from flax import nnx

from ._contracts import PyTree
from ._recur import Recur, no_states
from ._scan import ScanOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Recurrent", "RecurrentState"]


class RecurrentState(nnx.Variable):
    """The carried state of a `Recurrent` module (and its initial state, unless that one is
    learned): a variable, not a parameter, so optimizers over `nnx.Param` do not touch it."""


def _is_variable(node: object) -> bool:
    return isinstance(node, nnx.Variable)


def _values(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda v: v.get_value(), tree, is_leaf=_is_variable)


class Recurrent(nnx.Module):
    """A recurjax cell as a stateful Flax NNX module: `ys = model(xs)` runs a sequence from
    the carried state and keeps the final one, `y = model.step(x)` runs one step,
    `model.reset()` returns to the initial state.

    The sequence call takes `rj.scan`'s options (`time_axis`, `lengths`, `resets`,
    `reverse`, `truncate_every`, `strategy`, `remat`, `unroll`) and computes exactly
    `rj.scan(cell, params, state, xs, ...)`. As with a `Recur` handle (which this is built
    on; `model.handle()` gives one), an unbatched state meets a batched input by
    broadcasting and then stays batched: `reset()` between independent batches.

    Args:
      cell: a recurjax cell, or any function `(params, h, x) -> (h, y)` (then pass `params`
        and `state`).
      params: the cell's params; made by `cell.init` from `rngs.params()` when omitted.
      state: the initial state; `cell.initial_state(params)` by default.
      rngs: an `nnx.Rngs` for `cell.init`.
      learn_state0: make the initial state an `nnx.Param` (trained like the weights, as a
        `Recur` handle's `state0` can be) instead of a fixed `RecurrentState`.

    Attributes:
      params: the cell's params, each an `nnx.Param`.
      state: the carried state, each leaf a `RecurrentState`.
      state0: the initial state, `RecurrentState`s (or `nnx.Param`s with `learn_state0`).

    Examples:
      >>> import jax, jax.numpy as jnp, optax, recurjax as rj
      >>> from flax import nnx
      >>> from recurjax.nnx import Recurrent
      >>> model = Recurrent(rj.GRUCell(3, 4), rngs=nnx.Rngs(0))
      >>> xs = jnp.ones((5, 2, 3))        # (time, batch, in)
      >>> model(xs).shape, model.state.get_value().shape
      ((5, 2, 4), (2, 4))
      >>> model.reset()
      >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
      >>> @nnx.jit
      ... def train_step(model, optimizer, xs):
      ...     def loss(model):
      ...         model.reset()
      ...         return jnp.mean(model(xs) ** 2)
      ...     value, grads = nnx.value_and_grad(loss)(model)
      ...     optimizer.update(model, grads)
      ...     return value
      >>> bool(train_step(model, optimizer, xs) > train_step(model, optimizer, xs))
      True
    """

    def __init__(
        self,
        cell: Any,
        params: PyTree = None,
        state: PyTree = None,
        *,
        rngs: nnx.Rngs | None = None,
        learn_state0: bool = False,
    ) -> None:
        key = None if rngs is None or params is not None else rngs.params()
        handle = Recur(cell, params, state, key=key)
        self.cell = nnx.static(handle.cell)
        self.params = nnx.data(jax.tree.map(nnx.Param, handle.params))
        kind = nnx.Param if learn_state0 else RecurrentState
        self.state0 = nnx.data(jax.tree.map(kind, handle.state0))
        self.state = nnx.data(jax.tree.map(RecurrentState, handle.state))

    def handle(self) -> Recur:
        """The module's current values as an immutable `Recur` handle."""
        return Recur(
            self.cell,
            _values(self.params),
            _values(self.state),
            state0=_values(self.state0),
        )

    def _keep(self, handle: Recur) -> None:
        """Store `handle`'s state as the carried one."""
        olds = jax.tree.leaves(self.state, is_leaf=_is_variable)
        news, tree = jax.tree.flatten(handle.state)
        if tree == jax.tree.structure(self.state, is_leaf=_is_variable):
            for old, new in zip(olds, news, strict=True):
                old.set_value(new)
        else:  # the structure changed (e.g. dropout seeded): new variables
            self.state = nnx.data(jax.tree.map(RecurrentState, handle.state))

    def __call__(self, xs: PyTree, **options: Unpack[ScanOptions]) -> PyTree:
        """Every step of `xs` from the carried state, as `rj.scan` with its keyword options;
        keeps the final state and returns the outputs `ys`."""
        no_states(self, options)
        handle, ys = self.handle().scan(xs, **options)
        self._keep(handle)
        return ys

    def step(self, x: PyTree) -> PyTree:
        """One step from the carried state; keeps the new state and returns `y`."""
        handle, y = self.handle()(x)
        self._keep(handle)
        return y

    def reset(self) -> None:
        """Return the carried state to the initial one (Flux's `reset!`)."""
        self._keep(self.handle().reset())
