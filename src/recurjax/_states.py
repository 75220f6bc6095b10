"""The state types of the library cells that carry more than one array.

They sit below the cells and the engine (this module imports nothing from recurjax), so the
fused LSTM kernel and dropout can build an `LSTMState` without naming a cell.
"""

from __future__ import annotations

from typing import NamedTuple

import jax


class LSTMState(NamedTuple):
    """The carry of `LSTMCell`: hidden and cell state (Flux and PyTorch order, not Flax's).

    Examples:
      >>> import jax.numpy as jnp, recurjax as rj
      >>> state = rj.LSTMState(h=jnp.zeros(4), c=jnp.ones(4))
      >>> state.c.shape
      (4,)
    """

    h: jax.Array  # shape=(..., H): hidden state, also the cell's output
    c: jax.Array  # shape=(..., H): cell (memory) state


class SLSTMState(NamedTuple):
    """The carry of `SLSTMCell`: hidden `h`, cell `c`, normaliser `n` and stabiliser `m`.

    Examples:
      >>> import jax, recurjax as rj
      >>> cell = rj.SLSTMCell(3, 4)
      >>> cell.initial_state(cell.init(jax.random.key(0))).n.shape
      (4,)
    """

    h: jax.Array  # shape=(..., H): hidden state, also the output
    c: jax.Array  # shape=(..., H): cell state, scaled by exp(-m)
    n: jax.Array  # shape=(..., H): normaliser, scaled by exp(-m)
    m: jax.Array  # shape=(..., H): log-space stabiliser


class MLSTMState(NamedTuple):
    """The carry of `MLSTMCell`, flattened over heads: the matrix memory `C` (`heads * d * d`),
    the normaliser `n` (`heads * d`) and the stabiliser `m` (`heads`), each `(..., size)`.

    Examples:
      >>> import jax, recurjax as rj
      >>> cell = rj.MLSTMCell(3, 8, num_heads=2)
      >>> [a.shape for a in cell.initial_state(cell.init(jax.random.key(0)))]
      [(32,), (8,), (2,)]
    """

    C: jax.Array  # shape=(..., heads * d * d): matrix memory per head, scaled by exp(-m)
    n: jax.Array  # shape=(..., heads * d): normaliser, scaled by exp(-m)
    m: jax.Array  # shape=(..., heads): log-space stabiliser
