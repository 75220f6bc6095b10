"""xLSTM's scalar-memory cell, sLSTM (Beck et al., 2024): exponential input gates with a
log-space stabiliser, a normaliser state, and block-diagonal (per head) recurrence."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._checks import check_heads, check_input, check_params, check_sizes, match_state
from ._contracts import Cell
from ._init import affine, glorot_uniform

__all__ = ["SLSTMCell", "SLSTMState"]


class SLSTMState(NamedTuple):
    """The carry of `SLSTMCell`: hidden `h`, cell `c`, normaliser `n` and stabiliser `m`.

    Examples:
      >>> import jax, recurjax as rj
      >>> cell = rj.SLSTMCell(3, 4)
      >>> cell.initial_state(cell.init(jax.random.key(0))).n.shape
      (4,)
    """

    h: jax.Array  # shape=(..., H): hidden state, also the output
    c: jax.Array  # shape=(..., H): cell state, scaled by exp(-m)
    n: jax.Array  # shape=(..., H): normaliser, scaled by exp(-m)
    m: jax.Array  # shape=(..., H): log-space stabiliser


@dataclasses.dataclass(frozen=True, repr=False)
class SLSTMCell(Cell):
    r"""xLSTM's sLSTM cell: an LSTM with an exponential input gate, a normaliser state and a
    stabiliser that keeps every exponential finite.

    .. math::

        [\tilde\imath, \tilde f, \tilde z, \tilde o] &= x W_i + \mathrm{heads}(h) + b \\
        \log f &= \log\sigma(\tilde f) \quad (\tilde f \text{ with exp\_forget}) \\
        m' &= \max(\log f + m, \ \tilde\imath) \\
        i' &= e^{\tilde\imath - m'}, \qquad f' = e^{\log f + m - m'} \\
        c' &= f' \odot c + i' \odot \tanh(\tilde z), \qquad n' = f' \odot n + i' \\
        h' &= \sigma(\tilde o) \odot c' / n', \qquad y = h'

    `heads(h)` is block-diagonal: head `k` maps its `d = H / num_heads` units of `h` to its
    units of the four gates. `c` and `n` are kept scaled by `exp(-m)`, so `c' / n'` is the
    paper's `c / n` without ever forming `exp(i~)` (tested: equal to the unstabilised form
    where that one is finite, and finite for pre-activations of 1e4).

    Params (`init`): `{"wi": (in, 4H), "wh": (heads, d, 4d), "b": (4H,)}`, gate blocks `i, f,
    z, o` (in `wi`, `b` and in each head's `4d` columns); Glorot-uniform weights, zero bias
    except the forget block, `forget_bias` (3.0 by default: a long memory at the start).
    State: `SLSTMState(h, c, n, m)`, each `(..., H)`, zeros. Input `x: (..., in)`; output
    `y: (..., H)`. It runs with the sequential strategy.

    Paper: M. Beck, K. Pöppel, M. Spanring, et al., "xLSTM: Extended Long Short-Term
    Memory", arXiv:2405.04517 (section 2.2).

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H`.
      num_heads: the blocks of the recurrent weights, dividing `H` (1 by default).
      forget_bias: initial value of the forget-gate bias block.
      exp_forget: an exponential forget gate, `f = exp(f~)`, instead of the sigmoid.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.SLSTMCell(3, 8, num_heads=2)
      >>> cell.param_shapes()
      {'wi': (3, 32), 'wh': (2, 4, 16), 'b': (32,)}
      >>> params = cell.init(jax.random.key(0))
      >>> state, y = cell(params, cell.initial_state(params), 1e4 * jnp.ones((2, 3)))
      >>> y.shape, bool(jnp.isfinite(y).all())
      ((2, 8), True)
    """

    in_features: int
    hidden_size: int
    num_heads: int = 1
    forget_bias: float = 3.0
    exp_forget: bool = False

    def __post_init__(self) -> None:
        check_sizes(self, "in_features", "hidden_size", "num_heads")
        check_heads(self)

    def __repr__(self) -> str:
        heads = f", num_heads={self.num_heads}" if self.num_heads != 1 else ""
        return f"SLSTMCell({self.in_features} => {self.hidden_size}{heads})"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes."""
        i, h, n = self.in_features, self.hidden_size, self.num_heads
        d = h // n
        return {"wi": (i, 4 * h), "wh": (n, d, 4 * d), "b": (4 * h,)}

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Glorot-uniform `wi` and head blocks, zero bias but the forget block."""
        ki, kh = jax.random.split(key)
        i, h, n = self.in_features, self.hidden_size, self.num_heads
        d = h // n
        blocks = [glorot_uniform(k, (d, 4 * d), dtype) for k in jax.random.split(kh, n)]
        return {
            "wi": glorot_uniform(ki, (i, 4 * h), dtype),
            "wh": jnp.stack(blocks),
            "b": jnp.zeros((4 * h,), dtype).at[h : 2 * h].set(self.forget_bias),
        }

    def initial_state(self, params: dict[str, jax.Array]) -> SLSTMState:
        """`SLSTMState` of zeros `(H,)` in the params' dtype."""
        dtype = check_params(self, params, self.param_shapes())
        zeros = jnp.zeros((self.hidden_size,), dtype)
        return SLSTMState(zeros, zeros, zeros, zeros)

    def _recurrent(self, wh: jax.Array, h: jax.Array) -> jax.Array:
        """`heads(h)`: `(..., H)` to the four gate blocks `(..., 4H)`, head by head."""
        n, d = wh.shape[0], wh.shape[1]
        g = jnp.einsum("...nd,nde->...ne", h.reshape(*h.shape[:-1], n, d), wh)
        g = g.reshape(*h.shape[:-1], n, 4, d)  # head, gate, unit
        return jnp.swapaxes(g, -3, -2).reshape(*h.shape[:-1], 4 * n * d)

    def __call__(
        self, params: dict[str, jax.Array], state: SLSTMState, x: jax.Array
    ) -> tuple[SLSTMState, jax.Array]:
        dtype = check_params(self, params, self.param_shapes())
        x = check_input(self, x, dtype)
        if not isinstance(state, SLSTMState):
            raise TypeError(
                f"{self!r}: expected the state to be an SLSTMState(h, c, n, m), got "
                f"{type(state).__name__}. Use {self!r}.initial_state(params)."
            )
        batch, H = tuple(x.shape[:-1]), self.hidden_size
        h, c, n, m = (match_state(self, k, v, batch, H, dtype) for k, v in state._asdict().items())
        pre = affine(x, params["wi"], params["b"]) + self._recurrent(params["wh"], h)
        i_t, f_t, z_t, o_t = jnp.split(pre, 4, axis=-1)
        log_f = f_t if self.exp_forget else jax.nn.log_sigmoid(f_t)
        m_new = jnp.maximum(log_f + m, i_t)
        i = jnp.exp(i_t - m_new)
        f = jnp.exp(log_f + m - m_new)
        c = f * c + i * jnp.tanh(z_t)
        n = f * n + i
        # n' > 0 unless both terms underflow (then c' is 0 too): the output is 0 there.
        ratio = jnp.where(n > 0, c / jnp.where(n > 0, n, 1), 0)
        h = jax.nn.sigmoid(o_t) * ratio
        return SLSTMState(h, c, n, m_new), h
