"""Handle operations over whole models: `reset`, `truncate` and `batched` applied to every
`Recur` inside any pytree (Flux's `reset!(model)`), everything else left as it is."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax

from ._recur import Recur

__all__ = ["batched", "reset", "truncate"]

T = TypeVar("T")


def _each_handle(fn: Callable[[Recur], Recur], tree: T) -> T:
    """`tree` with `fn` applied to every `Recur` in it (a handle is not entered)."""
    return jax.tree.map(
        lambda node: fn(node) if isinstance(node, Recur) else node,
        tree,
        is_leaf=lambda node: isinstance(node, Recur),
    )


def reset(tree: T) -> T:
    """Every `Recur` handle in `tree` reset to its initial state (`Recur.reset`), as Flux's
    `reset!(model)`; the rest of the tree (arrays, optimizer state, other leaves) as is.

    `tree` is any pytree: a handle, a dict or tuple of handles (an encoder and a decoder), a
    Flax NNX or Equinox module holding handles as data. Shapes and dtypes are unchanged, so
    it works under `jit`. Returns a new tree; assign it back (`model = rj.reset(model)`).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> model = {"encoder": rj.LSTM(3, 4, key=k1), "decoder": rj.GRU(4, 2, key=k2), "step": 7}
      >>> enc, h = model["encoder"](jnp.ones(3))
      >>> model["encoder"] = enc  # the state has moved
      >>> fresh = rj.reset(model)
      >>> bool((fresh["encoder"].state.h == 0).all()), fresh["step"]
      (True, 7)
    """
    return _each_handle(Recur.reset, tree)


def truncate(tree: T) -> T:
    """Every `Recur` handle in `tree` with its state cut from the gradient
    (`Recur.truncate`: `stop_gradient`, same values), for truncated backpropagation through
    time between chunks; the rest of the tree as is.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> m = rj.RNN(2, 3, key=jax.random.key(0))
      >>> def loss(h0, cut):
      ...     model = {"rnn": m.replace(state=h0)}
      ...     model["rnn"], _ = model["rnn"](jnp.ones(2))
      ...     if cut:
      ...         model = rj.truncate(model)
      ...     _, y = model["rnn"](jnp.ones(2))
      ...     return jnp.sum(y)
      >>> h0 = jnp.ones(3)
      >>> bool(jax.grad(loss)(h0, False).any()), bool(jax.grad(loss)(h0, True).any())
      (True, False)
    """
    return _each_handle(Recur.truncate, tree)


def batched(tree: T, batch: int | tuple[int, ...]) -> T:
    """Every `Recur` handle in `tree` with its state broadcast to the leading batch axes
    `batch` (`Recur.batched`), so a jitted step compiles once per input shape.

    Examples:
      >>> import jax, recurjax as rj
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> model = (rj.LSTM(3, 4, key=k1), rj.GRU(4, 2, key=k2))
      >>> [m.state0 for m in rj.batched(model, 8)][1].shape
      (8, 2)
    """
    return _each_handle(lambda m: m.batched(batch), tree)
