"""Variants of the classic cells: IndRNN (one recurrent weight per unit) and the LSTM with
peephole connections. Same conventions as `_cells.py`: row vectors, `x @ W`, gate blocks
fused into one matrix per input, every size checked."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._cells import LSTMCell, RNNCell
from ._checks import fn_name
from ._init import affine, glorot_uniform

__all__ = ["IndRNNCell", "PeepholeLSTMCell"]


def _diag(w: jax.Array, a: jax.Array) -> jax.Array:
    """`w ⊙ a` for a per-unit weight `w: (H,)` and `a: (..., H)` (explicit broadcast)."""
    return jnp.broadcast_to(w, a.shape) * a


@dataclasses.dataclass(frozen=True, repr=False)
class IndRNNCell(RNNCell):
    r"""The independently recurrent cell of Li et al. (2018): each unit feeds back only into
    itself, through one weight, so the recurrent "matrix" is a vector.

    .. math::

        h' = \mathrm{act}(x W_i + u \odot h + b), \qquad y = h'

    Params (`init`): `{"wi": (in, H), "u": (H,), "b": (H,)}`; Glorot-uniform `wi`, zero `b`,
    and `u` uniform in `[0, recurrent_max)` (the paper's initialisation for ReLU units;
    with `|u_j| <= 2 ** (1 / T)` a unit's gradient over `T` steps neither explodes nor
    vanishes, a bound the paper keeps during training by clipping `u` after each update).
    State: an array `(..., H)`, zeros from `initial_state`. Input `x: (..., in)`; output
    `y: (..., H)`.

    Paper: S. Li, W. Li, C. Cook, C. Zhu, Y. Gao, "Independently Recurrent Neural Network
    (IndRNN): Building A Longer and Deeper RNN", CVPR 2018, arXiv:1803.04831.

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H`.
      activation: `act`, `jax.nn.relu` by default (the paper's).
      recurrent_max: the upper end of `u`'s initial range, `1.0` by default.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.IndRNNCell(3, 4)
      >>> cell.param_shapes()
      {'wi': (3, 4), 'u': (4,), 'b': (4,)}
      >>> params = cell.init(jax.random.key(0))
      >>> h, y = cell(params, cell.initial_state(params), jnp.ones((2, 3)))
      >>> y.shape, bool((y >= 0).all())
      ((2, 4), True)
    """

    in_features: int
    hidden_size: int
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu
    recurrent_max: float = 1.0

    def __repr__(self) -> str:
        act = fn_name(self.activation)
        return f"IndRNNCell({self.in_features} => {self.hidden_size}, {act})"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes."""
        i, h = self.in_features, self.hidden_size
        return {"wi": (i, h), "u": (h,), "b": (h,)}

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Params `{"wi": (in, H), "u": (H,), "b": (H,)}`: Glorot-uniform, `u` uniform in
        `[0, recurrent_max)`, zero bias."""
        ki, ku = jax.random.split(key)
        i, h = self.in_features, self.hidden_size
        return {
            "wi": glorot_uniform(ki, (i, h), dtype),
            "u": jax.random.uniform(ku, (h,), dtype, 0.0, self.recurrent_max),
            "b": jnp.zeros((h,), dtype),
        }

    def _recur(self, params: dict[str, jax.Array], h: jax.Array) -> jax.Array:
        return _diag(params["u"], h)


@dataclasses.dataclass(frozen=True, repr=False)
class PeepholeLSTMCell(LSTMCell):
    r"""The LSTM with peephole connections of Gers & Schmidhuber (2000): the input and forget
    gates see the previous cell state, the output gate the new one, each through one weight
    per unit.

    .. math::

        [a_i, a_f, a_g, a_o] &= x W_i + h W_h + b \\
        i &= \sigma(a_i + p_i \odot c), \quad f = \sigma(a_f + p_f \odot c) \\
        c' &= f \odot c + i \odot \tanh(a_g) \\
        o &= \sigma(a_o + p_o \odot c'), \quad h' = o \odot \tanh(c'), \qquad y = h'

    Params (`init`): `LSTMCell`'s `{"wi": (in, 4H), "wh": (H, 4H), "b": (4H,)}` (gate blocks
    `i, f, g, o`) and `"p": (3, H)`, the peephole weights of `i, f, o` in its rows, zero at
    init (so a fresh cell starts as `LSTMCell`). State: `LSTMState(h, c)`, each `(..., H)`.
    Input `x: (..., in)`; output `y = h': (..., H)`. It runs with the sequential strategy.

    Paper: F. A. Gers, J. Schmidhuber, "Recurrent nets that time and count", IJCNN 2000.

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H`.
      forget_bias: initial value of the forget-gate bias block, as for `LSTMCell`.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.PeepholeLSTMCell(3, 4)
      >>> cell.param_shapes()["p"]
      (3, 4)
      >>> params = cell.init(jax.random.key(0))
      >>> state, y = cell(params, cell.initial_state(params), jnp.ones((2, 3)))
      >>> lstm = rj.LSTMCell(3, 4)
      >>> plain = {k: v for k, v in params.items() if k != "p"}
      >>> bool(jnp.allclose(y, lstm(plain, lstm.initial_state(plain), jnp.ones((2, 3)))[1]))
      True
    """

    def __repr__(self) -> str:
        return "Peephole" + super().__repr__()

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """`LSTMCell`'s shapes and the peepholes `"p": (3, H)`."""
        return {**super().param_shapes(), "p": (3, self.hidden_size)}

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """`LSTMCell`'s params and zero peepholes `"p": (3, H)` (rows `i, f, o`)."""
        return {**super().init(key, dtype), "p": jnp.zeros((3, self.hidden_size), dtype)}

    def _update(
        self, params: dict[str, jax.Array], h: jax.Array, c: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        a = affine(x, params["wi"], params["b"]) + h @ params["wh"]
        a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
        p_i, p_f, p_o = params["p"]
        i = jax.nn.sigmoid(a_i + _diag(p_i, c))
        c_new = jax.nn.sigmoid(a_f + _diag(p_f, c)) * c + i * jnp.tanh(a_g)
        return jax.nn.sigmoid(a_o + _diag(p_o, c_new)) * jnp.tanh(c_new), c_new
