"""PyTorch: `nn.RNN`, `nn.LSTM`, `nn.GRU` and their `*Cell` forms, to and from recurjax."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._cells.classic import GRUCell, LSTMCell, RNNCell
from .._cells.variants import ProjLSTMCell
from .._checks import check_params
from .._compose import Bidirectional, Chain, bidirectional, chain
from ._common import as_array, as_numpy, expect_cell, expect_shape, is_zero, rnn_activation

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
_LAYERS = ("RNN", "LSTM", "GRU")
_CELLS = ("RNNCell", "LSTMCell", "GRUCell")
_KEY = re.compile(r"^(weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)(_l(\d+)(_reverse)?)?$")


def _module_mode(module: Any) -> str:
    """Torch's mode string of an RNN module or cell."""
    name = type(module).__name__
    if name in _LAYERS:
        return module.mode
    if name == "RNNCell":
        return "RNN_TANH" if module.nonlinearity == "tanh" else "RNN_RELU"
    if name in ("LSTMCell", "GRUCell"):
        return name[:-4]
    raise TypeError(
        f"from_torch: expected a torch.nn.RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell, or a "
        f"state_dict with mode=..., got {name}."
    )


def _layers(
    state_dict: Mapping[str, Any], where: str
) -> tuple[dict[int | None, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Group a state_dict's entries by layer (`None` for a cell's keys without `_l{k}`),
    and the `_l{k}_reverse` entries of a bidirectional module by layer."""
    layers: dict[int | None, dict[str, Any]] = {}
    reverse: dict[int, dict[str, Any]] = {}
    for key, value in state_dict.items():
        m = _KEY.match(key)
        if m is None:
            raise ValueError(
                f"{where}: unexpected key {key!r} in the state_dict. Expected "
                "weight_ih, weight_hh, bias_ih, bias_hh (cells) or the same with _l0, _l1, ... "
                "and _l0_reverse, ... (nn.RNN, nn.LSTM, nn.GRU; weight_hr_l0, ... with an "
                "LSTM's proj_size)."
            )
        if m.group(4):
            reverse.setdefault(int(m.group(3)), {})[m.group(1)] = value
            continue
        layer = None if m.group(3) is None else int(m.group(3))
        layers.setdefault(layer, {})[m.group(1)] = value
    if None in layers and len(layers) > 1:
        raise ValueError(f"{where}: the state_dict mixes cell keys and layer keys (_l0, ...).")
    numbered = sorted(k for k in layers if k is not None)
    if numbered and numbered != list(range(len(numbered))):
        raise ValueError(f"{where}: layers {numbered} are not numbered 0, 1, 2, ...")
    if reverse and sorted(reverse) != numbered:
        raise ValueError(
            f"{where}: a bidirectional state_dict needs '_reverse' keys for every layer "
            f"{numbered}, got them for {sorted(reverse)}."
        )
    return layers, reverse


def _one_layer(mode: str, tensors: dict[str, Any], where: str) -> tuple[Any, dict[str, Any]]:
    gates = _GATES[mode]
    for name in ("weight_ih", "weight_hh"):
        if name not in tensors:
            raise ValueError(f"{where}: the state_dict has no {name}.")
    has_bias = "bias_ih" in tensors, "bias_hh" in tensors
    if has_bias[0] != has_bias[1]:
        raise ValueError(f"{where}: the state_dict has only one of bias_ih and bias_hh.")
    w_ih, w_hh = as_array(tensors["weight_ih"]), as_array(tensors["weight_hh"])
    if w_ih.ndim != 2 or w_hh.ndim != 2:
        raise ValueError(f"{where}: weight_ih and weight_hh must be matrices.")
    hidden, in_features = w_hh.shape[1], w_ih.shape[1]
    w_hr = as_array(tensors["weight_hr"]) if "weight_hr" in tensors else None
    if w_hr is not None:  # nn.LSTM(proj_size=P): weight_hr (P, H) and weight_hh (4H, P)
        if mode != "LSTM" or w_hr.ndim != 2:
            raise ValueError(
                f"{where}: weight_hr (an LSTM's projection, a (P, H) matrix) in a {mode!r} "
                f"state_dict of shape {tuple(w_hr.shape)}; only mode 'LSTM' has one."
            )
        proj, hidden = w_hr.shape
        expect_shape(where, "weight_hh", w_hh, (gates * hidden, proj))
    elif w_hh.shape[0] != gates * hidden:
        raise ValueError(
            f"{where}: mode {mode!r} has {gates} gate block(s), so weight_hh should have shape "
            f"({gates} * H, H) = ({gates * hidden}, {hidden}); got {tuple(w_hh.shape)}. "
            "Is the mode right?"
        )
    expect_shape(where, "weight_ih", w_ih, (gates * hidden, in_features))
    use_bias = has_bias[0]
    params: dict[str, Any] = {"wi": w_ih.T, "wh": w_hh.T}
    if w_hr is not None:
        cell: Any = ProjLSTMCell(in_features, hidden, proj_size=w_hr.shape[0], use_bias=use_bias)
        params["wr"] = w_hr.T
    elif mode in ("GRU", "LSTM"):
        cell = (GRUCell if mode == "GRU" else LSTMCell)(in_features, hidden, use_bias=use_bias)
    else:
        act = jnp.tanh if mode == "RNN_TANH" else jax.nn.relu
        cell = RNNCell(in_features, hidden, activation=act, use_bias=use_bias)
    if not use_bias:  # bias=False: a cell without biases
        return cell, params
    b_ih, b_hh = as_array(tensors["bias_ih"]), as_array(tensors["bias_hh"])
    expect_shape(where, "bias_ih", b_ih, (gates * hidden,))
    expect_shape(where, "bias_hh", b_hh, (gates * hidden,))
    if mode == "GRU":
        r_z, bhn = b_hh[: 2 * hidden], b_hh[2 * hidden :]
        params["b"] = b_ih + jnp.concatenate([r_z, jnp.zeros_like(bhn)])
        params["bhn"] = bhn
    else:
        params["b"] = b_ih + b_hh
    return cell, params


def from_torch(source: Any, *, mode: str | None = None) -> tuple[Any, Any]:
    """Convert a PyTorch recurrent module, or its `state_dict`, to `(cell, params)`.

    `nn.RNNCell`/`nn.LSTMCell`/`nn.GRUCell` and one-layer `nn.RNN`/`nn.LSTM`/`nn.GRU` give a
    library cell; `num_layers = L > 1` gives `rj.chain` of `L` cells, params a tuple of `L`
    dicts. With `bidirectional=True` every layer is `rj.bidirectional(forward, backward)`
    (merge `"concat"`, as torch's output), params `(forward, backward)` per layer: run with
    `lengths=` it equals torch on a `pack_padded_sequence`. Weights are transposed (`wi =
    weight_ih.T: (in, G*H)`, `wh = weight_hh.T: (H, G*H)`, gate blocks in PyTorch's order), and
    the two biases are summed, `b = bias_ih + bias_hh`, except the GRU's `b_hn`, which stays
    apart as `bhn` since it sits inside the reset gate. `bias=False` gives cells with
    `use_bias=False` (no biases in their params).
    `batch_first` does not touch the weights (use `time_axis=1` in `rj.scan`); `dropout` acts
    only in training and is not converted.

    Args:
      source: a `torch.nn` module, or a mapping from its `state_dict` keys (`weight_ih_l0`,
        ..., or `weight_ih`, ... for a cell) to NumPy arrays, JAX arrays or torch tensors,
        so that converting saved weights needs no torch.
      mode: which cell a `state_dict` holds, in torch's words: `"LSTM"`, `"GRU"`,
        `"RNN_TANH"` or `"RNN_RELU"` (`module.mode` of an `nn.RNN`/`LSTM`/`GRU`). Taken from
        the module when a module is given.

    Returns:
      `(cell, params)`: e.g. `(LSTMCell(in, H), {"wi", "wh", "b"})`, in the dtype of the
      source arrays.

    Raises:
      ValueError: a state_dict without `mode`, or arrays whose shapes do not fit the mode.

    Examples:
      >>> import numpy as np, recurjax as rj
      >>> from recurjax.interop import from_torch
      >>> rng = np.random.default_rng(0)
      >>> sd = {"weight_ih_l0": rng.normal(size=(12, 3)), "weight_hh_l0": rng.normal(size=(12, 4)),
      ...       "bias_ih_l0": rng.normal(size=12), "bias_hh_l0": rng.normal(size=12)}
      >>> cell, params = from_torch(sd, mode="GRU")
      >>> cell, {k: v.shape for k, v in params.items()}
      (GRUCell(3 => 4), {'wi': (3, 12), 'wh': (4, 12), 'b': (12,), 'bhn': (4,)})
    """
    if isinstance(source, Mapping):
        where = "from_torch(state_dict)"
        if mode is None:
            raise ValueError(
                f"{where}: a state_dict does not say which cell it holds; pass mode='LSTM', "
                "'GRU', 'RNN_TANH' or 'RNN_RELU' (torch's own `module.mode`)."
            )
        state_dict = source
    else:
        module_mode = _module_mode(source)
        if mode is not None and mode != module_mode:
            raise ValueError(
                f"from_torch: mode={mode!r} contradicts the module's {module_mode!r}."
            )
        mode, where = module_mode, f"from_torch({type(source).__name__})"
        state_dict = source.state_dict()
    if mode not in _GATES:
        raise ValueError(f"{where}: mode must be one of {sorted(_GATES)}, got {mode!r}.")
    layers, reverse = _layers(state_dict, where)
    if not layers:
        raise ValueError(f"{where}: the state_dict is empty.")
    if None in layers:
        return _one_layer(mode, layers[None], where)
    converted = []
    for k in sorted(layers):  # type: ignore[type-var]
        cell, params = _one_layer(mode, layers[k], f"{where} layer {k}")
        if reverse:
            back, back_params = _one_layer(mode, reverse[k], f"{where} layer {k} reverse")
            cell, params = bidirectional(cell, back), (params, back_params)
        converted.append((cell, params))
    if len(converted) == 1:
        return converted[0]
    for k in range(1, len(converted)):
        below, here = converted[k - 1][0], converted[k][0]
        gives = _width(below)
        if here.in_features != gives:
            raise ValueError(
                f"{where}: layer {k} takes {here.in_features} inputs but layer {k - 1} gives "
                f"{gives}."
            )
    return chain(*(c for c, _ in converted)), tuple(p for _, p in converted)


def _width(cell: Any) -> int:
    """Output features of a converted layer (both directions for a bidirectional one)."""
    if isinstance(cell, Bidirectional):
        return _width(cell.forward) + _width(cell.backward)
    return cell.proj_size if isinstance(cell, ProjLSTMCell) else cell.hidden_size


def to_torch(cell: Any, params: Any, *, bias: bool | None = None) -> dict[str, np.ndarray]:
    """Convert a recurjax cell and its params to a PyTorch `state_dict` of NumPy arrays.

    An `RNNCell` (tanh or relu), `LSTMCell` or `GRUCell` gives the keys of a one-layer
    `nn.RNN`/`nn.LSTM`/`nn.GRU` (`weight_ih_l0`, ...); a `Chain` of such cells of one kind
    and one hidden size, each fed by the one before, gives `num_layers = len(chain)` layers.
    A `bidirectional` pair of such cells (merge `"concat"`), or a chain of them, gives a
    `bidirectional=True` module's keys (`weight_ih_l0_reverse`, ...).
    Load it with `module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})`.
    For an `nn.*Cell`, drop the `_l0` suffix from the keys of a one-layer result.

    The bias goes to `bias_ih` and `bias_hh` is zero, except the GRU's `b_hn = bhn`, so
    `from_torch(to_torch(cell, p))` returns `p` exactly. `GRUv3Cell` has no PyTorch
    counterpart (PyTorch applies the reset gate after the matmul): a `TypeError`.

    Args:
      cell: an `RNNCell`, `LSTMCell`, `GRUCell`, or a `Chain` of them.
      params: its params (a tuple of dicts for a chain).
      bias: `False` for a module built with `bias=False`: then every bias must be zero and
        no bias keys are written; `True` writes them (zeros for a cell with
        `use_bias=False`); `None` (the default) writes them unless no part has a bias.

    Returns:
      `{key: np.ndarray}` in torch's layout and naming.

    Examples:
      >>> import jax, recurjax as rj
      >>> from recurjax.interop import to_torch
      >>> cell = rj.LSTMCell(3, 4)
      >>> sd = to_torch(cell, cell.init(jax.random.key(0)))
      >>> {k: v.shape for k, v in sd.items()}  # doctest: +NORMALIZE_WHITESPACE
      {'weight_ih_l0': (16, 3), 'weight_hh_l0': (16, 4), 'bias_ih_l0': (16,),
       'bias_hh_l0': (16,)}
    """
    where = f"to_torch({cell!r})"
    if isinstance(cell, Chain):
        cells, plist = tuple(cell.cells), params
        if not isinstance(plist, tuple) or len(plist) != len(cells):
            raise ValueError(f"{where}: expected params to be a tuple with one dict per part.")
    else:
        cells, plist = (cell,), (params,)
    pairs = [isinstance(c, Bidirectional) for c in cells]
    if not any(pairs):
        return _layers_to_torch(cells, plist, where, bias, fed=1)
    if not all(pairs) or any(c.merge != "concat" for c in cells):
        raise ValueError(
            f"{where}: a PyTorch bidirectional module has every layer bidirectional with its "
            "outputs concatenated (merge='concat'); got a chain that mixes them or another "
            "merge."
        )
    fwd = _layers_to_torch([c.forward for c in cells], [p[0] for p in plist], where, bias, 2)
    bwd = _layers_to_torch([c.backward for c in cells], [p[1] for p in plist], where, bias, 2)
    return {**fwd, **{f"{k}_reverse": v for k, v in bwd.items()}}


def _layers_to_torch(
    cells: Any, plist: Any, where: str, bias: bool | None, fed: int
) -> dict[str, np.ndarray]:
    """The state_dict of one direction's layers; layer k reads `fed * H` features from k-1."""
    why = "PyTorch's GRU applies the reset gate after the matmul, which is GRUCell."
    for c in cells:
        expect_cell(where, c, (RNNCell, LSTMCell, GRUCell, ProjLSTMCell), why)
    first = cells[0]
    for k, c in enumerate(cells[1:], start=1):
        prev = cells[k - 1]
        if type(c) is not type(first) or (c.hidden_size, _width(c)) != (
            first.hidden_size,
            _width(first),
        ):
            raise ValueError(
                f"{where}: a PyTorch multi-layer module has one cell type and one hidden size; "
                f"part {k} is {c!r}, part 0 is {first!r}."
            )
        if c.in_features != fed * _width(prev):
            raise ValueError(f"{where}: part {k} is not fed by part {k - 1}'s output.")
    acts = {"tanh": jnp.tanh, "relu": jax.nn.relu}
    if isinstance(first, RNNCell):
        names = {rnn_activation(c, where, acts) for c in cells}  # type: ignore[arg-type]
        if len(names) > 1:
            raise ValueError(f"{where}: the parts mix activations {sorted(names)}.")
    if bias is None:
        bias = any(c.use_bias for c in cells)
    out: dict[str, np.ndarray] = {}
    for k, (c, p) in enumerate(zip(cells, plist, strict=True)):
        hidden = c.hidden_size
        check_params(c, p, c.param_shapes())
        p = c.with_biases(p)
        b_ih = p["b"]
        b_hh = jnp.zeros_like(b_ih)
        if isinstance(c, GRUCell):
            b_hh = jnp.concatenate([jnp.zeros_like(b_ih[: 2 * hidden]), p["bhn"]])
        out[f"weight_ih_l{k}"] = as_numpy(p["wi"].T)
        out[f"weight_hh_l{k}"] = as_numpy(p["wh"].T)
        if isinstance(c, ProjLSTMCell):
            out[f"weight_hr_l{k}"] = as_numpy(p["wr"].T)
        if bias:
            out[f"bias_ih_l{k}"] = as_numpy(b_ih)
            out[f"bias_hh_l{k}"] = as_numpy(b_hh)
        elif not (is_zero(b_ih) and is_zero(b_hh)):
            raise ValueError(
                f"{where}: bias=False, but part {k} has non-zero biases; a module built with "
                "bias=False cannot hold them. Use bias=True."
            )
    return out
