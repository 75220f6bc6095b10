"""Helpers shared by the converters: array intake, lazy imports, checks with clear messages."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._cells.classic import RNNCell
from .._checks import shape_of

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
