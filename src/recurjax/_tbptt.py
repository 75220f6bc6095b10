"""Truncated backpropagation through time over sequences longer than one backward pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from ._checks import index_or_none, positive_int, time_length
from ._contracts import PyTree
from ._trees import truncate

__all__ = ["chunks", "tbptt"]


def _checked_k(k: object, where: str) -> int:
    n = positive_int(k)
    if n is None:
        raise ValueError(
            f"{where}: expected k, the chunk length in steps, to be a positive int, got {k!r}."
        )
    return n


def chunks(xs: PyTree, k: int, *, time_axis: int = 0) -> list[PyTree]:
    """Cut a sequence into consecutive chunks of `k` steps; the last may be shorter.

    With `T` steps on `time_axis`, the chunks hold steps `[0, k)`, `[k, 2k)`, ...; when
    `T % k != 0` the last chunk holds the remaining `T % k` steps, so every step is in
    exactly one chunk and none is dropped. There are `ceil(T / k)` chunks of at most two
    shapes, so a jitted function applied to each compiles at most twice.

    Args:
      xs: an array `(T, ...)` (time at `time_axis`), or a pytree of arrays that all have
        `T` steps there, e.g. `(inputs, targets)`. NumPy arrays stay NumPy arrays (slicing
        copies nothing to the device).
      k: steps per chunk, a positive int.
      time_axis: the axis of every leaf that is time.

    Returns:
      A list of `ceil(T / k)` pytrees shaped like `xs`, with `min(k, T - i * k)` steps on
      `time_axis` in chunk `i`.

    Examples:
      >>> import numpy as np, recurjax as rj
      >>> xs = np.arange(10)
      >>> [c.tolist() for c in rj.chunks(xs, 4)]
      [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
      >>> inputs, targets = np.zeros((2, 7, 3)), np.zeros((2, 7))   # batch-major (B, T, ...)
      >>> [(x.shape, y.shape) for x, y in rj.chunks((inputs, targets), 5, time_axis=1)]
      [((2, 5, 3), (2, 5)), ((2, 2, 3), (2, 2))]
    """
    where = "chunks(xs, k)"
    k = _checked_k(k, where)
    axis = index_or_none(time_axis)
    if axis is None:
        raise TypeError(f"{where}: expected time_axis to be an int, got {time_axis!r}.")
    T = time_length(xs, axis, where)

    def cut(start: int) -> PyTree:
        def one(a: Any) -> Any:
            index = [slice(None)] * a.ndim
            index[axis] = slice(start, start + k)
            return a[tuple(index)]

        return jax.tree.map(one, xs)

    return [cut(start) for start in range(0, T, k)]


def tbptt(
    step: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]],
    carry: PyTree,
    xs: PyTree,
    k: int,
    *,
    time_axis: int = 0,
    callback: Callable[[int, PyTree], None] | None = None,
) -> tuple[PyTree, list[PyTree]]:
    """Truncated backpropagation through time: walk `xs` in chunks of `k` steps.

    This is the loop every truncated-BPTT training script writes, done once and correctly::

        auxes = []
        for i, chunk in enumerate(chunks(xs, k, time_axis=time_axis)):
            if i > 0:  # truncate every Recur handle in carry: m.truncate() cuts the gradient
                carry = jax.tree.map(truncate_if_recur, carry)
            carry, aux = step(carry, chunk)                  # e.g. loss, grad, optax update
            auxes.append(aux)
            if callback is not None:
                callback(i, aux)
        return carry, auxes

    The recurrent state is carried from chunk to chunk (each chunk continues where the
    previous one stopped) but no gradient crosses a chunk boundary: every `Recur` handle
    found in `carry` is truncated before each chunk but the first (as `scan` with
    `truncate_every=k` does, so the first chunk's loss still reaches a learnable initial
    state; the rest of the sequence never does). The last chunk, shorter when
    `T % k != 0`, is trained on too: every step of `xs` is in exactly one chunk. Chunks have
    at most two shapes, so a `jax.jit`-compiled `step` compiles at most twice for the whole
    walk (and not again on the next epoch with the same shapes), provided the carried state
    already has its batch shape: make the handle with `m.batched(B)`. An unbatched handle
    gains its batch during the first chunk, which costs one more compile, once.

    `step` is typically jitted by the caller, once, outside the training loop. Between
    independent sequences (a new epoch over the same streams, a new document) reset the
    handle first, as Flux's `reset!`: `tbptt(step, (m.reset(), opt_state), xs, k)`.

    Args:
      step: `step(carry, chunk) -> (carry, aux)`, where `chunk` is shaped like `xs` with at
        most `k` steps on `time_axis`; `aux` is anything to collect (a loss, metrics).
      carry: what flows from chunk to chunk: a `Recur` handle, or any pytree holding handles
        and more, e.g. `(model, opt_state)`. Handles are truncated between chunks; other
        leaves (params, optimizer state, a plain state array) pass unchanged.
      xs: the long sequence: an array `(T, ...)` or a pytree of arrays with `T` steps on
        `time_axis`, e.g. `(inputs, targets)`.
      k: steps per chunk (the truncation length), a positive int.
      time_axis: the axis of every leaf of `xs` that is time; `1` for batch-major data.
      callback: called as `callback(i, aux)` after chunk `i`, e.g. to advance a progress
        bar. (`aux` may still be computing: `float(aux)` waits for it.)

    Returns:
      `(carry, auxes)`: the carry after the last chunk and the list of `ceil(T / k)` auxes.

    Examples:
      A model trained on a long sequence in chunks of 16 steps, plain SGD:

      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> m = rj.GRU(1, 8, key=jax.random.key(0))
      >>> t = jnp.arange(100.0)
      >>> xs, ys = jnp.sin(0.3 * t)[:, None], jnp.sin(0.3 * (t + 1))[:, None]
      >>> def loss_fn(params, m, chunk):
      ...     x, y = chunk
      ...     m, h = m.replace(params=params).scan(x)
      ...     return jnp.mean((h[:, :1] - y) ** 2), m
      >>> traces = []
      >>> @jax.jit
      ... def step(m, chunk):
      ...     traces.append(chunk[0].shape)       # runs only when jit traces
      ...     (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(m.params, m, chunk)
      ...     params = jax.tree.map(lambda p, d: p - 0.5 * d, m.params, g)
      ...     return m.replace(params=params), loss
      >>> for epoch in range(3):
      ...     m, losses = rj.tbptt(step, m.reset(), (xs, ys), 16)
      >>> len(losses)             # 6 chunks of 16 steps and one of 4: no step dropped
      7
      >>> traces                  # three epochs, two compiles
      [(16, 1), (4, 1)]
    """
    where = "tbptt(step, carry, xs, k)"
    if not callable(step):
        raise TypeError(
            f"{where}: expected step to be a function step(carry, chunk) -> (carry, aux), got "
            f"{type(step).__name__}."
        )
    auxes = []
    for i, chunk in enumerate(chunks(xs, k, time_axis=time_axis)):
        if i > 0:
            carry = truncate(carry)
        result = step(carry, chunk)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                f"{where}: step must return a pair (carry, aux), got {type(result).__name__}"
                f"{f' of length {len(result)}' if isinstance(result, tuple) else ''}. Return "
                "(carry, None) when there is nothing to collect."
            )
        carry, aux = result
        auxes.append(aux)
        if callback is not None:
            callback(i, aux)
    return carry, auxes
