"""Stateless layers: `Dense` and `stateless`, cells whose state is the empty tuple `()`.

A stateless layer can sit in a chain beside recurrent cells (the chain's params and state
are the tuples of its parts'). `Dense` is time-parallel: the scan engine runs it over a
whole sequence as one matmul (it implements the `SequenceCell` protocol).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from ._cells.base import _CellBase, affine
from ._checks import check_callable, check_input, describe, fn_name
from ._contracts import Cell, PartRunner, PyTree
from ._init import glorot_uniform

__all__ = ["Dense", "Stateless", "stateless"]


def _check_empty_state(cell: object, h: object) -> None:
    if not (isinstance(h, tuple) and len(h) == 0):
        raise ValueError(
            f"{describe(cell)}: a stateless layer has the empty state (), got "
            f"{type(h).__name__}. Pass () as its state (initial_state returns it)."
        )


@dataclasses.dataclass(frozen=True, repr=False)
class Dense(_CellBase):
    r"""A fully connected layer as a stateless cell: its state is always `()`.

    $$
    y = \mathrm{act}(x W + b)
    $$

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

    sizes: ClassVar[tuple[str, ...]] = ("in_features", "out_features")
    shown: ClassVar[tuple[str, ...]] = ("activation",)

    in_features: int
    out_features: int
    activation: Callable[[jax.Array], jax.Array] | None = None

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes.

        Examples:
          >>> import recurjax as rj
          >>> rj.Dense(3, 4).param_shapes()
          {'w': (3, 4), 'b': (4,)}
        """
        return {"w": (self.in_features, self.out_features), "b": (self.out_features,)}

    def parts(self) -> tuple[()]:
        """No sub-cells (`SequenceCell` protocol)."""
        return ()

    def run_sequence(
        self, run: PartRunner, params: PyTree, h: PyTree, xs: jax.Array
    ) -> tuple[tuple[()], jax.Array]:
        """Every step at once (`SequenceCell` protocol): one matmul over `(T, ..., in)`."""
        return self(params, h, xs)

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Params `{"w": (in, out), "b": (out,)}`: Glorot-uniform `w`, zero `b`."""
        return {
            "w": glorot_uniform(key, (self.in_features, self.out_features), dtype),
            "b": jnp.zeros((self.out_features,), dtype),
        }

    def initial_state(self, params: PyTree) -> tuple[()]:
        """The empty state `()`."""
        self._dtype(params)
        return ()

    def __call__(self, params: PyTree, h: PyTree, x: jax.Array) -> tuple[tuple[()], jax.Array]:
        dtype = self._dtype(params)
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
        return f"stateless({fn_name(self.fn)})"

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
