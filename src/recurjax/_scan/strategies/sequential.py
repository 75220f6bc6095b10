"""The sequential strategy: `lax.scan` of the cell itself, differentiated by JAX.

The reference every other strategy is tested against. It runs every cell and goes through
every JAX transformation, forward-mode autodiff included.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
from jax import lax

from ..._checks import scope_name
from ..._contracts import CellFn, PyTree, Strategy
from ..blocks import StepMasks, cut_at, first_step, in_blocks, select, steps_of

if TYPE_CHECKING:
    from ..options import Options


def run(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    opts: Options,
    masks: StepMasks | None = None,
) -> tuple[PyTree, PyTree]:
    """`lax.scan` of the cell, with resets, frozen padded steps and truncation blocks.

    Outputs at padded steps are whatever the cell gives there (its state is frozen and its
    input zero); the engine zeroes them once, after the strategy.
    """
    T = jax.tree.leaves(xs)[0].shape[0]
    s0 = None if masks is None else masks.state0
    scope = scope_name(cell)

    def step(h: PyTree, data: Any) -> tuple[PyTree, PyTree]:
        x, valid, reset = data
        if reset is not None:
            h = jax.tree.map(functools.partial(select, reset), s0, h)
        with jax.named_scope(scope):
            new, y = cell(params, h, x)
        if valid is not None:
            new = jax.tree.map(functools.partial(select, valid), new, h)
        return new, y

    data = steps_of(xs, masks)
    k, unroll = opts.truncate_every, opts.unroll
    if k is None or k >= T:
        return lax.scan(step, h, data, reverse=opts.reverse, unroll=unroll)

    def block(h: PyTree, xb: PyTree, start: jax.Array) -> tuple[PyTree, PyTree]:
        h = cut_at(h, start, k, first_step(xb[1]))
        return lax.scan(step, h, xb, unroll=unroll)

    return in_blocks(block, h, data, k, opts.reverse)


def _always(cell: object, xs: PyTree, backend: str) -> bool:
    return True


# Every cell, every transformation (forward mode too); `auto`'s fallback, last in its order.
SEQUENTIAL = Strategy("sequential", run, forward_mode=True, auto=_always, states=True)
