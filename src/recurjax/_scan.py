"""The scan engine: the one place in recurjax that knows about time."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._cell import CellFn, PyTree, check_callable, describe, index_or_none
from ._kernels import GRUKernel, Kernel, kernel_for

__all__ = ["scan", "sequence_parallel_scan"]

STRATEGIES = ("auto", "fused", "sequential", "associative", "chunked")


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
    Composite cells (chains, `bidirectional`, `residual`) are settled part by part, so that a
    part which only runs over whole sequences (`bidirectional`) is never stepped.
    """
    h = jax.tree.map(jnp.asarray, h)
    x0 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), xs)
    return _settle(cell, params, h, x0)[0]


def _settle(cell: CellFn, params: PyTree, h: PyTree, x0: PyTree) -> tuple[PyTree, PyTree]:
    """`_settle_state` for one step's input shapes `x0`; also returns the output's shapes."""
    from ._chain import Bidirectional, Chain, Residual

    kind = type(cell)
    if kind is Chain or kind is Bidirectional:
        cell._check_tuple("params", params)  # type: ignore[attr-defined]
        cell._check_tuple("state", h)  # type: ignore[attr-defined]
    if kind is Chain:
        states = []
        for part, p, s in zip(cell.cells, params, h, strict=True):  # type: ignore[attr-defined]
            s, x0 = _settle(part, p, s, x0)
            states.append(s)
        return tuple(states), x0
    if kind is Bidirectional:
        bi = cast("Any", cell)
        sf, yf = _settle(bi.forward, params[0], h[0], x0)
        sb, yb = _settle(bi.backward, params[1], h[1], x0)
        return (sf, sb), jax.eval_shape(bi.merged, yf, yb)
    if kind is Residual:
        s, y0 = _settle(cast("Any", cell).cell, params, h, x0)
        cast("Any", cell).check_shapes(x0, y0)
        return s, y0
    # Through a lambda: eval_shape keeps a weak reference to the function it traces, which
    # some callables (e.g. instances of classes with __slots__) do not allow.
    new_h, y0 = jax.eval_shape(lambda p, s, x: cell(p, s, x), params, h, x0)
    check_state_change(f"scan({describe(cell)})", h, new_h)

    def settle(old: jax.Array, new: Any) -> jax.Array:
        if old.shape != new.shape:
            old = jnp.broadcast_to(old, new.shape)
        return old if old.dtype == new.dtype else old.astype(new.dtype)  # keys: no astype

    return jax.tree.map(settle, h, new_h), y0


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
    strategy: str = "auto",
    remat: int | None = None,
    lengths: Any = None,
    resets: Any = None,
    state0: PyTree = None,
) -> tuple[PyTree, PyTree]:
    """Run a cell over a sequence: `lax.scan` with the state first, plus time options.

    Semantically, with `xs` time-major and `T` steps, `scan` is this Python loop for one
    sequence (outputs stacked on the time axis; with a batch, every sequence runs it with
    its own length and flags)::

        def scan(cell, params, h, xs, truncate_every=None, reverse=False,
                 length=T, resets=None, state0=None):
            ys = [zeros_like_output] * T        # padded steps output zeros
            order = range(length)               # steps past `length` are never run
            order = reversed(order) if reverse else order
            for n, t in enumerate(order):
                if truncate_every and n > 0 and n % truncate_every == 0:
                    h = jax.lax.stop_gradient(h)  # cut the gradient, keep the value
                if resets is not None and resets[t]:
                    h = state0                  # a new episode: no gradient flows back
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
      unroll: passed to `lax.scan`: steps per loop iteration (or `True` for all). Only the
        sequential strategy unrolls, so `unroll > 1` selects it.
      strategy: how to evaluate; every strategy computes the same function (tested to
        float rounding).

        - `"sequential"`: `lax.scan` of `cell` itself, differentiated by JAX. Works for
          every cell and every transformation, forward-mode (`jax.jvp`, `jax.jacfwd`,
          `jax.hessian`) included.
        - `"fused"`: for `LSTMCell`, `GRUCell` and `RNNCell` (and chains, layer by layer), a
          hand-written kernel with a `jax.custom_vjp`: the backward pass runs the recurrence
          once and computes the weight and input gradients as single large matmuls over all
          steps. Reverse-mode only: forward-mode autodiff of it raises JAX's "can't apply
          forward-mode autodiff (jvp) to a custom_vjp function"; use `"sequential"` there.
        - `"associative"`: for a `LinearCell` (`MinGRUCell`, `MinLSTMCell`, `LRUCell`,
          subclasses; and chains, part by part), `lax.associative_scan` over the whole
          sequence: the composed maps `h -> a h + b` give every state in `O(log T)` depth.
          Its backward pass is one more associative scan (a custom VJP), reverse-mode only.
        - `"chunked"`: the same within blocks of 256 steps, carried sequentially from block
          to block (`O(T log 256)` work instead of `O(T log T)`).
        - `"auto"` (default): `"fused"` where the cell has a kernel and `unroll == 1`,
          otherwise `"sequential"`; except where the sequential one measured faster on
          XLA:CPU (`benchmarks/RESULTS.md`): a `GRUCell` with 128 or more sequences in the
          batch, and the forward pass alone of 4 or fewer sequences. A `Chain` runs part
          by part over the whole sequence (each layer's outputs are the next one's
          inputs), each part with its own best strategy; a `Dense` part is then one matmul
          over all steps. A `LinearCell` runs sequentially: on XLA:CPU the associative
          scan was slower (`benchmarks/RESULTS_linear.md`); backends where it measures
          faster are listed in `ASSOCIATIVE_BACKENDS`.
      remat: rematerialise every this many steps to save memory: the backward pass stores
        only the state at the start of each block of `remat` steps and recomputes the
        block's forward pass (`jax.checkpoint`), so memory for the backward pass grows as
        `T / remat + remat` steps' worth instead of `T`, for one more forward pass of compute.
        `None` (default) stores every step. Must be a multiple of `truncate_every` when both
        are given.
      lengths: for right-padded batches, an integer array with the batch shape of `xs` (one
        length per sequence, any number of batch axes; a scalar for an unbatched `xs`).
        Past its length a sequence's state is frozen and its outputs are zero, so the
        returned state is each sequence's state after its own last valid step (length 0
        returns the initial state) and padded steps contribute exactly zero gradient. With
        `reverse=True` each sequence runs from its own last valid step back to step 0; the
        padding stays at the end. Padded inputs are never read (NaN padding is harmless).
        Lengths outside `[0, T]` raise `ValueError`; under `jit`, where the values are not
        known at trace time, such a sequence's state and outputs are NaN instead.
      resets: episode boundaries, a boolean array shaped like `xs` without its feature axis
        (`(T, *batch)`, time at `time_axis`): where true, the state entering that step is
        replaced by `state0` (Haiku's `ResetCore`), so no gradient flows across the
        boundary and the result equals running each episode separately. Flags are read in
        processing order (with `reverse`, before the step is processed in reverse), and
        are ignored past a sequence's length.
      state0: the state `resets` return to (unbatched or batched, like `h`); defaults to
        `cell.initial_state(params)`. `Recur.scan` passes the handle's `state0`. Gradients
        reach it from every reset.

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
    if remat is not None:
        r = index_or_none(remat)
        if r is None or r < 1:
            raise ValueError(
                f"scan({name}): expected remat to be a positive int or None, got {remat!r}."
            )
        if truncate_every is not None and r % truncate_every:
            raise ValueError(
                f"scan({name}): remat={r} must be a multiple of truncate_every="
                f"{truncate_every}, so that every cut falls inside a block or on its start. "
                f"Use e.g. remat={r - r % truncate_every or truncate_every}."
            )
        remat = r
    if strategy not in STRATEGIES:
        raise ValueError(
            f"scan({name}): expected strategy to be one of {STRATEGIES}, got {strategy!r}."
        )
    if strategy == "fused" and not _has_kernel(cell):
        raise ValueError(
            f"scan({name}): strategy='fused' needs a cell with a fused kernel (LSTMCell, "
            "GRUCell, RNNCell, or a chain of them and Dense layers); this cell has none. Use "
            "strategy='auto' (which falls back to 'sequential') or 'sequential'."
        )
    if strategy in ("associative", "chunked") and not _has_linear(cell):
        raise ValueError(
            f"scan({name}): strategy={strategy!r} needs a cell that is linear in its state "
            "(a LinearCell: MinGRUCell, MinLSTMCell, LRUCell or a subclass), or a chain with "
            "one; this cell is not. Use strategy='auto' or 'sequential'."
        )
    if type(xs) in (list, tuple):
        xs = _stack_steps(cell, xs)
    # Lengths only known under a trace are checked by NaN in the result instead (`_poison`).
    unchecked = lengths is not None and not _check_length_values(cell, xs, lengths, time_axis)
    options = (time_axis, bool(reverse), truncate_every, unroll, strategy, remat, unchecked)
    args = (cell, params, h, xs, lengths, resets, state0, *options)
    try:
        hash(cell)
    except TypeError:  # an unhashable cell cannot be a static argument: run it unjitted
        return _scan(*args)
    return _scan_jit(*args)


def _check_length_values(cell: object, xs: PyTree, lengths: Any, time_axis: int) -> bool:
    """Outside a trace, check that every length is in `[0, T]` (`ValueError` if not).

    Returns `False` when the values are not known (a tracer): only then must the result mark
    out-of-range lengths with NaN (`_poison_out_of_range`).
    """
    leaves = jax.tree.leaves(xs)
    shape = getattr(leaves[0], "shape", None) if leaves else None
    if shape is None or not -len(shape) <= time_axis < len(shape):
        return True  # _time_major raises the error about xs
    T = shape[time_axis]
    try:
        values = np.asarray(lengths)
    except jax.errors.TracerArrayConversionError:  # under a trace
        return False
    if values.size and np.issubdtype(values.dtype, np.integer):
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > T:
            bad = values[(values < 0) | (values > T)]
            raise ValueError(
                f"scan({describe(cell)}): lengths must be in [0, T] with T={T} steps on "
                f"time_axis={time_axis}, got {bad.tolist()[:5]}. A length counts the valid "
                "steps of a right-padded sequence; pad xs to the longest sequence."
            )
    return True


def _scan(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    lengths: Any,
    resets: Any,
    state0: PyTree,
    time_axis: int,
    reverse: bool,
    truncate_every: int | None,
    unroll: int | bool,
    strategy: str,
    remat: int | None,
    unchecked: bool,
) -> tuple[PyTree, PyTree]:
    xs, T = _time_major(cell, xs, time_axis)
    h = _settle_state(cell, params, h, xs)
    ctl = _controls(cell, xs, T, lengths, resets, time_axis)
    s0 = None
    if ctl is not None and ctl.reset is not None:
        s0 = _reset_state(cell, params, h, state0, xs)
    if ctl is not None and (valid := ctl.valid) is not None:  # padding never reaches a cell
        xs = jax.tree.map(lambda a: _select(valid, a, jnp.zeros_like(a)), xs)
    opts = _Opts(bool(reverse), truncate_every, unroll, strategy, remat)
    h, ys = _run(cell, params, h, xs, opts, ctl, s0)
    if unchecked:
        h, ys = _poison_out_of_range(jnp.asarray(lengths), T, h, ys)
    ys = jax.tree.map(lambda a: jnp.moveaxis(a, 0, time_axis), ys)
    return h, ys


class _Opts(NamedTuple):
    """The static options of a run (see `scan`)."""

    reverse: bool
    truncate_every: int | None
    unroll: int | bool
    strategy: str
    remat: int | None = None


class _Ctl(NamedTuple):
    """Per-step controls of a run over right-padded or episodic batches, time-major."""

    valid: jax.Array | None  # (T, *batch) bool: step t is within the sequence's length
    reset: jax.Array | None  # (T, *batch) bool: the state becomes s0 before step t (and valid)
    lengths: jax.Array | None  # (*batch,) int32, clipped to [0, T]


def _batch_of(cell: object, xs: PyTree, shape: tuple[int, ...], what: str) -> None:
    """Check that `shape` (of `lengths`, or `resets` without time) is the batch of `xs`."""
    name = describe(cell)
    leaves = jax.tree.leaves(xs)
    if getattr(cell, "in_features", None) is not None:
        batch = tuple(leaves[0].shape[1:-1])
        if shape != batch:
            raise ValueError(
                f"scan({name}): expected {what} with the batch shape of xs, {batch} (one "
                f"entry per sequence), got {shape}. xs has shape {tuple(leaves[0].shape)} "
                "(time-major); batch axes are those between time and features."
            )
        return
    for a in leaves:
        if tuple(a.shape[1 : 1 + len(shape)]) != shape:
            raise ValueError(
                f"scan({name}): {what} gives batch shape {shape}, but a leaf of xs has shape "
                f"{tuple(a.shape)} (time-major); every leaf needs those leading batch axes "
                "right after time."
            )


def _controls(
    cell: CellFn, xs: PyTree, T: int, lengths: Any, resets: Any, time_axis: int
) -> _Ctl | None:
    """Check `lengths` and `resets` and turn them into time-major step masks."""
    if lengths is None and resets is None:
        return None
    name = describe(cell)
    valid = reset = lens = None
    if lengths is not None:
        if not hasattr(lengths, "dtype"):
            lengths = jnp.asarray(lengths)
        if not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise TypeError(
                f"scan({name}): expected lengths to be an integer array (one length per "
                f"sequence), got dtype {lengths.dtype}. Convert it with "
                "lengths.astype(jnp.int32)."
            )
        lengths = jnp.asarray(lengths)
        _batch_of(cell, xs, tuple(lengths.shape), "lengths")
        lens = jnp.clip(lengths, 0, T).astype(jnp.int32)
        t = jnp.arange(T, dtype=jnp.int32).reshape(T, *(1,) * lens.ndim)
        valid = t < lens[None]
    if resets is not None:
        if not hasattr(resets, "dtype"):
            resets = jnp.asarray(resets)
        if resets.dtype != jnp.bool_:
            raise TypeError(
                f"scan({name}): expected resets to be a boolean array (True where an episode "
                f"starts), got dtype {resets.dtype}. Convert it with resets.astype(bool) or "
                "resets == 1."
            )
        resets = jnp.asarray(resets)
        if not -resets.ndim <= time_axis < resets.ndim:
            raise ValueError(
                f"scan({name}): resets of shape {tuple(resets.shape)} has no time_axis="
                f"{time_axis}; expected one flag per step and sequence, shaped like xs "
                "without its feature axis."
            )
        reset = jnp.moveaxis(resets, time_axis, 0)
        if reset.shape[0] != T:
            raise ValueError(
                f"scan({name}): resets has {reset.shape[0]} steps on time_axis={time_axis} "
                f"but xs has {T}; expected one flag per step and sequence."
            )
        _batch_of(cell, xs, tuple(reset.shape[1:]), "resets (without its time axis)")
        if lens is not None and reset.shape[1:] != lens.shape:
            raise ValueError(
                f"scan({name}): lengths has shape {tuple(lens.shape)} but resets has batch "
                f"shape {tuple(reset.shape[1:])}; both have one entry per sequence."
            )
        if valid is not None:
            reset = reset & valid  # past its length a sequence is frozen: no reset there
    return _Ctl(valid, reset, lens)


def _reset_state(cell: CellFn, params: PyTree, h: PyTree, state0: PyTree, xs: PyTree) -> PyTree:
    """The state that `resets` return to, settled to the carry's shapes and dtypes."""
    name = describe(cell)
    if state0 is None:
        if not hasattr(cell, "initial_state"):
            raise TypeError(
                f"scan({name}): resets= needs the state to reset to: a function cell has no "
                "initial_state(), so pass state0= (e.g. the initial state h)."
            )
        state0 = cell.initial_state(params)  # type: ignore[attr-defined]
    s0 = _settle_state(cell, params, state0, xs)
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), s0)
    if jax.tree.structure(s0) != jax.tree.structure(h) or shapes != jax.tree.map(
        lambda a: (a.shape, a.dtype), h
    ):
        raise ValueError(
            f"scan({name}): state0 (what resets return to) must have the form of the state, "
            f"{jax.tree.map(jnp.shape, h)}, got {jax.tree.map(jnp.shape, state0)}."
        )
    return s0


def _select(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """`where(mask, a, b)` for `mask: (*batch)` and leaves `(*batch, ...)`, batch leading."""
    if tuple(a.shape[: mask.ndim]) != tuple(mask.shape):
        raise ValueError(
            f"scan: lengths/resets select per sequence, so every state and output leaf needs "
            f"the batch shape {tuple(mask.shape)} as leading axes; got a leaf of shape "
            f"{tuple(a.shape)}. Give the cell's state and output one row per sequence."
        )
    m = mask.reshape(*mask.shape, *(1,) * (a.ndim - mask.ndim))
    return jnp.where(m, a, b)


def _poison_out_of_range(
    lengths: jax.Array, T: int, h: PyTree, ys: PyTree
) -> tuple[PyTree, PyTree]:
    """NaN in the state and outputs of a sequence whose length is not in [0, T].

    Outside `jit` such lengths raise `ValueError` in `scan`; under a trace their values are
    unknown, so the result says it loudly instead of silently clipping them.
    """
    bad = (lengths < 0) | (lengths > T)

    def poison(a: jax.Array, time: bool) -> jax.Array:
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            return a
        m = jnp.broadcast_to(bad, (a.shape[0], *bad.shape)) if time else bad
        return _select(m, jnp.full_like(a, jnp.nan), a)

    return (
        jax.tree.map(lambda a: poison(a, False), h),
        jax.tree.map(lambda a: poison(a, True), ys),
    )


def _steps_of(tree: PyTree, ctl: _Ctl | None) -> Any:
    """The per-step data of a run: `(xs, valid, reset)` (masks `None` where absent)."""
    if ctl is None:
        return (tree, None, None)
    return (tree, ctl.valid, ctl.reset)


def _run(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    opts: _Opts,
    ctl: _Ctl | None = None,
    s0: PyTree = None,
) -> tuple[PyTree, PyTree]:
    """Time-major `xs`, settled `h` (and `s0`): pick the strategy and run it."""
    from ._chain import Bidirectional, Chain, Dense, Residual

    T = jax.tree.leaves(xs)[0].shape[0]
    if opts.reverse and ctl is not None and ctl.lengths is not None:
        # Padding stays at the end: reverse each sequence within its own length, run forward,
        # and put the outputs back (the permutation is its own inverse).
        order = _reversed_within(ctl.lengths, T)
        flip = functools.partial(_take_steps, order)
        ctl = ctl._replace(reset=None if ctl.reset is None else flip(ctl.reset), lengths=None)
        forward = opts._replace(reverse=False)
        h, ys = _run(cell, params, h, jax.tree.map(flip, xs), forward, ctl, s0)
        return h, jax.tree.map(flip, ys)
    if opts.remat is not None and opts.remat < T:
        return _remat_blocks(cell, params, h, xs, opts, ctl, s0)
    kind = type(cell)
    fast = opts.strategy != "sequential" and opts.unroll == 1
    if kind in (Chain, Bidirectional, Residual) or (kind is Dense and fast):
        if kind is Chain:
            h, ys = _run_chain(cast("Any", cell), params, h, xs, opts, ctl, s0)
        elif kind is Bidirectional:
            bi = cast("Any", cell)
            back = opts._replace(reverse=not opts.reverse)
            sf, yf = _run(bi.forward, params[0], h[0], xs, opts, ctl, _part(s0, 0))
            sb, yb = _run(bi.backward, params[1], h[1], xs, back, ctl, _part(s0, 1))
            h, ys = (sf, sb), bi.merged(yf, yb)
        elif kind is Residual:
            res = cast("Any", cell)
            h, ys = _run(res.cell, params, h, xs, opts, ctl, s0)
            ys = res.add(xs, ys)
        else:  # a Dense layer is stateless and time-parallel: one matmul over all steps
            h, ys = cell(params, h, xs)
        if ctl is not None and ctl.valid is not None:
            valid = ctl.valid
            ys = jax.tree.map(lambda a: _select(valid, a, jnp.zeros_like(a)), ys)
        return h, ys
    if _is_linear(cell) and opts.unroll == 1 and _associative_pays(opts.strategy, T):
        chunk = CHUNK if opts.strategy in ("chunked", "auto") else None
        return _associative(cast("Any", cell), params, h, xs, opts, ctl, s0, chunk)
    if fast:
        kernel = kernel_for(cell)
        n = math.prod(xs.shape[1:-1]) if kernel is not None else 0
        if kernel is not None and (opts.strategy == "fused" or _fused_pays(kernel, n)):
            dtype = jax.tree.leaves(h)[0].dtype
            # Without differentiation, a batch of a few sequences runs faster through the
            # cell itself (measured); the kernel's forward loop is used under `grad`.
            small = opts.strategy == "auto" and n <= SMALL_BATCH and ctl is None
            primal = cell if small else None
            return _fused(kernel, primal, params, h, xs.astype(dtype), opts, ctl, s0)
    return _sequential(cell, params, h, xs, opts, ctl, s0)


def _part(tree: PyTree, i: int) -> PyTree:
    return None if tree is None else tree[i]


def _reversed_within(lengths: jax.Array, T: int) -> jax.Array:
    """`order[t, b] = L_b - 1 - t` for `t < L_b`, else `t`: each sequence reversed in place."""
    t = jnp.arange(T, dtype=jnp.int32).reshape(T, *(1,) * lengths.ndim)
    return jnp.where(t < lengths[None], lengths[None] - 1 - t, t)


def _take_steps(order: jax.Array, a: jax.Array) -> jax.Array:
    """`a[order[t, b], b, ...]` for time-major `a: (T, *batch, ...)`."""
    idx = order.reshape(*order.shape, *(1,) * (a.ndim - order.ndim))
    return jnp.take_along_axis(a, jnp.broadcast_to(idx, (*order.shape, *a.shape[order.ndim :])), 0)


def _remat_blocks(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    opts: _Opts,
    ctl: _Ctl | None,
    s0: PyTree,
) -> tuple[PyTree, PyTree]:
    """Checkpoint every `remat` steps: the backward pass keeps only the state at each block
    start and recomputes a block's forward pass when it reaches it (`jax.checkpoint`).

    `truncate_every` divides `remat` (checked in `scan`), so a cut falls on a block start
    exactly when that block's first step is a multiple of it; inside a block the strategy
    cuts as usual.
    """
    k = opts.truncate_every
    inner = opts._replace(reverse=False, remat=None)

    def run(h: PyTree, data: Any, start: jax.Array) -> tuple[PyTree, PyTree]:
        xb, valid, reset = data
        if k is not None:
            h = _cut_at(h, start, k)
        block_ctl = None if ctl is None else _Ctl(valid, reset, None)
        return _run(cell, params, h, xb, inner, block_ctl, s0)

    assert opts.remat is not None
    return _in_blocks(run, h, _steps_of(xs, ctl), opts.remat, opts.reverse, checkpoint=True)


def _in_blocks(
    run: Any, h: PyTree, xs: PyTree, size: int, reverse: bool, checkpoint: bool = False
) -> tuple[PyTree, PyTree]:
    """Walk time-major `xs` in processing order in blocks of `size` steps, then a shorter
    tail: `run(h, xb, start) -> (h, ys)` for each, `start` being the block's first step in
    processing order. Outputs come back in input order. With `checkpoint`, every full block
    is rematerialised in the backward pass (`jax.checkpoint`).
    """
    T = jax.tree.leaves(xs)[0].shape[0]
    if reverse:
        xs = jax.tree.map(lambda a: jnp.flip(a, 0), xs)
    m, r = divmod(T, size)

    def block(h: PyTree, inp: tuple[PyTree, jax.Array]) -> tuple[PyTree, PyTree]:
        xb, start = inp
        return run(h, xb, start)

    blocks = jax.tree.map(lambda a: a[: m * size].reshape(m, size, *a.shape[1:]), xs)
    body = jax.checkpoint(block) if checkpoint else block
    h, ys = lax.scan(body, h, (blocks, jnp.arange(m) * size))
    ys = jax.tree.map(lambda a: a.reshape(m * size, *a.shape[2:]), ys)
    if r:
        tail = jax.tree.map(lambda a: a[m * size :], xs)
        h, ys_tail = run(h, tail, jnp.asarray(m * size))
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys, ys_tail)
    if reverse:
        ys = jax.tree.map(lambda a: jnp.flip(a, 0), ys)
    return h, ys


def _cut_at(h: PyTree, start: jax.Array, k: int) -> PyTree:
    """Detach `h` when it enters step `start` (processing order) and `start` is a positive
    multiple of `k`; a select, so the values stay equal."""
    cut = (start > 0) & (start % k == 0)
    return jax.tree.map(lambda a: jnp.where(cut, lax.stop_gradient(a), a), h)


def _run_chain(
    chain: Any,
    params: tuple[PyTree, ...],
    h: tuple[PyTree, ...],
    xs: PyTree,
    opts: _Opts,
    ctl: _Ctl | None,
    s0: PyTree,
) -> tuple[PyTree, PyTree]:
    """A chain part by part: each part runs over the whole sequence, then feeds the next.

    Equal to running the chain step by step, because a part's step depends only on its own
    state and the previous part's output at the same step (with `lengths`, every part
    freezes past a sequence's length, so padded steps give zeros at every level).
    """
    states = []
    for i, (part, p, s) in enumerate(zip(chain.cells, params, h, strict=True)):
        s, xs = _run(part, p, s, xs, opts, ctl, _part(s0, i))
        states.append(s)
    return tuple(states), xs


def _leaf_cells(cell: Any) -> list[Any]:
    """The cells a composite (chain, `bidirectional`, `residual`) runs, recursively; a
    cell that is none of these is its own only leaf."""
    from ._chain import Bidirectional, Chain, Residual

    kind = type(cell)
    parts = (
        cell.cells
        if kind is Chain
        else (cell.forward, cell.backward)
        if kind is Bidirectional
        else (cell.cell,)
        if kind is Residual
        else None
    )
    if parts is None:
        return [cell]
    return [leaf for part in parts for leaf in _leaf_cells(part)]


def _has_linear(cell: object) -> bool:
    return any(_is_linear(c) for c in _leaf_cells(cell))


def _has_kernel(cell: object) -> bool:
    return any(kernel_for(c) is not None for c in _leaf_cells(cell))


def _sequential(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    opts: _Opts,
    ctl: _Ctl | None = None,
    s0: PyTree = None,
) -> tuple[PyTree, PyTree]:
    """`lax.scan` of the cell itself (with truncation blocks and masks): the reference."""
    T = jax.tree.leaves(xs)[0].shape[0]

    def step(h: PyTree, data: Any) -> tuple[PyTree, PyTree]:
        x, valid, reset = data
        if reset is not None:
            h = jax.tree.map(functools.partial(_select, reset), s0, h)
        new, y = cell(params, h, x)
        if valid is not None:
            new = jax.tree.map(functools.partial(_select, valid), new, h)
            y = jax.tree.map(lambda a: _select(valid, a, jnp.zeros_like(a)), y)
        return new, y

    data = _steps_of(xs, ctl)
    k, unroll = opts.truncate_every, opts.unroll
    if k is None or k >= T:
        return lax.scan(step, h, data, reverse=opts.reverse, unroll=unroll)

    def run(h: PyTree, xb: PyTree, start: jax.Array) -> tuple[PyTree, PyTree]:
        return lax.scan(step, _cut_at(h, start, k), xb, unroll=unroll)

    return _in_blocks(run, h, data, k, opts.reverse)


# Jitted with the cell and the options static, so that eager calls with the same cell and
# shapes reuse one compiled program (inside a user's jit this simply inlines).
_scan_jit = jax.jit(_scan, static_argnums=(0, 7, 8, 9, 10, 11, 12, 13))


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


# --- the associative strategy for linear cells ------------------------------------------------

# Blocks of the chunked strategy (associative inside a block, sequential across blocks).
CHUNK = 256
# Backends on which `strategy="auto"` runs a `LinearCell` with the chunked associative scan.
# Set from benchmarks/RESULTS_linear.md (B=4, in=64, H=128): on XLA:CPU (2 cores) the
# forward pass was 2-4x slower associatively from T=1024 on, and f+b mixed (chunked faster
# at T=256, e.g. minGRU 4.6 vs 7.4 ms, and for the LRU up to T=4096, 239 vs 301 ms; slower
# for minGRU at T=1024 and 4096, 47.5 vs 36.1 and 249 vs 187 ms), so CPU is not in the set:
# the default is never slower than the sequential scan. GPU and TPU have not been measured;
# until they are, the default stays sequential there too (run the benchmark to add them).
ASSOCIATIVE_BACKENDS: frozenset[str] = frozenset()


def _associative_pays(strategy: str, T: int) -> bool:
    """Whether this strategy evaluates a linear cell with the associative scan."""
    if strategy in ("associative", "chunked"):
        return True
    return strategy == "auto" and jax.default_backend() in ASSOCIATIVE_BACKENDS


def _is_linear(cell: object) -> bool:
    """A `LinearCell` whose step is the inherited one (so `coefficients` describe it)."""
    from ._linear import LinearCell

    return isinstance(cell, LinearCell) and type(cell).__call__ is LinearCell.__call__


def _combine(
    earlier: tuple[jax.Array, jax.Array], later: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Compose two affine maps `h -> a h + b`, the earlier one applied first."""
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def _linear_block(h: jax.Array, ab: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """All states of a block from its entering state `h`: `(h_last, hs)`."""
    hs = _linear_scan(h, *ab)
    return hs[-1], hs


def _affine_prefix(h: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """`hs[t] = a[t] hs[t-1] + b[t]` from `hs[-1] = h`, by `lax.associative_scan`."""
    A, B = lax.associative_scan(_combine, (a, b), axis=0)
    return A * h[None] + B


@jax.custom_vjp
def _linear_scan(h: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """Every state of `h_t = a_t h_{t-1} + b_t`, time on axis 0.

    Its VJP is the same kind of recurrence run backwards, so the backward pass is one more
    associative scan instead of the transpose of the forward one (which XLA took several
    times longer to compile, and ran slower): with `g_t` the cotangent of `h_t` from
    outside, `l_t = g_t + a_{t+1} l_{t+1}`, then `db_t = l_t`, `da_t = l_t h_{t-1}` and
    `dh = a_0 l_0`.
    """
    return _affine_prefix(h, a, b)


def _linear_scan_fwd(h: jax.Array, a: jax.Array, b: jax.Array) -> tuple[jax.Array, Any]:
    hs = _affine_prefix(h, a, b)
    return hs, (h, a, hs)


def _linear_scan_bwd(saved: Any, g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    h, a, hs = saved
    later = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])  # a_{t+1}, none after the end
    lam = jnp.flip(_affine_prefix(jnp.zeros_like(h), jnp.flip(later, 0), jnp.flip(g, 0)), 0)
    before = jnp.concatenate([h[None], hs[:-1]])
    return a[0] * lam[0], lam * before, lam


_linear_scan.defvjp(_linear_scan_fwd, _linear_scan_bwd)


def _coefficients(
    cell: Any, params: PyTree, xs: jax.Array, valid: Any, reset: Any, s0: Any
) -> tuple[jax.Array, jax.Array]:
    """Every step's `(a_t, b_t)`, with a reset turned into `(0, a_t s0 + b_t)` (the state
    entering the step is `s0`) and a padded step into the identity `(1, 0)`."""
    a, b = cell.coefficients(params, xs)
    a = jnp.broadcast_to(a, b.shape).astype(b.dtype)
    if reset is not None:
        b = _select(reset, a * jnp.broadcast_to(s0, b.shape) + b, b)
        a = _select(reset, jnp.zeros_like(a), a)
    if valid is not None:
        a = _select(valid, a, jnp.ones_like(a))
        b = _select(valid, b, jnp.zeros_like(b))
    return a, b


def _associative(
    cell: Any,
    params: PyTree,
    h: jax.Array,
    xs: jax.Array,
    opts: _Opts,
    ctl: _Ctl | None = None,
    s0: PyTree = None,
    chunk: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """A `LinearCell` over a whole sequence with `lax.associative_scan`.

    The coefficients `(a_t, b_t)` of every step are computed at once; a reset becomes
    `(0, a_t s0 + b_t)` and a padded step the identity `(1, 0)`, so the composed maps give
    every state, `h_t = A_t h_0 + B_t`. With `chunk`, blocks of that many steps are scanned
    associatively and carried sequentially from one to the next (`O(T log chunk)` work
    instead of `O(T log T)`); truncation cuts the carry at block starts of
    `truncate_every` steps.
    """
    T = xs.shape[0]
    if T == 0:
        return _sequential(cell, params, h, xs, opts, ctl, s0)
    valid, reset = (None, None) if ctl is None else (ctl.valid, ctl.reset)
    a, b = _coefficients(cell, params, xs, valid, reset, s0)
    if opts.reverse:
        a, b = jnp.flip(a, 0), jnp.flip(b, 0)
    k = opts.truncate_every
    size = k if k is not None and k < T else chunk
    if size is None or size >= T:
        h, hs = _linear_block(h, (a, b))
    else:

        def run(h: jax.Array, ab: Any, start: jax.Array) -> tuple[jax.Array, jax.Array]:
            if k is not None:
                h = _cut_at(h, start, k)
            return _linear_block(h, ab)

        h, hs = _in_blocks(run, h, (a, b), size, reverse=False)
    if opts.reverse:
        hs = jnp.flip(hs, 0)
    ys = cell.readout(params, hs, xs)
    if ctl is not None and ctl.valid is not None:
        ys = _select(ctl.valid, ys, jnp.zeros_like(ys))
    return h, ys


# --- the fused strategy ----------------------------------------------------------------------


# The automatic choice, from benchmarks/RESULTS.md on a 2-core x86 CPU (XLA:CPU); other
# backends have not been measured and use the same rules. The fused GRU lost to the
# sequential one at B=128, H=512 (f+b 762 vs 701 ms; the LSTM tied there), and without
# differentiation the fused loop lost at B=1 (GRU fwd 6.4 vs 5.0 ms, LSTM 10.0 vs 9.1 ms).
SMALL_BATCH = 4
LARGE_GRU_BATCH = 128


def _fused_pays(kernel: Kernel, n: int) -> bool:
    """Whether `strategy="auto"` runs this kernel for a flattened batch of `n` sequences."""
    return not (isinstance(kernel, GRUKernel) and n >= LARGE_GRU_BATCH)


def _fused(
    kernel: Kernel,
    primal: CellFn | None,
    params: PyTree,
    h: PyTree,
    xs: jax.Array,
    opts: _Opts,
    ctl: _Ctl | None = None,
    s0: PyTree = None,
) -> tuple[PyTree, jax.Array]:
    """`lax.scan` of a library cell through its fused kernel.

    `xs: (T, *batch, in)` time-major and `h` settled to `(*batch, H)` leaves. The batch is
    flattened to `N`; the state runs feature-major (`(H, N)`) inside the loop.
    """
    T, batch, n_in = xs.shape[0], tuple(xs.shape[1:-1]), xs.shape[-1]
    N = math.prod(batch)

    def feature_major(tree: PyTree) -> PyTree:
        return jax.tree.map(lambda a: a.reshape(N, a.shape[-1]).T, tree)

    flags = None
    if ctl is not None:
        flags = tuple(None if m is None else m.reshape(T, N) for m in (ctl.valid, ctl.reset))
    out = _fused_core(
        kernel,
        primal,
        opts.reverse,
        opts.truncate_every,
        params,
        feature_major(h),
        xs.reshape(T, N, n_in),
        flags,
        None if s0 is None else feature_major(s0),
    )
    h_fm, ys = cast("tuple[PyTree, jax.Array]", out)
    h = jax.tree.map(lambda a: a.T.reshape(*batch, a.shape[0]), h_fm)
    return h, ys.reshape(T, *batch, ys.shape[-1])


def _cols(mask: jax.Array, a: PyTree, b: PyTree) -> PyTree:
    """`where` by column for feature-major leaves `(H, N)` and `mask: (N,)`."""
    return jax.tree.map(lambda u, v: jnp.where(mask[None, :], u, v), a, b)


def _zeros(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.zeros_like, tree)


def _fused_loop(
    kernel: Kernel,
    reverse: bool,
    params: PyTree,
    h: PyTree,
    xs: jax.Array,
    flags: Any,
    s0: PyTree,
    keep_res: bool,
) -> tuple[PyTree, jax.Array, PyTree]:
    """The forward loop: `xs: (T, N, in)`, `h` feature-major; `ys: (T, N, H)` and, with
    `keep_res`, the stacked residuals of the backward pass. `flags` is `None` or the step
    masks `(valid, reset)`, each `(T, N)` or `None`."""
    kp = kernel.prepare(params)
    valid, reset = flags if flags is not None else (None, None)

    def step(h: PyTree, data: Any) -> tuple[PyTree, Any]:
        x, v, r = data
        if r is not None:
            h = _cols(r, s0, h)
        new, y, res = kernel.step(kp, h, x)  # type: ignore[arg-type]
        if v is not None:
            new = _cols(v, new, h)
            y = jnp.where(v[:, None], y, jnp.zeros_like(y))
        return new, ((y, res) if keep_res else y)

    xs_fm = jnp.transpose(xs, (0, 2, 1))
    h, out = lax.scan(step, h, (xs_fm, valid, reset), reverse=reverse)
    return (h, *out) if keep_res else (h, out, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _fused_core(
    kernel: Kernel,
    primal: CellFn | None,
    reverse: bool,
    truncate_every: int | None,
    params: PyTree,
    h: PyTree,
    xs: jax.Array,
    flags: Any,
    s0: PyTree,
) -> tuple[PyTree, jax.Array]:
    if primal is not None:  # the cell itself, batch-major, when nothing differentiates
        h = jax.tree.map(lambda a: a.T, h)
        h, ys = lax.scan(lambda h, x: primal(params, h, x), h, xs, reverse=reverse)
        return jax.tree.map(lambda a: a.T, h), ys
    h, ys, _ = _fused_loop(kernel, reverse, params, h, xs, flags, s0, keep_res=False)
    return h, ys


def _fused_core_fwd(
    kernel: Kernel,
    primal: CellFn | None,
    reverse: bool,
    truncate_every: int | None,
    params: PyTree,
    h: PyTree,
    xs: jax.Array,
    flags: Any,
    s0: PyTree,
) -> tuple[tuple[PyTree, jax.Array], tuple[Any, ...]]:
    h_out, ys, res = _fused_loop(kernel, reverse, params, h, xs, flags, s0, keep_res=True)
    return (h_out, ys), (params, xs, res, flags, s0)


def _fused_core_bwd(
    kernel: Kernel,
    primal: CellFn | None,
    reverse: bool,
    truncate_every: int | None,
    saved: tuple[Any, ...],
    cts: tuple[PyTree, jax.Array],
) -> tuple[PyTree, PyTree, jax.Array, None, PyTree]:
    params, xs, res, flags, s0 = saved
    valid, reset = flags if flags is not None else (None, None)
    dh, dys = cts
    T = xs.shape[0]
    # keep[t] = 0 where the state entering step t was cut (`truncate_every`): the gradient
    # stops there, as `stop_gradient` on the carry does in the sequential strategy.
    order = jnp.arange(T)
    n = T - 1 - order if reverse else order
    k = truncate_every
    keep = None if k is None else (n == 0) | (n % k != 0)

    def step(carry: Any, data: Any) -> tuple[Any, PyTree]:
        dh, ds0 = carry
        res_t, dy, keep_t, v, r = data
        if v is not None:  # a padded step passed the state through and output zeros
            dy = jnp.where(v[:, None], dy, jnp.zeros_like(dy))
            passed = _cols(v, _zeros(dh), dh)
            dh = _cols(v, dh, _zeros(dh))
        dh_in, dg = kernel.step_bwd(params, res_t, dh, dy)  # type: ignore[arg-type]
        if v is not None:
            dh_in = jax.tree.map(jnp.add, dh_in, passed)
        if r is not None:  # the state entering a reset step was replaced by s0
            ds0 = jax.tree.map(jnp.add, ds0, _cols(r, dh_in, _zeros(dh_in)))
            dh_in = _cols(r, _zeros(dh_in), dh_in)
        if keep_t is not None:
            dh_in = jax.tree.map(lambda a: jnp.where(keep_t, a, jnp.zeros_like(a)), dh_in)
        return (dh_in, ds0), dg

    ds0 = None if s0 is None else _zeros(s0)
    data = (res, dys, keep, valid, reset)
    (dh0, ds0), dg = _scan_prefetched(step, (dh, ds0), data, reverse=not reverse)
    dparams, dxs = kernel.grads(params, xs, res, dg)  # type: ignore[arg-type]
    return dparams, dh0, dxs, None, ds0


_fused_core.defvjp(_fused_core_fwd, _fused_core_bwd)


def _scan_prefetched(
    f: Any, carry: PyTree, xs: PyTree, reverse: bool = False
) -> tuple[PyTree, PyTree]:
    """`lax.scan(f, carry, xs, reverse=reverse)`, with each step's slice of `xs` read one step
    ahead into the carry.

    On XLA:CPU a slice of a stacked input read inside the loop is fused into the step's
    elementwise kernels, which then ran several times slower (profiled: the LSTM backward's
    gate kernel 86 us instead of about 25 us per step at B=32, H=256). Loaded one step ahead,
    the slice is a plain copy and the step reads a contiguous buffer.
    """
    T = jax.tree.leaves(xs)[0].shape[0]
    if T == 0:
        return lax.scan(f, carry, xs, reverse=reverse)
    first = T - 1 if reverse else 0

    def at(t: jax.Array) -> PyTree:
        return jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, t, keepdims=False), xs)

    def step(c: tuple[PyTree, PyTree], t: jax.Array) -> tuple[tuple[PyTree, PyTree], PyTree]:
        carry, x = c
        nxt = at(jnp.clip(t - 1 if reverse else t + 1, 0, T - 1))
        carry, y = f(carry, x)
        return (carry, nxt), y

    (carry, _), ys = lax.scan(
        step, (carry, at(jnp.asarray(first))), jnp.arange(T), reverse=reverse
    )
    return carry, ys


# --- sequence parallelism ----------------------------------------------------------------------


def sequence_parallel_scan(
    cell: Any,
    params: PyTree,
    h: jax.Array,
    xs: jax.Array,
    *,
    mesh: Any,
    axis: str,
    lengths: Any = None,
    resets: Any = None,
    state0: PyTree = None,
) -> tuple[jax.Array, jax.Array]:
    """Run a linear cell over one long sequence whose time axis is split over devices.

    `xs` (time-major, `(T, ..., in)`) is sharded on its time axis over the mesh axis `axis`
    (`jax.shard_map`): each of the `D` devices holds `T / D` consecutive steps. Each device
    runs its block from a zero state with the associative scan, keeping the block's
    composed map `h -> A h + B`; the `D` maps (one `(batch, H)` pair per device) are
    gathered, each device folds the maps of the devices before it into its entering state,
    and corrects its block's states with it. Only the small maps cross devices, once. The
    result equals `scan(cell, params, h, xs, lengths=..., resets=...)` on one device (to
    float rounding: tested on 8 host CPU devices), and it differentiates like it.

    Args:
      cell: a `LinearCell` (`MinGRUCell`, `MinLSTMCell`, `LRUCell`, a subclass).
      params: its params (replicated).
      h: the initial state, unbatched or with the batch shape of `xs` (replicated).
      xs: `(T, ..., in)` with `T` a multiple of the size of `axis`.
      mesh: a `jax.sharding.Mesh`.
      axis: the mesh axis name that time is split over.
      lengths, resets, state0: as in `scan` (`resets` time-major, split like `xs`), except
        that under `jit` out-of-range lengths are clipped to `[0, T]` rather than marked
        with NaN (outside `jit` they raise `ValueError`, as in `scan`).

    Returns:
      `(h, ys)`: the final state (replicated) and `ys: (T, ..., out)`, sharded on time.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np, recurjax as rj
      >>> from jax.sharding import Mesh
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("time",))
      >>> cell = rj.MinGRUCell(3, 4)
      >>> params = cell.init(jax.random.key(0))
      >>> xs = jnp.ones((8, 2, 3))
      >>> h, ys = rj.sequence_parallel_scan(
      ...     cell, params, cell.initial_state(params), xs, mesh=mesh, axis="time")
      >>> h_ref, ys_ref = rj.scan(cell, params, cell.initial_state(params), xs)
      >>> bool(jnp.allclose(ys, ys_ref, atol=1e-6))
      True
    """
    from jax.sharding import PartitionSpec as P

    name = describe(cell)
    if not _is_linear(cell):
        raise TypeError(
            f"sequence_parallel_scan({name}): needs a LinearCell (MinGRUCell, MinLSTMCell, "
            "LRUCell or a subclass), whose steps compose as maps h -> a h + b; other cells "
            "carry a non-linear state and cannot be split in time. Use rj.scan."
        )
    if axis not in mesh.shape:
        raise ValueError(
            f"sequence_parallel_scan({name}): mesh has axes {tuple(mesh.shape)}, not "
            f"{axis!r}. Pass axis= one of them."
        )
    D = mesh.shape[axis]
    xs, T = _time_major(cell, xs, 0)
    if T % D:
        raise ValueError(
            f"sequence_parallel_scan({name}): T={T} steps do not split evenly over {D} "
            f"devices on axis {axis!r}. Pad xs to a multiple of {D} (with lengths= to mark "
            "the padding)."
        )
    h = _settle_state(cell, params, h, xs)
    ctl = _controls(cell, xs, T, lengths, resets, 0)
    s0 = (
        _reset_state(cell, params, h, state0, xs)
        if ctl is not None and ctl.reset is not None
        else None
    )
    if lengths is not None:
        _check_length_values(cell, xs, lengths, 0)
    valid = None if ctl is None else ctl.valid
    reset = None if ctl is None else ctl.reset

    def local(params: PyTree, h: jax.Array, s0: Any, xs: jax.Array, valid: Any, reset: Any) -> Any:
        if valid is not None:  # padding never reaches the cell
            xs = _select(valid, xs, jnp.zeros_like(xs))
        a, b = _coefficients(cell, params, xs, valid, reset, s0)
        zeros = jnp.zeros_like(h)
        from_zero = _linear_scan(zeros, a, b)  # the block's states from a zero state: B_t
        gains = _linear_scan(jnp.ones_like(h), a, jnp.zeros_like(b))  # prod of a: A_t
        maps = lax.all_gather((gains[-1], from_zero[-1]), axis)  # (D, ...) each
        me = lax.axis_index(axis)

        # Fold the maps in device order; keep the state entering this device and the last.
        def step(carry: jax.Array, m: Any) -> tuple[jax.Array, jax.Array]:
            A, B, d = m
            new = A * carry + B
            entering = jnp.where(d == me, carry, jnp.zeros_like(carry))
            return new, entering

        final, entering = lax.scan(step, h, (*maps, jnp.arange(D)))
        h_in = entering.sum(0)
        hs = from_zero + gains * h_in[None]
        ys = cell.readout(params, hs, xs)
        if valid is not None:
            ys = _select(valid, ys, jnp.zeros_like(ys))
        return final, ys

    spec_t = P(axis)
    fn = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(), P(), spec_t, spec_t, spec_t),
        out_specs=(P(), spec_t),
        check_vma=False,
    )
    return fn(params, h, s0, xs, valid, reset)
