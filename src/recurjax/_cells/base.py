"""What the library's cells share: their base class and the maps their steps use.

`_CellBase` holds what each cell would otherwise repeat: its size fields checked when it is
built, its repr `Name(in => out, options)`, its params checked against `param_shapes()` and
a zero initial state. A cell names its size fields and the options its repr shows as class
attributes, and overrides the rest where it differs. Options the cells share (initialisers,
biases) belong here too.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._checks import check_input, check_params, check_sizes, fn_name
from .._contracts import Cell


def affine(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """`x @ w + b` on the last axis for any leading batch axes, with no implicit broadcast."""
    y = x @ w
    if b is not None:
        y = y + jnp.broadcast_to(b, y.shape)
    return y


def affine_blocks(
    x: jax.Array, w: jax.Array, b: jax.Array | None, widths: Sequence[int]
) -> list[jax.Array]:
    """The consecutive column blocks of `x @ w + b`, `widths` wide, each its own product
    with its block of `w` (and `b`): the same values as slicing the whole product, but the
    gradient for `w` is the blocks' gradients side by side rather than every block's output
    gradient padded to the full width and summed (over a whole sequence at once, the
    difference is a pass over `(T, *batch, sum(widths))`)."""
    ends = list(itertools.accumulate(widths))
    return [
        affine(x, w[:, a:e], None if b is None else b[a:e])
        for a, e in zip([0, *ends[:-1]], ends, strict=True)
    ]


def by_heads(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x @ W` for a block-diagonal `W` stored as its blocks `w: (heads, d, e)`: each head's
    `d` features of `x: (..., heads * d)` map to its `e` outputs, `(..., heads, e)`."""
    heads, d = w.shape[0], w.shape[1]
    return jnp.einsum("...nd,nde->...ne", x.reshape(*x.shape[:-1], heads, d), w)


def _defaults(cell: Any) -> dict[str, Any]:
    """The default of every field of a dataclass instance (`MISSING` where it has none)."""
    return {f.name: f.default for f in dataclasses.fields(cell)}


class _CellBase(Cell):
    """The base of the library's cells (frozen dataclasses): checked sizes, the repr, checked
    params and a zero initial state.

    A subclass sets `sizes` and `shown` and implements `param_shapes`, `init` and
    `__call__`; `_checked(params, x)` gives its step the params' dtype and the input checked
    and cast to it.
    """

    # The size fields, positive ints checked (and stored as Python ints) when the cell is
    # built; the first two are the repr's `in => out`.
    sizes: ClassVar[tuple[str, ...]] = ("in_features", "hidden_size")
    # The options the repr shows after the sizes, in this order: a function (an activation,
    # or a field whose default is one) by its name; any other option as `name=value` where it
    # differs from its default.
    shown: ClassVar[tuple[str, ...]] = ()
    # Options the repr shows as `name=value` where they differ from their defaults (a
    # function by its name), after `shown`.
    options: ClassVar[tuple[str, ...]] = ()

    hidden_size: int

    def __post_init__(self) -> None:
        check_sizes(self, *self.sizes)

    def __repr__(self) -> str:
        items = [" => ".join(str(getattr(self, name)) for name in self.sizes[:2])]
        defaults = _defaults(self)
        for name in self.shown:
            value, default = getattr(self, name), defaults[name]
            if callable(value) or callable(default):
                items.append(fn_name(value))
            elif value != default:
                items.append(f"{name}={value}")
        for name in self.options:
            value = getattr(self, name)
            if value != defaults[name]:
                items.append(f"{name}={fn_name(value) if callable(value) else repr(value)}")
        return f"{type(self).__name__}({', '.join(items)})"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes (converters build on it)."""
        raise NotImplementedError

    def _dtype(self, params: object) -> Any:
        """Check `params` against `param_shapes()`; return their compute dtype."""
        return check_params(self, params, self.param_shapes())

    def _checked(self, params: object, x: object) -> tuple[Any, jax.Array]:
        """`(dtype, x)`: the params' compute dtype (checked) and `x` checked and cast to it."""
        dtype = self._dtype(params)
        return dtype, check_input(self, x, dtype)

    def initial_state(self, params: Any) -> Any:
        """Zeros of shape `(H,)` in the params' dtype."""
        return jnp.zeros((self.hidden_size,), self._dtype(params))
