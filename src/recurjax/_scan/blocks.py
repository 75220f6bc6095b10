"""Per-step controls and blocks of steps: the masks of padded and episodic batches,
reversal within lengths, and the walk in blocks used by truncation and remat."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._contracts import PyTree


class StepMasks(NamedTuple):
    """Per-step controls of a run over right-padded or episodic batches, time-major."""

    valid: jax.Array | None  # (T, *batch) bool: step t is within the sequence's length
    reset: jax.Array | None  # (T, *batch) bool: the state becomes s0 before step t (and valid)
    lengths: jax.Array | None  # (*batch,) int32, clipped to [0, T]
    state0: PyTree = None  # the state a reset puts back, settled like the carry (or None)


def select(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """`where(mask, a, b)` for `mask: (*batch)` and leaves `(*batch, ...)`, batch leading."""
    if tuple(a.shape[: mask.ndim]) != tuple(mask.shape):
        raise ValueError(
            f"scan: lengths/resets select per sequence, so every state and output leaf needs "
            f"the batch shape {tuple(mask.shape)} as leading axes; got a leaf of shape "
            f"{tuple(a.shape)}. Give the cell's state and output one row per sequence."
        )
    m = mask.reshape(*mask.shape, *(1,) * (a.ndim - mask.ndim))
    return jnp.where(m, a, b)


def zero_padding(valid: jax.Array | None, tree: PyTree) -> PyTree:
    """Every leaf of a time-major `tree` with the steps past each sequence's length zeroed
    (`valid: (T, *batch)`); `tree` itself when there is no padding."""
    if valid is None:
        return tree
    return jax.tree.map(lambda a: select(valid, a, jnp.zeros_like(a)), tree)


def steps_of(tree: PyTree, masks: StepMasks | None) -> Any:
    """The per-step data of a run: `(xs, valid, reset)` (masks `None` where absent)."""
    if masks is None:
        return (tree, None, None)
    return (tree, masks.valid, masks.reset)


def reversed_within(lengths: jax.Array, T: int) -> jax.Array:
    """`order[t, b] = L_b - 1 - t` for `t < L_b`, else `t`: each sequence reversed in place."""
    t = jnp.arange(T, dtype=jnp.int32).reshape(T, *(1,) * lengths.ndim)
    return jnp.where(t < lengths[None], lengths[None] - 1 - t, t)


def take_steps(order: jax.Array, a: jax.Array) -> jax.Array:
    """`a[order[t, b], b, ...]` for time-major `a: (T, *batch, ...)`."""
    idx = order.reshape(*order.shape, *(1,) * (a.ndim - order.ndim))
    return jnp.take_along_axis(a, jnp.broadcast_to(idx, (*order.shape, *a.shape[order.ndim :])), 0)


def in_blocks(
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


def cut_at(h: PyTree, start: jax.Array, k: int, valid: jax.Array | None = None) -> PyTree:
    """Detach `h` when it enters step `start` (processing order) and `start` is a positive
    multiple of `k`; a select, so the values stay equal. With `valid` (the step's mask,
    `(*batch)`), only sequences for which the step is within their length are cut: past its
    length a sequence is frozen, and scan's loop (which stops at the length) never cuts it
    there, so its final state keeps the gradient of its last block."""
    cut = (start > 0) & (start % k == 0)
    if valid is None:
        return jax.tree.map(lambda a: jnp.where(cut, lax.stop_gradient(a), a), h)
    return jax.tree.map(lambda a: select(cut & valid, lax.stop_gradient(a), a), h)


def first_step(mask: jax.Array | None) -> jax.Array | None:
    """A block's step mask at its first step (`None` stays `None`)."""
    return None if mask is None else mask[0]
