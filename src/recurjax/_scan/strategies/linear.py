"""The strategies of a cell linear in its state (a `LinearRecurrence`), one runner for three:

- associative: `lax.associative_scan` over the whole sequence, `O(log T)` depth;
- chunked: the same within blocks of `CHUNK` steps, carried from block to block
  (`O(T log CHUNK)` work instead of `O(T log T)`);
- hoisted: one multiply-add a step in `lax.scan`.

All three compute every step's coefficients `(a_t, b_t)` at once (out of the loop), turn a
reset into `(0, a_t s0 + b_t)` and a padded step into the identity `(1, 0)`, and run the
read-out at once. Their backward pass is the same recurrence run backwards (a custom VJP),
so they are reverse-mode only.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax import lax

from ..._contracts import PyTree, Strategy, is_linear
from .. import policy
from ..blocks import StepMasks, cut_at, first_step, in_blocks, select
from . import sequential

if TYPE_CHECKING:
    from ..options import Options

# Steps per block of the chunked strategy: long enough for the associative scan's depth to
# pay, short enough that its O(T log T) work stays near the sequential O(T)
# (benchmarks/RESULTS_linear.md).
CHUNK = 256


def _combine(
    earlier: tuple[jax.Array, jax.Array], later: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Compose two affine maps `h -> a h + b`, the earlier one applied first."""
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def _affine_prefix(h: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """`hs[t] = a[t] hs[t-1] + b[t]` from `hs[-1] = h`, by `lax.associative_scan`."""
    A, B = lax.associative_scan(_combine, (a, b), axis=0)
    return A * h[None] + B


def _stepped_prefix(h: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """The same states by `lax.scan`, one multiply-add a step."""

    def step(h: jax.Array, ab: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        h = ab[0] * h + ab[1]
        return h, h

    return lax.scan(step, h, (a, b))[1]


def _linear_scan(prefix: Any) -> Any:
    """Every state of `h_t = a_t h_{t-1} + b_t` (time on axis 0) by `prefix`, with a VJP
    that is the same kind of recurrence run backwards, so the backward pass is one more
    `prefix` instead of the transpose of the forward one (which XLA took several times
    longer to compile, and ran slower, for the associative scan): with `g_t` the cotangent of
    `h_t` from outside, `l_t = g_t + a_{t+1} l_{t+1}`, then `db_t = l_t`,
    `da_t = l_t h_{t-1}` and `dh = a_0 l_0`."""

    @jax.custom_vjp
    def scan(h: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
        return prefix(h, a, b)

    def fwd(h: jax.Array, a: jax.Array, b: jax.Array) -> tuple[jax.Array, Any]:
        hs = prefix(h, a, b)
        return hs, (h, a, hs)

    def bwd(saved: Any, g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        h, a, hs = saved
        later = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])  # a_{t+1}, none after the end
        lam = jnp.flip(prefix(jnp.zeros_like(h), jnp.flip(later, 0), jnp.flip(g, 0)), 0)
        before = jnp.concatenate([h[None], hs[:-1]])
        return a[0] * lam[0], lam * before, lam

    scan.defvjp(fwd, bwd)
    return scan


# `O(log T)` depth, for the associative and chunked strategies; and one step at a time, for
# the hoisted one.
linear_scan = _linear_scan(_affine_prefix)
stepped_linear_scan = _linear_scan(_stepped_prefix)


def coefficients(
    cell: Any, params: PyTree, xs: jax.Array, valid: Any, reset: Any, s0: Any
) -> tuple[jax.Array, jax.Array]:
    """Every step's `(a_t, b_t)`, with a reset turned into `(0, a_t s0 + b_t)` (the state
    entering the step is `s0`) and a padded step into the identity `(1, 0)`."""
    a, b = cell.coefficients(params, xs)
    a = jnp.broadcast_to(a, b.shape).astype(b.dtype)
    if reset is not None:
        b = select(reset, a * jnp.broadcast_to(s0, b.shape) + b, b)
        a = select(reset, jnp.zeros_like(a), a)
    if valid is not None:
        a = select(valid, a, jnp.ones_like(a))
        b = select(valid, b, jnp.zeros_like(b))
    return a, b


def run(
    cell: Any,
    params: PyTree,
    h: jax.Array,
    xs: jax.Array,
    opts: Options,
    masks: StepMasks | None = None,
    *,
    chunk: int | None = None,
    scan: Any = linear_scan,
) -> tuple[jax.Array, jax.Array]:
    """A cell linear in its state over a whole sequence: every state by `scan` from the
    state entering a block (`linear_scan`, or `stepped_linear_scan` for the hoisted
    strategy), over the whole sequence or, with `chunk`, over blocks of that many steps
    carried sequentially from one to the next; truncation cuts the carry at block starts of
    `truncate_every` steps."""
    T = xs.shape[0]
    if T == 0:
        return sequential.run(cell, params, h, xs, opts, masks)
    if chunk is not None and opts.chunk_size is not None:
        chunk = opts.chunk_size
    valid, reset, _, s0 = (None, None, None, None) if masks is None else masks
    a, b = coefficients(cell, params, xs, valid, reset, s0)
    if opts.reverse:
        a, b = jnp.flip(a, 0), jnp.flip(b, 0)
        valid = None if valid is None else jnp.flip(valid, 0)
    k = opts.truncate_every
    size = k if k is not None and k < T else chunk
    if size is None or size >= T:
        hs = scan(h, a, b)
        h = hs[-1]
    else:

        def block(h: jax.Array, data: Any, start: jax.Array) -> tuple[jax.Array, jax.Array]:
            a, b, valid = data
            if k is not None:
                h = cut_at(h, start, k, first_step(valid))
            hs = scan(h, a, b)
            return hs[-1], hs

        h, hs = in_blocks(block, h, (a, b, valid), size, reverse=False)
    if opts.reverse:
        hs = jnp.flip(hs, 0)
    return h, cell.readout(params, hs, xs)


def _not_linear(cell: object, opts: object) -> str | None:
    if is_linear(cell):
        return None
    return (
        "needs a cell that is linear in its state (a LinearCell: MinGRUCell, MinLSTMCell, "
        "LRUCell or a subclass), or a chain with one; this cell is not. Use strategy='auto' "
        "or 'sequential'."
    )


# Never picked by `auto`: where the associative scan would pay, the chunked one does too,
# with less work.
# Every state is computed and read out at once, so the read-out can return them too.
ASSOCIATIVE = Strategy("associative", run, _not_linear, states=True)
CHUNKED = Strategy(
    "chunked",
    functools.partial(run, chunk=CHUNK),
    _not_linear,
    auto=policy.chunked_picks,
    states=True,
)
HOISTED = Strategy(
    "hoisted",
    functools.partial(run, scan=stepped_linear_scan),
    _not_linear,
    auto=policy.hoisted_picks,
    states=True,
)
