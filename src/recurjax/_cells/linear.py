"""Cells whose state update is linear in the state: minGRU, minLSTM, LRU and their base
(the gated state-space cells, RG-LRU and Mamba's S6, are in `ssm.py`).

For these cells `h' = a * h + b` with `a` and `b` computed from `x` alone, so a whole
sequence can also be evaluated with `lax.associative_scan` (`O(log T)` depth), which the
scan engine does under `strategy="associative"` or `"chunked"` (`_scan/strategies/`), or
with every `(a, b)` computed at once and only `h = a h + b` left in the loop
(`"hoisted"`). Each is still a normal cell, stepped one input at a time for streaming.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._checks import match_state
from .._contracts import Cell, PyTree
from .._init import glorot_uniform
from .base import _CellBase, affine_blocks

__all__ = ["LRUCell", "LinearCell", "MinGRUCell", "MinLSTMCell"]

# A linear cell's `coefficients(params, x)` and `readout(params, h, x)`.
_Coefficients = Callable[[PyTree, jax.Array], tuple[jax.Array, jax.Array]]
_Readout = Callable[[PyTree, jax.Array, jax.Array], jax.Array]


class LinearCell(Cell):
    r"""Base class of cells that are linear (and diagonal) in their state.

    $$
    (a, b) = \mathrm{coefficients}(\theta, x), \qquad h' = a \odot h + b, \qquad
    y = \mathrm{readout}(\theta, h', x)
    $$

    `a` and `b` depend on `x` only, never on `h`: that is what lets the scan engine run a
    whole sequence with `lax.associative_scan` (composing `(a, b)` pairs) instead of a
    loop. Subclass it as a frozen dataclass with `in_features` and `hidden_size` fields and
    implement `init`, `coefficients` and, when the output is not the state itself,
    `readout`; `initial_state` gives zeros and `__call__` is inherited. The state has the
    params' dtype unless `state_dtype` says otherwise (the LRU's is complex).

    Examples:
      >>> import dataclasses, jax, jax.numpy as jnp, recurjax as rj
      >>> @dataclasses.dataclass(frozen=True)
      ... class Leaky(rj.LinearCell):   # h' = decay * h + x W, one learned decay per unit
      ...     in_features: int
      ...     hidden_size: int
      ...     def init(self, key, dtype=jnp.float32):
      ...         w = jax.random.normal(key, (self.in_features, self.hidden_size), dtype)
      ...         return {"w": w, "decay": jnp.full((self.hidden_size,), 0.9, dtype)}
      ...     def coefficients(self, params, x):
      ...         b = x @ params["w"]
      ...         return jnp.broadcast_to(params["decay"], b.shape), b
      >>> cell = Leaky(3, 4)
      >>> params = cell.init(jax.random.key(0))
      >>> xs = jnp.ones((100, 2, 3))
      >>> h1, ys1 = rj.scan(cell, params, cell.initial_state(params), xs)
      >>> h2, ys2 = rj.scan(cell, params, cell.initial_state(params), xs, strategy="associative")
      >>> bool(jnp.allclose(ys1, ys2, atol=1e-5))
      True
    """

    in_features: int
    hidden_size: int
    # True where `a` does not depend on the input (a linear time-invariant recurrence, such
    # as the LRU's fixed decay): `strategy="auto"` then keeps the sequential strategy rather
    # than the hoisted one, which would store a copy of `a` for every step (_scan/policy.py).
    time_invariant: ClassVar[bool] = False

    @property
    def linear_recurrence(self) -> bool:
        """`True` when the step is the inherited `h' = a * h + b` (a subclass that overrides
        `__call__` is stepped sequentially: its coefficients may not describe it)."""
        return type(self).__call__ is LinearCell.__call__

    def coefficients(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(a, b)`, each `(..., H)` for `x: (..., in)` (any leading axes, time included)."""
        raise NotImplementedError

    def readout(self, params: PyTree, h: jax.Array, x: jax.Array) -> jax.Array:
        """The output `y` from the new state `h` and the input `x`: `h` by default."""
        return h

    def state_dtype(self, params: PyTree) -> Any:
        """The state's dtype: the params' (the first leaf's) by default."""
        return jax.tree.leaves(params)[0].dtype

    def initial_state(self, params: PyTree) -> jax.Array:
        """Zeros `(H,)` in `state_dtype(params)`."""
        return jnp.zeros((self.hidden_size,), self.state_dtype(params))

    def __call__(self, params: PyTree, h: PyTree, x: PyTree) -> tuple[jax.Array, jax.Array]:
        x, coefficients, readout = self._step(params, x)
        a, b = coefficients(params, x)
        h = match_state(self, "h", h, tuple(b.shape[:-1]), self.hidden_size, b.dtype)
        h = a * h + b
        return h, readout(params, h, x)

    def _step(self, params: PyTree, x: PyTree) -> tuple[Any, _Coefficients, _Readout]:
        """`(x, coefficients, readout)` for one step: `x` as given and the public methods
        here; the library's cells check the params and `x` once and skip the checks."""
        return x, self.coefficients, self.readout


class _CheckedLinearCell(LinearCell, _CellBase):
    """The base of the library's linear cells, whose params `param_shapes()` states.

    `coefficients` (and `readout`, where the output is more than the state) check the params
    and `x`, then call `_coefficients` (`_readout`), which compute from checked params and an
    `x` cast to their dtype. A step checks once and calls those two itself.
    """

    def coefficients(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(a, b)`, each `(..., H)` for `x: (..., in)`, after checking the params and `x`."""
        return self._coefficients(params, self._checked(params, x)[1])

    def _coefficients(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(a, b)` from checked params and input."""
        raise NotImplementedError

    def _readout(self, params: PyTree, h: jax.Array, x: jax.Array) -> jax.Array:
        """`readout` from checked params and input: the state by default."""
        return h

    def _step(self, params: PyTree, x: PyTree) -> tuple[Any, _Coefficients, _Readout]:
        if "_coefficients" not in vars(type(self)):
            # A subclass of a library cell may override `coefficients` or `readout`: they
            # make its step.
            return super()._step(params, x)
        return self._checked(params, x)[1], self._coefficients, self._readout


class _MinCell(_CheckedLinearCell):
    """minGRU and minLSTM: `blocks` gate and candidate blocks of `H`, each `x W + b`."""

    blocks: ClassVar[int]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes."""
        n = self.blocks * self.hidden_size
        return {"wi": (self.in_features, n), "b": (n,)}

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Params as `param_shapes()`: Glorot-uniform `wi`, zero `b`."""
        n = self.blocks * self.hidden_size
        return {
            "wi": glorot_uniform(key, (self.in_features, n), dtype),
            "b": jnp.zeros((n,), dtype),
        }

    def _gates(self, params: PyTree, x: jax.Array) -> list[jax.Array]:
        """The `blocks` blocks of `x W + b`, each `(..., H)`."""
        return affine_blocks(x, params["wi"], params["b"], (self.hidden_size,) * self.blocks)


@dataclasses.dataclass(frozen=True, repr=False)
class MinGRUCell(_MinCell):
    r"""minGRU (Feng et al., 2024, "Were RNNs All We Needed?"): a GRU whose gate and
    candidate read only the input, so the update is linear in the state.

    $$
    \begin{aligned}
    z &= \sigma(x W_z + b_z), \qquad \tilde h = x W_h + b_h \\
    h' &= (1 - z) \odot h + z \odot \tilde h, \qquad y = h'
    \end{aligned}
    $$

    Params (`init`): `{"wi": (in, 2H), "b": (2H,)}`, blocks `z, h~`; Glorot-uniform `wi`,
    zero `b`. State `(..., H)`, zeros. As a `LinearCell`: `a = 1 - z`, `b = z * h~`.

    Note: the paper's log-space form exists for its cumulative-sum formulation, which
    divides by products of `a` that underflow; the associative scan here composes `(a, b)`
    pairs and never divides, so it stays finite in the plain form (tested at T = 65,536).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.MinGRUCell(3, 4)
      >>> params = cell.init(jax.random.key(0))
      >>> h, ys = rj.scan(cell, params, cell.initial_state(params), jnp.ones((5, 2, 3)))
      >>> h.shape, ys.shape
      ((2, 4), (5, 2, 4))
    """

    blocks: ClassVar[int] = 2  # z, h~

    in_features: int
    hidden_size: int

    def _coefficients(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        k, candidate = self._gates(params, x)
        return jax.nn.sigmoid(-k), jax.nn.sigmoid(k) * candidate  # 1 - z, z * h~


@dataclasses.dataclass(frozen=True, repr=False)
class MinLSTMCell(_MinCell):
    r"""minLSTM (Feng et al., 2024): forget and input gates from the input alone,
    normalised to sum to one, so the update is linear in the state.

    $$
    \begin{aligned}
    f &= \sigma(x W_f + b_f), \quad i = \sigma(x W_i + b_i), \quad \tilde h = x W_h + b_h \\
    h' &= \frac{f}{f + i} \odot h + \frac{i}{f + i} \odot \tilde h, \qquad y = h'
    \end{aligned}
    $$

    Params (`init`): `{"wi": (in, 3H), "b": (3H,)}`, blocks `f, i, h~`; Glorot-uniform
    `wi`, zero `b`. State `(..., H)`, zeros (the paper's minLSTM has no separate cell state).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.MinLSTMCell(3, 4)
      >>> params = cell.init(jax.random.key(0))
      >>> h, y = cell(params, cell.initial_state(params), jnp.ones(3))
      >>> h.shape, bool(jnp.allclose(h, y))
      ((4,), True)
    """

    blocks: ClassVar[int] = 3  # f, i, h~

    in_features: int
    hidden_size: int

    def _coefficients(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        kf, ki, candidate = self._gates(params, x)
        # f / (f + i) = sigmoid(log f - log i), computed from the pre-activations directly.
        log_f, log_i = jax.nn.log_sigmoid(kf), jax.nn.log_sigmoid(ki)
        return jax.nn.sigmoid(log_f - log_i), jax.nn.sigmoid(log_i - log_f) * candidate


@dataclasses.dataclass(frozen=True, repr=False)
class LRUCell(_CheckedLinearCell):
    r"""The Linear Recurrent Unit (Orvieto et al., 2023, "Resurrecting Recurrent Neural
    Networks for Long Sequences"): a complex diagonal recurrence, exponentially
    parametrised, with ring initialisation and input normalisation.

    $$
    \begin{aligned}
    \lambda &= \exp(-e^{\nu} + i\,e^{\theta}), \qquad
    h' = \lambda \odot h + e^{\gamma} \odot (x B) \\
    y &= \mathrm{Re}(h' C) + D \odot x
    \end{aligned}
    $$

    Params (`init`): `nu_log, theta_log, gamma_log: (H,)`; `B_re, B_im: (in, H)`;
    `C_re, C_im: (H, in)`; `D: (in,)`, with `B = B_re + i B_im`, `C = C_re + i C_im`. Ring
    initialisation draws `|lambda|` uniformly on the ring `[r_min, r_max]` (by area) and its
    phase in `[0, max_phase]`; `gamma = sqrt(1 - |lambda|^2)` normalises the input;
    `B ~ N(0, 1 / (2 in))` and `C ~ N(0, 1 / H)` per real part, `D ~ N(0, 1)`. State: a
    complex array `(..., H)` (complex64 for float32 params; complex64 too for bfloat16 and
    float16, which have no complex form). Output `y: (..., in)`, real.

    Args:
      in_features: size of `x` and of `y` (the model width).
      hidden_size: `H`, the number of complex state units.
      r_min: the inner radius of the ring of initial eigenvalue magnitudes,
        `0 <= r_min < r_max`.
      r_max: its outer radius, `r_max <= 1`.
      max_phase: the largest initial phase, `2 pi` by default (`pi / 10` in the paper's
        long-range experiments).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.LRUCell(3, 8, r_min=0.9, r_max=0.999)
      >>> params = cell.init(jax.random.key(0))
      >>> r = jnp.exp(-jnp.exp(params["nu_log"]))          # |lambda|
      >>> bool(((r >= 0.9) & (r <= 0.999)).all())
      True
      >>> h, ys = rj.scan(cell, params, cell.initial_state(params), jnp.ones((5, 2, 3)))
      >>> h.dtype, ys.shape, ys.dtype
      (dtype('complex64'), (5, 2, 3), dtype('float32'))
    """

    time_invariant: ClassVar[bool] = True  # `a` is the fixed decay lambda

    in_features: int
    hidden_size: int
    r_min: float = 0.0
    r_max: float = 1.0
    max_phase: float = 2 * math.pi

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.r_min < self.r_max <= 1:
            raise ValueError(
                f"LRUCell: expected 0 <= r_min < r_max <= 1 (the ring of initial eigenvalue "
                f"magnitudes), got r_min={self.r_min}, r_max={self.r_max}."
            )

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes.

        Examples:
          >>> import recurjax as rj
          >>> rj.LRUCell(3, 4).param_shapes()
          {'nu_log': (4,),
          'theta_log': (4,),
          'gamma_log': (4,),
          'B_re': (3, 4),
          'B_im': (3, 4),
          'C_re': (4, 3),
          'C_im': (4, 3),
          'D': (3,)}
        """
        i, h = self.in_features, self.hidden_size
        return {
            "nu_log": (h,),
            "theta_log": (h,),
            "gamma_log": (h,),
            "B_re": (i, h),
            "B_im": (i, h),
            "C_re": (h, i),
            "C_im": (h, i),
            "D": (i,),
        }

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Ring-initialised eigenvalues, normalised input, Gaussian `B`, `C`, `D`."""
        i, h = self.in_features, self.hidden_size
        k1, k2, kb1, kb2, kc1, kc2, kd = jax.random.split(key, 7)
        u1 = jax.random.uniform(k1, (h,), dtype)
        u2 = jax.random.uniform(k2, (h,), dtype)
        r2 = u1 * (self.r_max**2 - self.r_min**2) + self.r_min**2  # |lambda|^2, uniform by area
        nu_log = jnp.log(-0.5 * jnp.log(r2))
        theta_log = jnp.log(self.max_phase * u2)
        gamma_log = 0.5 * jnp.log1p(-r2)  # log sqrt(1 - |lambda|^2)
        return {
            "nu_log": nu_log,
            "theta_log": theta_log,
            "gamma_log": gamma_log,
            "B_re": jax.random.normal(kb1, (i, h), dtype) / math.sqrt(2 * i),
            "B_im": jax.random.normal(kb2, (i, h), dtype) / math.sqrt(2 * i),
            "C_re": jax.random.normal(kc1, (h, i), dtype) / math.sqrt(h),
            "C_im": jax.random.normal(kc2, (h, i), dtype) / math.sqrt(h),
            "D": jax.random.normal(kd, (i,), dtype),
        }

    def state_dtype(self, params: PyTree) -> Any:
        return _complex(self._dtype(params))

    def _coefficients(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        cdtype = _complex(x.dtype)
        real = jnp.float64 if cdtype == jnp.complex128 else jnp.float32
        p = {k: v.astype(real) for k, v in params.items()}
        lam = jnp.exp(jax.lax.complex(-jnp.exp(p["nu_log"]), jnp.exp(p["theta_log"])))
        xr = x.astype(real)
        bx = jax.lax.complex(xr @ p["B_re"], xr @ p["B_im"])
        b = jnp.broadcast_to(jnp.exp(p["gamma_log"]).astype(cdtype), bx.shape) * bx
        return jnp.broadcast_to(lam, b.shape), b

    def readout(self, params: PyTree, h: jax.Array, x: jax.Array) -> jax.Array:
        return self._readout(params, h, self._checked(params, x)[1])

    def _readout(self, params: PyTree, h: jax.Array, x: jax.Array) -> jax.Array:
        real = h.real.dtype
        y = h.real @ params["C_re"].astype(real) - h.imag @ params["C_im"].astype(real)
        skip = jnp.broadcast_to(params["D"].astype(real), x.shape) * x.astype(real)
        return (y + skip).astype(x.dtype)


def _complex(dtype: Any) -> Any:
    """The LRU's complex state dtype for params of `dtype`: complex128 for float64, else
    complex64 (bfloat16 and float16 have no complex form)."""
    return jnp.complex128 if dtype == jnp.float64 else jnp.complex64
