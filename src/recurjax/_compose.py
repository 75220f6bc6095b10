"""Composition: `chain`, `bidirectional`, `residual` and `stacked`, cells made of cells.

Each composite implements the `SequenceCell` protocol (`_contracts.py`): the scan engine
hands it a `run` callback and the composite runs its parts over the whole sequence, part by
part. Nothing here imports the engine, and the engine names none of these classes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from ._cells.blocks import CausalConv, PassThrough, gate
from ._cells.ssm import SelectiveSSMCell
from ._checks import check_callable, describe, fn_name, positive_int
from ._contracts import (
    Cell,
    Handle,
    LayerStack,
    PartRunner,
    PyTree,
    SequenceCell,
    WrapperCell,
    input_axes,
    is_causal,
)
from ._dropout import Dropout, seed_dropout, split_keys
from ._layers import Dense, stateless

__all__ = [
    "Bidirectional",
    "Chain",
    "Residual",
    "bidirectional",
    "chain",
    "residual",
    "stacked",
]


def _entry(i: int) -> Callable[[PyTree], PyTree]:
    """`tree -> tree[i]`: a part's entry in a composite's tuple of states."""
    return lambda tree: tree[i]


def _same(tree: PyTree) -> PyTree:
    return tree


def _layers_of(part: Any) -> tuple[tuple[Any, ...], int] | None:
    """A part of a stack as layers: a stack's own, a stepped cell as one layer of one
    direction, `None` for any other composite."""
    if isinstance(part, LayerStack):
        return part.layers()
    return None if isinstance(part, SequenceCell) else ((part,), 1)


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

    @property
    def input_axes(self) -> int:
        """The first part's `input_axes`: the trailing axes of one input step."""
        return input_axes(self.cells[0])

    @property
    def causal(self) -> bool:
        """Whether every part is causal (`SequenceCell` protocol): a chain with a
        bidirectional layer in it reads later steps."""
        return all(is_causal(c) for c in self.cells)

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

    def parts(self) -> tuple[Any, ...]:
        """The chained cells (`SequenceCell` protocol)."""
        return tuple(self.cells)

    def run_sequence(
        self, run: PartRunner, params: PyTree, h: PyTree, xs: PyTree
    ) -> tuple[tuple[PyTree, ...], PyTree]:
        """Part by part over the whole sequence, each part's outputs the next one's inputs.

        Equal to stepping the chain: a part's step depends only on its own state and the
        previous part's output at the same step.
        """
        self._check_tuple("params", params)
        self._check_tuple("state", h)
        states = []
        for i, (part, p, s) in enumerate(zip(self.cells, params, h, strict=True)):
            s, xs = run(part, p, s, xs, select=_entry(i))
            states.append(s)
        return tuple(states), xs

    def layers(self) -> tuple[tuple[Any, ...], int] | None:
        """The chain as a stack of recurrent layers (`LayerStack` protocol): every part a
        stepped cell or a stack itself, all of one direction count; else `None`."""
        cells: list[Any] = []
        directions = set()
        for part in self.cells:
            stack = _layers_of(part)
            if stack is None:
                return None
            cells.extend(stack[0])
            directions.add(stack[1])
        return (tuple(cells), directions.pop()) if len(directions) == 1 else None

    def split_layers(self, tree: PyTree) -> list[PyTree]:
        """A params or state tuple of the chain as one entry per cell of `layers()`."""
        self._check_tuple("tree", tree)
        return [
            t
            for part, sub in zip(self.cells, tree, strict=True)
            for t in (part.split_layers(sub) if isinstance(part, LayerStack) else [sub])
        ]

    def join_layers(self, trees: list[PyTree]) -> tuple[PyTree, ...]:
        """The inverse of `split_layers`."""
        out, i = [], 0
        for part in self.cells:
            stack = _layers_of(part)
            assert stack is not None, "join_layers inverts split_layers of a stack"
            n = len(stack[0])
            out.append(
                part.join_layers(trees[i : i + n]) if isinstance(part, LayerStack) else trees[i]
            )
            i += n
        return tuple(out)

    def seed_state(self, state: PyTree, key: jax.Array | None) -> tuple[PyTree, ...]:
        """Every part's state seeded with its own key (`seed_dropout`)."""
        self._check_tuple("state", state)
        keys = split_keys(key, len(self.cells))
        return tuple(
            seed_dropout(c, s, k) for c, s, k in zip(self.cells, state, keys, strict=True)
        )


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
    handles = [isinstance(p, Handle) for p in parts]
    if any(handles) and not all(handles):
        bare = [describe(p) for p, h in zip(parts, handles, strict=True) if not h]
        raise TypeError(
            f"chain(): got Recur handles mixed with bare cells {bare}. A bare cell has no "
            "params; wrap it as rj.Recur(cell, key=key) (stateless layers too), or pass only "
            "cells and make params with .init(key)."
        )
    if all(handles):  # a handle of the chain, made by the first handle's replace()
        return parts[0].replace(
            cell=Chain(tuple(p.cell for p in parts)),
            params=tuple(p.params for p in parts),
            state=tuple(p.state for p in parts),
            state0=tuple(p.state0 for p in parts),
        )
    for i, p in enumerate(parts):
        check_callable(p, f"chain() part {i}")
    return Chain(tuple(parts))


def _merge_concat(yf: jax.Array, yb: jax.Array) -> jax.Array:
    return jnp.concatenate([yf, yb], axis=-1)


def _merge_sum(yf: jax.Array, yb: jax.Array) -> jax.Array:
    return yf + yb


MERGES: dict[str, Callable[[Any, Any], Any]] = {"concat": _merge_concat, "sum": _merge_sum}


@dataclasses.dataclass(frozen=True, repr=False)
class Bidirectional(Cell):
    """Two cells over one sequence, one forward and one backward. Made by `bidirectional`."""

    forward: Callable[..., Any]
    backward: Callable[..., Any]
    merge: str | Callable[[Any, Any], Any] = "concat"

    def __post_init__(self) -> None:
        check_callable(self.forward, "bidirectional(forward, ...)")
        check_callable(self.backward, "bidirectional(..., backward)")
        if not (
            self.merge in MERGES or (callable(self.merge) and not isinstance(self.merge, str))
        ):
            raise ValueError(
                f"bidirectional: expected merge to be one of {sorted(MERGES)} or a function "
                f"(y_forward, y_backward) -> y, got {self.merge!r}."
            )

    def __repr__(self) -> str:
        merge = self.merge if isinstance(self.merge, str) else fn_name(self.merge)
        return f"bidirectional({describe(self.forward)}, {describe(self.backward)}, {merge})"

    @property
    def in_features(self) -> int:  # type: ignore[override]
        """The forward cell's `in_features`."""
        return self.forward.in_features  # type: ignore[attr-defined]

    @property
    def input_axes(self) -> int:
        """The forward cell's `input_axes`."""
        return input_axes(self.forward)

    # Its outputs at a step read the later steps (the backward cell): `SequenceCell` protocol.
    causal: ClassVar[bool] = False

    def merged(self, yf: PyTree, yb: PyTree) -> PyTree:
        """The outputs of both directions at every step, merged (`merge`)."""
        fn = MERGES[self.merge] if isinstance(self.merge, str) else self.merge
        return fn(yf, yb)

    def init(self, key: jax.Array, dtype: Any = None) -> tuple[PyTree, PyTree]:
        """`(forward params, backward params)` from independent keys."""
        return Chain((self.forward, self.backward)).init(key, dtype)  # type: ignore[return-value]

    def initial_state(self, params: PyTree) -> tuple[PyTree, PyTree]:
        """`(forward state, backward state)`."""
        return Chain((self.forward, self.backward)).initial_state(params)  # type: ignore[return-value]

    def _check_tuple(self, name: str, value: object) -> None:
        if type(value) is not tuple or len(value) != 2:
            raise ValueError(
                f"{self!r}: expected {name} to be a tuple (forward, backward), got "
                f"{type(value).__name__}. Use .init(key) / .initial_state(params)."
            )

    def parts(self) -> tuple[Any, Any]:
        """`(forward, backward)` (`SequenceCell` protocol)."""
        return (self.forward, self.backward)

    def run_sequence(
        self, run: PartRunner, params: PyTree, h: PyTree, xs: PyTree
    ) -> tuple[tuple[PyTree, PyTree], PyTree]:
        """The forward cell over the sequence, the backward cell over it in reverse, and
        their outputs merged step by step."""
        self._check_tuple("params", params)
        self._check_tuple("state", h)
        sf, yf = run(self.forward, params[0], h[0], xs, select=_entry(0))
        sb, yb = run(self.backward, params[1], h[1], xs, select=_entry(1), reverse=True)
        return (sf, sb), self.merged(yf, yb)

    def layers(self) -> tuple[tuple[Any, ...], int] | None:
        """One layer of two directions (`LayerStack` protocol), for stepped cells whose
        outputs are concatenated; else `None`."""
        pair = (self.forward, self.backward)
        if self.merge != "concat" or any(isinstance(c, SequenceCell) for c in pair):
            return None
        return pair, 2

    def split_layers(self, tree: PyTree) -> list[PyTree]:
        """`[forward entry, backward entry]` of a params or state pair."""
        self._check_tuple("tree", tree)
        return list(tree)

    def join_layers(self, trees: list[PyTree]) -> tuple[PyTree, PyTree]:
        """The inverse of `split_layers`."""
        return (trees[0], trees[1])

    def seed_state(self, state: PyTree, key: jax.Array | None) -> tuple[PyTree, PyTree]:
        """Both directions' states seeded with their own keys (`seed_dropout`)."""
        self._check_tuple("state", state)
        kf, kb = split_keys(key, 2)
        return (
            seed_dropout(self.forward, state[0], kf),
            seed_dropout(self.backward, state[1], kb),
        )

    def __call__(self, params: PyTree, h: PyTree, x: PyTree) -> tuple[PyTree, PyTree]:
        raise TypeError(
            f"{self!r}: a bidirectional layer reads the whole sequence (its backward cell "
            "starts at the last step), so it cannot run one step at a time. Run it with "
            "rj.scan(cell, params, h, xs) or Recur.scan(xs), alone or inside a chain."
        )


def bidirectional(forward: Any, backward: Any, merge: Any = "concat") -> Bidirectional:
    """A layer that runs `forward` over a sequence and `backward` over it in reverse.

    Under `rj.scan` (alone, or as a part of a `chain`) it computes::

        hf, yf = scan(forward, pf, sf, xs, lengths=lengths)
        hb, yb = scan(backward, pb, sb, xs, lengths=lengths, reverse=True)
        return (hf, hb), merge(yf, yb)       # yf[t], yb[t]: both read step t

    With `lengths`, the backward cell starts at each sequence's own last valid step (the
    padding stays at the end) and padded outputs are zero. Its params and state are pairs
    `(forward, backward)`; the final backward state is the one after step 0. It cannot be
    stepped one input at a time (a `TypeError` says so).

    Args:
      forward: the cell run from the first step to the last.
      backward: the cell run from the last (valid) step to the first.
      merge: `"concat"` (default: features `out_f + out_b`), `"sum"`, or a function
        `(y_forward, y_backward) -> y` applied to the stacked outputs `(T, ..., out)`.

    Returns:
      A `Bidirectional` cell with `init`, `initial_state` and `in_features`.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> bi = rj.bidirectional(rj.LSTMCell(3, 4), rj.LSTMCell(3, 4))
      >>> params = bi.init(jax.random.key(0))
      >>> xs = jnp.ones((6, 2, 3))                      # T=6, batch of 2
      >>> (hf, hb), ys = rj.scan(bi, params, bi.initial_state(params), xs,
      ...                        lengths=jnp.array([6, 3]))
      >>> ys.shape, bool((ys[3:, 1] == 0).all())        # padding gives zeros
      ((6, 2, 8), True)
    """
    return Bidirectional(forward, backward, merge)


@dataclasses.dataclass(frozen=True, repr=False)
class Residual(WrapperCell):
    """A cell with a skip connection, `y = x + cell(x)`. Made by `residual`."""

    cell: Callable[..., Any]

    def __post_init__(self) -> None:
        check_callable(self.cell, "residual(cell)")

    def __repr__(self) -> str:
        return f"residual({describe(self.cell)})"

    def initial_state(self, params: PyTree) -> PyTree:
        """The wrapped cell's initial state."""
        return self.cell.initial_state(params)  # type: ignore[attr-defined]

    def check_shapes(self, x: PyTree, y: PyTree) -> None:
        """`ValueError` unless the output has the input's structure and shapes."""
        if jax.tree.structure(x) != jax.tree.structure(y) or jax.tree.map(
            jnp.shape, x
        ) != jax.tree.map(jnp.shape, y):
            raise ValueError(
                f"{self!r}: a residual connection adds the input to the output, so they need "
                f"one shape; got input {jax.tree.map(jnp.shape, x)} and output "
                f"{jax.tree.map(jnp.shape, y)}. Wrap only layers whose output size equals "
                "their input size (with bidirectional concat, out = 2 * hidden)."
            )

    def add(self, x: PyTree, y: PyTree) -> PyTree:
        """`x + y`, with `x` cast to the output's dtype (the cell's compute dtype)."""
        return jax.tree.map(lambda a, b: jnp.asarray(a).astype(b.dtype) + b, x, y)

    def __call__(self, params: PyTree, h: PyTree, x: PyTree) -> tuple[PyTree, PyTree]:
        h, y = self.cell(params, h, x)
        self.check_shapes(x, y)
        return h, self.add(x, y)

    def parts(self) -> tuple[Any]:
        """The wrapped cell (`SequenceCell` protocol)."""
        return (self.cell,)

    def run_sequence(
        self, run: PartRunner, params: PyTree, h: PyTree, xs: PyTree
    ) -> tuple[PyTree, PyTree]:
        """The wrapped cell over the whole sequence, then the inputs added to its outputs."""
        h, ys = run(self.cell, params, h, xs, select=_same)
        self.check_shapes(xs, ys)
        return h, self.add(xs, ys)

    def seed_state(self, state: PyTree, key: jax.Array | None) -> PyTree:
        """The wrapped cell's state seeded (`seed_dropout`)."""
        return seed_dropout(self.cell, state, key)


def residual(cell: Any) -> Residual:
    r"""Wrap a cell with a skip connection: `(h, y) = cell(params, h, x)`; output `x + y`.

    $$
    (h', y) = \mathrm{cell}(\theta, h, x), \qquad \text{output } x + y
    $$

    Params and state are the wrapped cell's. The output must have the input's shape (a
    `ValueError` at trace time says so otherwise); `x` is cast to the output's dtype.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.residual(rj.GRUCell(4, 4))
      >>> params = cell.init(jax.random.key(0))
      >>> h, y = cell(params, cell.initial_state(params), jnp.ones(4))
      >>> bool(jnp.allclose(y - h, jnp.ones(4)))   # a GRU's output is its state
      True
    """
    return Residual(cell)


def stacked(
    make_cell: Callable[[int, int], Any],
    in_features: int,
    hidden_size: int,
    *,
    num_layers: int,
    residual: bool = False,
    dropout: float = 0.0,
    bidirectional: bool = False,
    merge: str = "concat",
) -> Chain:
    """A deep RNN in one line: `num_layers` cells as a `chain`, like PyTorch's `num_layers`.

    Layer 0 maps `in_features` to `hidden_size`; each later layer reads the previous one's
    output (`hidden_size`, or `2 * hidden_size` for bidirectional layers with `"concat"`).
    With `residual=True`, every layer whose output size equals its input size (all but the
    first, usually) adds its input to its output (`residual`). With `dropout > 0`, a
    `Dropout(dropout)` sits between consecutive layers (not after the last, as in
    PyTorch); it is off until the state is seeded (`seed_dropout`).

    Args:
      make_cell: `(in, out) -> cell`, e.g. `rj.LSTMCell` or `rj.GRUCell`.
      in_features: input features of the first layer.
      hidden_size: each layer's output size (per direction).
      num_layers: the number of recurrent layers, at least 1.
      residual: skip connections around the layers whose input and output sizes match.
      dropout: dropout rate between layers.
      bidirectional: every layer a `bidirectional` pair of `make_cell` cells.
      merge: how bidirectional layers merge their outputs (see `bidirectional`).

    Returns:
      A `Chain`; its params and state have one entry per part (layers and dropouts).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> net = rj.stacked(rj.LSTMCell, 10, 32, num_layers=3, residual=True, dropout=0.1)
      >>> net
      Chain(LSTMCell(10 => 32), Dropout(0.1), residual(LSTMCell(32 => 32)), Dropout(0.1), \
residual(LSTMCell(32 => 32)))
      >>> params = net.init(jax.random.key(0))
      >>> h, ys = rj.scan(net, params, net.initial_state(params), jnp.ones((5, 2, 10)))
      >>> ys.shape
      (5, 2, 32)
    """
    layers = positive_int(num_layers)
    if layers is None:
        raise ValueError(f"stacked: expected num_layers to be a positive int, got {num_layers!r}.")
    if not callable(make_cell):
        raise TypeError(
            f"stacked: expected make_cell to be a cell class or a function (in, out) -> cell, "
            f"such as rj.LSTMCell, got {make_cell!r}."
        )
    parts: list[Any] = []
    width = in_features
    for i in range(layers):
        if bidirectional:
            cell: Any = Bidirectional(
                make_cell(width, hidden_size), make_cell(width, hidden_size), merge
            )
            out = 2 * hidden_size if merge == "concat" else hidden_size
        else:
            cell, out = make_cell(width, hidden_size), hidden_size
        if i > 0 and dropout:
            parts.append(Dropout(dropout))
        parts.append(Residual(cell) if residual and out == width else cell)
        width = out
    return Chain(tuple(parts))


def mamba_block(
    d_model: int,
    *,
    expand: int = 2,
    state_size: int = 16,
    conv_kernel: int = 4,
    dt_rank: int | None = None,
) -> Any:
    r"""Mamba's block (Gu & Dao, 2023, arXiv:2312.00752; mamba-ssm's `Mamba` module) as one
    composite cell, a `Chain` of five parts:

    $$
    \begin{aligned}
    [u, z] &= x W_{in} + b_{in} \qquad (u, z: d_{inner} = \text{expand} \cdot d_{model}) \\
    \tilde u_t &= \mathrm{silu}(\textstyle\sum_{j<k} w_j \odot u_{t-k+1+j} + b_{conv})
      \qquad \text{(causal depthwise convolution, kernel } k) \\
    y_t &= \mathrm{S6}(\tilde u)_t \qquad \text{(SelectiveSSMCell, } N \text{ state units)} \\
    \text{out}_t &= (y_t \odot \mathrm{silu}(z_t)) W_{out} + b_{out}
    \end{aligned}
    $$

    The convolution's last `k - 1` inputs are part of the state, so streaming a `Recur` one
    step at a time equals the whole-sequence run; the S6 core runs with the linear cells'
    strategies (`auto` picks them), the rest step by step or at once. Its state is the
    chain's, `((), conv, s6, (), ())`: the convolution's past inputs `((k - 1) d_inner,)`
    and S6's `(d_inner N,)`. Params, in chain order: `{"w": (d_model, 2 d_inner), "b"}`,
    `{"w": (k, d_inner), "b": (d_inner,)}`, the S6 core's, `()`, `{"w": (d_inner, d_model),
    "b"}`. Input `(..., d_model)`, output `(..., d_model)`.

    Checked against mamba-ssm's pure-PyTorch path `mamba_inner_ref` with
    `selective_scan_ref` (outputs and every gradient; `tests/test_references.py`), with
    the weights mapped as: `in_proj.weight` transposed is the first `w` (and `b` zero, as
    Mamba's `bias=False`), `conv1d.weight[:, 0, :]` transposed and `conv1d.bias` the
    convolution's, `x_proj.weight` transposed and split `[w_dt1 | w_B | w_C]`,
    `dt_proj.weight` transposed and `dt_proj.bias` as `w_dt2` and `b_dt`, `A_log` and `D`
    as they are, `out_proj.weight` transposed (and `b` zero).

    Args:
      d_model: the width of the block's input and output.
      expand: `d_inner = expand * d_model` (2 in Mamba).
      state_size: `N`, S6's state units per channel (16).
      conv_kernel: `k`, the convolution's width (4).
      dt_rank: the rank of S6's `Δ` projection; `ceil(d_model / 16)` by default (Mamba's).

    Returns:
      A `Chain`, with `init`, `initial_state` and everything a cell has.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> m = rj.Recur(rj.mamba_block(8, state_size=4), key=jax.random.key(0))
      >>> m_end, ys = m.scan(jnp.ones((10, 2, 8)))
      >>> ys.shape, m_end.state[2].shape  # the S6 state: d_inner * N
      ((10, 2, 8), (2, 64))
    """
    inner = expand * d_model
    rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
    return chain(
        Dense(d_model, 2 * inner),
        CausalConv(inner, conv_kernel, passthrough=inner),
        PassThrough(SelectiveSSMCell(inner, state_size, dt_rank=rank), passthrough=inner),
        stateless(gate),
        Dense(inner, d_model),
    )
