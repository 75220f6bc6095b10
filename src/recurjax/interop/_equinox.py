"""Equinox: `eqx.nn.LSTMCell` and `eqx.nn.GRUCell`, to and from recurjax."""

from __future__ import annotations

from typing import Any

import jax

from .._cells.classic import GRUCell, LSTMCell
from .._checks import check_params
from ._common import as_array, expect_cell, is_zero, require


def from_equinox(module: Any) -> tuple[Any, dict[str, jax.Array]]:
    """Convert an `eqx.nn.LSTMCell` or `eqx.nn.GRUCell` to `(cell, params)`.

    Equinox stores column-vector weights, `weight_ih: (G*H, in)` and `weight_hh: (G*H, H)`,
    in PyTorch's gate order, with one bias `bias: (G*H,)` (and, for the GRU, `bias_n: (H,)`
    inside the reset gate, like PyTorch's `b_hn`): `wi = weight_ih.T`, `wh = weight_hh.T`,
    `b = bias`, `bhn = bias_n`. `use_bias=False` gives a cell with `use_bias=False` (no
    biases in its params). Equinox's LSTM state
    `(h, c)` is `LSTMState(h, c)`. Values are copied unchanged (transposes only).

    Examples:
      >>> import jax, equinox as eqx
      >>> from recurjax.interop import from_equinox
      >>> cell, params = from_equinox(eqx.nn.GRUCell(3, 4, key=jax.random.key(0)))
      >>> cell, params["bhn"].shape
      (GRUCell(3 => 4), (4,))
    """
    eqx = require("equinox", "equinox")
    where = f"from_equinox({type(module).__name__})"
    if not isinstance(module, (eqx.nn.LSTMCell, eqx.nn.GRUCell)):
        raise TypeError(f"{where}: expected an equinox.nn.LSTMCell or equinox.nn.GRUCell.")
    wi, wh = as_array(module.weight_ih).T, as_array(module.weight_hh).T
    params = {"wi": wi, "wh": wh}
    kind = LSTMCell if isinstance(module, eqx.nn.LSTMCell) else GRUCell
    cell: Any = kind(module.input_size, module.hidden_size, use_bias=module.use_bias)
    if module.use_bias:
        params["b"] = as_array(module.bias)
        if kind is GRUCell:
            params["bhn"] = as_array(module.bias_n)
    check_params(cell, params, cell.param_shapes())
    return cell, params


def to_equinox(cell: Any, params: Any, *, use_bias: bool | None = None) -> Any:
    """Convert a recurjax `LSTMCell` or `GRUCell` to the Equinox cell holding the same numbers.

    The inverse of `from_equinox`. `use_bias=False` builds a bias-free module and requires the
    biases to be zero; `None` (the default) takes the cell's `use_bias`. `RNNCell` (Equinox
    has no Elman cell) and `GRUv3Cell` are a `TypeError`.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> from recurjax.interop import to_equinox
      >>> cell = rj.LSTMCell(3, 4)
      >>> module = to_equinox(cell, cell.init(jax.random.key(0)))
      >>> h, c = module(jnp.ones(3), (jnp.zeros(4), jnp.zeros(4)))
      >>> h.shape
      (4,)
    """
    eqx = require("equinox", "equinox")
    where = f"to_equinox({cell!r})"
    expect_cell(
        where,
        cell,
        (LSTMCell, GRUCell),
        "Equinox has no Elman RNN cell, and its GRU applies the reset gate after the matmul.",
    )
    dtype = check_params(cell, params, cell.param_shapes())
    params = cell.with_biases(params)
    use_bias = cell.use_bias if use_bias is None else use_bias
    kind = eqx.nn.LSTMCell if isinstance(cell, LSTMCell) else eqx.nn.GRUCell
    module = kind(
        cell.in_features, cell.hidden_size, use_bias=use_bias, dtype=dtype, key=jax.random.key(0)
    )
    fields: dict[str, Any] = {"weight_ih": params["wi"].T, "weight_hh": params["wh"].T}
    biases = {"bias": params["b"]}
    if isinstance(cell, GRUCell):
        biases["bias_n"] = params["bhn"]
    if use_bias:
        fields.update(biases)
    elif not all(is_zero(b) for b in biases.values()):
        raise ValueError(
            f"{where}: use_bias=False, but the biases are not zero. Use use_bias=True."
        )
    names = tuple(fields)
    return eqx.tree_at(
        lambda m: tuple(getattr(m, n) for n in names), module, tuple(fields[n] for n in names)
    )
