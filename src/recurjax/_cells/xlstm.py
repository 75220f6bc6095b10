"""xLSTM's cells (Beck et al., 2024): sLSTM (scalar memory, exponential gates with a log-space
stabiliser, a normaliser state, block-diagonal recurrence) and mLSTM (a matrix memory per
head with a covariance update)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._checks import check_heads, match_state
from .._contracts import MemorySteps
from .._init import glorot_uniform
from .._states import MLSTMState, SLSTMState
from .base import _CellBase, affine, affine_blocks, by_heads

__all__ = ["MLSTMCell", "SLSTMCell"]


@dataclasses.dataclass(frozen=True, repr=False)
class _XLSTMCell(_CellBase):
    """The shared fields of xLSTM's cells: sizes, heads (checked to divide `H`), the forget
    gate's initial bias and kind."""

    sizes: ClassVar[tuple[str, ...]] = ("in_features", "hidden_size", "num_heads")
    shown: ClassVar[tuple[str, ...]] = ("num_heads",)

    in_features: int
    hidden_size: int
    num_heads: int = 1
    forget_bias: float = 3.0
    exp_forget: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_heads(self)

    def _checked_step(
        self, params: Any, state: object, x: jax.Array, kind: type
    ) -> tuple[Any, jax.Array]:
        """`(dtype, x)` after checking params, input and the state's type."""
        dtype, x = self._checked(params, x)
        if not isinstance(state, kind):
            fields = ", ".join(kind._fields)  # type: ignore[attr-defined]
            raise TypeError(
                f"{self!r}: expected the state to be an {kind.__name__}({fields}), got "
                f"{type(state).__name__}. Use {self!r}.initial_state(params)."
            )
        return dtype, x


@dataclasses.dataclass(frozen=True, repr=False)
class SLSTMCell(_XLSTMCell):
    r"""xLSTM's sLSTM cell: an LSTM with an exponential input gate, a normaliser state and a
    stabiliser that keeps every exponential finite.

    $$
    \begin{aligned}
    [\tilde\imath, \tilde f, \tilde z, \tilde o] &= x W_i + \mathrm{heads}(h) + b \\
    \log f &= \log\sigma(\tilde f) \quad (\tilde f \text{ with exp\_forget}) \\
    m' &= \max(\log f + m, \ \tilde\imath) \quad (\tilde\imath \text{ where } c = n = 0) \\
    i' &= e^{\tilde\imath - m'}, \qquad f' = e^{\log f + m - m'} \\
    c' &= f' \odot c + i' \odot \tanh(\tilde z), \qquad n' = f' \odot n + i' \\
    h' &= \sigma(\tilde o) \odot c' / n', \qquad y = h'
    \end{aligned}
    $$

    `heads(h)` is block-diagonal: head `k` maps its `d = H / num_heads` units of `h` to its
    units of the four gates. `c` and `n` are kept scaled by `exp(-m)`, so `c' / n'` is the
    paper's `c / n` without ever forming `exp(i~)`. An empty memory (`c = n = 0`, as in the
    zero state) starts the stabiliser at `m' = i~`, as xlstm does; from there `n' >= 1` and
    `|c'| <= n'`, so the read-out and its gradient stay bounded (tested: equal to the
    unstabilised form where that one is finite, and values and gradients finite for inputs
    at every scale from 1e-3 to 1e5).

    Params (`init`): `{"wi": (in, 4H), "wh": (heads, d, 4d), "b": (4H,)}`, gate blocks `i, f,
    z, o` (in `wi`, `b` and in each head's `4d` columns); Glorot-uniform weights, zero bias
    except the forget block, `forget_bias` (3.0 by default: a long memory at the start).
    State: `SLSTMState(h, c, n, m)`, each `(..., H)`, zeros. Input `x: (..., in)`; output
    `y: (..., H)`. It runs with the sequential strategy.

    Checked against the `xlstm` package's sLSTM cell on its PyTorch backend (outputs, states
    and every gradient, to 1e-9 in float64; `tests/test_references.py`). That cell takes the
    gate pre-activations `x @ wi`; its recurrent kernel `(heads, d, 4, d)` is `wh` reshaped
    and its bias `(heads, 4, d)` is `b` taken gate by gate.

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
        zeros = super().initial_state(params)
        return SLSTMState(zeros, zeros, zeros, zeros)

    def _recurrent(self, wh: jax.Array, h: jax.Array) -> jax.Array:
        """`heads(h)`: `(..., H)` to the four gate blocks `(..., 4H)`, head by head."""
        n, d = wh.shape[0], wh.shape[1]
        g = by_heads(h, wh).reshape(*h.shape[:-1], n, 4, d)  # head, gate, unit
        return jnp.swapaxes(g, -3, -2).reshape(*h.shape[:-1], 4 * n * d)

    def __call__(
        self, params: dict[str, jax.Array], state: SLSTMState, x: jax.Array
    ) -> tuple[SLSTMState, jax.Array]:
        dtype, x = self._checked_step(params, state, x, SLSTMState)
        batch, H = tuple(x.shape[:-1]), self.hidden_size
        h, c, n, m = (match_state(self, k, v, batch, H, dtype) for k, v in state._asdict().items())
        pre = affine(x, params["wi"], params["b"]) + self._recurrent(params["wh"], h)
        i_t, f_t, z_t, o_t = jnp.split(pre, 4, axis=-1)
        empty = (n == 0) & (c == 0)
        i, f, m_new = _stabilised_gates(i_t, f_t, m, self.exp_forget, empty)
        c = f * c + i * jnp.tanh(z_t)
        n = f * n + i
        # n' >= 1 (see _stabilised_gates) and |c'| <= n': the ratio and its gradient are
        # bounded by 1.
        h = jax.nn.sigmoid(o_t) * (c / n)
        return SLSTMState(h, c, n, m_new), h


def _stabilised_gates(
    i_t: jax.Array,
    f_t: jax.Array,
    m: jax.Array,
    exp_forget: bool,
    empty: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """xLSTM's stabiliser: `(i', f', m')` with `m' = max(log f + m, i~)`, `i' = exp(i~ - m')`,
    `f' = exp(log f + m - m')`; `log f` is `log sigmoid(f~)`, or `f~` with `exp_forget`.

    Where `empty` (a memory that holds nothing, as the zero state), `m' = i~`, as xlstm's
    sLSTM does. The first write then has `i' = 1`, and after it one of `i'`, `f'` is
    `exp(0) = 1` at every step, exactly in floating point, so the scaled memory never shrinks
    below its latest write (sLSTM: `n' >= 1`). Without it, a first input gate far below the
    forget gate scales the first write by `exp(i~ - log f)`, as small as 1e-38 at inputs of
    100, and every later step keeps that scale: the read-out `c / n` is finite but its
    gradient `-c / n^2` overflows, and at larger inputs the write underflows to zero and the
    output is lost.

    There `f' = exp(log f + m - i~)` may exceed 1; it multiplies the zero memory, so the
    values are unchanged, and it is the exact derivative of the step with respect to that
    memory (a learned initial state starting from zeros trains). It is capped at
    `exp(log(max) / 2)` of the dtype (about 1.8e19 in float32) so that the forward pass never
    forms `inf * 0`: past the cap that derivative saturates."""
    log_f = f_t if exp_forget else jax.nn.log_sigmoid(f_t)
    m_new = jnp.maximum(log_f + m, i_t)
    if empty is None:
        return jnp.exp(i_t - m_new), jnp.exp(log_f + m - m_new), m_new
    m_new = jnp.where(empty, i_t, m_new)
    cap = 0.5 * math.log(float(jnp.finfo(i_t.dtype).max))  # above 0: only `empty` reaches it
    return jnp.exp(i_t - m_new), jnp.exp(jnp.minimum(log_f + m - m_new, cap)), m_new


@dataclasses.dataclass(frozen=True, repr=False)
class MLSTMCell(_XLSTMCell):
    r"""xLSTM's mLSTM cell: per head, a `d x d` matrix memory written with the outer product
    of a value and a key and read with a query, under exponential gating.

    $$
    \begin{aligned}
    q &= x W_q + b_q, \quad k = (x W_k + b_k) / \sqrt{d}, \quad v = x W_v + b_v, \quad
    o = \sigma(x W_o + b_o) \\
    (i', f', m') &= \mathrm{stabilise}(\tilde\imath, \tilde f, m) \quad
    \text{(one scalar pair per head, as sLSTM)} \\
    C' &= f' C + i' \, v k^\top, \qquad n' = f' n + i' k \\
    h' &= o \odot \frac{C' q}{\max(|n'^\top q|, e^{-m'})}, \qquad y = h'
    \end{aligned}
    $$

    The memory is the paper's `C` and `n` scaled by `exp(-m)`, so `exp(-m')` in the
    denominator is the paper's lower bound of 1. An empty memory (`C = 0`, `n = 0`, as in the
    zero state) starts a head's stabiliser at `m' = i~`, as sLSTM does (tested: equal to the
    unstabilised equations where those are finite; values and gradients finite for inputs at
    every scale from 1e-3 to 1e5). This is the recurrent form,
    one step at a time, for streaming and the sequential strategy; over a sequence,
    `strategy="chunkwise"` computes the same in chunks of matrix products (a
    `MatrixMemory`: `memory_steps`, `memory_state`, `cell_state`, `memory_readout`).

    Checked against the `xlstm` package's recurrent-step and parallel mLSTM functions (to
    1e-10 in float64 with their `eps=0`; `tests/test_references.py`). xlstm stores the
    memory transposed, `k v^T`.

    Params (`init`): `{"wi": (in, 4H + 2 heads), "b": (4H + 2 heads,)}` with blocks `q, k, v,
    o` (`H` each) and the per-head `i~, f~`; Glorot-uniform `wi`, zero bias except the forget
    block (`forget_bias`). State: `MLSTMState(C, n, m)`, flattened per head (see there),
    zeros. Input `x: (..., in)`; output `y: (..., H)`.

    Paper: M. Beck, K. Pöppel, M. Spanring, et al., "xLSTM: Extended Long Short-Term
    Memory", arXiv:2405.04517 (section 2.3).

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H = heads * d`.
      num_heads: the heads, dividing `H` (1 by default).
      forget_bias: initial value of the forget-gate biases (3.0 by default).
      exp_forget: an exponential forget gate, `f = exp(f~)`, instead of the sigmoid.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.MLSTMCell(3, 8, num_heads=2)
      >>> cell.param_shapes()
      {'wi': (3, 36), 'b': (36,)}
      >>> params = cell.init(jax.random.key(0))
      >>> state, ys = rj.scan(cell, params, cell.initial_state(params), jnp.ones((5, 4, 3)))
      >>> ys.shape, state.C.shape
      ((5, 4, 8), (4, 32))
    """

    # A matrix memory (`MatrixMemory`): the chunkwise strategy runs it.
    matrix_memory: ClassVar[bool] = True
    normalised: ClassVar[bool] = True

    def _sizes(self) -> tuple[int, int, int]:
        """`(H, heads, d)`."""
        return self.hidden_size, self.num_heads, self.hidden_size // self.num_heads

    def memory_steps(self, params: dict[str, jax.Array], xs: jax.Array) -> MemorySteps:
        """Every step's `q, k, v: (T, *batch, heads, d)`, `log f` and `i~: (T, *batch,
        heads)` and the output gate's pre-activation (`aux`) at once, for `xs: (T, *batch,
        in)`: the chunkwise strategy's input."""
        _, xs = self._checked(params, xs)
        H, heads, d = self._sizes()
        lead = tuple(xs.shape[:-1])
        *qkvo, i_t, f_t = affine_blocks(xs, params["wi"], params["b"], (H,) * 4 + (heads,) * 2)
        q, k, v, o = (a.reshape(*lead, heads, d) for a in qkvo)
        log_f = f_t if self.exp_forget else jax.nn.log_sigmoid(f_t)
        return MemorySteps(q, k / math.sqrt(d), v, log_f, i_t, o)

    def memory_state(self, h: MLSTMState) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`(C, n, m)` per head: `(*batch, heads, d, d)`, `(*batch, heads, d)`, `(*batch,
        heads)`, for a state with batch axes."""
        _, heads, d = self._sizes()
        batch = tuple(h.m.shape[:-1])
        return h.C.reshape(*batch, heads, d, d), h.n.reshape(*batch, heads, d), h.m

    def cell_state(self, S: jax.Array, n: jax.Array, m: jax.Array) -> MLSTMState:
        """`memory_state`'s inverse."""
        batch = tuple(m.shape[:-1])
        return MLSTMState(S.reshape(*batch, -1), n.reshape(*batch, -1), m)

    def memory_readout(self, params: Any, read: jax.Array, aux: jax.Array) -> jax.Array:
        """`y = sigmoid(o) * read`, heads flattened: `(T, *batch, H)`."""
        y = jax.nn.sigmoid(aux) * read
        return y.reshape(*y.shape[:-2], self.hidden_size)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes."""
        H, heads, _ = self._sizes()
        width = 4 * H + 2 * heads
        return {"wi": (self.in_features, width), "b": (width,)}

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Glorot-uniform `wi`, zero bias but the forget block."""
        H, heads, _ = self._sizes()
        width = 4 * H + 2 * heads
        b = jnp.zeros((width,), dtype).at[4 * H + heads :].set(self.forget_bias)
        return {"wi": glorot_uniform(key, (self.in_features, width), dtype), "b": b}

    def initial_state(self, params: dict[str, jax.Array]) -> MLSTMState:
        """`MLSTMState` of zeros in the params' dtype."""
        dtype = self._dtype(params)
        H, heads, d = self._sizes()
        return MLSTMState(
            jnp.zeros((heads * d * d,), dtype), jnp.zeros((H,), dtype), jnp.zeros((heads,), dtype)
        )

    def __call__(
        self, params: dict[str, jax.Array], state: MLSTMState, x: jax.Array
    ) -> tuple[MLSTMState, jax.Array]:
        dtype, x = self._checked_step(params, state, x, MLSTMState)
        H, heads, d = self._sizes()
        batch = tuple(x.shape[:-1])
        C = match_state(self, "C", state.C, batch, heads * d * d, dtype)
        C = C.reshape(*batch, heads, d, d)
        n = match_state(self, "n", state.n, batch, H, dtype).reshape(*batch, heads, d)
        m = match_state(self, "m", state.m, batch, heads, dtype)
        pre = affine(x, params["wi"], params["b"])
        q, k, v, o = (pre[..., j * H : (j + 1) * H].reshape(*batch, heads, d) for j in range(4))
        k = k / math.sqrt(d)
        empty = (C == 0).all(axis=(-2, -1)) & (n == 0).all(axis=-1)
        i, f, m = _stabilised_gates(
            pre[..., 4 * H : 4 * H + heads], pre[..., 4 * H + heads :], m, self.exp_forget, empty
        )
        C = f[..., None, None] * C + i[..., None, None] * (v[..., :, None] * k[..., None, :])
        n = f[..., None] * n + i[..., None] * k
        num = jnp.einsum("...ij,...j->...i", C, q)
        # exp(-m') capped at e^80 (finite in float32): past it, the paper's output is below
        # e^-80 times the memory's read-out, and the cap keeps it (and its gradient) finite.
        den = jnp.maximum(jnp.abs(jnp.sum(n * q, axis=-1)), jnp.exp(jnp.minimum(-m, 80.0)))
        # den is 0 only where i' underflowed with an empty memory (C = n = 0): output 0 there.
        den = jnp.where(den > 0, den, jnp.inf)[..., None]
        h = (jax.nn.sigmoid(o) * num / den).reshape(*batch, H)
        return MLSTMState(C.reshape(*batch, heads * d * d), n.reshape(*batch, H), m), h
