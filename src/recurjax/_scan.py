"""The scan engine: the one place in recurjax that knows about time."""

from __future__ import annotations

import functools
import math
from typing import Any, cast

import jax
import jax.numpy as jnp
from jax import lax

from ._cell import CellFn, PyTree, check_callable, describe, index_or_none
from ._kernels import GRUKernel, Kernel, kernel_for

__all__ = ["scan"]

STRATEGIES = ("auto", "fused", "sequential")


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
        - `"auto"` (default): `"fused"` where the cell has a kernel and `unroll == 1`,
          otherwise `"sequential"`; except where the sequential one measured faster on
          XLA:CPU (`benchmarks/RESULTS.md`): a `GRUCell` with 128 or more sequences in the
          batch, and the forward pass alone of 4 or fewer sequences. A `Chain` runs part
          by part over the whole sequence (each layer's outputs are the next one's
          inputs), each part with its own best strategy; a `Dense` part is then one matmul
          over all steps.
      remat: rematerialise every this many steps to save memory: the backward pass stores
        only the state at the start of each block of `remat` steps and recomputes the
        block's forward pass (`jax.checkpoint`), so memory for the backward pass grows as
        `T / remat + remat` steps' worth instead of `T`, for one more forward pass of compute.
        `None` (default) stores every step. Must be a multiple of `truncate_every` when both
        are given.

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
    if type(xs) in (list, tuple):
        xs = _stack_steps(cell, xs)
    options = (time_axis, bool(reverse), truncate_every, unroll, strategy, remat)
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
    strategy: str,
    remat: int | None,
) -> tuple[PyTree, PyTree]:
    xs, _ = _time_major(cell, xs, time_axis)
    h = _settle_state(cell, params, h, xs)
    h, ys = _run(cell, params, h, xs, reverse, truncate_every, unroll, strategy, remat)
    ys = jax.tree.map(lambda a: jnp.moveaxis(a, 0, time_axis), ys)
    return h, ys


def _run(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    reverse: bool,
    truncate_every: int | None,
    unroll: int | bool,
    strategy: str,
    remat: int | None = None,
) -> tuple[PyTree, PyTree]:
    """Time-major `xs`, settled `h`: pick the strategy and run it."""
    from ._chain import Chain  # imported here: _chain imports _recur, which imports this

    T = jax.tree.leaves(xs)[0].shape[0]
    if remat is not None and remat < T:
        return _remat_blocks(cell, params, h, xs, reverse, truncate_every, unroll, strategy, remat)
    if strategy != "sequential" and unroll == 1:
        if type(cell) is Chain:
            return _run_chain(cell, params, h, xs, reverse, truncate_every, strategy)
        kernel = kernel_for(cell)
        n = math.prod(xs.shape[1:-1]) if kernel is not None else 0
        if kernel is not None and (strategy == "fused" or _fused_pays(kernel, n)):
            dtype = jax.tree.leaves(h)[0].dtype
            # Without differentiation, a batch of a few sequences runs faster through the
            # cell itself (measured); the kernel's forward loop is used under `grad`.
            primal = cell if strategy == "auto" and n <= SMALL_BATCH else None
            return _fused(kernel, primal, params, h, xs.astype(dtype), reverse, truncate_every)
    return _sequential(cell, params, h, xs, reverse, truncate_every, unroll)


def _remat_blocks(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    reverse: bool,
    truncate_every: int | None,
    unroll: int | bool,
    strategy: str,
    remat: int,
) -> tuple[PyTree, PyTree]:
    """Checkpoint every `remat` steps: the backward pass keeps only the state at each block
    start and recomputes a block's forward pass when it reaches it (`jax.checkpoint`).

    `truncate_every` divides `remat` (checked in `scan`), so a cut falls on a block start
    exactly when that block's first step is a multiple of it; inside a block the strategy
    cuts as usual.
    """
    k = truncate_every

    def run(h: PyTree, xb: PyTree, start: jax.Array) -> tuple[PyTree, PyTree]:
        if k is not None:
            h = _cut_at(h, start, k)
        return _run(cell, params, h, xb, False, k, unroll, strategy)

    return _in_blocks(run, h, xs, remat, reverse, checkpoint=True)


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
    reverse: bool,
    truncate_every: int | None,
    strategy: str,
) -> tuple[PyTree, PyTree]:
    """A chain part by part: each part runs over the whole sequence, then feeds the next.

    Equal to running the chain step by step, because a part's step depends only on its own
    state and the previous part's output at the same step.
    """
    from ._chain import Dense

    states = []
    for part, p, s in zip(chain.cells, params, h, strict=True):
        if type(part) is Dense:  # stateless and time-parallel: one matmul over all steps
            s, xs = part(p, s, xs)
        else:
            s = _settle_state(part, p, s, xs)
            s, xs = _run(part, p, s, xs, reverse, truncate_every, 1, strategy)
        states.append(s)
    return tuple(states), xs


def _has_kernel(cell: object) -> bool:
    from ._chain import Chain

    if type(cell) is Chain:
        return any(_has_kernel(c) for c in cell.cells)
    return kernel_for(cell) is not None


def _sequential(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    reverse: bool,
    truncate_every: int | None,
    unroll: int | bool,
) -> tuple[PyTree, PyTree]:
    """`lax.scan` of the cell itself (with truncation blocks): the reference strategy."""
    T = jax.tree.leaves(xs)[0].shape[0]

    def step(h: PyTree, x: PyTree) -> tuple[PyTree, PyTree]:
        return cell(params, h, x)

    k = truncate_every
    if k is None or k >= T:
        return lax.scan(step, h, xs, reverse=reverse, unroll=unroll)

    def run(h: PyTree, xb: PyTree, start: jax.Array) -> tuple[PyTree, PyTree]:
        return lax.scan(step, _cut_at(h, start, k), xb, unroll=unroll)

    return _in_blocks(run, h, xs, k, reverse)


# Jitted with the cell and the options static, so that eager calls with the same cell and
# shapes reuse one compiled program (inside a user's jit this simply inlines).
_scan_jit = jax.jit(_scan, static_argnums=(0, 4, 5, 6, 7, 8, 9))


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
    reverse: bool,
    truncate_every: int | None,
) -> tuple[PyTree, jax.Array]:
    """`lax.scan` of a library cell through its fused kernel.

    `xs: (T, *batch, in)` time-major and `h` settled to `(*batch, H)` leaves. The batch is
    flattened to `N`; the state runs feature-major (`(H, N)`) inside the loop.
    """
    T, batch, n_in = xs.shape[0], tuple(xs.shape[1:-1]), xs.shape[-1]
    N = math.prod(batch)
    h_fm = jax.tree.map(lambda a: a.reshape(N, a.shape[-1]).T, h)
    out = _fused_core(
        kernel, primal, reverse, truncate_every, params, h_fm, xs.reshape(T, N, n_in)
    )
    h_fm, ys = cast("tuple[PyTree, jax.Array]", out)
    h = jax.tree.map(lambda a: a.T.reshape(*batch, a.shape[0]), h_fm)
    return h, ys.reshape(T, *batch, ys.shape[-1])


def _fused_loop(
    kernel: Kernel, reverse: bool, params: PyTree, h: PyTree, xs: jax.Array, keep_res: bool
) -> tuple[PyTree, jax.Array, PyTree]:
    """The forward loop: `xs: (T, N, in)`, `h` feature-major; `ys: (T, N, H)` and, with
    `keep_res`, the stacked residuals of the backward pass."""
    kp = kernel.prepare(params)

    def step(h: PyTree, x: jax.Array) -> tuple[PyTree, Any]:
        h, y, res = kernel.step(kp, h, x)  # type: ignore[arg-type]
        return h, ((y, res) if keep_res else y)

    h, out = lax.scan(step, h, jnp.transpose(xs, (0, 2, 1)), reverse=reverse)
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
) -> tuple[PyTree, jax.Array]:
    if primal is not None:  # the cell itself, batch-major, when nothing differentiates
        h = jax.tree.map(lambda a: a.T, h)
        h, ys = lax.scan(lambda h, x: primal(params, h, x), h, xs, reverse=reverse)
        return jax.tree.map(lambda a: a.T, h), ys
    h, ys, _ = _fused_loop(kernel, reverse, params, h, xs, keep_res=False)
    return h, ys


def _fused_core_fwd(
    kernel: Kernel,
    primal: CellFn | None,
    reverse: bool,
    truncate_every: int | None,
    params: PyTree,
    h: PyTree,
    xs: jax.Array,
) -> tuple[tuple[PyTree, jax.Array], tuple[PyTree, jax.Array, PyTree]]:
    h, ys, res = _fused_loop(kernel, reverse, params, h, xs, keep_res=True)
    return (h, ys), (params, xs, res)


def _fused_core_bwd(
    kernel: Kernel,
    primal: CellFn | None,
    reverse: bool,
    truncate_every: int | None,
    saved: tuple[PyTree, jax.Array, PyTree],
    cts: tuple[PyTree, jax.Array],
) -> tuple[PyTree, PyTree, jax.Array]:
    params, xs, res = saved
    dh, dys = cts
    T = xs.shape[0]
    # keep[t] = 0 where the state entering step t was cut (`truncate_every`): the gradient
    # stops there, as `stop_gradient` on the carry does in the sequential strategy.
    order = jnp.arange(T)
    n = T - 1 - order if reverse else order
    k = truncate_every
    keep = None if k is None else (n == 0) | (n % k != 0)

    def step(dh: PyTree, inp: tuple[PyTree, jax.Array, Any]) -> tuple[PyTree, PyTree]:
        res_t, dy, keep_t = inp
        dh, dg = kernel.step_bwd(params, res_t, dh, dy)  # type: ignore[arg-type]
        if keep_t is not None:
            dh = jax.tree.map(lambda a: jnp.where(keep_t, a, jnp.zeros_like(a)), dh)
        return dh, dg

    dh0, dg = _scan_prefetched(step, dh, (res, dys, keep), reverse=not reverse)
    dparams, dxs = kernel.grads(params, xs, res, dg)  # type: ignore[arg-type]
    return dparams, dh0, dxs


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
