"""Variants of the classic cells: IndRNN (one recurrent weight per unit) and the LSTM with
peephole connections, a projected state or layer normalisation. Same conventions as
`classic.py`: row vectors, `x @ W`, gate blocks fused into one matrix per input, every size
checked."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._checks import positive_int
from .._init import draw
from .._states import LSTMState
from .base import affine
from .classic import LSTMCell, RNNCell, _shifted

__all__ = ["IndRNNCell", "LayerNormLSTMCell", "PeepholeLSTMCell", "ProjLSTMCell"]


def _diag(w: jax.Array, a: jax.Array) -> jax.Array:
    """`w ⊙ a` for a per-unit weight `w: (H,)` and `a: (..., H)` (explicit broadcast)."""
    return jnp.broadcast_to(w, a.shape) * a


@dataclasses.dataclass(frozen=True, repr=False)
class IndRNNCell(RNNCell):
    r"""The independently recurrent cell of Li et al. (2018): each unit feeds back only into
    itself, through one weight, so the recurrent "matrix" is a vector.

    $$
    h' = \mathrm{act}(x W_i + u \odot h + b), \qquad y = h'
    $$

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

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes."""
        i, h = self.in_features, self.hidden_size
        return self._shapes({"wi": (i, h), "u": (h,), "b": (h,)})

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Params `{"wi": (in, H), "u": (H,), "b": (H,)}`: Glorot-uniform, `u` uniform in
        `[0, recurrent_max)`, zero bias."""
        kinds = {"wi": ("kernel", 1), "u": ("own", 1), "b": ("bias", 1)}
        params = self._weights(key, dtype, kinds)
        ku = jax.random.split(key)[1]  # u's key of the split
        u = jax.random.uniform(ku, (self.hidden_size,), dtype, 0.0, self.recurrent_max)
        return {k: u if k == "u" else params[k] for k in self.param_shapes()}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.recurrent_init != "glorot_uniform":
            raise ValueError(
                f"IndRNNCell: its recurrent weights are one per unit, u: (H,), drawn uniform in "
                f"[0, recurrent_max); recurrent_init={self.recurrent_init!r} does not apply. "
                "Set recurrent_max, or set u in the params after init."
            )

    def _recur(self, params: dict[str, jax.Array], h: jax.Array) -> jax.Array:
        return _diag(params["u"], h)


@dataclasses.dataclass(frozen=True, repr=False)
class PeepholeLSTMCell(LSTMCell):
    r"""The LSTM with peephole connections of Gers & Schmidhuber (2000): the input and forget
    gates see the previous cell state, the output gate the new one, each through one weight
    per unit.

    $$
    \begin{aligned}
    [a_i, a_f, a_g, a_o] &= x W_i + h W_h + b \\
    i &= \sigma(a_i + p_i \odot c), \quad f = \sigma(a_f + p_f \odot c) \\
    c' &= f \odot c + i \odot \tanh(a_g) \\
    o &= \sigma(a_o + p_o \odot c'), \quad h' = o \odot \tanh(c'), \qquad y = h'
    \end{aligned}
    $$

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

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """`LSTMCell`'s shapes and the peepholes `"p": (3, H)`."""
        return {**super().param_shapes(), "p": (3, self.hidden_size)}

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """`LSTMCell`'s params and zero peepholes `"p": (3, H)` (rows `i, f, o`)."""
        return {**super().init(key, dtype), "p": jnp.zeros((3, self.hidden_size), dtype)}

    def _update(
        self, params: dict[str, jax.Array], h: jax.Array, c: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        a = affine(x, params["wi"], params.get("b")) + h @ params["wh"]
        a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
        p_i, p_f, p_o = params["p"]
        i = jax.nn.sigmoid(a_i + _diag(p_i, c))
        c_new = jax.nn.sigmoid(a_f + _diag(p_f, c)) * c + i * jnp.tanh(a_g)
        return jax.nn.sigmoid(a_o + _diag(p_o, c_new)) * jnp.tanh(c_new), c_new


@dataclasses.dataclass(frozen=True, repr=False)
class ProjLSTMCell(LSTMCell):
    r"""The LSTM with a projected hidden state of Sak, Senior & Beaufays (2014), PyTorch's
    `nn.LSTM(proj_size=P)`: the output and the recurrent state are `o ⊙ tanh(c')` mapped
    down to `P < H` features, so the recurrent matmul is `(P, 4H)` instead of `(H, 4H)`.

    $$
    \begin{aligned}
    [i, f, g, o] &= x W_i + h W_h + b \\
    c' &= \sigma(f) \odot c + \sigma(i) \odot \tanh(g) \\
    h' &= (\sigma(o) \odot \tanh(c')) W_r, \qquad y = h'
    \end{aligned}
    $$

    Params (`init`): `{"wi": (in, 4H), "wh": (P, 4H), "b": (4H,), "wr": (H, P)}`, gate blocks
    `i, f, g, o`; Glorot-uniform weights, zero bias except the forget block
    (`forget_bias`). State: `LSTMState(h: (..., P), c: (..., H))`. Input `x: (..., in)`;
    output `y = h': (..., P)`. PyTorch's `weight_hr_l0` is `wr.T` (`recurjax.interop`
    converts both ways). It runs with the sequential strategy.

    Paper: H. Sak, A. Senior, F. Beaufays, "Long Short-Term Memory Based Recurrent Neural
    Network Architectures for Large Vocabulary Speech Recognition", arXiv:1402.1128.

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H`, the size of the cell state `c`.
      forget_bias: initial value of the forget-gate bias block, as for `LSTMCell`.
      proj_size: `P`, keyword-only, `1 <= P < H`.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.ProjLSTMCell(3, 8, proj_size=2)
      >>> cell.param_shapes()
      {'wi': (3, 32), 'wh': (2, 32), 'b': (32,), 'wr': (8, 2)}
      >>> params = cell.init(jax.random.key(0))
      >>> state, y = cell(params, cell.initial_state(params), jnp.ones((4, 3)))
      >>> state.h.shape, state.c.shape, y.shape
      ((4, 2), (4, 8), (4, 2))
    """

    shown: ClassVar[tuple[str, ...]] = ("forget_bias", "proj_size")

    proj_size: int = dataclasses.field(default=0, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        p = positive_int(self.proj_size)
        if p is None or p >= self.hidden_size:
            raise ValueError(
                f"ProjLSTMCell: proj_size must be an int with 1 <= proj_size < hidden_size "
                f"= {self.hidden_size}, got {self.proj_size!r}. Pass it by keyword, e.g. "
                f"ProjLSTMCell({self.in_features}, {self.hidden_size}, "
                f"proj_size={max(1, self.hidden_size // 2)}); without a projection use "
                f"LSTMCell({self.in_features}, {self.hidden_size})."
            )
        object.__setattr__(self, "proj_size", p)

    def _h_size(self) -> int:
        return self.proj_size

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """`{"wi": (in, 4H), "wh": (P, 4H), "b": (4H,), "wr": (H, P)}`."""
        i, h, p = self.in_features, self.hidden_size, self.proj_size
        return self._shapes({"wi": (i, 4 * h), "wh": (p, 4 * h), "b": (4 * h,), "wr": (h, p)})

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Params as `param_shapes()`: Glorot-uniform weights (`wr` by `kernel_init`), zero
        bias but `forget_bias`."""
        kinds = {
            "wi": ("kernel", 4),
            "wh": ("recurrent", 4),
            "b": ("bias", 4),
            "wr": ("kernel", 1),
        }
        return self._forget_bias(self._weights(key, dtype, kinds))

    def initial_state(self, params: dict[str, jax.Array]) -> LSTMState:
        """`LSTMState(h=zeros(P), c=zeros(H))` in the params' dtype."""
        h, c = super().initial_state(params)  # LSTMCell's: zeros (H,) each
        return LSTMState(h[: self.proj_size], c)

    def _update(
        self, params: dict[str, jax.Array], h: jax.Array, c: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        h, c = super()._update(params, h, c, x)
        return h @ params["wr"], c


def _layer_norm(z: jax.Array, gain: jax.Array, eps: float) -> jax.Array:
    """`gain ⊙ (z - mean) / sqrt(var + eps)` over the last axis (no shift: see the cell)."""
    mean = jnp.mean(z, axis=-1, keepdims=True)
    centred = z - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return _diag(gain, centred * jax.lax.rsqrt(var + eps))


@dataclasses.dataclass(frozen=True, repr=False)
class LayerNormLSTMCell(LSTMCell):
    r"""The LSTM with layer normalisation of Ba, Kiros & Hinton (2016): the input and the
    recurrent pre-activations are normalised separately, and the cell state before the
    output's `tanh`.

    $$
    \begin{aligned}
    [i, f, g, o] &= \mathrm{LN}(x W_i; \gamma_x) + \mathrm{LN}(h W_h; \gamma_h) + b \\
    c' &= \sigma(f) \odot c + \sigma(i) \odot \tanh(g) \\
    h' &= \sigma(o) \odot \tanh(\mathrm{LN}(c'; \gamma_c) + \beta_c), \qquad y = h'
    \end{aligned}
    $$

    with $\mathrm{LN}(z; \gamma) = \gamma \odot (z - \mu_z) / \sqrt{\sigma_z^2 + \epsilon}$
    over the last axis (all `4H` gate pre-activations together, as the paper's one layer).
    The two shifts the paper gives the gate norms add to `b`, so `b` is their sum. The
    carried `c'` is not normalised (the paper's equations; TF-Addons' `LayerNormLSTMCell`
    carries the normalised one).

    Params (`init`): `LSTMCell`'s `{"wi": (in, 4H), "wh": (H, 4H), "b": (4H,)}` (gates `i, f,
    g, o`, `forget_bias`), gains `"gx": (4H,)`, `"gh": (4H,)`, `"gc": (H,)` (ones) and shift
    `"bc": (H,)` (zeros). State: `LSTMState(h, c)`, each `(..., H)`. Input `x: (..., in)`;
    output `y = h': (..., H)`. It runs with the sequential strategy.

    Paper: J. L. Ba, J. R. Kiros, G. E. Hinton, "Layer Normalization", arXiv:1607.06450.

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H`.
      forget_bias: initial value of the forget-gate bias block, as for `LSTMCell`.
      eps: the `epsilon` of every norm, `1e-5` by default (keyword-only).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.LayerNormLSTMCell(3, 4)
      >>> list(cell.param_shapes())
      ['wi', 'wh', 'b', 'gx', 'gh', 'gc', 'bc']
      >>> params = cell.init(jax.random.key(0))
      >>> state, y = cell(params, cell.initial_state(params), 1e3 * jnp.ones((2, 3)))
      >>> y.shape, bool(jnp.isfinite(y).all())
      ((2, 4), True)
    """

    shown: ClassVar[tuple[str, ...]] = ("forget_bias", "eps")

    eps: float = dataclasses.field(default=1e-5, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or self.eps <= 0:
            raise ValueError(
                f"LayerNormLSTMCell: eps must be a positive float, got {self.eps!r}; the "
                "default is 1e-5."
            )

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """`LSTMCell`'s shapes, the gains `gx`, `gh` (4H,), `gc` (H,) and the shift `bc`."""
        h = self.hidden_size
        norms = {"gx": (4 * h,), "gh": (4 * h,), "gc": (h,), "bc": (h,)}
        return self._shapes({**super().param_shapes(), **norms})

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """`LSTMCell`'s params, gains of one and a shift by `bias_init` (zero)."""
        shapes = self.param_shapes()
        norms = {k: jnp.ones(shapes[k], dtype) for k in ("gx", "gh", "gc")}
        if "bc" in shapes:
            norms["bc"] = draw(self.bias_init, jax.random.fold_in(key, 2000), shapes["bc"], dtype)
        return {**super().init(key, dtype), **norms}

    def _update(
        self, params: dict[str, jax.Array], h: jax.Array, c: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        gates = _layer_norm(x @ params["wi"], params["gx"], self.eps)
        gates = gates + _layer_norm(h @ params["wh"], params["gh"], self.eps)
        gates = _shifted(gates, params.get("b"))
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        c_out = _shifted(_layer_norm(c, params["gc"], self.eps), params.get("bc"))
        return jax.nn.sigmoid(o) * jnp.tanh(c_out), c
