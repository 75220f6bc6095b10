"""The parts of blocks, the whole layers of today's recurrent models that `rj.mamba_block`
(`_compose.py`) assembles from the library's cells: a causal depthwise convolution whose
last inputs are its state, a linear cell on some features with the others passed through,
and Mamba's gate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import check_input, check_sizes, match_state
from .._contracts import Cell, PyTree
from .ssm import SelectiveSSMCell

__all__ = ["CausalConv", "PassThrough", "gate"]


@dataclasses.dataclass(frozen=True, repr=False)
class CausalConv(Cell):
    """A causal depthwise convolution over time as a cell: its state holds the last
    `kernel_size - 1` inputs of the `channels` it convolves, so stepping it equals the
    whole-sequence convolution (zero-padded on the left, as Mamba's `conv1d`). Each step
    reads `x: (..., channels + passthrough)` and outputs `act(sum_j w_j u_{t-k+1+j} + b)`
    for the first `channels` features `u`, the other `passthrough` features unchanged.

    Params: `w: (kernel_size, channels)` (tap `j` multiplies the input `k - 1 - j` steps
    back), `b: (channels,)`, PyTorch's `Conv1d` init, `U(-1/sqrt(k), 1/sqrt(k))`. State:
    `((kernel_size - 1) * channels,)` zeros, the past inputs oldest first."""

    channels: int
    kernel_size: int = 4
    passthrough: int = 0

    def __post_init__(self) -> None:
        check_sizes(self, "channels", "kernel_size")
        if not isinstance(self.passthrough, int) or self.passthrough < 0:
            raise ValueError(
                f"CausalConv: expected passthrough to be an int >= 0, got {self.passthrough!r}."
            )

    def __repr__(self) -> str:
        return f"CausalConv({self.channels}, kernel_size={self.kernel_size})"

    @property
    def in_features(self) -> int:
        return self.channels + self.passthrough

    @property
    def hidden_size(self) -> int:
        """The width of the state: the last `kernel_size - 1` inputs."""
        return (self.kernel_size - 1) * self.channels

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        kw, kb = jax.random.split(key)
        limit = 1.0 / math.sqrt(self.kernel_size)
        return {
            "w": jax.random.uniform(kw, (self.kernel_size, self.channels), dtype, -limit, limit),
            "b": jax.random.uniform(kb, (self.channels,), dtype, -limit, limit),
        }

    def initial_state(self, params: PyTree) -> jax.Array:
        return jnp.zeros((self.hidden_size,), params["w"].dtype)

    def __call__(self, params: PyTree, h: PyTree, x: PyTree) -> tuple[jax.Array, jax.Array]:
        dtype = params["w"].dtype
        x = check_input(self, x, dtype)
        batch = tuple(x.shape[:-1])
        h = match_state(self, "h", h, batch, self.hidden_size, dtype)
        u, rest = x[..., : self.channels], x[..., self.channels :]
        past = h.reshape(*batch, self.kernel_size - 1, self.channels)
        window = jnp.concatenate([past, u[..., None, :]], axis=-2)  # (..., k, channels)
        taps = jnp.broadcast_to(params["w"], window.shape)
        y = jnp.sum(window * taps, axis=-2) + jnp.broadcast_to(params["b"], u.shape)
        new = window[..., 1:, :].reshape(*batch, self.hidden_size)
        return new, jnp.concatenate([jax.nn.silu(y), rest], axis=-1)


@dataclasses.dataclass(frozen=True, repr=False)
class PassThrough(Cell):
    """`core` (a cell linear in its state) on the first `core.in_features` features of each
    step, the other `passthrough` features appended to its output unchanged. It is linear in
    its state as `core` is, so the linear strategies run it."""

    core: SelectiveSSMCell
    passthrough: int

    linear_recurrence = True

    def __repr__(self) -> str:
        return f"{self.core!r}"

    @property
    def in_features(self) -> int:
        return self.core.in_features + self.passthrough

    @property
    def hidden_size(self) -> int:
        return self.core.hidden_size

    @property
    def time_invariant(self) -> bool:
        return self.core.time_invariant

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> PyTree:
        return self.core.init(key, dtype)

    def initial_state(self, params: PyTree) -> PyTree:
        return self.core.initial_state(params)

    def _split(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = check_input(self, x, jax.tree.leaves(x)[0].dtype)
        d = self.core.in_features
        return x[..., :d], x[..., d:]

    def __call__(self, params: PyTree, h: PyTree, x: PyTree) -> tuple[PyTree, jax.Array]:
        u, rest = self._split(x)
        h, y = self.core(params, h, u)
        return h, jnp.concatenate([y, rest.astype(y.dtype)], axis=-1)

    def coefficients(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.core.coefficients(params, self._split(x)[0])

    def readout(self, params: PyTree, h: jax.Array, x: jax.Array) -> jax.Array:
        u, rest = self._split(x)
        y = self.core.readout(params, h, u)
        return jnp.concatenate([y, rest.astype(y.dtype)], axis=-1)


def gate(params: PyTree, x: jax.Array) -> jax.Array:
    """`y * silu(z)` for `x = [y, z]` (Mamba's gate)."""
    y, z = jnp.split(x, 2, axis=-1)
    return y * jax.nn.silu(z)
