"""Initialisers (private): the defaults of Flux's recurrent layers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def glorot_uniform(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """Glorot (Xavier) uniform initialisation of a weight matrix of shape `(fan_in, fan_out)`.

    Draws from `U(-limit, limit)` with `limit = sqrt(6 / (fan_in + fan_out))`, as Flux's
    `glorot_uniform`. For a stacked gate matrix such as an LSTM's `wi: (in, 4H)` the fans are
    those of the whole stacked matrix, `in` and `4H`, exactly as in Flux.

    Args:
      key: a PRNG key.
      shape: `(fan_in, fan_out)`.
      dtype: a floating dtype.

    Returns:
      An array of shape `shape` and dtype `dtype`.

    Examples:
      >>> import jax
      >>> w = glorot_uniform(jax.random.key(0), (10, 20))
      >>> w.shape, bool(abs(w).max() <= (6 / 30) ** 0.5)
      ((10, 20), True)
    """
    fan_in, fan_out = shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)
