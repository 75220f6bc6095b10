"""Flax: linen's `SimpleCell`, `LSTMCell`, `OptimizedLSTMCell`, `GRUCell`, `MGUCell`, and the
NNX forms of the first four (NNX has no MGU)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .._cells.classic import GRUCell, LSTMCell, MGUCell, RNNCell
from .._cells.conv import ConvLSTMCell
from .._checks import check_params
from ._common import (
    as_array,
    conv_lstm_params,
    conv_lstm_weights,
    expect_cell,
    expect_keys,
    expect_shape,
    is_zero,
    require,
)

_LSTM_GATES = ("i", "f", "g", "o")
_GRU_GATES = ("r", "z", "n")
_MGU_GATES = ("f", "n")
# nnx.LSTMCell's per-gate layers, input side and hidden side, in gate order i, f, g, o.
_NNX_LSTM = ("ii", "if_", "ig", "io"), ("hi", "hf", "hg", "ho")
_NO_V3 = (
    "Flax's GRU cells apply the reset gate after the recurrent matmul (recurjax's GRUCell); "
    "no Flax cell matches GRUv3Cell."
)


def _check_fns(where: str, module: Any, gated: bool) -> None:
    """Flax cells let users swap their nonlinearities; recurjax's cells fix them."""
    if getattr(module, "activation_fn", jnp.tanh) is not jnp.tanh or (
        gated and getattr(module, "gate_fn", jax.nn.sigmoid) is not jax.nn.sigmoid
    ):
        raise ValueError(
            f"{where}: the module uses gate_fn={getattr(module, 'gate_fn', None)!r} and "
            f"activation_fn={module.activation_fn!r}; recurjax's gated cells use "
            "jax.nn.sigmoid and jnp.tanh (Flax's defaults). Convert a cell built with those."
        )


def _unwrap(params: Any) -> Mapping[str, Any]:
    """Accept `{"params": tree}` (what `init` returns) or the tree itself."""
    if isinstance(params, Mapping) and set(params) == {"params"}:
        return params["params"]
    return params


def _concat(p: Mapping[str, Any], names: list[str], field: str) -> jax.Array:
    """`p[name][field]` for each name, concatenated along the last axis (gate blocks)."""
    return jnp.concatenate([as_array(p[n][field]) for n in names], -1)


def _linen_lstm(where: str, p: Mapping[str, Any]) -> tuple[LSTMCell, dict[str, jax.Array]]:
    ins, hs = [f"i{g}" for g in _LSTM_GATES], [f"h{g}" for g in _LSTM_GATES]
    expect_keys(where, p, ins + hs, "params")
    params = {
        "wi": _concat(p, ins, "kernel"),
        "wh": _concat(p, hs, "kernel"),
        "b": _concat(p, hs, "bias"),
    }
    cell = LSTMCell(params["wi"].shape[0], params["wh"].shape[0])
    check_params(cell, params, cell.param_shapes())
    return cell, params


def _linen_gru(where: str, p: Mapping[str, Any]) -> tuple[GRUCell, dict[str, jax.Array]]:
    ins, hs = [f"i{g}" for g in _GRU_GATES], [f"h{g}" for g in _GRU_GATES]
    expect_keys(where, p, ins + hs, "params")
    params = {
        "wi": _concat(p, ins, "kernel"),
        "wh": _concat(p, hs, "kernel"),
        "b": _concat(p, ins, "bias"),
        "bhn": as_array(p["hn"]["bias"]),
    }
    cell = GRUCell(params["wi"].shape[0], params["wh"].shape[0])
    check_params(cell, params, cell.param_shapes())
    return cell, params


def _linen_mgu(where: str, module: Any, p: Mapping[str, Any]) -> tuple[MGUCell, dict[str, Any]]:
    ins, hs = ["if", "in"], ["hf", "hn"]
    expect_keys(where, p, ins + hs, "params")
    wi, b = _concat(p, ins, "kernel"), _concat(p, ins, "bias")
    hidden = wi.shape[1] // 2
    params = {
        "wi": wi,
        "wh": _concat(p, hs, "kernel"),
        "b": b,
        # without the reset gate, Flax's `hn` has no bias
        "bhn": as_array(p["hn"]["bias"]) if module.reset_gate else jnp.zeros(hidden, b.dtype),
    }
    cell = MGUCell(wi.shape[0], hidden, reset_gate=module.reset_gate)
    check_params(cell, params, cell.param_shapes())
    return cell, params


def from_flax(module: Any, params: Any) -> tuple[Any, dict[str, jax.Array]]:
    """Convert a Flax linen cell and its params to `(cell, params)`.

    `nn.LSTMCell` and `nn.OptimizedLSTMCell` (one tree layout: kernels `ii, if, ig, io` of
    shape `(in, H)` without bias, `hi, hf, hg, ho` of shape `(H, H)` with bias) give an
    `LSTMCell`, kernels concatenated in gate order `i, f, g, o`; Flax's carry `(c, h)` is
    recurjax's `LSTMState(h, c)`. `nn.GRUCell` (biases on `ir, iz, in` and `hn`) gives a
    `GRUCell` with `b = [b_ir, b_iz, b_in]` and `bhn = b_hn`. `nn.MGUCell` (biases on `if,
    in`, and on `hn` with its `reset_gate`) gives an `MGUCell` with the same `reset_gate`,
    `b = [b_if, b_in]` and `bhn = b_hn` (0 without the reset gate). `nn.ConvLSTMCell`
    (convolutions `ih` and `hh`, gates `i, g, f, o`, `+1` on `f` in its forward pass; stride
    1, `SAME`) gives a `ConvLSTMCell` with the blocks reordered, `b = ih.bias + hh.bias` and
    the 1 in the forget block of `b`. `nn.SimpleCell` gives an
    `RNNCell` with its `activation_fn`. Every number is copied unchanged, so
    `to_flax(*from_flax(m, p))` returns `p` exactly.

    Args:
      module: the linen cell instance (its class and `gate_fn`/`activation_fn` pick the
        mapping; non-default nonlinearities and `residual=True` are a `ValueError`).
      params: its parameter tree, or `{"params": tree}` as `module.init` returns.

    Returns:
      `(cell, params)` in the dtype of the given params.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from recurjax.interop import from_flax
      >>> module = nn.GRUCell(features=4)
      >>> variables = module.init(jax.random.key(0), jnp.zeros(4), jnp.zeros(3))
      >>> cell, params = from_flax(module, variables)
      >>> cell, sorted(params)
      (GRUCell(3 => 4), ['b', 'bhn', 'wh', 'wi'])
    """
    nn = require("flax.linen", "flax")
    where = f"from_flax({type(module).__name__})"
    p = _unwrap(params)
    if isinstance(module, (nn.LSTMCell, nn.OptimizedLSTMCell)):
        _check_fns(where, module, gated=True)
        return _linen_lstm(where, p)
    if isinstance(module, nn.GRUCell):
        _check_fns(where, module, gated=True)
        return _linen_gru(where, p)
    if isinstance(module, nn.MGUCell):
        _check_fns(where, module, gated=True)
        return _linen_mgu(where, module, p)
    if isinstance(module, nn.ConvLSTMCell):
        if module.strides not in (None, 1) and set(module.strides) != {1}:
            raise ValueError(f"{where}: strides={module.strides!r}; ConvLSTMCell has stride 1.")
        if module.padding != "SAME":
            raise ValueError(f"{where}: padding={module.padding!r}; ConvLSTMCell pads 'SAME'.")
        expect_keys(where, p, ["ih", "hh"], "params")
        ih, hh = p["ih"], p["hh"]
        w_ih, w_hh = as_array(ih["kernel"]), as_array(hh["kernel"])
        return conv_lstm_params(w_ih, w_hh, ih.get("bias"), hh.get("bias"))
    if isinstance(module, nn.SimpleCell):
        if module.residual:
            raise ValueError(f"{where}: residual=True is not supported; RNNCell has no skip.")
        expect_keys(where, p, ["i", "h"], "params")
        wi, b, wh = (
            as_array(p["i"]["kernel"]),
            as_array(p["i"]["bias"]),
            as_array(p["h"]["kernel"]),
        )
        cell = RNNCell(wi.shape[0], wi.shape[1], activation=module.activation_fn)
        out = {"wi": wi, "wh": wh, "b": b}
        check_params(cell, out, cell.param_shapes())
        return cell, out
    raise TypeError(
        f"{where}: expected a flax.linen SimpleCell, LSTMCell, OptimizedLSTMCell, GRUCell, "
        "MGUCell or ConvLSTMCell instance. For Flax NNX modules use from_nnx."
    )


def to_flax(cell: Any, params: Any, *, optimized: bool = False) -> tuple[Any, dict[str, Any]]:
    """Convert a recurjax cell to a Flax linen cell and its variables `{"params": tree}`.

    `LSTMCell` gives `nn.LSTMCell` (or `nn.OptimizedLSTMCell` with `optimized=True`; the tree
    is the same), `GRUCell` gives `nn.GRUCell`, `MGUCell` gives `nn.MGUCell` (its
    `reset_gate` the same; without the reset gate Flax's `hn` has no bias, and `bhn`, added
    unscaled there, goes into the `in` bias), `ConvLSTMCell` gives `nn.ConvLSTMCell` (the
    bias on `ih`, `hh`'s zero, the forget block less 1), `RNNCell` gives `nn.SimpleCell`
    with the same activation. `GRUv3Cell` is a `TypeError`: Flax has no reset-before GRU.
    The module's `param_dtype` is the params' dtype.

    Returns:
      `(module, variables)`: call `module.apply(variables, carry, x)`.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> from recurjax.interop import to_flax
      >>> cell = rj.LSTMCell(3, 4)
      >>> module, variables = to_flax(cell, cell.init(jax.random.key(0)))
      >>> (c, h), y = module.apply(variables, (jnp.zeros(4), jnp.zeros(4)), jnp.ones(3))
      >>> y.shape
      (4,)
    """
    nn = require("flax.linen", "flax")
    where = f"to_flax({cell!r})"
    expect_cell(where, cell, (RNNCell, LSTMCell, GRUCell, MGUCell, ConvLSTMCell), _NO_V3)
    dtype = check_params(cell, params, cell.param_shapes())
    if isinstance(cell, ConvLSTMCell):
        size = cell.kernel_size
        module = nn.ConvLSTMCell(features=cell.hidden_size, kernel_size=size, param_dtype=dtype)
        w_ih, w_hh, b = conv_lstm_weights(cell, params)
        tree = {"ih": {"kernel": w_ih, "bias": b}, "hh": {"kernel": w_hh, "bias": 0 * b}}
        return module, {"params": tree}
    params = cell.with_biases(params)  # Flax's cells always have them: zeros
    hidden = cell.hidden_size
    if isinstance(cell, MGUCell):
        module = nn.MGUCell(features=hidden, param_dtype=dtype, reset_gate=cell.reset_gate)
        (wif, win), (whf, whn) = (jnp.split(params[k], 2, -1) for k in ("wi", "wh"))
        bf, bn = jnp.split(params["b"], 2)
        hn = {"kernel": whn, "bias": params["bhn"]}
        if not cell.reset_gate:  # no bias on Flax's hn: bhn is added to n's input unscaled
            hn, bn = {"kernel": whn}, bn + params["bhn"]
        tree = {"if": {"kernel": wif, "bias": bf}, "in": {"kernel": win, "bias": bn}}
        return module, {"params": {**tree, "hf": {"kernel": whf}, "hn": hn}}
    if isinstance(cell, LSTMCell):
        kind = nn.OptimizedLSTMCell if optimized else nn.LSTMCell
        module = kind(features=hidden, param_dtype=dtype)
        wi, wh, b = (jnp.split(params[k], 4, -1) for k in ("wi", "wh", "b"))
        tree: dict[str, Any] = {}
        for g, a, c, d in zip(_LSTM_GATES, wi, wh, b, strict=True):
            tree[f"i{g}"] = {"kernel": a}
            tree[f"h{g}"] = {"kernel": c, "bias": d}
    elif isinstance(cell, GRUCell):
        module = nn.GRUCell(features=hidden, param_dtype=dtype)
        wi, wh, b = (jnp.split(params[k], 3, -1) for k in ("wi", "wh", "b"))
        tree = {}
        for g, a, c, d in zip(_GRU_GATES, wi, wh, b, strict=True):
            tree[f"i{g}"] = {"kernel": a, "bias": d}
            tree[f"h{g}"] = {"kernel": c}
        tree["hn"]["bias"] = params["bhn"]
    else:
        module = nn.SimpleCell(features=hidden, activation_fn=cell.activation, param_dtype=dtype)
        tree = {"i": {"kernel": params["wi"], "bias": params["b"]}, "h": {"kernel": params["wh"]}}
    return module, {"params": tree}


# --- Flax NNX -------------------------------------------------------------------------------


def _get(variable: Any) -> jax.Array:
    return as_array(variable[...])


def from_nnx(module: Any) -> tuple[Any, dict[str, jax.Array]]:
    """Convert a Flax NNX cell (`nnx.SimpleCell`, `LSTMCell`, `OptimizedLSTMCell`, `GRUCell`).

    The NNX cells store their weights differently from linen's: `nnx.LSTMCell` has the same
    per-gate layout (its forget kernel is called `if_`), `nnx.OptimizedLSTMCell` has fused
    `dense_i` (`(in, 4H)`, no bias) and `dense_h` (`(H, 4H)`, with bias), gates `i, f, g, o`.
    `nnx.GRUCell` has fused `dense_i` (`(in, 3H)`, with bias `b`) and `dense_h` (`(H, 3H)`, no
    bias): it has no `b_hn`, so it is a `GRUCell` with `bhn = 0`. `nnx.SimpleCell` is an
    `RNNCell`. Values are copied unchanged.

    Examples:
      >>> from flax import nnx
      >>> from recurjax.interop import from_nnx
      >>> cell, params = from_nnx(nnx.OptimizedLSTMCell(3, 4, rngs=nnx.Rngs(0)))
      >>> cell, params["wi"].shape
      (LSTMCell(3 => 4), (3, 16))
    """
    nnx = require("flax.nnx", "flax")
    where = f"from_nnx({type(module).__name__})"
    if isinstance(module, nnx.LSTMCell):
        _check_fns(where, module, gated=True)
        wi = jnp.concatenate([_get(getattr(module, n).kernel) for n in _NNX_LSTM[0]], -1)
        wh = jnp.concatenate([_get(getattr(module, n).kernel) for n in _NNX_LSTM[1]], -1)
        b = jnp.concatenate([_get(getattr(module, n).bias) for n in _NNX_LSTM[1]])
        cell: Any = LSTMCell(module.in_features, module.hidden_features)
        params = {"wi": wi, "wh": wh, "b": b}
    elif isinstance(module, nnx.OptimizedLSTMCell):
        _check_fns(where, module, gated=True)
        cell = LSTMCell(module.in_features, module.hidden_features)
        params = {
            "wi": _get(module.dense_i.kernel),
            "wh": _get(module.dense_h.kernel),
            "b": _get(module.dense_h.bias),
        }
    elif isinstance(module, nnx.GRUCell):
        _check_fns(where, module, gated=True)
        cell = GRUCell(module.in_features, module.hidden_features)
        b = _get(module.dense_i.bias)
        params = {
            "wi": _get(module.dense_i.kernel),
            "wh": _get(module.dense_h.kernel),
            "b": b,
            "bhn": jnp.zeros((module.hidden_features,), b.dtype),
        }
    elif isinstance(module, nnx.SimpleCell):
        if module.residual:
            raise ValueError(f"{where}: residual=True is not supported; RNNCell has no skip.")
        cell = RNNCell(module.in_features, module.hidden_features, activation=module.activation_fn)
        params = {
            "wi": _get(module.dense_i.kernel),
            "wh": _get(module.dense_h.kernel),
            "b": _get(module.dense_i.bias),
        }
    else:
        raise TypeError(
            f"{where}: expected a flax.nnx SimpleCell, LSTMCell, OptimizedLSTMCell or GRUCell. "
            "For linen modules use from_flax."
        )
    check_params(cell, params, cell.param_shapes())
    return cell, params


def to_nnx(cell: Any, params: Any, *, optimized: bool = False) -> Any:
    """Convert a recurjax cell to a Flax NNX cell holding the same numbers.

    `LSTMCell` gives `nnx.LSTMCell` (`nnx.OptimizedLSTMCell` with `optimized=True`),
    `RNNCell` gives `nnx.SimpleCell`, and `GRUCell` gives `nnx.GRUCell` only when `bhn` is
    zero: `nnx.GRUCell` has no bias inside the reset gate, so a non-zero `bhn` (PyTorch's
    `b_hn`) cannot be represented and is a `ValueError` (use `to_flax`, whose linen `GRUCell`
    has it). `GRUv3Cell` is a `TypeError`.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> from recurjax.interop import to_nnx
      >>> cell = rj.RNNCell(3, 4)
      >>> module = to_nnx(cell, cell.init(jax.random.key(0)))
      >>> h, y = module(jnp.zeros(4), jnp.ones(3))
      >>> y.shape
      (4,)
    """
    nnx = require("flax.nnx", "flax")
    where = f"to_nnx({cell!r})"
    why = f"{_NO_V3} flax.nnx has no MGU cell: to_flax converts MGUCell to linen's."
    expect_cell(where, cell, (RNNCell, LSTMCell, GRUCell), why)
    dtype = check_params(cell, params, cell.param_shapes())
    params = cell.with_biases(params)
    i, hidden = cell.in_features, cell.hidden_size
    rngs = nnx.Rngs(0)
    values: dict[tuple[str, ...], jax.Array] = {}
    if isinstance(cell, LSTMCell):
        if optimized:
            module = nnx.OptimizedLSTMCell(i, hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
            values = {
                ("dense_i", "kernel"): params["wi"],
                ("dense_h", "kernel"): params["wh"],
                ("dense_h", "bias"): params["b"],
            }
        else:
            module = nnx.LSTMCell(i, hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
            blocks = [jnp.split(params[k], 4, -1) for k in ("wi", "wh", "b")]
            names = zip(_NNX_LSTM[0], _NNX_LSTM[1], *blocks, strict=True)
            for in_name, h_name, a, c, d in names:
                values[(in_name, "kernel")] = a
                values[(h_name, "kernel")] = c
                values[(h_name, "bias")] = d
    elif isinstance(cell, GRUCell):
        if not is_zero(params["bhn"]):
            raise ValueError(
                f"{where}: bhn (the bias inside the reset gate, PyTorch's b_hn) is non-zero, "
                "and flax.nnx.GRUCell has no such bias. Use to_flax (linen's GRUCell has it)."
            )
        module = nnx.GRUCell(i, hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
        values = {
            ("dense_i", "kernel"): params["wi"],
            ("dense_i", "bias"): params["b"],
            ("dense_h", "kernel"): params["wh"],
        }
    else:
        module = nnx.SimpleCell(
            i, hidden, activation_fn=cell.activation, dtype=dtype, param_dtype=dtype, rngs=rngs
        )
        values = {
            ("dense_i", "kernel"): params["wi"],
            ("dense_i", "bias"): params["b"],
            ("dense_h", "kernel"): params["wh"],
        }
    for (layer, name), value in values.items():
        variable = getattr(getattr(module, layer), name)
        expect_shape(where, f"{layer}.{name}", variable[...], tuple(value.shape))
        variable[...] = value
    return module
