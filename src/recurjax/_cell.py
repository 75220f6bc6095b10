"""What a cell is: the protocol, the base class of library cells, and shared checks.

A *cell* is any callable `cell(params, h, x) -> (h, y)`. Library cells are frozen, hashable
dataclasses that also provide `init(key) -> params` and `initial_state(params) -> h`. The
helpers here give every library cell the same input checks and the same casting rule, so
errors read alike whichever cell raised them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
CellFn = Callable[[PyTree, PyTree, PyTree], tuple[PyTree, PyTree]]


def describe(cell: object) -> str:
    """A short human name for a cell, used in every error message."""
    if isinstance(cell, Cell):
        return repr(cell)
    name = getattr(cell, "__qualname__", None) or getattr(cell, "__name__", None)
    return f"cell function {name!r}" if name else repr(cell)


def check_callable(cell: object, where: str) -> None:
    """Raise `TypeError` unless `cell` can be called as `cell(params, h, x)`.

    Two callables that are not cells are rejected by name: a class (`rj.RNNCell` where
    `rj.RNNCell(10, 5)` was meant) and a `Recur` handle (whose call takes only `x`).
    """
    from ._recur import Recur  # imported here: _recur imports this module

    if isinstance(cell, type):
        raise TypeError(
            f"{where}: expected a cell, got the class {cell.__name__} itself. Instantiate it, "
            f"e.g. {cell.__name__}(10, 5), or pass a function (params, h, x) -> (h, y)."
        )
    if isinstance(cell, Recur):
        raise TypeError(
            f"{where}: expected a cell, got the handle {cell!r}. A handle is called with x "
            "alone (m, y = m(x); m, ys = m.scan(xs)); its cell is m.cell, with params "
            "m.params and state m.state."
        )
    if not callable(cell):
        raise TypeError(
            f"{where}: expected a cell, a callable `cell(params, h, x) -> (h, y)`, "
            f"got {type(cell).__name__} {cell!r}. Pass a library cell such as "
            "rj.LSTMCell(10, 15) or a function with that signature."
        )


def index_or_none(value: object) -> int | None:
    """`operator.index(value)` for Python and NumPy integers; `None` for anything else
    (bools included), so that callers can raise their own message."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return None
    return operator.index(value)  # type: ignore[arg-type]


def shape_of(a: object) -> tuple[int, ...] | str:
    """The shape of an array-like, or its type name when it has none (for messages)."""
    shape = getattr(a, "shape", None)
    return tuple(shape) if shape is not None else type(a).__name__


class Cell:
    """Base class of the library cells: a frozen config object that is a pure function.

    Subclasses are frozen dataclasses (hashable, so they can be static under `jax.jit`) and
    implement:

    - `init(key, dtype=jnp.float32) -> params`, a dict of arrays;
    - `initial_state(params) -> h`, an *unbatched* state pytree;
    - `__call__(params, h, x) -> (h, y)`, one time step for `x` of shape `(..., in)`.

    A plain function with the signature `(params, h, x) -> (h, y)` is a cell too; this class
    only adds the conveniences and the input checks.
    """

    in_features: int

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> PyTree:
        raise NotImplementedError

    def initial_state(self, params: PyTree) -> PyTree:
        raise NotImplementedError

    def __call__(self, params: PyTree, h: PyTree, x: PyTree) -> tuple[PyTree, PyTree]:
        raise NotImplementedError


class WrapperCell(Cell):
    """Base of the library cells that wrap one cell, `self.cell` (`residual`,
    `VariationalDropout`): they take its `in_features` and its params."""

    cell: Any

    @property
    def in_features(self) -> int:  # type: ignore[override]
        """The wrapped cell's `in_features`."""
        return self.cell.in_features

    def init(self, key: jax.Array, dtype: Any = None) -> PyTree:
        """The wrapped cell's params (`dtype=None`: its own default)."""
        return self.cell.init(key) if dtype is None else self.cell.init(key, dtype)


def check_params(cell: Cell, params: object, expected: Mapping[str, tuple[int, ...]]) -> Any:
    """Check that `params` is the dict `cell.init` makes; return its compute dtype.

    Raises `ValueError` (or `TypeError` for a non-mapping) naming the cell, the expected
    layout, the given one, and how to make the right params.
    """
    fix = f"Make params with {cell!r}.init(key), or convert them with the documented layout."
    if not isinstance(params, Mapping):
        raise TypeError(
            f"{cell!r}: expected params to be a dict with keys {sorted(expected)}, "
            f"got {type(params).__name__}. {fix}"
        )
    got = {k: shape_of(v) for k, v in params.items()}
    if got != dict(expected):
        raise ValueError(
            f"{cell!r}: params do not match this cell: expected shapes {dict(expected)}, "
            f"got {got}. Are these the params of another cell or size? {fix}"
        )
    dtypes = {jnp.dtype(v.dtype) for v in params.values()}
    if len(dtypes) != 1 or not jnp.issubdtype(next(iter(dtypes)), jnp.floating):
        raise TypeError(
            f"{cell!r}: expected all params to share one floating dtype, got "
            f"{ {k: str(v.dtype) for k, v in params.items()} }. Cast them with "
            "jax.tree.map(lambda p: p.astype(jnp.float32), params)."
        )
    return next(iter(dtypes))


def check_input(cell: Cell, x: object, dtype: Any) -> jax.Array:
    """Check `x: (..., in_features)` and cast it to the cell's compute dtype.

    The casting rule of every library cell: `x` (float64, float16, int or bool alike) is cast
    to the dtype of the cell's params, so the state and output always have that dtype.
    """
    if not hasattr(x, "shape"):
        raise TypeError(
            f"{cell!r}: expected x to be an array of shape (..., {cell.in_features}), "
            f"got {type(x).__name__}. Convert it with jnp.asarray (stack a list of steps "
            "with jnp.stack)."
        )
    x = jnp.asarray(x)
    if x.ndim == 0 or x.shape[-1] != cell.in_features:
        raise ValueError(
            f"{cell!r}: expected x with {cell.in_features} features on its last axis, shape "
            f"(..., {cell.in_features}), got shape {tuple(x.shape)}. Check the cell's "
            f"in_features, or reshape x so that features are the last axis."
        )
    return x.astype(dtype)


def match_state(
    cell: Cell, name: str, h: object, batch: tuple[int, ...], features: int, dtype: Any
) -> jax.Array:
    """Check one state array against the batch shape of `x`; broadcast it if unbatched.

    An unbatched state `(features,)` meeting a batched `x: (*batch, in)` is broadcast to
    `(*batch, features)` (it then stays batched, as in Flux). A batched state with another
    batch shape is an error: silently reshaping it is how Flux users mixed up batches.
    """
    if not hasattr(h, "shape"):
        raise TypeError(
            f"{cell!r}: expected state {name} to be an array of shape (..., {features}), "
            f"got {type(h).__name__}. Use {cell!r}.initial_state(params)."
        )
    h = jnp.asarray(h)
    if h.ndim == 0 or h.shape[-1] != features:
        raise ValueError(
            f"{cell!r}: expected state {name} of shape (..., {features}), got shape "
            f"{tuple(h.shape)}. Use {cell!r}.initial_state(params) for a fresh state."
        )
    if h.shape[:-1] != batch:
        if h.ndim != 1:
            raise ValueError(
                f"{cell!r}: state {name} has batch shape {tuple(h.shape[:-1])} but x has "
                f"batch shape {batch}. The state still holds the previous batch: call "
                "reset() (or start from cell.initial_state(params)) between independent "
                "batches."
            )
        h = jnp.broadcast_to(h, (*batch, features))
    return h.astype(dtype)


def affine(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """`x @ w + b` on the last axis for any leading batch axes, with no implicit broadcast."""
    y = x @ w
    if b is not None:
        y = y + jnp.broadcast_to(b, y.shape)
    return y
