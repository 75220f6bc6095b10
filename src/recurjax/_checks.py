"""The checks shared by cells, the scan engine, `chunks`/`tbptt` and interop: one copy each,
so that errors read alike whichever part of recurjax raised them."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ._contracts import Cell, Handle, PyTree


def describe(cell: object) -> str:
    """A short human name for a cell, used in every error message."""
    if isinstance(cell, Cell):
        return repr(cell)
    name = getattr(cell, "__qualname__", None) or getattr(cell, "__name__", None)
    return f"cell function {name!r}" if name else repr(cell)


def fn_name(fn: Callable[..., Any]) -> str:
    """The name of a function (an activation, a merge) for reprs."""
    return getattr(fn, "__name__", None) or repr(fn)


def scope_name(cell: object) -> str:
    """A short name of a cell for `jax.named_scope`: a function's name, else its class's."""
    return getattr(cell, "__name__", None) or type(cell).__name__


def check_callable(cell: object, where: str) -> None:
    """Raise `TypeError` unless `cell` can be called as `cell(params, h, x)`.

    Two callables that are not cells are rejected by name: a class (`rj.RNNCell` where
    `rj.RNNCell(10, 5)` was meant) and a `Recur` handle (whose call takes only `x`).
    """
    if isinstance(cell, type):
        raise TypeError(
            f"{where}: expected a cell, got the class {cell.__name__} itself. Instantiate it, "
            f"e.g. {cell.__name__}(10, 5), or pass a function (params, h, x) -> (h, y)."
        )
    if isinstance(cell, Handle):
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


def positive_int(value: object) -> int | None:
    """`value` as a Python int if it is a positive integer (not a bool), else `None`."""
    n = index_or_none(value)
    return n if n is not None and n >= 1 else None


def check_heads(cell: object) -> None:
    """`ValueError` unless the cell's `num_heads` divides its `hidden_size`."""
    name, n, H = type(cell).__name__, cell.num_heads, cell.hidden_size  # type: ignore[attr-defined]
    if H % n:
        raise ValueError(
            f"{name}: num_heads={n} must divide hidden_size={H} (each head holds "
            f"H / num_heads units); use a divisor of {H}, e.g. 1."
        )


def shape_of(a: object) -> tuple[int, ...] | str:
    """The shape of an array-like, or its type name when it has none (for messages)."""
    shape = getattr(a, "shape", None)
    return tuple(shape) if shape is not None else type(a).__name__


def check_sizes(cell: object, *names: str) -> None:
    """Check that the named size fields of a frozen dataclass are positive ints; store them
    as Python ints (a NumPy integer is accepted, a bool or float is not)."""
    cls_name = type(cell).__name__
    for name in names:
        value = getattr(cell, name)
        number = positive_int(value)
        if number is None:
            raise TypeError(
                f"{cls_name}: expected {name} to be a positive int, got {value!r}. "
                f"Write e.g. {cls_name}(10, 5) for 10 input features and 5 output features."
            )
        object.__setattr__(cell, name, number)


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

    The casting rule of every library cell: a real `x` (float64, float16, int or bool alike)
    is cast to the dtype of the cell's params, so the state and output always have that
    dtype. A complex `x` is a `TypeError`: the cast would drop its imaginary part.
    """
    if not hasattr(x, "shape"):
        raise TypeError(
            f"{cell!r}: expected x to be an array of shape (..., {cell.in_features}), "
            f"got {type(x).__name__}. Convert it with jnp.asarray (stack a list of steps "
            "with jnp.stack)."
        )
    x = jnp.asarray(x)
    if not (
        jnp.issubdtype(x.dtype, jnp.floating)
        or jnp.issubdtype(x.dtype, jnp.integer)
        or x.dtype == jnp.bool_
    ):
        raise TypeError(
            f"{cell!r}: expected a real input x (a float, int or bool dtype, cast to the "
            f"params' dtype {jnp.dtype(dtype)}), got dtype {x.dtype}. Casting it would drop "
            "its imaginary part: pass jnp.real(x), or its real and imaginary parts as "
            "features, jnp.concatenate([x.real, x.imag], axis=-1), to a cell with twice the "
            "in_features."
        )
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


def check_state_change(where: str, old: PyTree, new: PyTree) -> None:
    """Check that one step kept the state's structure and shapes, up to new leading axes.

    `old` is the state given to the step and `new` the one it returned (arrays or
    `ShapeDtypeStruct`s). A new state may add leading batch axes to an unbatched one; any
    other change raises `ValueError` naming the leaf.
    """
    if jax.tree.structure(new) != jax.tree.structure(old):
        raise ValueError(
            f"{where}: the cell returned a state with structure {jax.tree.structure(new)}, but "
            f"was given a state with structure {jax.tree.structure(old)}. A cell must return "
            "its state in the form it takes it."
        )
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(old), jax.tree.leaves(new), strict=True
    ):
        before, after = tuple(jnp.shape(a)), tuple(jnp.shape(b))
        if before == after or (
            len(before) < len(after) and after[len(after) - len(before) :] == before
        ):
            continue
        raise ValueError(
            f"{where}: the cell turned state{jax.tree_util.keystr(path)} of shape {before} "
            f"into shape {after}; a state must keep its shape from step to step (only an "
            "unbatched state may gain leading batch axes). If the state holds the previous "
            "batch, call reset() (or start from a fresh initial state) between batches."
        )


def check_key(where: str, key: object) -> None:
    """`TypeError` unless `key` is `None` or one typed PRNG key (`jax.random.key`)."""
    if key is None:
        return
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    if not typed or jnp.ndim(key) != 0:  # type: ignore[arg-type]
        raise TypeError(
            f"{where}: expected a PRNG key from jax.random.key(seed) (or None for dropout "
            f"off), got {type(key).__name__} with shape {jnp.shape(key)}. Make one with "  # type: ignore[arg-type]
            "jax.random.key(0), or split one with jax.random.split(key)."
        )


def check_time_axis(
    where: str,
    shape: tuple[int, ...],
    time_axis: int,
    what: str = "xs",
    hint: str = "Use time_axis=0 for time-major (T, B, ...) or 1 for batch-major (B, T, ...).",
) -> None:
    """Raise `ValueError` unless `time_axis` is an axis of an array of `shape`."""
    if not -len(shape) <= time_axis < len(shape):
        raise ValueError(
            f"{where}: time_axis={time_axis} is out of range for {what} of shape "
            f"{tuple(shape)}. {hint}"
        )


def time_length(
    xs: PyTree,
    time_axis: int,
    where: str,
    hint: str = "Inputs and targets must be aligned in time.",
) -> int:
    """The common length of the time axis of every leaf of `xs` (checked); `hint` ends the
    message when the leaves disagree."""
    leaves = jax.tree.leaves(xs)
    if not leaves:
        raise ValueError(f"{where}: xs has no arrays; expected an array (T, ...) or a pytree.")
    lengths = set()
    for a in leaves:
        shape = getattr(a, "shape", None)
        if shape is None:
            raise TypeError(
                f"{where}: expected xs to hold arrays with a time axis, got a leaf of type "
                f"{type(a).__name__}. Convert it with np.asarray or jnp.asarray."
            )
        check_time_axis(where, shape, time_axis)
        lengths.add(shape[time_axis])
    if len(lengths) != 1:
        raise ValueError(
            f"{where}: every leaf of xs needs the same number of steps on time_axis="
            f"{time_axis}, got {sorted(lengths)}. {hint}".rstrip()
        )
    return lengths.pop()
