"""Haiku: `hk.VanillaRNN`, `hk.LSTM` and `hk.GRU` parameter trees, to and from recurjax.

Haiku modules exist only inside a transformed function, so these converters work on the
parameter dict that `hk.transform(f).init` returns, where a module's parameters sit under its
name (`"lstm/linear"`, `"gru"`, `"vanilla_rnn/linear"` by default; a prefix such as
`"my_model/~/lstm"` when it is nested). No Haiku import is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .._cells.classic import GRUv3Cell, LSTMCell, RNNCell
from .._cells.conv import ConvLSTMCell
from .._checks import check_params
from ._common import (
    as_array,
    conv_lstm_params,
    conv_lstm_weights,
    expect_cell,
    expect_keys,
    lstm_gates,
    rnn_activation,
)

_DEFAULT_NAMES = {LSTMCell: "lstm", GRUv3Cell: "gru", RNNCell: "vanilla_rnn"}


def _kind(params: Mapping[str, Any], name: str) -> str:
    if name in params and isinstance(params[name], Mapping) and "w_i" in params[name]:
        return "gru"
    if f"{name}/input_to_hidden" in params:
        return "conv_lstm"
    if f"{name}/linear" in params:
        return "vanilla_rnn" if f"{name}/linear_1" in params else "lstm"
    near = sorted(k for k in params if k.split("/")[-1] == name or name in k)
    raise ValueError(
        f"from_haiku(name={name!r}): found no Haiku LSTM, GRU or VanillaRNN under that name; "
        f"expected '{name}' (GRU) or '{name}/linear' (LSTM, VanillaRNN) among the keys. "
        f"Keys that look related: {near or sorted(params)}."
    )


def from_haiku(
    params: Mapping[str, Any], name: str, *, kind: str | None = None
) -> tuple[Any, dict[str, jax.Array]]:
    """Convert the parameters of a Haiku recurrent core to `(cell, params)`.

    - `hk.LSTM` (`{name}/linear`: `w: (in + H, 4H)` acting on `[x, h]`, `b: (4H,)`, gates
      `i, g, f, o`, and `+1` added to the forget gate in the forward pass) gives an
      `LSTMCell`: `wi = w[:in]`, `wh = w[in:]`, blocks reordered to `i, f, g, o`, and the
      offset folded into the stored bias, `b_f = b_f(haiku) + 1`.
    - `hk.GRU` (`{name}`: `w_i: (in, 3H)`, `w_h: (H, 3H)`, `b: (3H,)`, gates `z, r, a`) applies
      the reset gate *before* the candidate's matmul and uses `h' = (1 - z) h + z a`: that is
      `GRUv3Cell` with the update gate negated (`1 - sigmoid(u) = sigmoid(-u)`): `wi = [W_ir,
      -W_iz, W_ia]`, `wh = [W_hr, -W_hz]`, `whn = W_ha`, `b = [b_r, -b_z, b_a]`.
    - `hk.VanillaRNN` (`{name}/linear`: `w: (in, H)`, `b`; `{name}/linear_1`: `w: (H, H)` and,
      with `double_bias=True`, `b`) computes `relu(x w_i + b_i + h w_h + b_h)`: an `RNNCell`
      with `activation=jax.nn.relu` and `b = b_i + b_h`.
    - `hk.Conv1DLSTM`, `Conv2DLSTM`, `Conv3DLSTM` (`{name}/input_to_hidden` and
      `{name}/hidden_to_hidden`: `w: (*kernel, in or H, 4H)`, `b`; gates `i, g, f, o`, `+1`
      on `f`; default names `conv1_dlstm`, `conv2_dlstm`, `conv3_dlstm`) give a
      `ConvLSTMCell`: blocks reordered, `b = b_ih + b_hh`, the 1 in its forget block.

    Args:
      params: the dict from `hk.transform(f).init` (or any mapping holding the module's keys).
      name: the module's name in it: `"lstm"`, `"gru"`, `"vanilla_rnn"` by default in Haiku.
      kind: `"lstm"`, `"gru"`, `"vanilla_rnn"` or `"conv_lstm"`; inferred from the keys
        when omitted.

    Examples:
      >>> import jax, jax.numpy as jnp, haiku as hk
      >>> from recurjax.interop import from_haiku
      >>> f = hk.transform(lambda x: hk.LSTM(4)(x, hk.LSTM(4).initial_state(None)))
      >>> cell, params = from_haiku(f.init(jax.random.key(0), jnp.ones(3)), "lstm")
      >>> cell, params["wi"].shape
      (LSTMCell(3 => 4), (3, 16))
    """
    kind = kind or _kind(params, name)
    where = f"from_haiku({name!r}, kind={kind!r})"
    if kind == "lstm":
        expect_keys(where, params, [f"{name}/linear"], "params")
        lin = params[f"{name}/linear"]
        expect_keys(where, lin, ["w", "b"], f"params['{name}/linear']")
        w, b = as_array(lin["w"]), as_array(lin["b"])
        hidden = w.shape[1] // 4
        n_in = w.shape[0] - hidden
        i, f, g, o = lstm_gates(b)
        cell: Any = LSTMCell(n_in, hidden)
        out = {
            "wi": jnp.concatenate(lstm_gates(w[:n_in]), -1),
            "wh": jnp.concatenate(lstm_gates(w[n_in:]), -1),
            "b": jnp.concatenate([i, f + 1, g, o]),
        }
    elif kind == "gru":
        expect_keys(where, params, [name], "params")
        p = params[name]
        expect_keys(where, p, ["w_i", "w_h", "b"], f"params[{name!r}]")
        w_i, w_h, b = as_array(p["w_i"]), as_array(p["w_h"]), as_array(p["b"])
        hidden = w_h.shape[0]
        (iz, ir, ia), (hz, hr, ha), (bz, br, ba) = (jnp.split(a, 3, -1) for a in (w_i, w_h, b))
        cell = GRUv3Cell(w_i.shape[0], hidden)
        out = {
            "wi": jnp.concatenate([ir, -iz, ia], -1),
            "wh": jnp.concatenate([hr, -hz], -1),
            "whn": ha,
            "b": jnp.concatenate([br, -bz, ba]),
        }
    elif kind == "conv_lstm":
        keys = [f"{name}/input_to_hidden", f"{name}/hidden_to_hidden"]
        expect_keys(where, params, keys, "params")
        ih, hh = params[keys[0]], params[keys[1]]
        w_ih, w_hh = as_array(ih["w"]), as_array(hh["w"])
        return conv_lstm_params(w_ih, w_hh, ih.get("b"), hh.get("b"))
    elif kind == "vanilla_rnn":
        keys = [f"{name}/linear", f"{name}/linear_1"]
        expect_keys(where, params, keys, "params")
        ih, hh = params[keys[0]], params[keys[1]]
        wi, wh = as_array(ih["w"]), as_array(hh["w"])
        b = as_array(ih["b"])
        if "b" in hh:
            b = b + as_array(hh["b"])
        cell = RNNCell(wi.shape[0], wi.shape[1], activation=jax.nn.relu)
        out = {"wi": wi, "wh": wh, "b": b}
    else:
        raise ValueError(f"{where}: kind must be 'lstm', 'gru', 'vanilla_rnn' or 'conv_lstm'.")
    check_params(cell, out, cell.param_shapes())
    return cell, out


def to_haiku(cell: Any, params: Any, *, name: str | None = None) -> dict[str, dict[str, Any]]:
    """Convert a recurjax cell to the parameter dict of the matching Haiku core.

    The inverse of `from_haiku`: `LSTMCell` to `hk.LSTM` (the forget bias stored as
    `b_f - 1`, since Haiku adds 1 back), `GRUv3Cell` to `hk.GRU` (update gate negated back),
    `RNNCell` with `activation=jax.nn.relu` to `hk.VanillaRNN` (bias in the input layer, the
    recurrent layer's bias zero), `ConvLSTMCell` to `hk.ConvNDLSTM` (the bias on
    `input_to_hidden`, the forget block less 1). `GRUCell` is a `TypeError`: Haiku's GRU
    applies the reset gate before the matmul. Pass the dict as `params` to the transformed
    function's `apply`, under the module's `name` (Haiku's default for the class when
    omitted).

    Examples:
      >>> import jax, jax.numpy as jnp, haiku as hk, recurjax as rj
      >>> from recurjax.interop import to_haiku
      >>> cell = rj.GRUv3Cell(3, 4)
      >>> hk_params = to_haiku(cell, cell.init(jax.random.key(0)))
      >>> f = hk.transform(lambda x: hk.GRU(4)(x, jnp.zeros(4)))
      >>> y, h = f.apply(hk_params, None, jnp.ones(3))
      >>> y.shape
      (4,)
    """
    where = f"to_haiku({cell!r})"
    expect_cell(
        where,
        cell,
        (LSTMCell, GRUv3Cell, RNNCell, ConvLSTMCell),
        "Haiku's GRU applies the reset gate before the matmul: it matches GRUv3Cell, not GRUCell.",
    )
    check_params(cell, params, cell.param_shapes())
    if isinstance(cell, ConvLSTMCell):
        name = name or f"conv{cell.spatial_dims}_dlstm"
        w_ih, w_hh, b = conv_lstm_weights(cell, params)
        return {
            f"{name}/input_to_hidden": {"w": w_ih, "b": b},
            f"{name}/hidden_to_hidden": {"w": w_hh, "b": jnp.zeros_like(b)},
        }
    params = cell.with_biases(params)  # Haiku's cells always have them: zeros
    name = name or _DEFAULT_NAMES[type(cell)]
    if isinstance(cell, LSTMCell):
        w = jnp.concatenate([params["wi"], params["wh"]], 0)
        i, f, g, o = jnp.split(params["b"], 4)
        b = jnp.concatenate([i, g, f - 1, o])
        # Swapping blocks f and g is its own inverse: `lstm_gates` maps i, f, g, o back too.
        return {f"{name}/linear": {"w": jnp.concatenate(lstm_gates(w), -1), "b": b}}
    if isinstance(cell, GRUv3Cell):
        ir, iz, ia = jnp.split(params["wi"], 3, -1)
        hr, hz = jnp.split(params["wh"], 2, -1)
        br, bz, ba = jnp.split(params["b"], 3, -1)
        return {
            name: {
                "w_i": jnp.concatenate([-iz, ir, ia], -1),
                "w_h": jnp.concatenate([-hz, hr, params["whn"]], -1),
                "b": jnp.concatenate([-bz, br, ba]),
            }
        }
    rnn_activation(cell, where, {"relu": jax.nn.relu})
    return {
        f"{name}/linear": {"w": params["wi"], "b": params["b"]},
        f"{name}/linear_1": {"w": params["wh"], "b": jnp.zeros_like(params["b"])},
    }
