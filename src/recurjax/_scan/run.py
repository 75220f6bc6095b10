"""The run pipeline: what happens to prepared, time-major inputs.

    reverse within lengths -> remat blocks -> composite (run_sequence) or strategy
    -> padding mask, once

Each stage calls `run` again for what is inside it (a block, a part of a composite), so
every option applies at every level and no stage knows a concrete cell class.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import jax

from .._contracts import CellFn, PyTree, SequenceCell
from .blocks import (
    Ctl,
    cut_at,
    first_step,
    in_blocks,
    reversed_within,
    steps_of,
    take_steps,
    zero_padding,
)
from .options import Options
from .strategies import AUTO_ORDER, REGISTRY


def run(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    opts: Options,
    ctl: Ctl | None = None,
) -> tuple[PyTree, PyTree]:
    """Run `cell` over time-major `xs` from the settled state `h` under the step controls
    `ctl`; return the final state and the outputs, zero at padded steps."""
    T = jax.tree.leaves(xs)[0].shape[0]
    if opts.reverse and ctl is not None and ctl.lengths is not None:
        return _reverse_within_lengths(cell, params, h, xs, opts, ctl, T)
    if opts.remat is not None and opts.remat < T:
        return _remat_blocks(cell, params, h, xs, opts, ctl)
    if isinstance(cell, SequenceCell):
        h, ys = cell.run_sequence(_part_runner(opts, ctl), params, h, xs)
    else:
        h, ys = choose(cell, xs, opts).run(cell, params, h, xs, opts, ctl)
    return h, zero_padding(None if ctl is None else ctl.valid, ys)


def choose(cell: object, xs: PyTree, opts: Options) -> ModuleType:
    """The strategy for a stepped cell: the one asked for where it applies, else the first
    of `AUTO_ORDER` that supports the cell and pays (under forward-mode autodiff, only the
    strategies JAX can differentiate that way)."""
    if opts.unroll != 1:  # `unroll` is lax.scan's: only the sequential strategy has it
        return REGISTRY["sequential"]

    def allowed(m: ModuleType) -> bool:
        return (m.FORWARD_MODE or not opts.forward_mode) and m.supports(cell)

    asked = REGISTRY.get(opts.strategy)
    if asked is not None and allowed(asked):
        return asked
    return next(m for m in AUTO_ORDER if allowed(m) and m.pays(cell, xs))


def _part_runner(opts: Options, ctl: Ctl | None) -> Any:
    """The `PartRunner` a composite receives: `run` with this scan's options and controls."""

    def run_part(
        part: Any,
        params: PyTree,
        h: PyTree,
        xs: PyTree,
        *,
        select: Any = None,
        reverse: bool = False,
    ) -> tuple[PyTree, PyTree]:
        part_ctl = ctl
        if ctl is not None and ctl.state0 is not None and select is not None:
            part_ctl = ctl._replace(state0=select(ctl.state0))
        part_opts = opts.replace(reverse=opts.reverse != reverse) if reverse else opts
        return run(part, params, h, xs, part_opts, part_ctl)

    return run_part


def _reverse_within_lengths(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    opts: Options,
    ctl: Ctl,
    T: int,
) -> tuple[PyTree, PyTree]:
    """Padding stays at the end: reverse each sequence within its own length, run forward,
    and put the outputs back (the permutation is its own inverse)."""
    assert ctl.lengths is not None
    flip = functools.partial(take_steps, reversed_within(ctl.lengths, T))
    ctl = ctl._replace(reset=None if ctl.reset is None else flip(ctl.reset), lengths=None)
    h, ys = run(cell, params, h, jax.tree.map(flip, xs), opts.replace(reverse=False), ctl)
    return h, jax.tree.map(flip, ys)


def _remat_blocks(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    opts: Options,
    ctl: Ctl | None,
) -> tuple[PyTree, PyTree]:
    """Checkpoint every `remat` steps: the backward pass keeps only the state at each block
    start and recomputes a block's forward pass when it reaches it (`jax.checkpoint`).

    `truncate_every` divides `remat` (checked in `options.build`), so a cut falls on a block
    start exactly when that block's first step is a multiple of it; inside a block the
    strategy cuts as usual.
    """
    k = opts.truncate_every
    inner = opts.replace(reverse=False, remat=None)

    def block(h: PyTree, data: Any, start: jax.Array) -> tuple[PyTree, PyTree]:
        xb, valid, reset = data
        if k is not None:
            h = cut_at(h, start, k, first_step(valid))
        block_ctl = None if ctl is None else Ctl(valid, reset, None, ctl.state0)
        return run(cell, params, h, xb, inner, block_ctl)

    assert opts.remat is not None
    return in_blocks(block, h, steps_of(xs, ctl), opts.remat, opts.reverse, checkpoint=True)
