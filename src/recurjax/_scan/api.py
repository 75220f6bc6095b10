"""The public entry points of the scan engine: `scan` and `sequence_parallel_scan`."""

from __future__ import annotations

from typing import Any, TypedDict

import jax
import jax.numpy as jnp

from .._checks import check_callable, describe
from .._contracts import CellFn, PyTree, is_linear, is_matrix_memory
from . import options as options_
from .history import frozen_past_lengths, with_states
from .inputs import (
    check_length_values,
    forward_mode,
    poison_out_of_range,
    prepare,
    stack_steps,
    vmapped,
)
from .options import Options
from .parallel import run_split, run_split_memory
from .run import check_choice, run
from .strategies import REGISTRY

__all__ = ["ScanOptions", "scan", "sequence_parallel_scan"]


class ScanOptions(TypedDict, total=False):
    """The keyword options of `scan`, for the functions that pass them on (`Recur.scan`, the
    NNX and Equinox `Recurrent` modules) with `**options: Unpack[ScanOptions]`, so that IDEs
    and type checkers see each keyword. `scan` documents them."""

    time_axis: int
    reverse: bool
    truncate_every: int | None
    unroll: int | bool
    strategy: str
    remat: int | None
    chunk_size: int | None
    lengths: Any
    resets: Any
    state0: PyTree


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
    chunk_size: int | None = None,
    lengths: Any = None,
    resets: Any = None,
    state0: PyTree = None,
    return_states: bool = False,
) -> tuple[PyTree, ...]:
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
        float rounding). `"sequential"`: `lax.scan` of the cell, for every cell and every
        transformation. `"fused"`: a hand-written step and backward pass for `LSTMCell`,
        `GRUCell` and `RNNCell`. For a cell linear in its state (a `LinearCell`):
        `"hoisted"` (every step's coefficients at once, then one multiply-add a step),
        `"associative"` (`lax.associative_scan`, `O(log T)` depth) and `"chunked"` (the
        same within blocks of 256 steps). For a cell with a matrix memory (`MLSTMCell`,
        `RetentionCell`, `Mamba2Cell`, `GLACell`): `"chunkwise"`, matrix products within
        chunks of 64 steps (16 for GLA's per-channel decays) and one recurrence step per
        chunk. On a CUDA GPU, `"cudnn"`: an `LSTMCell`, a bidirectional pair of them or a
        chain of such layers in one call to cuDNN's LSTM (the guide's "On a GPU").
        `"fused"`, `"hoisted"`, `"associative"`, `"chunked"` and `"cudnn"` have a
        `jax.custom_vjp`, so they are reverse-mode only: named under forward-mode autodiff
        (`jax.jvp`, `jax.jacfwd`, `jax.hessian`) they raise a `TypeError`. A composite runs part by
        part, each part with the strategy named where it applies and `"auto"`'s choice
        elsewhere. `"auto"` (default) picks by the cell, the input shapes and the backend
        (the rules are in the guide, "Speed and memory" and "Linear recurrences"), and
        `"sequential"` under forward mode; a function jitted before `jax.jvp` is applied to
        it (`jax.jvp(jax.jit(f), ...)`) is traced before the tangents exist: name
        `"sequential"` inside it. `unroll > 1` runs `"sequential"`.
      remat: rematerialise every this many steps to save memory: the backward pass stores
        only the state at the start of each block of `remat` steps and recomputes the
        block's forward pass (`jax.checkpoint`), so memory for the backward pass grows as
        `T / remat + remat` steps' worth instead of `T`, for one more forward pass of compute.
        A bidirectional layer (or a chain with one) runs each of its parts in blocks of its
        own. `None` (default) stores every step. Must be a multiple of `truncate_every` when both
        are given.
      chunk_size: steps per chunk of the `"chunked"` and `"chunkwise"` strategies (256 and
        64 by default, 16 for a matrix memory with a decay per key channel; `"chunkwise"`
        runs a shorter sequence, or truncation block, as one chunk of its own length);
        other strategies ignore it.
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
      return_states: also return the state after every step, the whole state pytree with
        each leaf stacked on the time axis (`(T, *batch, ...)`, time at `time_axis`), in
        input order as `ys` (with `reverse`, `states[t]` is the state after step `t` was
        processed). Past a sequence's length its entries hold its final state (the state is
        frozen there); after a reset, the state the step made from `state0`. It costs `T`
        states of memory, and its gradients flow like the final state's. The sequential
        strategy and a linear cell's strategies give it (`auto` picks among them, and runs a
        composite step by step); naming `"fused"` or `"chunkwise"` raises a `ValueError`.

    Returns:
      `(h, ys)`: the final state and the stacked outputs, `ys: (T, ..., out)` (time at
      `time_axis`); `(h, ys, states)` with `return_states=True`.

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
      >>> h3, ys3, hs = rj.scan(cell, params, cell.initial_state(params), xs, return_states=True)
      >>> hs.shape, bool(jnp.allclose(hs[-1], h3)), bool(jnp.allclose(hs, ys))  # GRU: y = h
      ((7, 2, 4), True, True)
    """
    check_callable(cell, "scan(cell, ...)")
    opts = options_.build(
        cell,
        REGISTRY,
        time_axis=time_axis,
        reverse=reverse,
        truncate_every=truncate_every,
        unroll=unroll,
        strategy=strategy,
        remat=remat,
        chunk_size=chunk_size,
        forward_mode=forward_mode((params, h, xs, state0)),
        states=return_states,
        resets=resets is not None,
        vmapped=vmapped((params, h, xs, state0, lengths, resets)),
    )
    check_choice(cell, opts)
    if type(xs) in (list, tuple):
        xs = stack_steps(cell, xs)
    # Lengths only known under a trace are checked by NaN in the result instead.
    if lengths is not None and not check_length_values(cell, xs, lengths, opts.time_axis):
        opts = opts.replace(unchecked=True)
    args = (cell, opts, params, h, xs, lengths, resets, state0)
    try:
        hash(cell)
    except TypeError:  # an unhashable cell cannot be a static argument: run it unjitted
        return _scan(*args)
    return _scan_jit(*args)


def _scan(
    cell: CellFn,
    opts: Options,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    lengths: Any,
    resets: Any,
    state0: PyTree,
) -> tuple[PyTree, ...]:
    prepared = prepare(cell, params, h, xs, lengths, resets, state0, opts.time_axis)
    stepped = with_states(cell) if opts.states else cell
    h, ys = run(stepped, params, prepared.h, prepared.xs, opts, prepared.masks)
    if opts.states:  # the steps' outputs are `(y, state)`
        ys, states = ys
        valid = None if prepared.masks is None else prepared.masks.valid
        ys = (ys, frozen_past_lengths(states, h, valid))
    if opts.unchecked:
        h, ys = poison_out_of_range(jnp.asarray(lengths), prepared.steps, h, ys)
    ys = jax.tree.map(lambda a: jnp.moveaxis(a, 0, opts.time_axis), ys)
    return (h, *ys) if opts.states else (h, ys)


# Jitted with the cell and the options static, so that eager calls with the same cell and
# shapes reuse one compiled program (inside a user's jit this simply inlines).
_scan_jit = jax.jit(_scan, static_argnums=(0, 1))


def sequence_parallel_scan(
    cell: Any,
    params: PyTree,
    h: PyTree,
    xs: jax.Array,
    *,
    mesh: Any,
    axis: str,
    lengths: Any = None,
    resets: Any = None,
    state0: PyTree = None,
) -> tuple[jax.Array, jax.Array]:
    """Run a linear cell or a matrix memory over one long sequence whose time axis is split
    over devices.

    `xs` (time-major, `(T, ..., in)`) is sharded on its time axis over the mesh axis `axis`
    (`jax.shard_map`): each of the `D` devices holds `T / D` consecutive steps. For a
    `LinearCell`, each device runs its block from a zero state with the associative scan,
    keeping the block's composed map `h -> A h + B`; the `D` maps (one `(batch, H)` pair per
    device) are gathered, each device folds the maps of the devices before it into its
    entering state, and corrects its block's states with it. For a matrix memory (mLSTM,
    Mamba-2, GLA, retention), each device runs its block chunkwise from a zero state,
    keeping its final memory and its total decay; the pairs are gathered and folded the
    same way (mLSTM's stabiliser kept), and each device runs its block again from its true
    entering memory: twice the work of one block, in parallel. Only the small maps or the
    block memories cross devices, once. The result equals `scan(cell, params, h, xs,
    lengths=..., resets=...)` on one device (to float rounding: tested on 8 host CPU
    devices), and it differentiates like it.

    Args:
      cell: a `LinearCell` (`MinGRUCell`, `MinLSTMCell`, `LRUCell`, a subclass) or a
        matrix memory (`MLSTMCell`, `Mamba2Cell`, `GLACell`, `RetentionCell`, a
        `MatrixMemory` of your own).
      params: its params (replicated).
      h: the initial state, unbatched or with the batch shape of `xs` (replicated).
      xs: `(T, ..., in)` with `T` a multiple of the size of `axis`.
      mesh: a `jax.sharding.Mesh`.
      axis: the mesh axis name that time is split over.
      lengths: as in `scan`; the inputs are prepared by the same code as `scan`'s, so
        out-of-range lengths raise `ValueError` outside `jit` and give NaN under it.
      resets: as in `scan`, time-major, split like `xs`.
      state0: as in `scan`.

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
    name = describe(cell)
    if not (is_linear(cell) or is_matrix_memory(cell)):
        raise TypeError(
            f"sequence_parallel_scan({name}): needs a LinearCell (MinGRUCell, MinLSTMCell, "
            "LRUCell or a subclass), whose steps compose as maps h -> a h + b, or a matrix "
            "memory (MLSTMCell, Mamba2Cell, GLACell, RetentionCell); other cells carry a "
            "non-linear state and cannot be split in time. Use rj.scan."
        )
    if axis not in mesh.shape:
        raise ValueError(
            f"sequence_parallel_scan({name}): mesh has axes {tuple(mesh.shape)}, not "
            f"{axis!r}. Pass axis= one of them."
        )
    unchecked = lengths is not None and not check_length_values(cell, xs, lengths, 0)
    prepared = prepare(cell, params, h, xs, lengths, resets, state0, 0)
    T, D = prepared.steps, mesh.shape[axis]
    if T % D:
        raise ValueError(
            f"sequence_parallel_scan({name}): T={T} steps do not split evenly over {D} "
            f"devices on axis {axis!r}. Pad xs to a multiple of {D} (with lengths= to mark "
            "the padding)."
        )
    split = run_split if is_linear(cell) else run_split_memory
    h, ys = split(cell, params, prepared, mesh, axis)
    if unchecked:
        h, ys = poison_out_of_range(jnp.asarray(lengths), T, h, ys)
    return h, ys
