"""The options of one scan: built and checked in one place, then carried as one frozen,
hashable object (a static argument of the engine's `jax.jit`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .._checks import describe, index_or_none, positive_int

AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class Options:
    """What `scan` was asked to do, checked (see `scan` for each option)."""

    time_axis: int = 0
    reverse: bool = False
    truncate_every: int | None = None
    unroll: int | bool = 1
    strategy: str = AUTO
    remat: int | None = None
    chunk_size: int | None = None
    # Lengths known only under a trace cannot be range-checked: mark bad ones with NaN.
    unchecked: bool = False
    # The inputs carry forward-mode tangents (jax.jvp, jacfwd, hessian): see `forward_mode`.
    forward_mode: bool = False
    # Return the state after every step too (`history.py`).
    states: bool = False
    # Resets were given (strategies that cannot reset say so before tracing).
    resets: bool = False
    # The inputs are mapped by `jax.vmap` (`inputs.vmapped`).
    vmapped: bool = False

    def replace(self, **changes: Any) -> Options:
        return dataclasses.replace(self, **changes)


def _positive_or_none(name: str, option: str, value: object) -> int | None:
    """`value` as a positive int, or `None`; a `ValueError` naming `option` otherwise."""
    if value is None:
        return None
    n = positive_int(value)
    if n is None:
        raise ValueError(
            f"scan({name}): expected {option} to be a positive int or None, got {value!r}."
        )
    return n


def build(
    cell: object,
    registry: Mapping[str, object],
    *,
    time_axis: object = 0,
    reverse: object = False,
    truncate_every: object = None,
    unroll: object = 1,
    strategy: object = AUTO,
    remat: object = None,
    chunk_size: object = None,
    unchecked: bool = False,
    forward_mode: bool = False,
    states: object = False,
    resets: bool = False,
    vmapped: bool = False,
) -> Options:
    """Check every option of `scan` for `cell` and return them as `Options`; `registry`
    holds the strategies a user may name besides `"auto"` (whether the one named applies
    to the cell is `run.check_choice`'s question)."""
    name = describe(cell)
    k = _positive_or_none(name, "truncate_every", truncate_every)
    steps: int | bool
    if isinstance(unroll, bool):
        steps = unroll
    else:
        n = positive_int(unroll)
        if n is None:
            raise ValueError(
                f"scan({name}): expected unroll to be a positive int or a bool, got {unroll!r}."
            )
        steps = n
    axis = index_or_none(time_axis)
    if axis is None:
        raise TypeError(f"scan({name}): expected time_axis to be an int, got {time_axis!r}.")
    r = _positive_or_none(name, "remat", remat)
    if r is not None and k is not None and r % k:
        raise ValueError(
            f"scan({name}): remat={r} must be a multiple of truncate_every={k}, so that "
            f"every cut falls inside a block or on its start. Use e.g. "
            f"remat={r - r % k or k}."
        )
    chunk = _positive_or_none(name, "chunk_size", chunk_size)
    names = (AUTO, *registry)
    if strategy not in names:
        raise ValueError(
            f"scan({name}): expected strategy to be one of {names}, got {strategy!r}."
        )
    assert isinstance(strategy, str)
    if not isinstance(states, bool):
        raise TypeError(f"scan({name}): expected return_states to be a bool, got {states!r}.")
    return Options(
        time_axis=axis,
        reverse=bool(reverse),
        truncate_every=k,
        unroll=steps,
        strategy=strategy,
        remat=r,
        chunk_size=chunk,
        unchecked=unchecked,
        forward_mode=forward_mode,
        states=states,
        resets=resets,
        vmapped=vmapped,
    )
