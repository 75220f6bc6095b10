"""The scan engine: the one place in recurjax that knows about time."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ._cell import CellFn, PyTree, check_callable, describe, index_or_none

__all__ = ["scan"]


def _time_major(cell: object, xs: PyTree, time_axis: int) -> tuple[PyTree, int]:
    """Move the time axis of every leaf of `xs` to the front; return `(xs, T)`."""
    name = describe(cell)
    leaves, treedef = jax.tree.flatten(xs)
    if not leaves:
        raise ValueError(f"scan({name}): xs has no arrays; expected an array (T, ..., in).")
    if any(not hasattr(a, "shape") for a in leaves):
        bad = [type(a).__name__ for a in leaves if not hasattr(a, "shape")]
        raise TypeError(
            f"scan({name}): expected xs to be an array (or a pytree of arrays) with a time "
            f"axis, got leaves of type {bad}. Stack per-step inputs with jnp.stack(steps), or "
            "use Recur.scan, which accepts a list of steps."
        )
    in_features = getattr(cell, "in_features", None)
    if in_features is not None and (treedef.num_leaves != 1 or treedef.num_nodes != 1):
        raise TypeError(
            f"scan({name}): expected xs to be one array of shape (T, ..., {in_features}), got "
            f"a {type(xs).__name__}. Stack per-step inputs with jnp.stack(steps), or use "
            "Recur.scan, which accepts a list of steps."
        )
    moved = []
    for a in leaves:
        a = jnp.asarray(a)
        min_ndim = 2 if in_features is not None else 1
        if a.ndim < min_ndim:
            raise ValueError(
                f"scan({name}): xs has no time axis: expected shape (T, ..., "
                f"{in_features if in_features is not None else 'in'}), got shape "
                f"{tuple(a.shape)}. For a single step call the cell (or Recur) directly; for "
                "a one-step sequence use xs[None]."
            )
        if not -a.ndim <= time_axis < a.ndim:
            raise ValueError(
                f"scan({name}): time_axis={time_axis} is out of range for xs of shape "
                f"{tuple(a.shape)}. Use time_axis=0 for time-major (T, B, in) or 1 for "
                "batch-major (B, T, in)."
            )
        moved.append(jnp.moveaxis(a, time_axis, 0))
    lengths = {a.shape[0] for a in moved}
    if len(lengths) != 1:
        raise ValueError(
            f"scan({name}): every leaf of xs needs the same number of steps on time_axis="
            f"{time_axis}, got {sorted(lengths)}."
        )
    return jax.tree.unflatten(treedef, moved), lengths.pop()


def _settle_state(cell: CellFn, params: PyTree, h: PyTree, xs: PyTree) -> PyTree:
    """Give `h` the shapes and dtypes that one step of `cell` returns (the scan carry).

    A library cell broadcasts an unbatched state to the batch of `x` and casts it to the
    params' dtype; the carry of `lax.scan` must have that form from the first step on. The
    step is traced once, abstractly (`jax.eval_shape`), so errors surface here, at trace time.
    The only shape change allowed is adding leading batch axes (`(H,)` to `(B, H)`); any other
    (say `(1, H)` to `(5, H)`, a function cell broadcasting a stale batch) is an error.
    """
    h = jax.tree.map(jnp.asarray, h)
    x0 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), xs)
    # Through a lambda: eval_shape keeps a weak reference to the function it traces, which
    # some callables (e.g. instances of classes with __slots__) do not allow.
    new_h, _ = jax.eval_shape(lambda p, s, x: cell(p, s, x), params, h, x0)
    name = describe(cell)
    check_state_change(f"scan({name})", h, new_h)
    return jax.tree.map(
        lambda old, new: jnp.broadcast_to(old, new.shape).astype(new.dtype), h, new_h
    )


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


def _stop(tree: PyTree) -> PyTree:
    return jax.tree.map(lax.stop_gradient, tree)


def scan(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    *,
    time_axis: int = 0,
    reverse: bool = False,
    truncate_every: int | None = None,
    unroll: int | bool = 1,
) -> tuple[PyTree, PyTree]:
    """Run a cell over a sequence: `lax.scan` with the state first, plus time options.

    Semantically, with `xs` time-major and `T` steps, `scan` is this Python loop (outputs
    stacked on the time axis)::

        def scan(cell, params, h, xs, truncate_every=None, reverse=False):
            ys = [None] * T
            order = reversed(range(T)) if reverse else range(T)
            for n, t in enumerate(order):
                if truncate_every and n > 0 and n % truncate_every == 0:
                    h = jax.lax.stop_gradient(h)  # cut the gradient, keep the value
                h, ys[t] = cell(params, h, xs[t])
            return h, jnp.stack(ys)

    An unbatched initial state (`(H,)`, as `cell.initial_state` returns) is broadcast to the
    batch shape of `xs` before the first step. With `truncate_every=k` the gradient is cut
    every `k` steps (in processing order) but the values are unchanged, and when `T % k != 0`
    the last `T % k` steps are still computed: no step is ever dropped. A sequence of zero
    steps returns `h` (settled to the step's batch and dtype) and an empty `ys`.

    Outside `jit`, `scan` compiles once per cell, options and input shapes and reuses the
    program (inside a user's `jit` it simply inlines). The cell is a static argument,
    compared by equality: library cells compare by their configuration, functions by
    identity, so define a function cell once; a fresh `lambda` on every call recompiles on
    every call. An unhashable cell runs without this cache.

    Args:
      cell: any cell, `cell(params, h, x) -> (h, y)`.
      params: the cell's params.
      h: the initial state (unbatched or with the batch shape of `xs`).
      xs: inputs of shape `(T, ..., in)` (time-major, like `lax.scan`); or a list (or plain
        tuple) of `T` per-step inputs, stacked on a new leading axis; or a dict/NamedTuple
        pytree of arrays that all have a time axis, for cells that take structured input.
      time_axis: the axis of `xs` that is time; `1` for batch-major `(B, T, in)`. The
        outputs `ys` have their time axis at the same position.
      reverse: run from the last step to the first (outputs stay in input order).
      truncate_every: cut the gradient through the carry every this many steps (truncated
        backpropagation through time within one scan); `None` never cuts.
      unroll: passed to `lax.scan`: steps per loop iteration (or `True` for all).

    Returns:
      `(h, ys)`: the final state and the stacked outputs, `ys: (T, ..., out)` (time at
      `time_axis`).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.GRUCell(3, 4)
      >>> params = cell.init(jax.random.key(0))
      >>> xs = jnp.ones((7, 2, 3))          # T=7 steps, batch of 2
      >>> h, ys = rj.scan(cell, params, cell.initial_state(params), xs)
      >>> h.shape, ys.shape
      ((2, 4), (7, 2, 4))
      >>> h2, ys2 = rj.scan(cell, params, cell.initial_state(params), xs, truncate_every=3)
      >>> bool(jnp.allclose(ys, ys2))
      True
    """
    check_callable(cell, "scan(cell, ...)")
    name = describe(cell)
    if truncate_every is not None:
        k = index_or_none(truncate_every)
        if k is None or k < 1:
            raise ValueError(
                f"scan({name}): expected truncate_every to be a positive int or None, "
                f"got {truncate_every!r}."
            )
        truncate_every = k
    if not isinstance(unroll, bool):
        n = index_or_none(unroll)
        if n is None or n < 1:
            raise ValueError(
                f"scan({name}): expected unroll to be a positive int or a bool, got {unroll!r}."
            )
        unroll = n
    axis = index_or_none(time_axis)
    if axis is None:
        raise TypeError(f"scan({name}): expected time_axis to be an int, got {time_axis!r}.")
    time_axis = axis
    if type(xs) in (list, tuple):
        xs = _stack_steps(cell, xs)
    options = (time_axis, bool(reverse), truncate_every, unroll)
    try:
        hash(cell)
    except TypeError:  # an unhashable cell cannot be a static argument: run it unjitted
        return _scan(cell, params, h, xs, *options)
    return _scan_jit(cell, params, h, xs, *options)


def _scan(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    time_axis: int,
    reverse: bool,
    truncate_every: int | None,
    unroll: int | bool,
) -> tuple[PyTree, PyTree]:
    xs, T = _time_major(cell, xs, time_axis)
    h = _settle_state(cell, params, h, xs)

    def step(h: PyTree, x: PyTree) -> tuple[PyTree, PyTree]:
        return cell(params, h, x)

    k = truncate_every
    if k is None or k >= T:
        h, ys = lax.scan(step, h, xs, reverse=reverse, unroll=unroll)
    else:
        if reverse:
            xs = jax.tree.map(lambda a: jnp.flip(a, 0), xs)
        n, r = divmod(T, k)
        blocks = jax.tree.map(lambda a: a[: n * k].reshape(n, k, *a.shape[1:]), xs)

        def block(h: PyTree, inp: tuple[jax.Array, PyTree]) -> tuple[PyTree, PyTree]:
            i, xb = inp
            # Detach at every block boundary but the first; a select keeps values equal.
            h = jax.tree.map(lambda a: jnp.where(i == 0, a, lax.stop_gradient(a)), h)
            return lax.scan(step, h, xb, unroll=unroll)

        h, ys = lax.scan(block, h, (jnp.arange(n), blocks))
        ys = jax.tree.map(lambda a: a.reshape(n * k, *a.shape[2:]), ys)
        if r:
            tail = jax.tree.map(lambda a: a[n * k :], xs)
            h, ys_tail = lax.scan(step, _stop(h), tail, unroll=unroll)
            ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys, ys_tail)
        if reverse:
            ys = jax.tree.map(lambda a: jnp.flip(a, 0), ys)
    ys = jax.tree.map(lambda a: jnp.moveaxis(a, 0, time_axis), ys)
    return h, ys


# Jitted with the cell and the options static, so that eager calls with the same cell and
# shapes reuse one compiled program (inside a user's jit this simply inlines).
_scan_jit = jax.jit(_scan, static_argnums=(0, 4, 5, 6, 7))


def _stack_steps(cell: object, steps: list[Any] | tuple[Any, ...]) -> PyTree:
    """Stack a list of per-step inputs on a new leading time axis."""
    name = describe(cell)
    if not steps:
        raise ValueError(
            f"scan({name}): got an empty list of steps, whose feature shape is unknown. Pass "
            "an array of shape (0, ..., in) for an empty sequence."
        )
    shapes = [jax.tree.map(jnp.shape, s) for s in steps]
    for t, shape in enumerate(shapes):
        if shape != shapes[0]:
            raise ValueError(
                f"scan({name}): every step of xs must have the same shape, but step 0 has "
                f"shape {shapes[0]} and step {t} has shape {shape}. Pad or split the sequence."
            )
    return jax.tree.map(lambda *a: jnp.stack(a), *steps)
