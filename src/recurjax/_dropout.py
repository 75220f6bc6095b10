"""Dropout as cells: the PRNG key is the state, so randomness is threaded like any carry.

A dropout cell's state is a PRNG key while training and `None` at inference (dropout off,
the identity). `initial_state` returns `None`; `seed_dropout` (or `Recur.seed_dropout`)
puts a fresh key into every dropout slot of a model's state, and `seed_dropout(..., None)`
turns them off again. Because the key is part of the state, a scan over a sequence, a
`Recur` step, `jit`, `vmap` and `reset` all treat it like any other carry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._checks import check_callable, check_key, describe
from ._contracts import Cell, PyTree, WrapperCell
from ._states import LSTMState

__all__ = ["Dropout", "VariationalDropout", "seed_dropout"]


def _check_rate(cell: object, name: str, rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(
            f"{type(cell).__name__}: expected {name} to be a float in [0, 1), the probability "
            f"of zeroing an entry, got {rate!r}."
        )
    return float(rate)


def drop(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout: zero each entry with probability `rate`, scale the rest by
    `1 / (1 - rate)`, so the expectation is unchanged."""
    if rate == 0:
        return x
    keep = jax.random.bernoulli(key, 1 - rate, x.shape)
    return jnp.where(keep, x / (1 - rate), jnp.zeros_like(x))


@dataclasses.dataclass(frozen=True, repr=False)
class Dropout(Cell):
    r"""Dropout between layers, as a cell whose state is its PRNG key.

    $$
    y = m \odot x / (1 - p), \qquad m_j \sim \mathrm{Bernoulli}(1 - p)
    $$

    With `variational=False` a new mask is drawn at every step (the key is split and the
    new key carried); with `variational=True` one mask per sequence is reused at every step
    (Gal and Ghahramani, 2016: the key is carried unchanged, and the mask has the shape of
    `x`, so each sequence of a batch has its own). The state is `None` from
    `initial_state`: dropout is off (the identity), as at inference. Turn it on by giving
    the state a key with `rj.seed_dropout(cell, state, key)` or `Recur.seed_dropout(key)`.

    Params: `()`. `x: (..., features)` -> `y` of the same shape and dtype.

    Args:
      rate: the probability `p` of zeroing an entry, in `[0, 1)`.
      variational: reuse one mask for every step of a sequence.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> drop = rj.Dropout(0.5)
      >>> drop(drop.init(jax.random.key(0)), None, jnp.ones(4))  # off: the identity
      (None, Array([1., 1., 1., 1.], dtype=float32))
      >>> key, y = drop((), jax.random.key(1), jnp.ones(1000))
      >>> sorted(set(y.tolist())), round(float(y.mean()), 1)
      ([0.0, 2.0], 1.0)
    """

    rate: float
    variational: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", _check_rate(self, "rate", self.rate))

    def __repr__(self) -> str:
        kind = ", variational" if self.variational else ""
        return f"Dropout({self.rate}{kind})"

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> tuple[()]:
        """No params: `()`."""
        return ()

    def initial_state(self, params: PyTree) -> None:
        """`None`: dropout off until the state is given a key (`seed_dropout`)."""
        return None

    def seed_state(self, state: PyTree, key: jax.Array | None) -> PyTree:
        """The state with a fresh key (`seed_dropout`): the key itself."""
        return key

    def __call__(self, params: PyTree, h: PyTree, x: jax.Array) -> tuple[PyTree, jax.Array]:
        if h is None:
            return None, x
        check_key(repr(self), h)
        if self.variational:
            return h, drop(h, x, self.rate)
        key, sub = jax.random.split(h)
        return key, drop(sub, x, self.rate)


@dataclasses.dataclass(frozen=True, repr=False)
class VariationalDropout(WrapperCell):
    r"""Variational dropout on a recurrent cell's input and state (Gal and Ghahramani, 2016).

    One mask per sequence for the input and one for the state, drawn from the key in the
    state and reused at every step:

    $$
    (h_t, y_t) = \mathrm{cell}(\theta,\ m_h \odot h_{t-1} / (1 - p_h),\ m_x \odot x_t / (1 - p_x))
    $$

    The masked state is what the cell *reads*; the carried state is the cell's output,
    unmasked. For an `LSTMState` only `h` is masked (not the memory `c`), as in the paper;
    for other states every leaf is. For `GRUCell` and `GRUv3Cell` the masked `h` also
    enters the interpolation `z * h`, which Gal and Ghahramani's GRU does not mask.

    State: `(cell_state, key)` with `key = None` (dropout off) from `initial_state`; seed it
    with `rj.seed_dropout` or `Recur.seed_dropout`. Params: the cell's.

    Args:
      cell: the wrapped cell; its input `x` must be an array.
      input_rate: dropout probability of the input features.
      state_rate: dropout probability of the state features.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.VariationalDropout(rj.LSTMCell(3, 4), input_rate=0.2, state_rate=0.2)
      >>> params = cell.init(jax.random.key(0))
      >>> h0 = rj.seed_dropout(cell, cell.initial_state(params), jax.random.key(1))
      >>> (state, key), ys = rj.scan(cell, params, h0, jnp.ones((5, 2, 3)))
      >>> state.h.shape, ys.shape
      ((2, 4), (5, 2, 4))
    """

    cell: Callable[..., Any]
    input_rate: float = 0.0
    state_rate: float = 0.0

    def __post_init__(self) -> None:
        check_callable(self.cell, "VariationalDropout(cell)")
        for name in ("input_rate", "state_rate"):
            object.__setattr__(self, name, _check_rate(self, name, getattr(self, name)))

    def __repr__(self) -> str:
        return (
            f"VariationalDropout({describe(self.cell)}, input_rate={self.input_rate}, "
            f"state_rate={self.state_rate})"
        )

    def initial_state(self, params: PyTree) -> tuple[PyTree, None]:
        """`(cell.initial_state(params), None)`: dropout off until seeded."""
        return (self.cell.initial_state(params), None)  # type: ignore[attr-defined]

    def seed_state(self, state: PyTree, key: jax.Array | None) -> PyTree:
        """`(the wrapped cell's state seeded, a key)` from two keys split from `key`."""
        k1, k2 = split_keys(key, 2)
        return (seed_dropout(self.cell, state[0], k1), k2)

    def __call__(self, params: PyTree, h: PyTree, x: jax.Array) -> tuple[PyTree, PyTree]:
        if not (isinstance(h, tuple) and len(h) == 2):
            raise ValueError(
                f"{self!r}: expected the state (cell_state, key), got {type(h).__name__}. "
                "Use initial_state(params), then rj.seed_dropout to turn dropout on."
            )
        state, key = h
        if key is None:
            state, y = self.cell(params, state, x)
            return (state, None), y
        check_key(repr(self), key)
        kx, kh = jax.random.split(key)
        x = drop(kx, jnp.asarray(x), self.input_rate)
        batch = tuple(x.shape[:-1])

        def mask(k: jax.Array, a: jax.Array) -> jax.Array:
            if a.ndim == 1 and batch:  # unbatched state meeting a batch: one mask per row
                a = jnp.broadcast_to(a, (*batch, *a.shape))
            return drop(k, a, self.state_rate)

        if isinstance(state, LSTMState):
            read = state._replace(h=mask(kh, state.h))
        else:
            leaves, treedef = jax.tree.flatten(state)
            keys = list(jax.random.split(kh, len(leaves))) if leaves else []
            masked = [mask(k, a) for k, a in zip(keys, leaves, strict=True)]
            read = jax.tree.unflatten(treedef, masked)
        state, y = self.cell(params, read, x)
        return (state, key), y


def split_keys(key: jax.Array | None, n: int) -> list[Any]:
    """`n` independent keys split from `key`, or `n` times `None` (dropout off)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def seed_dropout(cell: Any, state: PyTree, key: jax.Array | None) -> PyTree:
    """The state with every dropout slot given a fresh key (dropout on), or `None` (off).

    Walks `cell` (chains, `bidirectional`, `residual`, `VariationalDropout`) and replaces
    the key of every `Dropout` and `VariationalDropout` with an independent key split from
    `key`; everything else in `state` is returned as is. Pass a new key for every batch:
    the masks are a function of the key. `key=None` turns dropout off (inference).

    A cell takes part through an optional method `seed_state(state, key) -> state` (the
    library's dropout cells and composites have one; a composite calls `seed_dropout` on
    each part with keys from `split_keys`). Cells without it keep their state.

    Args:
      cell: the model's cell.
      state: its state (e.g. `cell.initial_state(params)`).
      key: a PRNG key (`jax.random.key(seed)`), or `None`.

    Returns:
      The state, with keys (or `None`) in the dropout slots.

    Examples:
      >>> import jax, recurjax as rj
      >>> net = rj.chain(rj.GRUCell(3, 4), rj.Dropout(0.5), rj.Dense(4, 2))
      >>> params = net.init(jax.random.key(0))
      >>> state = rj.seed_dropout(net, net.initial_state(params), jax.random.key(1))
      >>> state[1].dtype
      key<fry>
      >>> rj.seed_dropout(net, state, None)[1] is None
      True
    """
    check_key("seed_dropout", key)
    seed = getattr(cell, "seed_state", None)
    return state if seed is None else seed(state, key)
