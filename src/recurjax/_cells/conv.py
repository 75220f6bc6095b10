"""Convolutional cells: ConvLSTM (Shi et al., 2015) and ConvGRU, the LSTM's and the GRU's step
with every matmul a convolution over 1, 2 or 3 spatial axes (stride 1, `SAME` padding), so
the state keeps the input's spatial shape.

An input step is `(..., *spatial, channels)`: the cell's `input_axes` (`spatial_dims + 1`)
tells the scan engine how many trailing axes one step has, so that `lengths` and `resets`
are shaped by the batch axes alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from .classic import GRUCell, LSTMCell, _shifted

__all__ = ["ConvGRUCell", "ConvLSTMCell"]

# `lax.conv_general_dilated`'s layouts, channels last, per number of spatial axes.
_LAYOUTS = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


@dataclasses.dataclass(frozen=True, repr=False)
class _Conv:
    """What the convolutional cells share: the kernel size, the spatial rank, the
    convolution and the input's checks."""

    shown: ClassVar[tuple[str, ...]] = ("kernel_size",)

    kernel_size: Any = dataclasses.field(default=3, kw_only=True)
    spatial_dims: Any = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()  # pyright: ignore[reportAttributeAccessIssue]
        self._settle_kernel()

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes: the base cell's, with the
        kernel's axes before each matrix's, `wi: (*kernel, in, G H)` and `wh: (*kernel, H, G
        H)` (`G` gate blocks).

        Examples:
          >>> import recurjax as rj
          >>> rj.ConvLSTMCell(2, 4, kernel_size=3, spatial_dims=1).param_shapes()
          {'wi': (3, 2, 16), 'wh': (3, 4, 16), 'b': (16,)}
          >>> rj.ConvGRUCell(2, 4, kernel_size=(3, 3)).param_shapes()
          {'wi': (3, 3, 2, 12), 'wh': (3, 3, 4, 12), 'b': (12,), 'bhn': (4,)}
        """
        shapes = super().param_shapes()  # pyright: ignore[reportAttributeAccessIssue]
        kernels = ("wi", "wh")
        return {k: (*self.kernel_size, *v) if k in kernels else v for k, v in shapes.items()}

    def _settle_kernel(self) -> None:
        """`kernel_size` as a tuple of positive ints, one per spatial axis (`spatial_dims`,
        2 by default for an int size, the tuple's length otherwise)."""
        name, size, dims = type(self).__name__, self.kernel_size, self.spatial_dims
        if isinstance(size, int) and not isinstance(size, bool):
            dims = 2 if dims is None else dims
            size = (size,) * dims if dims in _LAYOUTS else size
        if not (isinstance(size, tuple) and size and all(isinstance(k, int) for k in size)):
            raise TypeError(
                f"{name}: expected kernel_size to be an int or a tuple of ints (one per "
                f"spatial axis), got {self.kernel_size!r}."
            )
        dims = len(size) if dims is None else dims
        if dims not in _LAYOUTS or len(size) != dims or min(size) < 1:
            raise ValueError(
                f"{name}: expected 1, 2 or 3 spatial axes and a positive kernel size for each, "
                f"got kernel_size={self.kernel_size!r} and spatial_dims={self.spatial_dims!r}. "
                "Pass e.g. kernel_size=(3, 3) for images, or kernel_size=3, spatial_dims=1."
            )
        object.__setattr__(self, "kernel_size", size)
        object.__setattr__(self, "spatial_dims", dims)

    @property
    def input_axes(self) -> int:
        """The trailing axes of one input step, `(*spatial, channels)`."""
        return int(self.spatial_dims) + 1

    def _check_rank(self, x: jax.Array) -> None:
        if x.ndim < self.input_axes:
            names = ("W", "H, W", "D, H, W")[self.spatial_dims - 1]
            raise ValueError(
                f"{self!r}: expected x of shape (..., {names}, channels) with "
                f"{self.spatial_dims} spatial axes, got shape {tuple(x.shape)}. Give each step "
                "its spatial axes (a single position is size 1 on each)."
            )

    def _conv(self, x: jax.Array, w: jax.Array) -> jax.Array:
        """`x: (*batch, *spatial, in)` convolved with `w: (*kernel, in, out)`: stride 1,
        `SAME` padding; `(*batch, *spatial, out)`."""
        d = self.spatial_dims
        batch, step = x.shape[: x.ndim - d - 1], x.shape[x.ndim - d - 1 :]
        flat = x.reshape(math.prod(batch), *step)
        y = lax.conv_general_dilated(flat, w, (1,) * d, "SAME", dimension_numbers=_LAYOUTS[d])
        return y.reshape(*batch, *y.shape[1:])


@dataclasses.dataclass(frozen=True, repr=False)
class ConvLSTMCell(_Conv, LSTMCell):
    r"""The convolutional LSTM (Shi et al., 2015, arXiv:1506.04214, without peepholes, as
    Flax's `ConvLSTMCell` and Haiku's `ConvNDLSTM`): the LSTM with convolutions `*` in
    place of its matmuls,

    $$
    \begin{aligned}
    [i, f, g, o] &= W_i * x + W_h * h + b \\
    c' &= \sigma(f) \odot c + \sigma(i) \odot \tanh(g), \qquad
    h' = \sigma(o) \odot \tanh(c'), \qquad y = h'
    \end{aligned}
    $$

    stride 1 and `SAME` padding over 1, 2 or 3 spatial axes, channels last.

    Params (`init`): `{"wi": (*kernel, in, 4H), "wh": (*kernel, H, 4H), "b": (4H,)}`, gate
    blocks `i, f, g, o`; Glorot-uniform kernels (fans `prod(kernel) * channels`), zero bias
    but `forget_bias`. Input `x: (..., *spatial, in)`; state `LSTMState(h, c)` of shape
    `(..., *spatial, H)` (`initial_state` gives `(H,)` zeros, broadcast over the batch and
    the spatial axes at the first step); output `y = h'`.

    Flax and Haiku order the gates `i, g, f, o` and add 1 to `f` in the forward pass;
    `recurjax.interop` converts theirs (here the 1 is in the stored bias).

    Keyword-only options `kernel_init`, `recurrent_init`, `bias_init` and `use_bias` choose
    the initialisers and drop the biases (the guide's "Initialisers and biases").

    Args:
      in_features: input channels.
      hidden_size: state channels `H`.
      forget_bias: initial value of the forget block of `b`.
      kernel_size: an int (the same size on every axis) or a tuple, one per spatial axis.
      spatial_dims: 1, 2 or 3 (default: the tuple's length, or 2 for an int).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.ConvLSTMCell(3, 8, kernel_size=(3, 3))
      >>> params = cell.init(jax.random.key(0))
      >>> params["wi"].shape, params["wh"].shape
      ((3, 3, 3, 32), (3, 3, 8, 32))
      >>> xs = jnp.ones((5, 2, 16, 16, 3))  # (T, B, H, W, C)
      >>> h, ys = rj.scan(cell, params, cell.initial_state(params), xs, lengths=jnp.array([5, 2]))
      >>> ys.shape, h.c.shape
      ((5, 2, 16, 16, 8), (2, 16, 16, 8))
    """

    shown: ClassVar[tuple[str, ...]] = ("forget_bias", "kernel_size")

    def __call__(self, params: dict[str, jax.Array], state: Any, x: jax.Array) -> Any:
        self._check_rank(jnp.asarray(x))
        return super().__call__(params, state, x)

    def _update(
        self, params: dict[str, jax.Array], h: jax.Array, c: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        gates = self._conv(x, params["wi"]) + self._conv(h, params["wh"])
        i, f, g, o = jnp.split(_shifted(gates, params.get("b")), 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c


@dataclasses.dataclass(frozen=True, repr=False)
class ConvGRUCell(_Conv, GRUCell):
    r"""The convolutional GRU: `GRUCell`'s step (the reset gate after the recurrent
    convolution, as PyTorch's and cuDNN's GRU) with convolutions `*` in place of its
    matmuls,

    $$
    \begin{aligned}
    [r, z, n_x] &= W_i * x + b, \qquad [r_h, z_h, n_h] = W_h * h \\
    r &= \sigma(r_x + r_h), \quad z = \sigma(z_x + z_h), \quad
    n = \tanh(n_x + r \odot (n_h + b_{hn})) \\
    h' &= (1 - z) \odot n + z \odot h, \qquad y = h'
    \end{aligned}
    $$

    stride 1 and `SAME` padding over 1, 2 or 3 spatial axes, channels last. With kernels of
    size 1 it is `GRUCell` at every position.

    Params (`init`): `{"wi": (*kernel, in, 3H), "wh": (*kernel, H, 3H), "b": (3H,), "bhn":
    (H,)}`, gate blocks `r, z, n`. Input `x: (..., *spatial, in)`; state and output `(...,
    *spatial, H)` (`initial_state`: `(H,)` zeros, broadcast at the first step).

    Keyword-only options `kernel_init`, `recurrent_init`, `bias_init` and `use_bias` choose
    the initialisers and drop the biases (the guide's "Initialisers and biases").

    Args:
      in_features: input channels.
      hidden_size: state channels `H`.
      kernel_size: an int (the same size on every axis) or a tuple, one per spatial axis.
      spatial_dims: 1, 2 or 3 (default: the tuple's length, or 2 for an int).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.ConvGRUCell(1, 4, kernel_size=5, spatial_dims=1)
      >>> params = cell.init(jax.random.key(0))
      >>> h, y = cell(params, cell.initial_state(params), jnp.ones((2, 32, 1)))
      >>> h.shape
      (2, 32, 4)
    """

    def __call__(
        self, params: dict[str, jax.Array], h: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        self._check_rank(jnp.asarray(x))
        h, x = self._checked_step(params, h, x)
        xr, xz, xn = jnp.split(_shifted(self._conv(x, params["wi"]), params.get("b")), 3, -1)
        hr, hz, hn = jnp.split(self._conv(h, params["wh"]), 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * _shifted(hn, params.get("bhn")))
        h = (1 - z) * n + z * h
        return h, h
