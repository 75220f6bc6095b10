"""The run pipeline: what happens to prepared, time-major inputs.

    reverse within lengths -> remat blocks (a causal cell) -> composite (run_sequence)
    or strategy -> padding mask, once

Each stage calls `run` again for what is inside it (a block, a part of a composite), so
every option applies at every level and no stage knows a concrete cell class. Which
strategy runs a cell is decided here, once per cell, by `choose`; `check_choice` tells a
user who named a strategy that applies nowhere in their cell.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from .._checks import describe
from .._contracts import CellFn, PyTree, SequenceCell, Strategy, is_causal
from .blocks import (
    StepMasks,
    cut_at,
    first_step,
    in_blocks,
    reversed_within,
    steps_of,
    take_steps,
    zero_padding,
)
from .history import with_states
from .options import Options
from .strategies import AUTO_ORDER, REGISTRY, SEQUENTIAL


def run(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    opts: Options,
    masks: StepMasks | None = None,
) -> tuple[PyTree, PyTree]:
    """Run `cell` over time-major `xs` from the settled state `h` under the step controls
    `masks`; return the final state and the outputs, zero at padded steps."""
    T = jax.tree.leaves(xs)[0].shape[0]
    if opts.reverse and masks is not None and masks.lengths is not None:
        return _reverse_within_lengths(cell, params, h, xs, opts, masks, T)
    if opts.remat is not None and opts.remat < T and is_causal(cell):
        return _remat_blocks(cell, params, h, xs, opts, masks)
    strategy = choose(cell, xs, opts)
    if strategy is None:  # a composite, part by part (a non-causal one: each part in remat
        assert isinstance(cell, SequenceCell)  # blocks of its own)
        h, ys = cell.run_sequence(_part_runner(opts, masks), params, h, xs)
    else:
        with jax.named_scope(f"recurjax.{strategy.name}"):
            h, ys = strategy.run(cell, params, h, xs, opts, masks)
    return h, zero_padding(None if masks is None else masks.valid, ys)


def _applies(strategy: Strategy, cell: object, opts: Options) -> bool:
    """Whether `strategy` can run `cell` (a stepped cell, or a whole composite for a
    strategy that takes composites) under `opts`, forward mode included."""
    return (
        (strategy.composites or not isinstance(cell, SequenceCell))
        and (strategy.forward_mode or not opts.forward_mode)
        and (strategy.states or not opts.states)
        and strategy.unsupported(cell, opts) is None
    )


def choose(cell: object, xs: PyTree, opts: Options) -> Strategy | None:
    """The strategy that runs `cell`: the one asked for where it applies, else the first of
    `AUTO_ORDER` that applies and that `auto` picks for `xs` on this backend. `None` for a
    composite that no strategy takes whole: it runs part by part."""
    if opts.unroll != 1:  # `unroll` is lax.scan's: only the sequential strategy has it
        return None if isinstance(cell, SequenceCell) else SEQUENTIAL
    asked = REGISTRY.get(opts.strategy)
    if asked is not None and _applies(asked, cell, opts):
        return asked
    backend = jax.default_backend()
    picks = (s for s in AUTO_ORDER if _applies(s, cell, opts) and s.auto(cell, xs, backend))
    return next(picks, None)


def check_choice(cell: object, opts: Options) -> None:
    """Raise where a strategy the user named cannot run anywhere in `cell`: a `TypeError`
    under forward-mode autodiff for a strategy JAX cannot differentiate that way, else a
    `ValueError` with the strategy's own reason when it applies to no part of the cell."""
    strategy = REGISTRY.get(opts.strategy)
    if strategy is None:
        return
    name = describe(cell)
    cells = _candidates(cell, strategy) or [cell]
    reasons = [strategy.unsupported(c, opts) for c in cells]
    if all(reasons):
        raise ValueError(f"scan({name}): strategy={opts.strategy!r} {reasons[0]}")
    if opts.forward_mode and not strategy.forward_mode:
        raise TypeError(
            f"scan({name}): strategy={opts.strategy!r} has a hand-written reverse-mode "
            "derivative (a jax.custom_vjp), which JAX cannot differentiate in forward mode "
            "(jax.jvp, jax.jacfwd, jax.hessian). Use strategy='sequential', or 'auto', which "
            "picks it under forward mode."
        )
    if opts.states and not _applies(strategy, with_states(cell), opts):
        why = (
            "a composite (a chain, bidirectional, residual) returns its states step by step, "
            "as one cell"
            if isinstance(cell, SequenceCell)
            else "it does not form the state after every step"
        )
        raise ValueError(
            f"scan({name}): strategy={opts.strategy!r} cannot return the state after every "
            f"step (return_states=True): {why}. Use strategy='auto', which runs one that can "
            "(the sequential strategy, or a linear cell's), or name 'sequential'."
        )


def _candidates(cell: object, strategy: Strategy) -> list[Any]:
    """What `strategy` could run inside `cell`: its stepped cells, and its composites too
    (nested, each before its parts) for a strategy that takes composites."""
    if not isinstance(cell, SequenceCell):
        return [cell]
    inner = [c for part in cell.parts() for c in _candidates(part, strategy)]
    return [cell, *inner] if strategy.composites else inner


def _part_runner(opts: Options, masks: StepMasks | None) -> Any:
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
        part_masks = masks
        if masks is not None and masks.state0 is not None and select is not None:
            part_masks = masks._replace(state0=select(masks.state0))
        part_opts = opts.replace(reverse=opts.reverse != reverse) if reverse else opts
        return run(part, params, h, xs, part_opts, part_masks)

    return run_part


def _reverse_within_lengths(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    opts: Options,
    masks: StepMasks,
    T: int,
) -> tuple[PyTree, PyTree]:
    """Padding stays at the end: reverse each sequence within its own length, run forward,
    and put the outputs back (the permutation is its own inverse)."""
    assert masks.lengths is not None
    flip = functools.partial(take_steps, reversed_within(masks.lengths, T))
    masks = masks._replace(reset=None if masks.reset is None else flip(masks.reset), lengths=None)
    h, ys = run(cell, params, h, jax.tree.map(flip, xs), opts.replace(reverse=False), masks)
    return h, jax.tree.map(flip, ys)


def _remat_blocks(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: PyTree,
    opts: Options,
    masks: StepMasks | None,
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
        block_masks = None if masks is None else StepMasks(valid, reset, None, masks.state0)
        return run(cell, params, h, xb, inner, block_masks)

    assert opts.remat is not None
    return in_blocks(block, h, steps_of(xs, masks), opts.remat, opts.reverse, checkpoint=True)
