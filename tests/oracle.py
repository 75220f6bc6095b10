"""The one oracle of the scan engine, shared by every test that checks a run over time.

`run` is the Python loop of `rj.scan`'s docstring, for each sequence of a batch *separately*
and unbatched, over its own valid steps: padded steps are never run (their outputs stay
zero), a reset replaces the state entering a step by `state0`, the reverse direction starts
at the sequence's own last valid step, and `truncate_every=k` cuts the gradient through the
state entering every `k`-th step in processing order. Its backward pass is written by hand:
back through the recorded steps with each step's VJP. It never calls `rj.scan`, and it is
compiled only as one step and one step's VJP per cell and shape (`step_functions`), so every
option and strategy of a cell shares those two small programs.

`loss_terms` is the loss whose gradients `run` returns, for the library side of a comparison.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def state_terms(h: Any) -> jax.Array:
    """`sum(sin(h))` over the state's leaves; a complex leaf (the LRU's state) adds the sines
    of its real and imaginary parts, so both carry a non-zero cotangent."""
    total = jnp.zeros((), jnp.float32)
    for a in jax.tree.leaves(h):
        parts = (jnp.real(a), jnp.imag(a)) if jnp.iscomplexobj(a) else (a,)
        for part in parts:
            total = total + jnp.sum(jnp.sin(part))
    return total


def loss_terms(h: Any, ys: Any, w_y: Any) -> jax.Array:
    """`sum(ys * w_y) + state_terms(h)`: both the outputs and the final state feed the loss,
    so both cotangents are non-zero (NaN outputs, which must not occur, count as zero here
    and are caught by comparing the outputs)."""
    total = state_terms(h)
    for y, w in zip(jax.tree.leaves(ys), jax.tree.leaves(w_y), strict=True):
        total = total + jnp.sum(jnp.where(jnp.isnan(y), 0.0, y) * w)
    return total


def batched(tree: Any, batch: tuple[int, ...]) -> Any:
    """Every leaf broadcast to leading batch axes `batch`."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (*batch, *jnp.shape(a))), tree)


@functools.cache
def step_functions(cell: Any) -> tuple[Any, Any]:
    """One step of `cell` and its VJP, each compiled once per cell and shape."""

    def bwd(p, h, x, dh, dy):
        _, vjp = jax.vjp(lambda p, h, x: cell(p, h, x), p, h, x)
        return vjp((dh, dy))

    return jax.jit(lambda p, h, x: cell(p, h, x)), jax.jit(bwd)


def _at(tree: Any, index: tuple[int, ...]) -> Any:
    return jax.tree.map(lambda a: a[index], tree)


def _put(dst: Any, index: tuple[int, ...], src: Any, add: bool = False) -> None:
    for leaf, value in zip(jax.tree.leaves(dst), jax.tree.leaves(src), strict=True):
        if add:
            leaf[index] += np.asarray(value)
        else:
            leaf[index] = np.asarray(value)


def _zeros(shape: tuple[int, ...], tree: Any) -> Any:
    return jax.tree.map(lambda a: np.zeros((*shape, *np.shape(a)), np.asarray(a).dtype), tree)


def run(
    cell: Any,
    params: Any,
    h0: Any,
    xs: Any,
    *,
    batch: tuple[int, ...] | None = None,
    lengths: Any = None,
    resets: Any = None,
    state0: Any = None,
    reverse: bool = False,
    truncate_every: int | None = None,
    w_y: Any = None,
) -> tuple[Any, Any, Any]:
    """Each sequence alone, a Python loop over its valid steps (see the module docstring).

    `xs` is time-major, `(T, *batch, ...)` leaves; `h0` and `state0` carry the batch axes
    `batch` (default: the axes between time and features of the one array `xs`). Returns
    `(h, ys, grads)`: final states, outputs (zero at padded steps) and, when `w_y` (shaped
    like the outputs) is given, the gradients of `loss_terms(h, ys, w_y)` with respect to
    `(params, h0, state0, xs)` (`None` otherwise).
    """
    fwd, bwd = step_functions(cell)
    tree = jax.tree
    xs = tree.map(np.asarray, xs)
    T = tree.leaves(xs)[0].shape[0]
    if batch is None:
        batch = tuple(tree.leaves(xs)[0].shape[1:-1])
    h0 = tree.map(np.asarray, h0)
    state0 = tree.map(np.asarray, state0)
    k = len(batch)
    x0 = tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1 + k :], a.dtype), xs)
    h_one = tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[k:], a.dtype), h0)
    y_shape = jax.eval_shape(lambda p, h, x: cell(p, h, x)[1], params, h_one, x0)
    ys = tree.map(lambda a: np.zeros((T, *batch, *a.shape), a.dtype), y_shape)
    finals = tree.map(np.zeros_like, h0)
    grads = None
    if w_y is not None:
        w_y = tree.map(np.asarray, w_y)
        dparams = tree.map(lambda a: np.zeros(np.shape(a), np.asarray(a).dtype), params)
        dh0, dxs = tree.map(np.zeros_like, h0), tree.map(np.zeros_like, xs)
        ds0 = None if state0 is None else tree.map(np.zeros_like, state0)
        grads = (dparams, dh0, ds0, dxs)
    for b in itertools.product(*(range(n) for n in batch)):
        h = _at(h0, b)
        steps = range(T if lengths is None else int(np.asarray(lengths)[b]))
        trace = []
        for n, t in enumerate(reversed(steps) if reverse else steps):
            cut = bool(truncate_every) and n > 0 and n % truncate_every == 0
            reset = resets is not None and bool(np.asarray(resets)[(t, *b)])
            if reset:
                h = _at(state0, b)
            x = _at(xs, (t, *b))
            trace.append((t, h, x, cut, reset))
            h, y = fwd(params, h, x)
            _put(ys, (t, *b), y)
        _put(finals, b, h)
        if grads is None:
            continue
        dparams, dh0, ds0, dxs = grads
        dh = tree.map(np.asarray, jax.grad(state_terms)(h))  # JAX's cotangent, complex too
        for t, h_in, x, cut, reset in reversed(trace):
            dp, dh, dx = bwd(params, h_in, x, dh, _at(w_y, (t, *b)))
            dparams = tree.map(np.add, dparams, dp)
            _put(dxs, (t, *b), dx)
            if reset:  # the state entering this step was state0: the gradient goes there
                _put(ds0, b, dh, add=True)
            if reset or cut:  # nothing flows further back from here
                dh = tree.map(np.zeros_like, dh)
        _put(dh0, b, dh)
        grads = (dparams, dh0, ds0, dxs)
    return finals, ys, grads
