"""Initialisers (private): the defaults of Flux's recurrent layers, and the ones the classic
cells' `kernel_init`, `recurrent_init` and `bias_init` take by name."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

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


# --- initialisers by name (the classic cells' `kernel_init`, `recurrent_init`, `bias_init`) ---

Initializer = Callable[..., jax.Array]  # (key, shape, dtype) -> array


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """`(fan_in, fan_out)`: a matrix's rows and columns, a convolution kernel's `(*kernel,
    in, out)` channels times its receptive field, a vector's length twice."""
    if len(shape) < 2:
        n = math.prod(shape)
        return n, n
    field = math.prod(shape[:-2])
    return shape[-2] * field, shape[-1] * field


def _scaled(kind: str, scale: float) -> Initializer:
    """Variance scaling on `(fan_in, fan_out)`: `uniform` or `normal`, variance `scale /
    fan` with `fan` the average of the fans (Glorot) or `fan_in` (LeCun, He)."""

    def draw(key: jax.Array, shape: tuple[int, ...], dtype: Any, blocks: int = 1) -> jax.Array:
        fan_in, fan_out = _fans(shape)
        fan = (fan_in + fan_out) / 2 if kind.startswith("glorot") else fan_in
        variance = scale / fan
        if kind.endswith("uniform"):
            limit = math.sqrt(3.0 * variance)
            return jax.random.uniform(key, shape, dtype, -limit, limit)
        return math.sqrt(variance) * jax.random.normal(key, shape, dtype)

    return draw


def _orthogonal(key: jax.Array, shape: tuple[int, ...], dtype: Any, blocks: int = 1) -> jax.Array:
    """Each gate's block `(fan_in, fan_out / blocks)` orthogonal (Flax's recurrent default,
    which draws one per gate); a block wider than tall has orthonormal rows."""
    keys = jax.random.split(key, blocks)
    width = shape[-1] // blocks
    draw = jax.nn.initializers.orthogonal()
    return jnp.concatenate([draw(k, (*shape[:-1], width), dtype) for k in keys], axis=-1)


def _pytorch(key: jax.Array, shape: tuple[int, ...], dtype: Any, blocks: int = 1) -> jax.Array:
    """PyTorch's RNN init, `U(-1/sqrt(H), 1/sqrt(H))` for every weight and bias, with `H`
    the width of one gate's block."""
    limit = 1.0 / math.sqrt(shape[-1] // blocks)
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def _constant(value: float) -> Initializer:
    def draw(key: jax.Array, shape: tuple[int, ...], dtype: Any, blocks: int = 1) -> jax.Array:
        return jnp.full(shape, value, dtype)

    return draw


# The names `kernel_init`, `recurrent_init` and `bias_init` take, and what they draw; the
# library's draw `(key, shape, dtype, blocks)`, `blocks` being the gate blocks side by side.
NAMED: dict[str, Initializer] = {
    "glorot_uniform": _scaled("glorot_uniform", 1.0),
    "glorot_normal": _scaled("glorot_normal", 1.0),
    "lecun_uniform": _scaled("lecun_uniform", 1.0),
    "lecun_normal": _scaled("lecun_normal", 1.0),
    "he_uniform": _scaled("he_uniform", 2.0),
    "he_normal": _scaled("he_normal", 2.0),
    "orthogonal": _orthogonal,
    "pytorch": _pytorch,
    "zeros": _constant(0.0),
    "ones": _constant(1.0),
}
# What a bias (a vector) can take by name.
BIAS_NAMES = ("zeros", "ones", "pytorch")


def check_initializer(
    where: str, option: str, spec: object, names: Sequence[str], example: str
) -> None:
    """`ValueError` unless `spec` is one of `names` or a callable `(key, shape, dtype)`."""
    if isinstance(spec, str) and spec in names:
        return
    if callable(spec) and not isinstance(spec, str):
        return
    raise ValueError(
        f"{where}: expected {option} to be one of {tuple(names)} or a function (key, shape, "
        f"dtype) -> array (e.g. {example}), got {spec!r}."
    )


def draw(
    spec: str | Initializer, key: jax.Array, shape: tuple[int, ...], dtype: Any, blocks: int = 1
) -> jax.Array:
    """An array of `shape` from the initialiser `spec` (a name of `NAMED`, or a function
    `(key, shape, dtype)` given the whole matrix); `blocks` gate blocks side by side."""
    if isinstance(spec, str):
        return NAMED[spec](key, shape, dtype, blocks)
    return jnp.asarray(spec(key, shape, dtype), dtype)
