"""Composition: `chain` of cells, the stateless `Dense` layer, and `stateless` lifting.

A stateless layer is a cell whose state is the empty tuple `()`, so that it can sit in a
chain beside recurrent cells: the chain's params and state are the tuples of its parts'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._cell import Cell, PyTree, affine, check_callable, check_input, check_params, describe
from ._cells import _check_sizes, _name
from ._init import glorot_uniform
from ._recur import Recur

__all__ = ["Chain", "Dense", "Stateless", "chain", "stateless"]


def _check_empty_state(cell: object, h: object) -> None:
    if not (isinstance(h, tuple) and len(h) == 0):
        raise ValueError(
            f"{describe(cell)}: a stateless layer has the empty state (), got "
            f"{type(h).__name__}. Pass () as its state (initial_state returns it)."
        )


@dataclasses.dataclass(frozen=True, repr=False)
class Dense(Cell):
    r"""A fully connected layer as a stateless cell: its state is always `()`.

    .. math::

        y = \mathrm{act}(x W + b)

    Params (`init`): `{"w": (in, out), "b": (out,)}`; Glorot-uniform `w`, zero `b`.
    `x: (..., in)` -> `y: (..., out)`; the call is `cell(params, (), x) -> ((), y)`.

    Args:
      in_features: size of the last axis of `x`.
      out_features: size of the last axis of `y`.
      activation: applied to `x @ w + b`; `None` (the default) is the identity.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> d = rj.Dense(15, 5)
      >>> params = d.init(jax.random.key(0))
      >>> state, y = d(params, (), jnp.ones((2, 15)))
      >>> state, y.shape
      ((), (2, 5))
    """

    in_features: int
    out_features: int
    activation: Callable[[jax.Array], jax.Array] | None = None

    def __post_init__(self) -> None:
        _check_sizes(self, "in_features", "out_features")

    def __repr__(self) -> str:
        act = f", {_name(self.activation)}" if self.activation is not None else ""
        return f"Dense({self.in_features} => {self.out_features}{act})"

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {"w": (self.in_features, self.out_features), "b": (self.out_features,)}

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Params `{"w": (in, out), "b": (out,)}`: Glorot-uniform `w`, zero `b`."""
        return {
            "w": glorot_uniform(key, (self.in_features, self.out_features), dtype),
            "b": jnp.zeros((self.out_features,), dtype),
        }

    def initial_state(self, params: PyTree) -> tuple[()]:
        """The empty state `()`."""
        check_params(self, params, self._shapes())
        return ()

    def __call__(self, params: PyTree, h: PyTree, x: jax.Array) -> tuple[tuple[()], jax.Array]:
        dtype = check_params(self, params, self._shapes())
        _check_empty_state(self, h)
        y = affine(check_input(self, x, dtype), params["w"], params["b"])
        return (), (y if self.activation is None else self.activation(y))


@dataclasses.dataclass(frozen=True, repr=False)
class Stateless(Cell):
    """A function `fn(params, x) -> y` lifted into a cell with the empty state `()`.

    Made by `stateless`; see there.
    """

    fn: Callable[[PyTree, PyTree], PyTree]
    init_fn: Callable[[jax.Array], PyTree] | None = None

    def __repr__(self) -> str:
        return f"stateless({_name(self.fn)})"

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> PyTree:
        """`init_fn(key)`, or `()` for a layer without params (`init_fn=None`)."""
        del dtype  # the user's init_fn decides
        return () if self.init_fn is None else self.init_fn(key)

    def initial_state(self, params: PyTree) -> tuple[()]:
        """The empty state `()`."""
        return ()

    def __call__(self, params: PyTree, h: PyTree, x: PyTree) -> tuple[tuple[()], PyTree]:
        _check_empty_state(self, h)
        return (), self.fn(params, x)


def stateless(
    fn: Callable[[PyTree, PyTree], PyTree], init: Callable[[jax.Array], PyTree] | None = None
) -> Stateless:
    """Lift a layer `fn(params, x) -> y` into a cell `(params, (), x) -> ((), y)`.

    Use it to put any feed-forward function (an embedding, a normalisation, a Flax or Equinox
    module's apply) into a `chain` beside recurrent cells.

    Args:
      fn: `fn(params, x) -> y`; it may ignore `params`.
      init: optional `init(key) -> params`; without it the layer's params are `()`.

    Returns:
      A cell with `init(key)`, `initial_state(params) == ()` and
      `cell(params, (), x) == ((), fn(params, x))`.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> relu = rj.stateless(lambda params, x: jax.nn.relu(x))
      >>> relu(relu.init(jax.random.key(0)), (), jnp.array([-1.0, 2.0]))
      ((), Array([0., 2.], dtype=float32))
    """
    check_callable(fn, "stateless(fn)")
    return Stateless(fn, init)


@dataclasses.dataclass(frozen=True, repr=False)
class Chain(Cell):
    """Cells applied one after another; itself a cell. Made by `chain`; see there."""

    cells: tuple[Callable[..., Any], ...]

    def __repr__(self) -> str:
        return f"Chain({', '.join(describe(c) for c in self.cells)})"

    @property
    def in_features(self) -> int:  # type: ignore[override]
        """The first part's `in_features` (an `AttributeError` if it has none)."""
        return self.cells[0].in_features  # type: ignore[attr-defined]

    def _parts(self, what: str) -> list[Any]:
        missing = [describe(c) for c in self.cells if not hasattr(c, what)]
        if missing:
            raise TypeError(
                f"{self!r}: {what}() needs every part to have it, but {missing} do not. "
                "Plain function cells carry no defaults: build the params and state tuples "
                "yourself, one entry per part."
            )
        return list(self.cells)

    def init(self, key: jax.Array, dtype: Any = None) -> tuple[PyTree, ...]:
        """A tuple with one params entry per part, from independent keys.

        `dtype=None` calls each part's `init(key)` with its own default dtype (so user cells
        whose `init` takes only a key work); a dtype is passed on to every part.
        """
        parts = self._parts("init")
        keys = jax.random.split(key, len(parts))
        if dtype is None:
            return tuple(c.init(k) for c, k in zip(parts, keys, strict=True))
        return tuple(c.init(k, dtype) for c, k in zip(parts, keys, strict=True))

    def initial_state(self, params: PyTree) -> tuple[PyTree, ...]:
        """A tuple with one initial state per part (`()` for stateless parts)."""
        parts = self._parts("initial_state")
        self._check_tuple("params", params)
        return tuple(c.initial_state(p) for c, p in zip(parts, params, strict=True))

    def _check_tuple(self, name: str, value: object) -> None:
        n = len(self.cells)
        if type(value) is not tuple or len(value) != n:
            got = (
                f"{type(value).__name__} of length {len(value)}"
                if isinstance(value, (tuple, list))
                else type(value).__name__
            )
            fix = (
                f"Convert it with tuple({name}): a chain's {name} is a plain tuple."
                if isinstance(value, list) and len(value) == n
                else f"Use {self!r}.init(key) / .initial_state(params)."
            )
            raise ValueError(
                f"{self!r}: expected {name} to be a tuple with one entry per part ({n}), "
                f"got {got}. {fix}"
            )

    def __call__(
        self, params: tuple[PyTree, ...], h: tuple[PyTree, ...], x: PyTree
    ) -> tuple[tuple[PyTree, ...], PyTree]:
        self._check_tuple("params", params)
        self._check_tuple("state", h)
        states = []
        for cell, p, s in zip(self.cells, params, h, strict=True):
            s, x = cell(p, s, x)
            states.append(s)
        return tuple(states), x


def chain(*parts: Any) -> Any:
    """Compose cells (or `Recur` handles) into one, Flux's `Chain` for recurrent models.

    With cells, returns a `Chain` cell: its params and state are tuples with one entry per
    part, and a step runs the parts in order, each one's output being the next one's input::

        def chain_cell(params, h, x):
            new_h = []
            for cell, p, s in zip(cells, params, h):
                s, x = cell(p, s, x)
                new_h.append(s)
            return tuple(new_h), x

    With `Recur` handles, returns a `Recur` of that `Chain` whose params, state and state0
    are the tuples of the handles' fields, so `reset()` and `truncate()` act on every part at
    once. An initialised stateless layer is a handle too, with state `()`:
    `rj.Recur(rj.Dense(15, 5), key=k)` or `rj.Recur(rj.stateless(fn), params)`. Mixing handles
    and bare cells is a `TypeError` (a bare cell has no params to put in the handle).

    Args:
      *parts: at least one cell, or at least one `Recur`.

    Returns:
      A `Chain` cell, or a `Recur` wrapping one.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> m = rj.chain(rj.LSTM(10, 15, key=k1), rj.Recur(rj.Dense(15, 5), key=k2))
      >>> m
      Recur(Chain(LSTMCell(10 => 15), Dense(15 => 5)))
      >>> m, y = m(jnp.ones(10))
      >>> y.shape, len(m.state), m.state[1]
      ((5,), 2, ())
    """
    if not parts:
        raise TypeError("chain(): expected at least one cell or Recur handle, got none.")
    handles = [isinstance(p, Recur) for p in parts]
    if any(handles) and not all(handles):
        bare = [describe(p) for p, h in zip(parts, handles, strict=True) if not h]
        raise TypeError(
            f"chain(): got Recur handles mixed with bare cells {bare}. A bare cell has no "
            "params; wrap it as rj.Recur(cell, key=key) (stateless layers too), or pass only "
            "cells and make params with .init(key)."
        )
    if all(handles):
        return Recur(
            Chain(tuple(p.cell for p in parts)),
            tuple(p.params for p in parts),
            tuple(p.state for p in parts),
            state0=tuple(p.state0 for p in parts),
        )
    for i, p in enumerate(parts):
        check_callable(p, f"chain() part {i}")
    return Chain(tuple(parts))
