"""Gated state-space cells, linear in their state: Griffin's RG-LRU and Mamba's selective
SSM (S6). Both are `LinearCell`s, so the hoisted, associative and chunked strategies and
`sequence_parallel_scan` run them as well as the sequential scan."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._checks import check_heads, check_sizes
from .._contracts import PyTree
from .base import affine, by_heads
from .linear import _CheckedLinearCell

__all__ = ["RGLRUCell", "SelectiveSSMCell"]


# The smallest `1 - a^2` under the RG-LRU's square root: its derivative stays below 1000 (as
# RecurrentGemma bounds it) where a gate drives `a` to 1.
_RG_LRU_FLOOR = 2.5e-7


@dataclasses.dataclass(frozen=True, repr=False)
class RGLRUCell(_CheckedLinearCell):
    r"""The Real-Gated Linear Recurrent Unit of Griffin (De et al., 2024), RecurrentGemma's
    recurrence: a diagonal decay that the input gates per step, with a normalised input.

    $$
    \begin{aligned}
    r &= \sigma(x W_a + b_a), \qquad i = \sigma(x W_x + b_x) \\
    \log a &= -c \, r \odot \mathrm{softplus}(\lambda) \quad (a = \sigma(-\lambda)^{c r}) \\
    h' &= a \odot h + \sqrt{1 - a^2} \odot (i \odot x), \qquad y = h'
    \end{aligned}
    $$

    with `c = 8`. `W_a` and `W_x` are block-diagonal with `num_heads` blocks (Griffin's
    heads), stored as `(heads, H / heads, H / heads)`. The decay is computed in log space, and
    `1 - a^2` as `-expm1(2 log a)` floored at 2.5e-7, so the square root's derivative stays
    below 1000, RecurrentGemma's bound. RecurrentGemma bounds only the derivative: where a
    saturated gate drives `1 - a^2` below the floor (large inputs), this cell keeps
    `5e-4 * i * x` of the input with a derivative of 0 in `a`, RecurrentGemma
    `sqrt(1 - a^2) * i * x` with a derivative of 1000 (`tests/test_references.py` measures
    it at 100 and 1e4 times its inputs). As a `LinearCell`: `a` above and
    `b = sqrt(1 - a^2) * i * x`, so the hoisted, associative and chunked strategies and
    `sequence_parallel_scan` run it.

    The input has the state's width (`in_features == hidden_size`): in Griffin a linear layer
    and a convolution come before it; put a `rj.Dense` before it in a chain for another width.

    Checked against RecurrentGemma's JAX `RGLRU` layer (outputs, final state and every
    gradient, to 1e-5 in float32; `tests/test_references.py`), whose `a_gate`, `input_gate`
    and `a_param` are `wa, ba`, `wx, bx` and `lam` here. One difference: at the first token
    of a segment RecurrentGemma writes `i * x` into the state, without the normalisation;
    this cell runs the paper's recurrence at every step, so from a zero state its first
    output is `sqrt(1 - a^2) * i * x`, and the two agree from the second token on.

    Params (`init`): `{"wa": (n, d, d), "ba": (H,), "wx": (n, d, d), "bx": (H,), "lam": (H,)}`
    for `n` heads of `d = H / n`; LeCun-normal blocks, zero biases, and `lam` such that
    the decay at `r = 1`, `a^c`, lies in `[0.9, 0.999]` with its square uniform (the paper's
    ring initialisation).
    State `(..., H)`, zeros. Output `y = h'`.

    Paper: S. De, S. L. Smith, A. Fernando, et al., "Griffin: Mixing Gated Linear Recurrences
    with Local Attention for Efficient Language Models", arXiv:2402.19427.

    Args:
      in_features: size of `x`; must equal `hidden_size`.
      hidden_size: `H`.
      num_heads: the blocks of the gate weights, dividing `H` (1 by default: dense gates).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.RGLRUCell(8, 8, num_heads=2)
      >>> cell.param_shapes()
      {'wa': (2, 4, 4), 'ba': (8,), 'wx': (2, 4, 4), 'bx': (8,), 'lam': (8,)}
      >>> params = cell.init(jax.random.key(0))
      >>> a = jax.nn.sigmoid(-params["lam"]) ** 8  # the decay where the gate r is 1
      >>> bool(((a > 0.899) & (a < 0.9991)).all())
      True
      >>> h, ys = rj.scan(cell, params, cell.initial_state(params), jnp.ones((300, 2, 8)),
      ...                 strategy="chunked")
      >>> ys.shape, bool(jnp.isfinite(ys).all())
      ((300, 2, 8), True)
    """

    sizes: ClassVar[tuple[str, ...]] = ("in_features", "hidden_size", "num_heads")
    shown: ClassVar[tuple[str, ...]] = ("num_heads",)

    in_features: int
    hidden_size: int
    num_heads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        H = self.hidden_size
        if self.in_features != H:
            raise ValueError(
                f"RGLRUCell: the input gates the state unit by unit, so in_features must equal "
                f"hidden_size; got {self.in_features} and {H}. Put a projection first: "
                f"rj.chain(rj.Dense({self.in_features}, {H}), rj.RGLRUCell({H}, {H}))."
            )
        check_heads(self)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes."""
        H, n = self.hidden_size, self.num_heads
        d = H // n
        return {"wa": (n, d, d), "ba": (H,), "wx": (n, d, d), "bx": (H,), "lam": (H,)}

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """LeCun-normal gate blocks, zero biases, `lam` from the ring `[0.9, 0.999]`."""
        shapes = self.param_shapes()
        d = shapes["wa"][1]
        ka, kx, kl = jax.random.split(key, 3)
        a2 = jax.random.uniform(kl, shapes["lam"], dtype, 0.9**2, 0.999**2)  # (a^c)^2 at r=1
        # softplus(lam) = -log(a^c) / c, and softplus^-1(y) = log(expm1(y))
        lam = jnp.log(jnp.expm1(-0.5 * jnp.log(a2) / 8.0))
        return {
            "wa": jax.random.normal(ka, shapes["wa"], dtype) / math.sqrt(d),
            "ba": jnp.zeros(shapes["ba"], dtype),
            "wx": jax.random.normal(kx, shapes["wx"], dtype) / math.sqrt(d),
            "bx": jnp.zeros(shapes["bx"], dtype),
            "lam": lam,
        }

    def _heads(self, x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
        """`x W + b` for a block-diagonal `W` of `n` heads, `x: (..., H)`."""
        y = by_heads(x, w).reshape(x.shape)
        return y + jnp.broadcast_to(b, y.shape)

    def _coefficients(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        r = jax.nn.sigmoid(self._heads(x, params["wa"], params["ba"]))
        i = jax.nn.sigmoid(self._heads(x, params["wx"], params["bx"]))
        log_a = -8.0 * r * jnp.broadcast_to(jax.nn.softplus(params["lam"]), r.shape)
        a = jnp.exp(log_a)
        scale = jnp.sqrt(jnp.maximum(-jnp.expm1(2.0 * log_a), _RG_LRU_FLOOR))
        return a, scale * (i * x)


@dataclasses.dataclass(frozen=True, repr=False)
class SelectiveSSMCell(_CheckedLinearCell):
    r"""Mamba's selective state space layer, S6 (Gu & Dao, 2023): a diagonal SSM per input
    channel whose step size `Δ` and projections `B`, `C` are computed from the input.

    $$
    \begin{aligned}
    \Delta &= \mathrm{softplus}(x W_{\Delta 1} W_{\Delta 2} + b_\Delta), \qquad
    B = x W_B, \qquad C = x W_C, \qquad A = -e^{A_{\log}} \\
    h'_{d,n} &= e^{\Delta_d A_{d,n}} h_{d,n} + \Delta_d B_n x_d, \qquad
    y_d = \textstyle\sum_n C_n h'_{d,n} + D_d x_d
    \end{aligned}
    $$

    for channels `d < in_features` (`D`) and state units `n < state_size` (`N`): the
    zero-order hold of `A` with Mamba's first-order `Δ B` for the input
    (`selective_scan_ref`). The state `(..., D * N)` is the `(D, N)` matrix flattened, so
    `hidden_size = D * N`; as a `LinearCell`, `a = exp(Δ A)` and `b = Δ B x`, and the
    hoisted, associative and chunked strategies and `sequence_parallel_scan` run it.

    Params (`init`): `A_log: (D, N)` = `log(1..N)` per channel (S4D-real), `w_dt1: (D, R)`,
    `w_dt2: (R, D)` (the low-rank `Δ` projection, `R = dt_rank`), `b_dt: (D,)` with
    `softplus(b_dt)` log-uniform in `[1e-3, 1e-1]`, `w_B, w_C: (D, N)` (LeCun normal), and the
    skip `D: (D,)` (ones). Input `x: (..., D)`, output `y: (..., D)`. Mamba's convolution,
    gating and projections around S6 are separate layers (`rj.Dense`, `rj.chain`).

    Checked against Mamba's `selective_scan_ref` (`mamba-ssm` 2.3.2, with Mamba's own
    projections of `Δ, B, C`; outputs, final state and every gradient, to 1e-5 in float32;
    `tests/test_references.py`): Mamba's `x_proj` weight is `[w_dt1, w_B, w_C]` transposed
    and stacked, its `dt_proj` weight and bias are `w_dt2` transposed and `b_dt`.

    Paper: A. Gu, T. Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
    arXiv:2312.00752.

    Args:
      in_features: `D`, the channels of `x` and `y`.
      state_size: `N`, the state units per channel (16 in Mamba).
      dt_rank: `R`, the rank of the `Δ` projection; `ceil(D / 16)` by default (Mamba's).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.SelectiveSSMCell(4, state_size=3)
      >>> cell.hidden_size, cell.param_shapes()["A_log"]
      (12, (4, 3))
      >>> params = cell.init(jax.random.key(0))
      >>> xs = jnp.ones((50, 2, 4))
      >>> h, ys = rj.scan(cell, params, cell.initial_state(params), xs, strategy="associative")
      >>> h.shape, ys.shape
      ((2, 12), (50, 2, 4))
    """

    sizes: ClassVar[tuple[str, ...]] = ("in_features", "state_size")

    in_features: int
    state_size: int = 16
    dt_rank: int | None = None
    hidden_size: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_size", 1)
        super().__post_init__()
        rank = math.ceil(self.in_features / 16) if self.dt_rank is None else self.dt_rank
        object.__setattr__(self, "dt_rank", rank)
        check_sizes(self, "dt_rank")
        object.__setattr__(self, "hidden_size", self.in_features * self.state_size)

    def __repr__(self) -> str:
        return f"SelectiveSSMCell({self.in_features}, state_size={self.state_size})"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes."""
        D, N, R = self.in_features, self.state_size, int(self.dt_rank or 1)
        return {
            "A_log": (D, N),
            "w_dt1": (D, R),
            "w_dt2": (R, D),
            "b_dt": (D,),
            "w_B": (D, N),
            "w_C": (D, N),
            "D": (D,),
        }

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """S4D-real `A`, log-uniform initial step sizes, LeCun-normal projections."""
        shapes = self.param_shapes()
        D, N, R = self.in_features, self.state_size, int(self.dt_rank or 1)
        k1, k2, k3, kb, kc = jax.random.split(key, 5)
        dt = jnp.exp(jax.random.uniform(k3, (D,), dtype, math.log(1e-3), math.log(1e-1)))
        return {
            "A_log": jnp.log(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=dtype), (D, N))),
            "w_dt1": jax.random.normal(k1, shapes["w_dt1"], dtype) / math.sqrt(D),
            "w_dt2": jax.random.uniform(k2, shapes["w_dt2"], dtype, -1.0, 1.0) / math.sqrt(R),
            "b_dt": jnp.log(jnp.expm1(dt)),  # softplus^-1(dt)
            "w_B": jax.random.normal(kb, shapes["w_B"], dtype) / math.sqrt(D),
            "w_C": jax.random.normal(kc, shapes["w_C"], dtype) / math.sqrt(D),
            "D": jnp.ones((D,), dtype),
        }

    def _coefficients(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        D, N = self.in_features, self.state_size
        dt = jax.nn.softplus(affine(x @ params["w_dt1"], params["w_dt2"], params["b_dt"]))
        A = -jnp.exp(params["A_log"])
        shape = (*x.shape[:-1], D, N)
        a = jnp.exp(dt[..., :, None] * jnp.broadcast_to(A, shape))
        b = (dt * x)[..., :, None] * (x @ params["w_B"])[..., None, :]
        return a.reshape(*x.shape[:-1], D * N), b.reshape(*x.shape[:-1], D * N)

    def readout(self, params: PyTree, h: jax.Array, x: jax.Array) -> jax.Array:
        return self._readout(params, h, self._checked(params, x)[1])

    def _readout(self, params: PyTree, h: jax.Array, x: jax.Array) -> jax.Array:
        C = x @ params["w_C"]
        hs = h.reshape(*h.shape[:-1], self.in_features, self.state_size)
        y = jnp.sum(hs * C[..., None, :], axis=-1)
        return y + jnp.broadcast_to(params["D"], x.shape) * x
