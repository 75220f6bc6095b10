"""The state history (`scan(..., return_states=True)`): the cell wrapped so that every step
also outputs the state it leaves, `(params, h, x) -> (h', (y, h'))`.

Any strategy that runs a stepped cell then stacks the states with the outputs; a cell linear
in its state keeps its protocol, and its strategies, which compute every state anyway, hand
them to the wrapper's read-out. The wrapper has no fused kernel, no matrix memory and no
parts, so those strategies (and a composite's part-by-part run) never see it: `auto` runs a
composite's history step by step, and naming a strategy that cannot give it is an error
(`api.scan`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from .._contracts import CellFn, PyTree, is_linear
from .blocks import select


@dataclasses.dataclass(frozen=True)
class _States:
    """`cell` whose output is `(y, h')`: the state after the step beside the output."""

    cell: CellFn

    def __call__(self, params: PyTree, h: PyTree, x: PyTree) -> tuple[PyTree, PyTree]:
        h, y = self.cell(params, h, x)
        return h, (y, h)


@dataclasses.dataclass(frozen=True)
class _LinearStates(_States):
    """The same for a cell linear in its state (`LinearRecurrence`): its coefficients as
    they are, and a read-out that returns the states it reads."""

    linear_recurrence = True

    @property
    def hidden_size(self) -> Any:  # read by `auto`'s policy
        return getattr(self.cell, "hidden_size", None)

    @property
    def time_invariant(self) -> Any:
        return getattr(self.cell, "time_invariant", True)

    def coefficients(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.cell.coefficients(params, x)  # type: ignore[attr-defined]

    def readout(self, params: PyTree, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.cell.readout(params, h, x), h  # type: ignore[attr-defined]


def with_states(cell: Any) -> _States:
    """`cell` wrapped to output `(y, h')` at every step."""
    return _LinearStates(cell) if is_linear(cell) else _States(cell)


def frozen_past_lengths(states: PyTree, h: PyTree, valid: jax.Array | None) -> PyTree:
    """The stacked states `(T, *batch, ...)` with every step past a sequence's length
    holding its final state `h` (the engine zeroed them, as it zeroes outputs there)."""
    if valid is None:
        return states
    return jax.tree.map(lambda s, f: select(valid, s, jnp.broadcast_to(f, s.shape)), states, h)
