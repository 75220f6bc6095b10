"""Sequence parallelism: a linear cell over one long sequence whose time axis is split
over the devices of a mesh axis (`jax.shard_map`); see `sequence_parallel_scan`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from .._contracts import PyTree
from .blocks import zero_padding
from .inputs import Prepared
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

    spec_t = PartitionSpec(axis)
    fn = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(), spec_t, spec_t, spec_t),
        out_specs=(PartitionSpec(), spec_t),
        check_vma=False,
    )
    return fn(params, h, s0, xs, valid, reset)
