"""The `Recur` handle: a cell, its params and its carried state, as one immutable pytree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax.tree_util import GetAttrKey

from ._cells.classic import GRUCell, GRUv3Cell, LSTMCell, RNNCell
from ._checks import check_callable, check_state_change, describe, index_or_none
from ._contracts import CellFn, Handle, PyTree
from ._dropout import seed_dropout
from ._scan import ScanOptions, scan

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["GRU", "LSTM", "RNN", "GRUv3", "Recur"]


@jax.tree_util.register_pytree_with_keys_class
class Recur(Handle):
    """A stateful view of a cell: `m(x)` runs one step and returns `(new_m, y)`.

    `Recur` holds the `cell` (static: part of the pytree structure, so it must be hashable),
    its `params`, the original state `state0` and the current state `state`. It never
    mutates: every method returns a new handle. It is a pytree with children `params`,
    `state0` and `state`, so it goes through `jax.jit`, `jax.grad`, `jax.vmap`, `jax.tree.map`
    and optax unchanged::

        m, y = m(x)        # state, y = cell(params, state, x); m.state <- state
        m, ys = m.scan(xs) # the same for every step of xs; m.state <- the final state
        m = m.reset()      # state <- state0
        m = m.truncate()   # state <- stop_gradient(state): no gradient flows further back

    A learnable initial state is `state0` itself: compute the loss after `m.reset()` and
    differentiate with respect to the whole handle; the gradient reaches `state0` (and is
    exactly zero for `state`, which `reset` discards). To keep the initial state fixed,
    differentiate with respect to `m.params` only.

    Args:
      cell: a library cell or any function `(params, h, x) -> (h, y)`.
      params: the cell's params; may be omitted when `key` is given.
      state: the current state; defaults to `cell.initial_state(params)` (plain function
        cells have no default and need it).
      state0: the state `reset()` returns to; defaults to `state`.
      key: a PRNG key to make `params = cell.init(key)`, instead of passing `params`.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> m = rj.Recur(rj.RNNCell(2, 3), key=jax.random.key(0))
      >>> m
      Recur(RNNCell(2 => 3, tanh))
      >>> x = jnp.ones(2)
      >>> m1, y1 = m(x)
      >>> m2, y2 = m1(x)
      >>> bool(jnp.allclose(y1, y2))   # same input, new state, new output
      False
      >>> bool(jnp.allclose(m2.reset().state, m.state0))
      True
    """

    __slots__ = ("cell", "params", "state", "state0")

    cell: Any
    params: PyTree
    state: PyTree
    state0: PyTree

    def __init__(
        self,
        cell: CellFn,
        params: PyTree = None,
        state: PyTree = None,
        *,
        state0: PyTree = None,
        key: jax.Array | None = None,
    ) -> None:
        check_callable(cell, "Recur(cell, ...)")
        name = describe(cell)
        if key is not None:
            if params is not None:
                raise TypeError(f"Recur({name}): pass params or key=, not both.")
            if not hasattr(cell, "init"):
                raise TypeError(
                    f"Recur({name}): key= needs a cell with an init(key) method; a plain "
                    "function cell needs its params passed: Recur(fn, params, h0)."
                )
            params = cell.init(key)  # type: ignore[attr-defined]
        elif params is None:
            raise TypeError(
                f"Recur({name}): expected params (or key= to initialise them), got neither. "
                f"Write Recur(cell, cell.init(key)) or Recur(cell, key=key)."
            )
        if state is None:
            if not hasattr(cell, "initial_state"):
                raise TypeError(
                    f"Recur({name}): a plain function cell has no initial_state(); pass the "
                    "state explicitly: Recur(fn, params, h0)."
                )
            state = cell.initial_state(params)  # type: ignore[attr-defined]
        for field, value in (
            ("cell", cell),
            ("params", params),
            ("state", state),
            ("state0", state if state0 is None else state0),
        ):
            object.__setattr__(self, field, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(
            f"Recur is immutable: cannot set {name!r}. Use m.replace({name}=...), which "
            "returns a new handle."
        )

    def __repr__(self) -> str:
        return f"Recur({describe(self.cell)})"

    # --- pytree protocol -------------------------------------------------------------------
    def tree_flatten_with_keys(self) -> tuple[Any, Any]:
        children = tuple((GetAttrKey(k), getattr(self, k)) for k in ("params", "state0", "state"))
        return children, self.cell

    @classmethod
    def tree_unflatten(cls, cell: Any, children: Any) -> Recur:
        obj = object.__new__(cls)
        for field, value in zip(
            ("cell", "params", "state0", "state"), (cell, *children), strict=True
        ):
            object.__setattr__(obj, field, value)
        return obj

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # copy.copy, copy.deepcopy (and pickle, for transient use) rebuild through the pytree
        # constructor; the default protocol would go through the forbidden __setattr__.
        return Recur.tree_unflatten, (self.cell, (self.params, self.state0, self.state))

    # --- the API ---------------------------------------------------------------------------
    def replace(self, **changes: Any) -> Recur:
        """A copy with some of `cell`, `params`, `state`, `state0` replaced (no checks)."""
        unknown = set(changes) - set(self.__slots__)
        if unknown:
            raise TypeError(f"Recur.replace: unknown fields {sorted(unknown)}.")
        fields = {k: changes.get(k, getattr(self, k)) for k in ("params", "state0", "state")}
        return Recur.tree_unflatten(
            changes.get("cell", self.cell), (fields["params"], fields["state0"], fields["state"])
        )

    def __call__(self, x: PyTree) -> tuple[Recur, PyTree]:
        """One step: `(Recur with the new state, y)`; `x: (..., in)`.

        An unbatched state meeting a batched `x` is broadcast to its batch and stays batched;
        a batched state meeting another batch shape raises `ValueError` (call `reset()`
        between independent batches). For any cell, function cells included, the returned
        state must have the structure and shapes of the one given, except that an unbatched
        state may gain leading batch axes; anything else raises `ValueError`.
        """
        state, y = self.cell(self.params, self.state, x)
        check_state_change(repr(self), self.state, state)
        return self.replace(state=state), y

    def scan(
        self, xs: PyTree, *, return_states: bool = False, **options: Unpack[ScanOptions]
    ) -> tuple[Any, ...]:
        """Run every step of `xs`: `(Recur holding the final state, ys)`.

        `xs` is an array `(T, ..., in)` or a list (or plain tuple) of per-step arrays, which
        are stacked on a new leading time axis; `ys` is always one stacked array. Keyword
        arguments (`time_axis`, `reverse`, `truncate_every`, `unroll`, `strategy`, `remat`,
        `lengths`, `resets`, `state0`) are those of `recurjax.scan`, which this calls;
        `resets` return the state to the handle's `state0` unless `state0=` is given. With
        `return_states=True` it returns `(Recur, ys, states)`, the state after every step
        stacked on the time axis (`recurjax.scan`'s option).

        Examples:
          >>> import jax, jax.numpy as jnp, recurjax as rj
          >>> m = rj.GRU(3, 4, key=jax.random.key(0))
          >>> m, ys = m.scan([jnp.ones(3), jnp.zeros(3)])
          >>> ys.shape, m.state.shape
          ((2, 4), (4,))
        """
        if options.get("resets") is not None:
            options.setdefault("state0", self.state0)
        state, *out = scan(
            self.cell, self.params, self.state, xs, return_states=return_states, **options
        )
        return (self.replace(state=state), *out)

    def batched(self, batch: int | tuple[int, ...]) -> Recur:
        """The handle with `state` and `state0` broadcast to leading batch axes `batch`.

        A handle starts unbatched (`state: (H,)`) and its state becomes `(*batch, H)` on the
        first batched step, so a jitted step traces once more for that first call, and again
        after each `reset()` to the unbatched `state0`. Batching both up front keeps every
        shape fixed from the first step: one compile per input shape. (A learnable initial
        state shared by all examples stays unbatched: keep `state0` as is in that case.)

        Args:
          batch: the batch shape, an int `B` or a tuple such as `(B,)` or `(B1, B2)`.

        Examples:
          >>> import jax, recurjax as rj
          >>> m = rj.LSTM(3, 4, key=jax.random.key(0)).batched(8)
          >>> m.state.h.shape, m.state0.c.shape, m.reset().state.h.shape
          ((8, 4), (8, 4), (8, 4))
        """
        parts = (batch,) if index_or_none(batch) is not None else batch
        sizes = [index_or_none(n) for n in parts] if isinstance(parts, tuple) else [None]
        if any(n is None or n < 0 for n in sizes):
            raise TypeError(
                f"{self!r}.batched: expected batch to be an int or a tuple of ints, got {batch!r}."
            )
        shape = tuple(n for n in sizes if n is not None)
        if hasattr(self.cell, "initial_state"):
            unbatched = jax.eval_shape(self.cell.initial_state, self.params)
            for name in ("state", "state0"):
                ranks = [jnp.ndim(a) for a in jax.tree.leaves(getattr(self, name))]
                if ranks != [len(a.shape) for a in jax.tree.leaves(unbatched)]:
                    raise ValueError(
                        f"{self!r}.batched: {name} is already batched (leaf shapes "
                        f"{[jnp.shape(a) for a in jax.tree.leaves(getattr(self, name))]}); "
                        "batched() adds batch axes to an unbatched handle. Call it right after "
                        "making the handle."
                    )

        def grow(a: Any) -> jax.Array:
            return jnp.broadcast_to(a, (*shape, *jnp.shape(a)))

        return self.replace(
            state=jax.tree.map(grow, self.state), state0=jax.tree.map(grow, self.state0)
        )

    def reset(self) -> Recur:
        """The handle with `state = state0` (Flux's `reset!`); gradients then reach `state0`."""
        return self.replace(state=self.state0)

    def seed_dropout(self, key: jax.Array | None) -> Recur:
        """The handle with dropout on (a fresh key in every dropout slot) or off (`None`).

        Sets both `state` and `state0` (`rj.seed_dropout` on each, from independent keys),
        so `reset()` keeps dropout on; seed again with a new key for every batch, since the
        masks are a function of the key.

        Examples:
          >>> import jax, recurjax as rj
          >>> m = rj.Recur(rj.chain(rj.GRUCell(3, 4), rj.Dropout(0.5)), key=jax.random.key(0))
          >>> m.state[1] is None, m.seed_dropout(jax.random.key(1)).state[1].dtype
          (True, key<fry>)
        """
        k0, k1 = (None, None) if key is None else jax.random.split(key)
        return self.replace(
            state=seed_dropout(self.cell, self.state, k0),
            state0=seed_dropout(self.cell, self.state0, k1),
        )

    def truncate(self) -> Recur:
        """The handle with `state = stop_gradient(state)`: same values, no gradient back."""
        return self.replace(state=jax.tree.map(jax.lax.stop_gradient, self.state))


def RNN(in_features: int, hidden_size: int, *, key: jax.Array, **kwargs: Any) -> Recur:
    """`Recur(RNNCell(in_features, hidden_size, **kwargs), key=key)`: Flux's `RNN`.

    Examples:
      >>> import jax, recurjax as rj
      >>> rj.RNN(10, 5, key=jax.random.key(0))
      Recur(RNNCell(10 => 5, tanh))
    """
    return Recur(RNNCell(in_features, hidden_size, **kwargs), key=key)


def LSTM(in_features: int, hidden_size: int, *, key: jax.Array, **kwargs: Any) -> Recur:
    """`Recur(LSTMCell(in_features, hidden_size, **kwargs), key=key)`: Flux's `LSTM`.

    Examples:
      >>> import jax, recurjax as rj
      >>> rj.LSTM(10, 15, key=jax.random.key(0)).state.h.shape
      (15,)
    """
    return Recur(LSTMCell(in_features, hidden_size, **kwargs), key=key)


def GRU(in_features: int, hidden_size: int, *, key: jax.Array) -> Recur:
    """`Recur(GRUCell(in_features, hidden_size), key=key)`: Flux's `GRU`.

    Examples:
      >>> import jax, recurjax as rj
      >>> rj.GRU(10, 5, key=jax.random.key(0))
      Recur(GRUCell(10 => 5))
    """
    return Recur(GRUCell(in_features, hidden_size), key=key)


def GRUv3(in_features: int, hidden_size: int, *, key: jax.Array) -> Recur:
    """`Recur(GRUv3Cell(in_features, hidden_size), key=key)`: Flux's `GRUv3`.

    Examples:
      >>> import jax, recurjax as rj
      >>> rj.GRUv3(10, 5, key=jax.random.key(0))
      Recur(GRUv3Cell(10 => 5))
    """
    return Recur(GRUv3Cell(in_features, hidden_size), key=key)


def no_states(module: object, options: Mapping[str, Any]) -> None:
    """The NNX and Equinox modules' calls return `ys` alone: `return_states` is a `TypeError`
    there that says where the option is."""
    if "return_states" in options:
        raise TypeError(
            f"{type(module).__name__}(xs, ...): return_states is an option of rj.scan and "
            "Recur.scan, which return the states after every step; this call returns ys "
            "alone. Use module.handle().scan(xs, return_states=True)."
        )
