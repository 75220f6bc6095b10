"""The delta rule's matrix memories: DeltaNet and Gated DeltaNet. Per head a state `S: (d_v,
d_k)` is edited rather than only added to: a write of `v` at the key `k` first removes what
`S` held there,

    S_t = a_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,    read_t = S_t q_t

with `k` and `q` L2-normalised and `beta_t` in (0, 1). Each is a `MatrixMemory` whose steps
carry `beta`, so `strategy="chunkwise"` runs it in chunks (a triangular solve per chunk, the
UT form of the product of the steps' factors); its `__call__` is the recurrent step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from .._contracts import MemorySteps
from .._init import glorot_uniform
from .base import affine_blocks
from .memories import _heads_of, _KeyedMemoryCell

__all__ = ["DeltaNetCell", "GatedDeltaNetCell"]

# Inside the square root of the L2 norm (flash-linear-attention's): a zero key has a finite
# gradient and normalises to zero.
L2_EPS = 1e-6


def l2_normalised(z: jax.Array) -> jax.Array:
    """`z / sqrt(sum z^2 + 1e-6)` over the last axis."""
    return z * lax.rsqrt(jnp.sum(z * z, axis=-1, keepdims=True) + L2_EPS)


@dataclasses.dataclass(frozen=True, repr=False)
class DeltaNetCell(_KeyedMemoryCell):
    r"""DeltaNet (Schlag et al., 2021; Yang et al., 2024): per head a `(d_v, d_k)` memory
    edited with the delta rule, which replaces the value stored at a key instead of adding
    to it, read with the query.

    $$
    \begin{aligned}
    q &= \frac{\hat q}{\sqrt{d_k}\,\lVert \hat q \rVert}, \quad
    k = \frac{\hat k}{\lVert \hat k \rVert}, \quad v = x W_v, \quad
    \beta = \sigma(x W_\beta), \qquad \hat q = x W_q, \ \hat k = x W_k \\
    S' &= S + \beta \, (v - S k) \, k^\top = S (I - \beta k k^\top) + \beta v k^\top,
    \qquad y = S' q
    \end{aligned}
    $$

    with `beta` one scalar per head and the norms `sqrt(sum z^2 + 1e-6)` (so a zero key has
    a finite gradient). With `beta = 1` and a unit key, a write leaves `S' k = v`: the value
    held at `k` is replaced, and what is held at keys orthogonal to it is kept. The layer's
    short convolution, SiLU, output norm and projection around the recurrence are other
    layers. Over a sequence, `strategy="chunkwise"` computes the same in chunks (a triangular
    solve per chunk for the product of the steps' `I - beta k k^T`).

    Checked against flash-linear-attention's `delta_rule_recurrence` (its `S` is this one
    transposed; `tests/test_references.py`).

    Params (`init`): `{"wi": (in, 2K + H + heads)}`, blocks `q, k` (`K = heads * d_k` each),
    `v` (`H = heads * d_v`) and `beta`'s logits, Glorot uniform, no bias. State `(...,
    heads * d_v * d_k)`: each head's `S` flattened, zeros. Input `x: (..., in)`; output
    `(..., H)`.

    Paper: S. Yang, B. Wang, Y. Zhang, Y. Shen, Y. Kim, "Parallelizing Linear Transformers
    with the Delta Rule over Sequence Length", arXiv:2406.06484 (the delta rule: I. Schlag,
    K. Irie, J. Schmidhuber, arXiv:2102.11174).

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H = heads * d_v`, the output width.
      num_heads: the heads, dividing `H` and `key_size` (1 by default).
      key_size: `K = heads * d_k`; `hidden_size` by default.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.DeltaNetCell(3, 8, num_heads=2, key_size=4)
      >>> cell.param_shapes(), cell.state_width
      ({'wi': (3, 18)}, 16)
      >>> params = cell.init(jax.random.key(0))
      >>> xs = jnp.ones((100, 4, 3))
      >>> h, ys = rj.scan(cell, params, cell.initial_state(params), xs, strategy="chunkwise")
      >>> h2, ys2 = rj.scan(cell, params, cell.initial_state(params), xs, strategy="sequential")
      >>> ys.shape, bool(jnp.allclose(ys, ys2, rtol=1e-4, atol=1e-5))
      ((100, 4, 8), True)
    """

    shown: ClassVar[tuple[str, ...]] = ("num_heads", "key_size")

    def _widths(self) -> tuple[int, ...]:
        """The widths of `wi`'s blocks: `q, k, v, beta` (and Gated DeltaNet's decay)."""
        K, heads = int(self.key_size or 0), self.num_heads
        return (K, K, self.hidden_size, heads)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes."""
        return {"wi": (self.in_features, sum(self._widths()))}

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Glorot-uniform `wi`."""
        return {"wi": glorot_uniform(key, self.param_shapes()["wi"], dtype)}  # type: ignore[arg-type]

    def _delta_steps(self, params: dict[str, jax.Array], xs: jax.Array) -> Any:
        """`q, k, v, beta` and the rest of `wi`'s blocks, for `xs: (T, *batch, in)`."""
        _, xs = self._checked(params, xs)
        heads, _, dk = self._dims()
        q, k, v, b, *rest = affine_blocks(xs, params["wi"], None, self._widths())
        q, k, v = (_heads_of(a, heads) for a in (q, k, v))
        q = l2_normalised(q) / math.sqrt(dk)
        return q, l2_normalised(k), v, jax.nn.sigmoid(b), rest

    def memory_steps(self, params: dict[str, jax.Array], xs: jax.Array) -> MemorySteps:
        """Every step's `q, k: (T, *batch, heads, d_k)`, `v: (T, *batch, heads, d_v)`,
        `beta: (T, *batch, heads)` and a log-decay of 0, for `xs: (T, *batch, in)`."""
        q, k, v, beta, _ = self._delta_steps(params, xs)
        return MemorySteps(q, k, v, jnp.zeros_like(beta), None, None, beta)

    def memory_readout(self, params: Any, read: jax.Array, aux: Any) -> jax.Array:
        """The reads, heads flattened: `(T, *batch, H)`."""
        return read.reshape(*read.shape[:-2], self.hidden_size)


@dataclasses.dataclass(frozen=True, repr=False)
class GatedDeltaNetCell(DeltaNetCell):
    r"""Gated DeltaNet (Yang, Kautz & Hatamizadeh, 2024): DeltaNet with a data-dependent
    decay per head, Mamba-2's, applied to the memory before the delta rule's edit.

    $$
    \begin{aligned}
    \log a &= -e^{A_{\log}} \, \mathrm{softplus}(x W_a + b_{dt}) \quad (\text{per head}) \\
    S' &= a S (I - \beta k k^\top) + \beta v k^\top, \qquad y = S' q
    \end{aligned}
    $$

    with `q, k, v, beta` as `DeltaNetCell`'s. The layer's convolution, output gate, norm and
    projection are other layers.

    Checked against flash-linear-attention's `naive_recurrent_gated_delta_rule` (`g = log
    a`; its `S` is this one transposed; `tests/test_references.py`).

    Params (`init`): `{"wi": (in, 2K + H + 2 heads), "A_log": (heads,), "dt_bias":
    (heads,)}`: `wi`'s blocks `q, k, v`, `beta`'s logits and the decay's `x W_a`, Glorot
    uniform; `A` uniform in `[1, 16]` and `softplus(dt_bias)` log-uniform in `[1e-3, 1e-1]`,
    as `Mamba2Cell`'s. State `(..., heads * d_v * d_k)`, zeros. Input `x: (..., in)`;
    output `(..., H)`.

    Paper: S. Yang, J. Kautz, A. Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with
    Delta Rule", arXiv:2412.06464.

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H = heads * d_v`, the output width.
      num_heads: the heads, dividing `H` and `key_size` (1 by default).
      key_size: `K = heads * d_k`; `hidden_size` by default.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.GatedDeltaNetCell(3, 8, num_heads=2)
      >>> cell.param_shapes()
      {'wi': (3, 28), 'A_log': (2,), 'dt_bias': (2,)}
      >>> params = cell.init(jax.random.key(0))
      >>> h, ys = rj.scan(cell, params, cell.initial_state(params), jnp.ones((40, 2, 3)),
      ...                 strategy="chunkwise")
      >>> h.shape, ys.shape
      ((2, 32), (40, 2, 8))
    """

    def _widths(self) -> tuple[int, ...]:
        return (*super()._widths(), self.num_heads)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes."""
        heads = self.num_heads
        return {**super().param_shapes(), "A_log": (heads,), "dt_bias": (heads,)}

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Glorot-uniform `wi`, `A` in `[1, 16]`, log-uniform step sizes."""
        kw, kt, ka = jax.random.split(key, 3)
        heads = self.num_heads
        dt = jnp.exp(jax.random.uniform(kt, (heads,), dtype, math.log(1e-3), math.log(1e-1)))
        return {
            **super().init(kw, dtype),
            "A_log": jnp.log(jax.random.uniform(ka, (heads,), dtype, 1.0, 16.0)),
            "dt_bias": jnp.log(jnp.expm1(dt)),  # softplus^-1(dt)
        }

    def memory_steps(self, params: dict[str, jax.Array], xs: jax.Array) -> MemorySteps:
        """Every step's `q, k: (T, *batch, heads, d_k)`, `v: (T, *batch, heads, d_v)`,
        `beta` and `log a: (T, *batch, heads)`, for `xs: (T, *batch, in)`."""
        q, k, v, beta, (a,) = self._delta_steps(params, xs)
        dt = jax.nn.softplus(a + jnp.broadcast_to(params["dt_bias"], a.shape))
        log_a = dt * jnp.broadcast_to(-jnp.exp(params["A_log"]), dt.shape)
        return MemorySteps(q, k, v, log_a, None, None, beta)
