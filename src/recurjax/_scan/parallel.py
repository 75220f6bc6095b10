"""Sequence parallelism: a linear cell or a matrix memory over one long sequence whose time
axis is split over the devices of a mesh axis (`jax.shard_map`); see
`sequence_parallel_scan`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from .._contracts import PyTree
from .blocks import StepMasks, zero_padding
from .inputs import Prepared
from .options import Options
from .strategies import chunkwise
from .strategies.linear import coefficients, linear_scan


def run_split(cell: Any, params: PyTree, prepared: Prepared, mesh: Any, axis: str) -> Any:
    """Each device runs its block of steps from a zero state with the associative scan,
    keeping the block's composed map `h -> A h + B`; the maps are gathered, each device
    folds the maps of the devices before it into its entering state, and corrects its
    block's states with it. Only the small maps cross devices, once."""
    xs, _, h, masks = prepared
    valid, reset, _, s0 = (None, None, None, None) if masks is None else masks
    D = mesh.shape[axis]

    def local(params: PyTree, h: jax.Array, s0: Any, xs: jax.Array, valid: Any, reset: Any) -> Any:
        a, b = coefficients(cell, params, xs, valid, reset, s0)
        from_zero = linear_scan(jnp.zeros_like(h), a, b)  # the block's states from zero: B_t
        gains = linear_scan(jnp.ones_like(h), a, jnp.zeros_like(b))  # prod of a: A_t
        maps = lax.all_gather((gains[-1], from_zero[-1]), axis)  # (D, ...) each
        me = lax.axis_index(axis)

        # Fold the maps in device order; keep the state entering this device and the last.
        def step(carry: jax.Array, m: Any) -> tuple[jax.Array, jax.Array]:
            A, B, d = m
            new = A * carry + B
            entering = jnp.where(d == me, carry, jnp.zeros_like(carry))
            return new, entering

        final, entering = lax.scan(step, h, (*maps, jnp.arange(D)))
        hs = from_zero + gains * entering.sum(0)[None]
        return final, zero_padding(valid, cell.readout(params, hs, xs))

    return _split_in_time(local, mesh, axis)(params, h, s0, xs, valid, reset)


def run_split_memory(cell: Any, params: PyTree, prepared: Prepared, mesh: Any, axis: str) -> Any:
    """A matrix memory: each device runs its block chunkwise from a zero state, keeping the
    block's final state and its total log-decay (per head or key channel; the delta rule:
    the product of its steps' factors; the block's state forgets the entering one after a
    reset); the pairs are gathered, each device folds those
    of the devices before it into its true entering state and runs its block again from it.
    The final state is the last block's. Only the block states cross devices, once."""
    xs, _, h, masks = prepared
    valid, reset, _, s0 = (None, None, None, None) if masks is None else masks
    D = mesh.shape[axis]
    opts = Options(strategy="chunkwise")

    def local(params: PyTree, h: Any, s0: Any, xs: jax.Array, valid: Any, reset: Any) -> Any:
        block_masks = None if masks is None else StepMasks(valid, reset, None, s0)
        zero = jax.tree.map(jnp.zeros_like, h)
        from_zero, _ = chunkwise.run(cell, params, zero, xs, opts, block_masks)
        steps = cell.memory_steps(params, xs)
        batch = tuple(xs.shape[1:-1])
        if steps.beta is not None:  # the delta rule: S -> S G + S_zero, G: (heads, d_k, d_k)
            gain = chunkwise.delta_gain(steps, block_masks, opts)
            total = gain.reshape(*batch, *gain.shape[1:])
        else:
            log_a = steps.log_decay  # (Tb, *batch, heads[, d_k])
            if valid is not None:  # a padded step does not decay
                per_step = valid.reshape(*valid.shape, *(1,) * (log_a.ndim - valid.ndim))
                log_a = jnp.where(per_step, log_a, 0)
            total = log_a.sum(0)
        resets = jnp.zeros(batch, bool) if reset is None else reset.any(0)
        maps = lax.all_gather((total, resets, cell.memory_state(from_zero)), axis)
        me = lax.axis_index(axis)

        def step(carry: Any, m: Any) -> tuple[Any, Any]:
            total, resets, block, d = m
            entering = jax.tree.map(lambda a: jnp.where(d == me, a, jnp.zeros_like(a)), carry)
            return _fold(cell, carry, total, resets, block), entering

        _, entering = lax.scan(step, cell.memory_state(h), (*maps, jnp.arange(D)))
        entering = cell.cell_state(*(None if a is None else a.sum(0) for a in entering))
        final, ys = chunkwise.run(cell, params, entering, xs, opts, block_masks)
        final = jax.tree.map(lambda a: lax.all_gather(a, axis)[D - 1], final)
        return final, zero_padding(valid, ys)

    return _split_in_time(local, mesh, axis)(params, h, s0, xs, valid, reset)


def _fold(cell: Any, carry: Any, total: jax.Array, resets: jax.Array, block: Any) -> Any:
    """The memory after a block, `(S, n, m)` per head, from the memory `carry` entering it,
    the block's total log-decay (the delta rule: its gain `G`, `S -> S G`) and its state run
    from zero (`block`), which is the result where the block has a reset. A normalised
    memory stays stabilised: the result's `m` is the larger of the decayed entering one and
    the block's, as the cell's step keeps it (an empty memory adds no term)."""
    S, n, m = carry
    S_z, n_z, m_z = block
    fresh = resets.reshape(*resets.shape, 1)  # (*batch, 1): over the heads
    if total.ndim == S.ndim:  # the delta rule's gain, (*batch, heads, d_k, d_k)
        return jnp.where(fresh[..., None, None], S_z, S @ total + S_z), None, None
    if not cell.normalised:
        per_channel = total.ndim == S.ndim - 1  # (*batch, heads, d_k) scales S's columns
        a = jnp.exp(total)[..., None, :] if per_channel else jnp.exp(total)[..., None, None]
        return jnp.where(fresh[..., None, None], S_z, a * S + S_z), None, None
    empty, empty_z = chunkwise._empty(S, n), chunkwise._empty(S_z, n_z)
    decayed = m + total
    m_new = jnp.where(empty_z, decayed, jnp.where(empty, m_z, jnp.maximum(decayed, m_z)))
    # both factors at most 1; the minimum keeps a branch that `where` drops finite
    f = jnp.where(empty, 0, jnp.exp(jnp.minimum(decayed - m_new, 0)))
    f_z = jnp.where(empty_z, 0, jnp.exp(jnp.minimum(m_z - m_new, 0)))
    S_new = f[..., None, None] * S + f_z[..., None, None] * S_z
    n_new = f[..., None] * n + f_z[..., None] * n_z
    return (
        jnp.where(fresh[..., None, None], S_z, S_new),
        jnp.where(fresh[..., None], n_z, n_new),
        jnp.where(fresh, m_z, m_new),
    )


def _split_in_time(local: Any, mesh: Any, axis: str) -> Any:
    """`local(params, h, s0, xs, valid, reset) -> (final, ys)` under `jax.shard_map`: the
    params and states replicated, the time-major inputs and outputs split on `axis`."""
    spec_t = PartitionSpec(axis)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(), spec_t, spec_t, spec_t),
        out_specs=(PartitionSpec(), spec_t),
        check_vma=False,
    )
