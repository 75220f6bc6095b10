"""Matrix memories without a normaliser: RetNet's retention, Mamba-2's SSD core and gated
linear attention (GLA), and the base they share with the delta rule's cells (`delta`). Per
head a state `S: (d_v, d_k)` decays and takes an outer-product write, and a query reads it:

    S_t = a_t S_{t-1} + v_t k_t^T,    read_t = S_t q_t

with one decay per head (retention, Mamba-2) or one per key channel (GLA, `a_t` then scales
the columns of `S`). Each is a `MatrixMemory`, so `strategy="chunkwise"` runs it over a
sequence in chunks of matrix products; its `__call__` is the recurrent step that streaming
and the sequential strategy run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._checks import check_heads, check_sizes, match_state
from .._contracts import MemorySteps
from .._init import glorot_uniform
from .base import _CellBase, affine, affine_blocks

__all__ = ["GLACell", "Mamba2Cell", "RetentionCell"]


@dataclasses.dataclass(frozen=True, repr=False)
class _MemoryCell(_CellBase):
    """The shared part of the plain matrix memories: the state (each head's `S: (d_v, d_k)`,
    flattened, zeros), its views for the chunkwise strategy, and the recurrent step built
    from `memory_steps` and `memory_readout`, so the two forms cannot drift apart.

    A subclass sets its sizes and implements `_dims`, `param_shapes`, `init`,
    `memory_steps` and `memory_readout`."""

    sizes: ClassVar[tuple[str, ...]] = ("in_features", "hidden_size", "num_heads")
    shown: ClassVar[tuple[str, ...]] = ("num_heads",)
    # A matrix memory (`MatrixMemory`) without a normaliser: the chunkwise strategy runs it.
    matrix_memory: ClassVar[bool] = True
    normalised: ClassVar[bool] = False

    in_features: int
    hidden_size: int
    num_heads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_heads(self)

    def _dims(self) -> tuple[int, int, int]:
        """`(heads, d_v, d_k)`."""
        raise NotImplementedError

    def memory_steps(self, params: Any, xs: jax.Array) -> MemorySteps:
        """Every step's `q, k, v`, log-decay and the read-out's `aux`, for `xs: (T, *batch,
        in)`."""
        raise NotImplementedError

    def memory_readout(self, params: Any, read: jax.Array, aux: Any) -> jax.Array:
        """The outputs `(T, *batch, H)` from the reads `(T, *batch, heads, d_v)`."""
        raise NotImplementedError

    @property
    def state_width(self) -> int:
        """The width of the flattened state, `heads * d_v * d_k`."""
        heads, dv, dk = self._dims()
        return heads * dv * dk

    def initial_state(self, params: Any) -> jax.Array:
        """Zeros `(heads * d_v * d_k,)` in the params' dtype: every head's memory empty."""
        return jnp.zeros((self.state_width,), self._dtype(params))

    def memory_state(self, h: jax.Array) -> tuple[jax.Array, None, None]:
        """`(S, None, None)` with `S: (*batch, heads, d_v, d_k)`, for a state with batch axes."""
        return h.reshape(*h.shape[:-1], *self._dims()), None, None

    def cell_state(self, S: jax.Array, n: Any, m: Any) -> jax.Array:
        """`memory_state`'s inverse."""
        return S.reshape(*S.shape[:-3], self.state_width)

    def __call__(self, params: Any, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        dtype, x = self._checked(params, x)
        batch = tuple(x.shape[:-1])
        S = match_state(self, "h", h, batch, self.state_width, dtype)
        S = S.reshape(*batch, *self._dims())
        steps = self.memory_steps(params, x[None])
        q, k, v, log_a = (a[0] for a in steps[:4])
        if log_a.ndim == q.ndim:  # one decay per key channel: it scales the columns of S
            decay = jnp.exp(log_a)[..., None, :]
        else:
            decay = jnp.exp(log_a)[..., None, None]
        S = decay * S
        if steps.beta is not None:  # the delta rule: write v - S k, what S held at k
            v = steps.beta[0][..., None] * (v - jnp.einsum("...vk,...k->...v", S, k))
        S = S + v[..., :, None] * k[..., None, :]
        read = jnp.einsum("...vk,...k->...v", S, q)
        return self.cell_state(S, None, None), self.memory_readout(params, read[None], steps.aux)[
            0
        ]


def _heads_of(a: jax.Array, heads: int) -> jax.Array:
    """`(..., heads * d)` to `(..., heads, d)`."""
    return a.reshape(*a.shape[:-1], heads, a.shape[-1] // heads)


@dataclasses.dataclass(frozen=True, repr=False)
class _KeyedMemoryCell(_MemoryCell):
    """A memory whose key width is its own size, `key_size = heads * d_k` (`hidden_size` by
    default), checked to split evenly over the heads: GLA's and the delta rule's."""

    key_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.key_size is None:
            object.__setattr__(self, "key_size", self.hidden_size)
        check_sizes(self, "key_size")
        if int(self.key_size) % self.num_heads:  # type: ignore[arg-type]
            raise ValueError(
                f"{type(self).__name__}: num_heads={self.num_heads} must divide key_size="
                f"{self.key_size} (each head holds key_size / num_heads key channels); use a "
                f"multiple of {self.num_heads}, e.g. key_size={self.hidden_size}."
            )

    def _dims(self) -> tuple[int, int, int]:
        heads = self.num_heads
        return heads, self.hidden_size // heads, int(self.key_size or 0) // heads


@dataclasses.dataclass(frozen=True, repr=False)
class RetentionCell(_MemoryCell):
    r"""RetNet's retention in its recurrent form (Sun et al., 2023): per head a `d x d`
    memory with a fixed decay `gamma`, written with `v k^T` and read with the query.

    $$
    \begin{aligned}
    q &= x W_q, \qquad k = x W_k / \sqrt{d}, \qquad v = x W_v \\
    S' &= \gamma_h S + v k^\top, \qquad y = S' q, \qquad
    \gamma_h = 1 - 2^{-5 - h} \quad (h = 0, \dots, \mathrm{heads} - 1)
    \end{aligned}
    $$

    The bare recurrence: RetNet's group norm, swish gate and output projection around it are
    other layers, and its rotary (xPos) position factors on `q` and `k` are left out (they
    make the step depend on the absolute position, which a time-invariant cell does not
    carry). `gamma` is RetNet's multi-scale decay and is not a parameter. Over a sequence,
    `strategy="chunkwise"` computes the same in chunks (RetNet's chunkwise form).

    Params (`init`): `{"wi": (in, 3H)}`, blocks `q, k, v` (`H = heads * d` each, head by
    head), Glorot uniform, no bias (as RetNet). State `(..., heads * d * d)`: each head's
    `S: (d, d)` (value by key), flattened; zeros. Input `x: (..., in)`; output `(..., H)`.

    Paper: Y. Sun, L. Dong, S. Huang, et al., "Retentive Network: A Successor to Transformer
    for Large Language Models", arXiv:2307.08621 (section 2.1, the recurrent form).

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H = heads * d`, the output width.
      num_heads: the heads, dividing `H` (1 by default); head `h` decays by `1 - 2^(-5-h)`.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.RetentionCell(3, 8, num_heads=2)
      >>> cell.param_shapes(), cell.state_width
      ({'wi': (3, 24)}, 32)
      >>> params = cell.init(jax.random.key(0))
      >>> xs = jnp.ones((100, 4, 3))
      >>> h, ys = rj.scan(cell, params, cell.initial_state(params), xs, strategy="chunkwise")
      >>> h2, ys2 = rj.scan(cell, params, cell.initial_state(params), xs, strategy="sequential")
      >>> ys.shape, bool(jnp.allclose(ys, ys2, rtol=1e-4, atol=1e-4))
      ((100, 4, 8), True)
    """

    def _dims(self) -> tuple[int, int, int]:
        d = self.hidden_size // self.num_heads
        return self.num_heads, d, d

    def log_decays(self, dtype: Any = jnp.float32) -> jax.Array:
        """`log gamma_h = log(1 - 2^(-5 - h))` per head, `(heads,)`."""
        return jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(self.num_heads, dtype=dtype))))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes."""
        return {"wi": (self.in_features, 3 * self.hidden_size)}

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Glorot-uniform `wi`."""
        return {"wi": glorot_uniform(key, (self.in_features, 3 * self.hidden_size), dtype)}

    def memory_steps(self, params: dict[str, jax.Array], xs: jax.Array) -> MemorySteps:
        """Every step's `q, k, v: (T, *batch, heads, d)` and `log gamma` broadcast to `(T,
        *batch, heads)`, for `xs: (T, *batch, in)`: the chunkwise strategy's input."""
        dtype, xs = self._checked(params, xs)
        H, heads, d = self.hidden_size, self.num_heads, self.hidden_size // self.num_heads
        q, k, v = (_heads_of(a, heads) for a in affine_blocks(xs, params["wi"], None, (H,) * 3))
        log_a = jnp.broadcast_to(self.log_decays(dtype), q.shape[:-1])
        return MemorySteps(q, k / math.sqrt(d), v, log_a, None, None)

    def memory_readout(self, params: Any, read: jax.Array, aux: Any) -> jax.Array:
        """The reads, heads flattened: `(T, *batch, H)`."""
        return read.reshape(*read.shape[:-2], self.hidden_size)


@dataclasses.dataclass(frozen=True, repr=False)
class Mamba2Cell(_MemoryCell):
    r"""Mamba-2's state space core, SSD (Dao & Gu, 2024): per head a `(P, N)` state with a
    scalar decay from the step size `Δ`, written with the head's input and `B`, read with
    `C`, plus the skip `D`. `B` and `C` are shared by the heads of a group.

    $$
    \begin{aligned}
    [x_h, B_g, C_g, \tilde\Delta] &= x W_{in}, \qquad
    \Delta_h = \mathrm{softplus}(\tilde\Delta_h + b_{\Delta,h}), \qquad
    A_h = -e^{A_{\log,h}} \\
    S'_h &= e^{\Delta_h A_h} S_h + \Delta_h \, x_h B_{g(h)}^\top, \qquad
    y_h = S'_h C_{g(h)} + D_h x_h
    \end{aligned}
    $$

    for heads `h` of `P = H / heads` channels and groups `g(h) = h // (heads / groups)` of
    `N = state_size` units: Mamba-2's discretisation (`exp(Δ A)` for the decay, `Δ B` for
    the input), as mamba-ssm's `ssd_minimal_discrete` with `X = Δ x`, `A = Δ A` and its
    step-wise `selective_state_update`. As a `MatrixMemory`: `q = C`, `k = B`, `v = Δ x`,
    `log a = Δ A`. The input projection `W_in` is part of the cell; Mamba-2's convolution
    over `[x, B, C]`, its gate, norm and output projection are other layers.

    Params (`init`): `{"w_in": (in, H + 2 G N + heads), "dt_bias": (heads,), "A_log":
    (heads,), "D": (heads,)}` with `w_in`'s blocks `x, B, C, Δ~` (`H`, `G N`, `G N`,
    `heads`; LeCun normal), `softplus(dt_bias)` log-uniform in `[1e-3, 1e-1]`, `A` uniform in
    `[1, 16]` (Mamba-2's), `D` ones. State `(..., heads * P * N)`: each head's `(P, N)`
    flattened, zeros. Input `x: (..., in)`; output `(..., H)`.

    Paper: T. Dao, A. Gu, "Transformers are SSMs: Generalized Models and Efficient
    Algorithms Through Structured State Space Duality", arXiv:2405.21060.

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H = heads * P`, the output width.
      num_heads: the heads, dividing `H` (1 by default).
      state_size: `N`, the state units per head (`d_state`, 16 by default; 128 in Mamba-2).
      num_groups: `G`, the groups sharing `B` and `C`, dividing `num_heads` (1 by default).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.Mamba2Cell(3, 8, num_heads=4, state_size=5, num_groups=2)
      >>> cell.param_shapes()["w_in"], cell.state_width
      ((3, 32), 40)
      >>> params = cell.init(jax.random.key(0))
      >>> h, ys = rj.scan(cell, params, cell.initial_state(params), jnp.ones((70, 2, 3)),
      ...                 strategy="chunkwise")
      >>> h.shape, ys.shape
      ((2, 40), (70, 2, 8))
    """

    sizes: ClassVar[tuple[str, ...]] = (
        "in_features",
        "hidden_size",
        "num_heads",
        "state_size",
        "num_groups",
    )
    shown: ClassVar[tuple[str, ...]] = ("num_heads", "state_size", "num_groups")

    state_size: int = 16
    num_groups: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_heads % self.num_groups:
            raise ValueError(
                f"Mamba2Cell: num_groups={self.num_groups} must divide num_heads="
                f"{self.num_heads} (the heads of a group share B and C); use a divisor of "
                f"{self.num_heads}, e.g. 1."
            )

    def _dims(self) -> tuple[int, int, int]:
        return self.num_heads, self.hidden_size // self.num_heads, self.state_size

    def _widths(self) -> tuple[int, int, int]:
        """`(H, G N, heads)`: the widths of `w_in`'s blocks."""
        return self.hidden_size, self.num_groups * self.state_size, self.num_heads

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes."""
        H, GN, heads = self._widths()
        return {
            "w_in": (self.in_features, H + 2 * GN + heads),
            "dt_bias": (heads,),
            "A_log": (heads,),
            "D": (heads,),
        }

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """LeCun-normal `w_in`, log-uniform step sizes, `A` in `[1, 16]`, `D` ones."""
        shapes = self.param_shapes()
        kw, kt, ka = jax.random.split(key, 3)
        heads = self.num_heads
        dt = jnp.exp(jax.random.uniform(kt, (heads,), dtype, math.log(1e-3), math.log(1e-1)))
        return {
            "w_in": jax.random.normal(kw, shapes["w_in"], dtype) / math.sqrt(self.in_features),
            "dt_bias": jnp.log(jnp.expm1(dt)),  # softplus^-1(dt)
            "A_log": jnp.log(jax.random.uniform(ka, (heads,), dtype, 1.0, 16.0)),
            "D": jnp.ones((heads,), dtype),
        }

    def memory_steps(self, params: dict[str, jax.Array], xs: jax.Array) -> MemorySteps:
        """Every step's `q = C`, `k = B: (T, *batch, heads, N)` (a group's repeated over its
        heads), `v = Δ x: (T, *batch, heads, P)` and `log a = Δ A: (T, *batch, heads)`; the
        heads' inputs `x_h` are `aux` (the skip), for `xs: (T, *batch, in)`."""
        _, xs = self._checked(params, xs)
        H, GN, heads = self._widths()
        x, B, C, dt_pre = affine_blocks(xs, params["w_in"], None, (H, GN, GN, heads))
        x = _heads_of(x, heads)
        B, C = (
            jnp.repeat(_heads_of(a, self.num_groups), heads // self.num_groups, axis=-2)
            for a in (B, C)
        )
        dt = jax.nn.softplus(dt_pre + jnp.broadcast_to(params["dt_bias"], dt_pre.shape))
        log_a = dt * jnp.broadcast_to(-jnp.exp(params["A_log"]), dt.shape)
        return MemorySteps(C, B, dt[..., None] * x, log_a, None, x)

    def memory_readout(self, params: Any, read: jax.Array, aux: jax.Array) -> jax.Array:
        """`y = read + D x_h`, heads flattened: `(T, *batch, H)`."""
        y = read + jnp.broadcast_to(params["D"][:, None], aux.shape) * aux
        return y.reshape(*y.shape[:-2], self.hidden_size)


@dataclasses.dataclass(frozen=True, repr=False)
class GLACell(_KeyedMemoryCell):
    r"""Gated linear attention (Yang et al., 2024): per head a `(d_v, d_k)` memory whose
    columns decay each by its own data-dependent gate, written with `v k^T` and read with the
    query.

    $$
    \begin{aligned}
    q &= x W_q, \qquad k = x W_k / \sqrt{d_k}, \qquad v = x W_v \\
    \log \alpha &= \log\sigma(x W_{g1} W_{g2} + b_g) / 16 \quad (\text{per key channel}) \\
    S' &= S \, \mathrm{diag}(\alpha) + v k^\top, \qquad y = S' q
    \end{aligned}
    $$

    The paper's gate: a low-rank projection (rank `gate_rank`), the log-sigmoid and a
    temperature of 16, which keeps the decays near 1. The layer's output gate, group norm and
    output projection around the recurrence are other layers. As a `MatrixMemory` the decay
    is per key channel, `log a: (heads, d_k)`; `strategy="chunkwise"` weighs each pair of
    steps in a chunk by its own per-channel decays (no ratio of cumulative products), so it
    is finite whatever the gates.

    Params (`init`): `{"wi": (in, 2K + H), "w_g1": (in, R), "w_g2": (R, K), "b_g": (K,)}`,
    `wi`'s blocks `q, k` (`K = heads * d_k` each) and `v` (`H = heads * d_v`), Glorot uniform,
    `b_g` zeros. State `(..., heads * d_v * d_k)`, zeros. Input `x: (..., in)`; output
    `(..., H)`.

    Paper: S. Yang, B. Wang, Y. Shen, R. Panda, Y. Kim, "Gated Linear Attention Transformers
    with Hardware-Efficient Training", arXiv:2312.06635.

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H = heads * d_v`, the output width.
      num_heads: the heads, dividing `H` and `key_size` (1 by default).
      key_size: `K = heads * d_k`; `hidden_size` by default (the paper uses `H / 2`).
      gate_rank: `R`, the rank of the gate's projection (16, as the paper).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.GLACell(3, 8, num_heads=2, key_size=4)
      >>> cell.param_shapes()["wi"], cell.state_width
      ((3, 16), 16)
      >>> params = cell.init(jax.random.key(0))
      >>> h, ys = rj.scan(cell, params, cell.initial_state(params), jnp.ones((40, 2, 3)),
      ...                 strategy="chunkwise")
      >>> ys.shape, bool(jnp.isfinite(ys).all())
      ((40, 2, 8), True)
    """

    shown: ClassVar[tuple[str, ...]] = ("num_heads", "key_size", "gate_rank")

    gate_rank: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sizes(self, "gate_rank")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes."""
        K, R = int(self.key_size or 0), self.gate_rank
        return {
            "wi": (self.in_features, 2 * K + self.hidden_size),
            "w_g1": (self.in_features, R),
            "w_g2": (R, K),
            "b_g": (K,),
        }

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Glorot-uniform projections, a zero gate bias."""
        shapes = self.param_shapes()
        ki, k1, k2 = jax.random.split(key, 3)
        return {
            "wi": glorot_uniform(ki, shapes["wi"], dtype),  # type: ignore[arg-type]
            "w_g1": glorot_uniform(k1, shapes["w_g1"], dtype),  # type: ignore[arg-type]
            "w_g2": glorot_uniform(k2, shapes["w_g2"], dtype),  # type: ignore[arg-type]
            "b_g": jnp.zeros(shapes["b_g"], dtype),
        }

    def memory_steps(self, params: dict[str, jax.Array], xs: jax.Array) -> MemorySteps:
        """Every step's `q, k: (T, *batch, heads, d_k)`, `v: (T, *batch, heads, d_v)` and the
        per-channel `log a: (T, *batch, heads, d_k)`, for `xs: (T, *batch, in)`."""
        _, xs = self._checked(params, xs)
        heads, _, dk = self._dims()
        K = heads * dk
        H = self.hidden_size
        q, k, v = (_heads_of(a, heads) for a in affine_blocks(xs, params["wi"], None, (K, K, H)))
        gate = affine(xs @ params["w_g1"], params["w_g2"], params["b_g"])
        log_a = _heads_of(jax.nn.log_sigmoid(gate) / 16.0, heads)
        return MemorySteps(q, k / math.sqrt(dk), v, log_a, None, None)

    def memory_readout(self, params: Any, read: jax.Array, aux: Any) -> jax.Array:
        """The reads, heads flattened: `(T, *batch, H)`."""
        return read.reshape(*read.shape[:-2], self.hidden_size)
