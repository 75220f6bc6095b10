"""Helpers shared by the converters: array intake, lazy imports, checks with clear messages,
and the LSTM gate order and conv LSTM layout that Flax and Haiku share."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._cells.classic import RNNCell
from .._cells.conv import ConvLSTMCell
from .._checks import check_params, shape_of

Params = dict[str, jax.Array]


def require(module: str, extra_hint: str) -> Any:
    """Import `module` or raise an `ImportError` that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - the test extra installs every reference
        raise ImportError(
            f"recurjax.interop: this converter needs `{module}`, which is not installed. "
            f'Install it with `pip install {extra_hint}` (or `pip install "recurjax[test]"`).'
        ) from err


def as_array(value: Any) -> jax.Array:
    """A JAX array from a NumPy array, a JAX array (or tracer), or a torch tensor."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, without torch
        value = value.detach().cpu().numpy()
    return jnp.asarray(value)


def as_numpy(value: Any) -> np.ndarray:
    """A writable, C-contiguous NumPy copy of a JAX or NumPy array (`torch.from_numpy` needs
    a writable one)."""
    return np.array(value, order="C", copy=True)


def expect_shape(where: str, name: str, value: Any, shape: tuple[int, ...]) -> None:
    """Raise `ValueError` naming `name` unless `value` has exactly `shape`."""
    if shape_of(value) != shape:
        raise ValueError(
            f"{where}: expected {name} of shape {shape}, got {shape_of(value)}. The parameter "
            "tree does not match the cell it describes; pass the tree of that very module."
        )


def expect_keys(where: str, tree: Mapping[str, Any], keys: list[str], what: str) -> None:
    """Raise `ValueError` unless every key in `keys` is in `tree`, listing what is there."""
    if not isinstance(tree, Mapping):
        raise TypeError(f"{where}: expected {what} to be a mapping, got {type(tree).__name__}.")
    missing = [k for k in keys if k not in tree]
    if missing:
        raise ValueError(
            f"{where}: {what} lacks {missing}; it has {sorted(tree)}. Pass the parameters "
            "of the module itself (the subtree under its name), not of a larger model."
        )


def is_zero(value: Any) -> bool:
    """Whether a concrete array is all zeros."""
    return not bool(np.any(np.asarray(value) != 0))


def rnn_activation(cell: RNNCell, where: str, allowed: dict[str, Any]) -> str:
    """The name of `cell.activation` among `allowed` ({name: function}), or a `ValueError`."""
    for name, fn in allowed.items():
        if cell.activation is fn:
            return name
    raise ValueError(
        f"{where}: {cell!r} uses the activation {cell.activation!r}, which the target does "
        f"not offer; it supports {sorted(allowed)} ({', '.join(map(repr, allowed.values()))})."
    )


def expect_cell(where: str, cell: object, kinds: tuple[type, ...], why: str = "") -> None:
    """Raise `TypeError` unless `cell` is exactly one of `kinds`: a subclass (e.g.
    `PeepholeLSTMCell` of `LSTMCell`) computes another step, and its params would convert to
    a module that computes the base class's step."""
    if type(cell) not in kinds:
        names = ", ".join(k.__name__ for k in kinds)
        raise TypeError(
            f"{where}: expected one of the cells {names}, got {cell!r}.{' ' + why if why else ''}"
        )


def lstm_gates(a: jax.Array) -> list[jax.Array]:
    """Haiku's and Flax's conv LSTM gate blocks `i, g, f, o` (last axis) as recurjax's `[i,
    f, g, o]` (and back: swapping `f` and `g` is its own inverse)."""
    i, g, f, o = jnp.split(a, 4, -1)
    return [i, f, g, o]


def _igfo(a: jax.Array) -> jax.Array:
    """`lstm_gates` concatenated."""
    return jnp.concatenate(lstm_gates(a), -1)


def _forget_offset(b: jax.Array, offset: float) -> jax.Array:
    """`b` (blocks `i, f, g, o`) with `offset` added to its forget block."""
    h = b.shape[-1] // 4
    return b.at[h : 2 * h].add(offset)


def conv_lstm_params(
    w_ih: jax.Array, w_hh: jax.Array, b_ih: Any, b_hh: Any
) -> tuple[ConvLSTMCell, dict[str, jax.Array]]:
    """Flax's or Haiku's conv LSTM (`i, g, f, o`, `+1` on `f` in the forward pass, a bias on
    each convolution or none) as a `ConvLSTMCell`: blocks reordered, the biases summed and
    the 1 stored in the forget block."""
    zeros = jnp.zeros(w_ih.shape[-1], w_ih.dtype)
    b = sum((zeros if a is None else as_array(a) for a in (b_ih, b_hh)), zeros)
    cell = ConvLSTMCell(w_ih.shape[-2], w_ih.shape[-1] // 4, kernel_size=tuple(w_ih.shape[:-2]))
    params = {"wi": _igfo(w_ih), "wh": _igfo(w_hh), "b": _forget_offset(_igfo(b), 1.0)}
    check_params(cell, params, cell.param_shapes())
    return cell, params


def conv_lstm_weights(cell: ConvLSTMCell, params: Any) -> tuple[jax.Array, ...]:
    """The inverse of `conv_lstm_params`: `(w_ih, w_hh, b_ih)` in Flax's and Haiku's layout,
    the bias on the input convolution (the hidden one's zero)."""
    params = cell.with_biases(params)
    b = _igfo(_forget_offset(params["b"], -1.0))
    return _igfo(params["wi"]), _igfo(params["wh"]), b
