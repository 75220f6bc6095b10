"""The inputs of a scan, prepared once for `scan` and `sequence_parallel_scan` alike:
time-major inputs, the per-step controls of `lengths` and `resets`, the settled state and
reset state, and the range check of lengths (NaN under a trace)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from .._checks import check_state_change, check_time_axis, describe, time_length
from .._contracts import CellFn, PyTree, SequenceCell, input_axes
from .blocks import StepMasks, select, zero_padding


class Prepared(NamedTuple):
    """A scan's inputs, ready for the run pipeline (everything time-major)."""

    xs: PyTree  # (T, ..., in), padded steps zeroed
    steps: int  # T
    h: PyTree  # the initial state, settled to the carry's batch shape and dtype
    masks: StepMasks | None  # step masks and the reset state, or None without lengths and resets


def prepare(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    lengths: Any,
    resets: Any,
    state0: PyTree,
    time_axis: int,
) -> Prepared:
    """Check and convert the inputs of a scan (see `scan` for each argument)."""
    xs, T = time_major(cell, xs, time_axis)
    h = settle_state(cell, params, h, xs)
    masks = step_masks(cell, xs, T, lengths, resets, time_axis)
    if masks is not None and masks.reset is not None:
        masks = masks._replace(state0=reset_state(cell, params, h, state0, xs))
    if masks is not None:  # padding never reaches a cell
        xs = zero_padding(masks.valid, xs)
    return Prepared(xs, T, h, masks)


def time_major(cell: object, xs: PyTree, time_axis: int) -> tuple[PyTree, int]:
    """Move the time axis of every leaf of `xs` to the front; return `(xs, T)`."""
    T = time_steps(cell, xs, time_axis)
    moved = jax.tree.map(lambda a: jnp.moveaxis(jnp.asarray(a), time_axis, 0), xs)
    return moved, T


def time_steps(cell: object, xs: PyTree, time_axis: int) -> int:
    """`T`, the number of steps of `xs` on `time_axis`, with every check of the inputs' form
    (an array, or a pytree of arrays for a cell without `in_features`, with a time axis)."""
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
    for a in leaves:
        min_ndim = 2 if in_features is not None else 1
        if len(a.shape) < min_ndim:
            raise ValueError(
                f"scan({name}): xs has no time axis: expected shape (T, ..., "
                f"{in_features if in_features is not None else 'in'}), got shape "
                f"{tuple(a.shape)}. For a single step call the cell (or Recur) directly; for "
                "a one-step sequence use xs[None]."
            )
    return time_length(leaves, time_axis, f"scan({name})", hint="")


def forward_mode(tree: PyTree) -> bool:
    """Whether a leaf of `tree` is being differentiated in forward mode (`jax.jvp`,
    `jax.jacfwd`, the outer half of `jax.hessian`): a JVP tracer, found by looking through
    the tracers of the transformations applied inside it (`vmap`, reverse mode).

    A function jitted *outside* the `jvp` (`jax.jvp(jax.jit(f), ...)`) is traced before
    the tangents exist, so this cannot see them; there `strategy="sequential"` is needed.
    """
    return _traced_by(tree, "JVPTracer")


def vmapped(tree: PyTree) -> bool:
    """Whether a leaf of `tree` is being mapped by `jax.vmap` (a batch tracer, found the same
    way as `forward_mode`'s; a function jitted inside the `vmap` is out of its sight too)."""
    return _traced_by(tree, "BatchTracer")


def _traced_by(tree: PyTree, tracer: str) -> bool:
    """Whether a leaf of `tree` is a tracer of the class named `tracer`, or holds one under
    the tracers of the transformations applied inside it."""
    for leaf in jax.tree.leaves(tree):
        while isinstance(leaf, Tracer):
            if type(leaf).__name__ == tracer:
                return True
            leaf = getattr(leaf, "primal", getattr(leaf, "val", None))
    return False


def stack_steps(cell: object, steps: list[Any] | tuple[Any, ...]) -> PyTree:
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


def settle_state(cell: CellFn, params: PyTree, h: PyTree, xs: PyTree) -> PyTree:
    """Give `h` the shapes and dtypes that one step of `cell` returns (the scan carry).

    A library cell broadcasts an unbatched state to the batch of `x` and casts it to the
    params' dtype; the carry of `lax.scan` must have that form from the first step on. The
    step is traced once, abstractly (`jax.eval_shape`), so errors surface here, at trace time.
    The only shape change allowed is adding leading batch axes (`(H,)` to `(B, H)`); any other
    (say `(1, H)` to `(5, H)`, a function cell broadcasting a stale batch) is an error.
    A `SequenceCell` (a chain, `bidirectional`, `residual`) is settled through its own
    `run_sequence`, each part being stepped once, so that a part which only runs over whole
    sequences (`bidirectional`) is never stepped.
    """
    h = jax.tree.map(jnp.asarray, h)
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), xs)
    # Through a lambda: eval_shape keeps a weak reference to the function it traces, which
    # some callables (e.g. instances of classes with __slots__) do not allow.
    new_h = jax.eval_shape(lambda p, s, x: _one_step_each(cell, p, s, x), params, h, shapes)[0]

    def settle(old: jax.Array, new: Any) -> jax.Array:
        if old.shape != new.shape:
            old = jnp.broadcast_to(old, new.shape)
        return old if old.dtype == new.dtype else old.astype(new.dtype)  # keys: no astype

    return jax.tree.map(settle, h, new_h)


def _one_step_each(cell: Any, params: PyTree, h: PyTree, xs: PyTree) -> tuple[PyTree, PyTree]:
    """Trace one step of every stepped cell inside `cell` (under `eval_shape`); outputs are
    broadcast over the `T` steps of `xs` so that composites see whole-sequence shapes."""
    if isinstance(cell, SequenceCell):

        def run(part: Any, params: PyTree, h: PyTree, xs: PyTree, **_: Any) -> Any:
            return _one_step_each(part, params, h, xs)

        return cell.run_sequence(run, params, h, xs)
    T = jax.tree.leaves(xs)[0].shape[0]
    x = jax.tree.map(lambda a: jnp.zeros(a.shape[1:], a.dtype), xs)
    new_h, y = cell(params, h, x)
    check_state_change(f"scan({describe(cell)})", h, new_h)
    return new_h, jax.tree.map(lambda a: jnp.broadcast_to(a, (T, *jnp.shape(a))), y)


def check_length_values(cell: object, xs: PyTree, lengths: Any, time_axis: int) -> bool:
    """Outside a trace, check that every length is in `[0, T]` (`ValueError` if not).

    Returns `False` when the values are not known (a tracer): only then must the result mark
    out-of-range lengths with NaN (`poison_out_of_range`).
    """
    T = time_steps(cell, xs, time_axis)
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


def check_batch_shape(cell: object, xs: PyTree, shape: tuple[int, ...], what: str) -> None:
    """Check that `shape` (of `lengths`, or `resets` without time) is the batch of `xs`."""
    name = describe(cell)
    leaves = jax.tree.leaves(xs)
    if getattr(cell, "in_features", None) is not None:
        step = input_axes(cell)  # trailing axes of one step: features (and spatial axes)
        batch = tuple(leaves[0].shape[1 : leaves[0].ndim - step])
        if shape != batch:
            where = "features" if step == 1 else f"the step's {step} axes (spatial, channels)"
            raise ValueError(
                f"scan({name}): expected {what} with the batch shape of xs, {batch} (one "
                f"entry per sequence), got {shape}. xs has shape {tuple(leaves[0].shape)} "
                f"(time-major); batch axes are those between time and {where}."
            )
        return
    for a in leaves:
        if tuple(a.shape[1 : 1 + len(shape)]) != shape:
            raise ValueError(
                f"scan({name}): {what} gives batch shape {shape}, but a leaf of xs has shape "
                f"{tuple(a.shape)} (time-major); every leaf needs those leading batch axes "
                "right after time."
            )


def step_masks(
    cell: CellFn, xs: PyTree, T: int, lengths: Any, resets: Any, time_axis: int
) -> StepMasks | None:
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
        check_batch_shape(cell, xs, tuple(lengths.shape), "lengths")
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
        hint = "Expected one flag per step and sequence, shaped like xs without its features."
        check_time_axis(f"scan({name})", resets.shape, time_axis, "resets", hint)
        reset = jnp.moveaxis(resets, time_axis, 0)
        if reset.shape[0] != T:
            raise ValueError(
                f"scan({name}): resets has {reset.shape[0]} steps on time_axis={time_axis} "
                f"but xs has {T}; expected one flag per step and sequence."
            )
        check_batch_shape(cell, xs, tuple(reset.shape[1:]), "resets (without its time axis)")
        if lens is not None and reset.shape[1:] != lens.shape:
            raise ValueError(
                f"scan({name}): lengths has shape {tuple(lens.shape)} but resets has batch "
                f"shape {tuple(reset.shape[1:])}; both have one entry per sequence."
            )
        if valid is not None:
            reset = reset & valid  # past its length a sequence is frozen: no reset there
    return StepMasks(valid, reset, lens)


def reset_state(cell: CellFn, params: PyTree, h: PyTree, state0: PyTree, xs: PyTree) -> PyTree:
    """The state that `resets` return to, settled to the carry's shapes and dtypes."""
    name = describe(cell)
    if state0 is None:
        if not hasattr(cell, "initial_state"):
            raise TypeError(
                f"scan({name}): resets= needs the state to reset to: a function cell has no "
                "initial_state(), so pass state0= (e.g. the initial state h)."
            )
        state0 = cell.initial_state(params)  # type: ignore[attr-defined]
    s0 = settle_state(cell, params, state0, xs)
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), s0)
    if jax.tree.structure(s0) != jax.tree.structure(h) or shapes != jax.tree.map(
        lambda a: (a.shape, a.dtype), h
    ):
        raise ValueError(
            f"scan({name}): state0 (what resets return to) must have the form of the state, "
            f"{jax.tree.map(jnp.shape, h)}, got {jax.tree.map(jnp.shape, state0)}."
        )
    return s0


def poison_out_of_range(
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
        return select(m, jnp.full_like(a, jnp.nan), a)

    return (
        jax.tree.map(lambda a: poison(a, False), h),
        jax.tree.map(lambda a: poison(a, True), ys),
    )
