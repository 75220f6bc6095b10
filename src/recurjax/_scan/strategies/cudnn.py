"""The cuDNN strategy: LSTM layers, stacked and bidirectional, in one call to cuDNN's LSTM
(`jax.experimental.rnn.lstm`) on a CUDA GPU.

It runs an `LSTMCell`, a `bidirectional` pair of them with `merge="concat"`, or a chain of
such layers of one hidden size, each fed by the one before (what `stacked(rj.LSTMCell, ...,
bidirectional=...)` builds without dropout or residuals): any cell that is a `LayerStack` of
LSTM cells. recurjax's gate order (`i, f, g, o`) is cuDNN's and PyTorch's, so the params go
into cuDNN's flat weight vector as they are (`pack`): each layer's `W_ih = wi^T`,
`W_hh = wh^T`, `b_ih = b` and `b_hh = 0`. Lengths become cuDNN's `seq_lengths`; a sequence
of length 0, which cuDNN does not take, runs one step whose results are thrown away.

What cuDNN cannot do raises where a user named it, before tracing (`unsupported`, and the
engine's checks of forward mode and `return_states`): resets, truncation, remat (it runs
each sequence in one call), `jax.vmap` (cuDNN's call has no batching rule), forward-mode
autodiff (its derivative is cuDNN's own backward pass, a `jax.custom_vjp`), a cell with no
LSTM in it; dtypes other than float32 raise when it traces (`run`). cuDNN's backward pass
has no derivative of its own: grad-of-grad fails inside JAX. In a composite that is no
stack (a `Dense` head, dropout between layers, another merge), each LSTM part runs on
cuDNN alone and the rest as `auto` picks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from ..._checks import describe
from ..._contracts import LayerStack, PyTree, SequenceCell, Strategy, kernel_spec
from .. import policy
from ..blocks import StepMasks, reversed_within, take_steps

if TYPE_CHECKING:
    from ..options import Options

# `jax.experimental.rnn.lstm`'s signature: (x, h_0, c_0, weights, seq_lengths, input_size,
# hidden_size, num_layers, dropout, bidirectional) -> (y, h_n, c_n), batch-first.
LSTMCall = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]

STACKS = (
    "needs an LSTMCell, a bidirectional pair of them with merge='concat', or a chain of such "
    "layers of one hidden size, each fed by the one before (rj.stacked(rj.LSTMCell, ...) "
    "without dropout or residual)"
)


def layers(cell: object) -> tuple[tuple[Any, ...], int] | str:
    """The LSTM cells of `cell` in cuDNN's order and the number of directions, or why cuDNN
    cannot run it (the end of an error message)."""
    if isinstance(cell, LayerStack):
        stack = cell.layers()
        if stack is None:
            return f"{STACKS}; {describe(cell)} is not such a stack."
    elif isinstance(cell, SequenceCell) or not _is_lstm(cell):
        return f"{STACKS}; {describe(cell)} is not one."
    else:
        stack = ((cell,), 1)
    cells: tuple[Any, ...] = stack[0]
    directions = stack[1]
    for c in cells:
        if not _is_lstm(c):
            return f"{STACKS}; its part {describe(c)} is not an LSTMCell."
    hidden = cells[0].hidden_size
    for k, c in enumerate(cells):
        fed = cells[0].in_features if k < directions else directions * hidden
        if c.hidden_size != hidden or c.in_features != fed:
            return (
                f"{STACKS}; in {describe(cell)} the part {describe(c)} has not hidden size "
                f"{hidden} and {fed} input features."
            )
    return stack


def _is_lstm(cell: object) -> bool:
    """Whether `cell` steps as `LSTMCell` (its fused kernel is the LSTM's)."""
    spec = kernel_spec(cell)
    return spec is not None and spec.name == "lstm"


def cannot_run(cell: object, opts: Options | None) -> str | None:
    """Why cuDNN's LSTM cannot run `cell` under `opts` on any backend, or `None`."""
    if opts is not None:
        for given, what in (
            (opts.resets, "resets (it runs each sequence from its initial state to its length)"),
            (opts.truncate_every is not None, "truncate_every (one call has no cut inside)"),
            (opts.remat is not None, "remat (it runs the whole sequence in one call)"),
            (opts.vmapped, "jax.vmap (cuDNN's call has no batching rule; give xs the axis)"),
        ):
            if given:
                return (
                    f"cannot take {what}. Use strategy='fused' (or 'auto'), which takes every "
                    "option."
                )
    stack = layers(cell)
    return stack if isinstance(stack, str) else None


def unsupported(cell: object, opts: Options | None) -> str | None:
    """`cannot_run`, and first whether this backend has cuDNN."""
    backend = jax.default_backend()
    if backend != "gpu":
        return (
            "runs on a GPU only (cuDNN's LSTM, jax.experimental.rnn); this backend is "
            f"{backend!r}. Use strategy='auto' or 'fused' here."
        )
    return cannot_run(cell, opts)


def pack(cells: tuple[Any, ...], params: list[PyTree]) -> jax.Array:
    """cuDNN's flat LSTM weights for `cells` (cuDNN's order) and their params: every
    layer's `W_ih (4H, in)` and `W_hh (4H, H)`, then every layer's `b_ih` and `b_hh (4H,)`,
    each flattened row-major (`jax.experimental.rnn`'s layout)."""
    weights: list[jax.Array] = []
    biases: list[jax.Array] = []
    for cell, p in zip(cells, params, strict=True):
        p = cell.with_biases(p)  # zeros for a cell without biases (no gradient)
        weights += [p["wi"].T.reshape(-1), p["wh"].T.reshape(-1)]
        biases += [p["b"], jnp.zeros_like(p["b"])]
    return jnp.concatenate(weights + biases)


def _cudnn_lstm(*args: Any, **kwargs: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    from jax.experimental import rnn

    return rnn.lstm(*args, **kwargs)


def run(
    cell: Any,
    params: PyTree,
    h: PyTree,
    xs: jax.Array,
    opts: Options,
    masks: StepMasks | None = None,
    *,
    lstm: LSTMCall = _cudnn_lstm,
) -> tuple[PyTree, jax.Array]:
    """The stack over time-major `xs: (T, *batch, in)` from the settled state `h` in one
    `lstm` call (cuDNN's by default), batch flattened and batch-first."""
    stack = layers(cell)
    assert not isinstance(stack, str), "the engine runs cuDNN only where it applies"
    cells, directions = stack
    hidden, width = cells[0].hidden_size, directions * cells[0].hidden_size
    split = cell.split_layers if isinstance(cell, LayerStack) else (lambda tree: [tree])
    join = cell.join_layers if isinstance(cell, LayerStack) else (lambda trees: trees[0])
    states = split(h)
    _check_float32(cell, params, h, xs)
    T, batch, n_in = xs.shape[0], tuple(xs.shape[1:-1]), xs.shape[-1]
    if T == 0:
        return h, jnp.zeros((0, *batch, width), xs.dtype)
    N = math.prod(batch)
    x = xs.reshape(T, N, n_in)
    valid = None if masks is None else masks.valid
    if valid is None:
        lengths = jnp.full((N,), T, jnp.int32)
    else:
        lengths = jnp.sum(valid.reshape(T, N), axis=0, dtype=jnp.int32)
    # In reverse, each sequence runs from its own last step: reversed within its length (the
    # engine does it for a scan with lengths; a part run in reverse inside it comes here).
    order = reversed_within(lengths, T) if opts.reverse else None
    if order is not None:
        x = take_steps(order, x)

    def stacked(field: str) -> jax.Array:
        return jnp.stack([getattr(s, field).reshape(N, hidden) for s in states])

    h0, c0 = stacked("h"), stacked("c")
    y, hn, cn = lstm(
        jnp.swapaxes(x, 0, 1),
        h0,
        c0,
        pack(cells, split(params)),
        jnp.maximum(lengths, 1),  # cuDNN takes no length 0: one step, thrown away below
        input_size=n_in,
        hidden_size=hidden,
        num_layers=len(cells) // directions,
        dropout=0.0,
        bidirectional=directions == 2,
    )
    ys = jnp.swapaxes(y, 0, 1)
    if order is not None:
        ys = take_steps(order, ys)
    empty = (lengths == 0)[None, :, None]
    hn, cn = jnp.where(empty, h0, hn), jnp.where(empty, c0, cn)
    new = [
        s._replace(h=hn[i].reshape(*batch, hidden), c=cn[i].reshape(*batch, hidden))
        for i, s in enumerate(states)
    ]
    return join(new), ys.reshape(T, *batch, width)


def _check_float32(cell: object, params: PyTree, h: PyTree, xs: jax.Array) -> None:
    dtypes = {jnp.dtype(a.dtype) for a in jax.tree.leaves((params, h, xs))}
    if dtypes != {jnp.dtype(jnp.float32)}:
        raise ValueError(
            f"scan({describe(cell)}): strategy='cudnn' computes in float32 only "
            f"(jax.experimental.rnn); got params, state and inputs of "
            f"{sorted(str(d) for d in dtypes)}. Cast them to float32, or use "
            "strategy='fused' for other dtypes."
        )


def reference_lstm(
    x: jax.Array,
    h_0: jax.Array,
    c_0: jax.Array,
    weights: jax.Array,
    seq_lengths: jax.Array,
    *,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    dropout: float,
    bidirectional: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """What cuDNN computes, on any backend: the flat weights unpacked by
    `jax.experimental.rnn.unpack_lstm_weights` and run by its reference, `lstm_ref` (a
    `lax.scan` per layer and direction). The tests and the GPU benchmark's dry run use it
    in place of cuDNN (`run(..., lstm=reference_lstm)`)."""
    from jax.experimental import rnn

    unpacked = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
    return rnn.lstm_ref(
        x,
        h_0,
        c_0,
        *unpacked,
        seq_lengths,
        input_size,
        hidden_size,
        num_layers,
        dropout,
        bidirectional,
    )


CUDNN = Strategy("cudnn", run, unsupported, auto=policy.cudnn_picks, composites=True)


def on_any_backend(lstm: LSTMCall = reference_lstm) -> Strategy:
    """The cuDNN strategy with `lstm` in place of cuDNN's call and no backend check: how the
    tests and the GPU benchmark's dry run check everything around the call on a CPU."""
    return dataclasses.replace(
        CUDNN, run=functools.partial(run, lstm=lstm), unsupported=cannot_run
    )
