"""Fused kernels of the library cells: one time step forward and backward, by hand.

The scan engine's fused strategy (`_scan.py`) runs these instead of autodiff through
`lax.scan`. Each kernel works *feature-major*: a state leaf is `(H, N)` and an input `(in, N)`
with the batch flattened to `N` columns, because on XLA:CPU the recurrent matmul `Wh^T h^T`
ran 1.6-1.8x faster in that layout than `h Wh` (benchmarks/RESULTS.md). A kernel has:

- `prepare(params) -> kp`: the weights as the loop uses them (transposed; for LSTM and GRU
  the sigmoid blocks pre-scaled by 1/2 so that one `tanh` pass gives every gate, through
  `sigmoid(a) = (1 + tanh(a / 2)) / 2`);
- `step(kp, state, x) -> (state, y, res)`: one step, and the residuals `res` its backward
  needs (activated gates, never a matmul to redo);
- `step_bwd(params, res, dstate, dy) -> (dstate_prev, dg)`: the cotangent of the previous
  state and the per-step gate cotangents `dg`; the only matmul is `Wh dg` for the state;
- `grads(params, xs, res, dg) -> (dparams, dxs)`: the weight and input cotangents of the
  whole sequence at once, as single large matmuls over all steps (cuDNN's order), instead of
  one small matmul per step accumulated through the loop.

Every kernel equals its cell's `__call__` (tests/test_fused.py compares outputs and
gradients with the sequential strategy and a Python loop).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._cells import GRUCell, LSTMCell, LSTMState, RNNCell

Array = jax.Array


def _half_scale(blocks: str, H: int, dtype: Any) -> Array:
    """Per-column scale of a fused weight: 1/2 for sigmoid blocks (`s`), 1 for tanh (`t`)."""
    return jnp.concatenate([jnp.full((H,), 0.5 if b == "s" else 1.0, dtype) for b in blocks])


def _scaled_T(w: Array, s: Array) -> Array:
    """`(w * s)^T` for `w: (rows, G)`, `s: (G,)`: `(G, rows)`."""
    return s[:, None] * w.T


def _sum_steps(a: Array) -> Array:
    """Sum `(T, G, N)` over steps and batch: `(G,)`."""
    return a.sum(axis=(0, 2))


def _outer_steps(u: Array, v: Array) -> Array:
    """`sum_t u_t v_t^T` for `u: (T, P, N)`, `v: (T, G, N)`: one `(P, G)` matmul over T*N."""
    return jnp.einsum("tpn,tgn->pg", u, v)


class LSTMKernel(NamedTuple):
    """`LSTMCell`: gates `i, f, g, o`; `sigmoid(a) = (1 + tanh(a/2)) / 2` for i, f, o."""

    H: int

    def prepare(self, params: dict[str, Array]) -> dict[str, Array]:
        s = _half_scale("ssts", self.H, params["wh"].dtype)
        return {
            "wiT": _scaled_T(params["wi"], s),
            "whT": _scaled_T(params["wh"], s),
            "b": (s * params["b"])[:, None],
        }

    def step(self, kp: dict[str, Array], state: LSTMState, x: Array) -> Any:
        H = self.H
        h, c = state
        z = kp["wiT"] @ x + kp["b"] + kp["whT"] @ h
        i, f, o = (0.5 + 0.5 * jnp.tanh(z[k]) for k in (slice(0, H), slice(H, 2 * H), slice(3 * H, None)))
        g = jnp.tanh(z[2 * H : 3 * H])
        c_new = f * c + i * g
        tc = jnp.tanh(c_new)
        h_new = o * tc
        acts = jnp.concatenate([i, f, g, o])
        return LSTMState(h_new, c_new), h_new, (h, c, acts, tc)

    def step_bwd(self, params: dict[str, Array], res: Any, dstate: LSTMState, dy: Array) -> Any:
        H = self.H
        _, c, acts, tc = res
        dh, dc = dstate
        dh = dh + dy
        i, f, g, o = acts[:H], acts[H : 2 * H], acts[2 * H : 3 * H], acts[3 * H :]
        do = dh * tc
        dc = dc + dh * o * (1 - tc * tc)
        dg = jnp.concatenate(
            [dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g), do * o * (1 - o)]
        )
        return LSTMState(params["wh"] @ dg, dc * f), dg

    def grads(self, params: dict[str, Array], xs: Array, res: Any, dg: Array) -> Any:
        h_prev = res[0]
        dparams = {
            "wi": _outer_steps(xs, dg),
            "wh": _outer_steps(h_prev, dg),
            "b": _sum_steps(dg),
        }
        return dparams, jnp.einsum("ig,tgn->tin", params["wi"], dg)


class GRUKernel(NamedTuple):
    """`GRUCell` (reset after the matmul): gates `r, z, n`."""

    H: int

    def prepare(self, params: dict[str, Array]) -> dict[str, Array]:
        s = _half_scale("sst", self.H, params["wh"].dtype)
        return {
            "wiT": _scaled_T(params["wi"], s),
            "whT": _scaled_T(params["wh"], s),
            "b": (s * params["b"])[:, None],
            "bhn": params["bhn"][:, None],
        }

    def step(self, kp: dict[str, Array], h: Array, x: Array) -> Any:
        H = self.H
        ax = kp["wiT"] @ x + kp["b"]
        ah = kp["whT"] @ h
        rz = 0.5 + 0.5 * jnp.tanh(ax[: 2 * H] + ah[: 2 * H])
        r, z = rz[:H], rz[H:]
        hn = ah[2 * H :] + kp["bhn"]
        n = jnp.tanh(ax[2 * H :] + r * hn)
        h_new = n + z * (h - n)
        return h_new, h_new, (h, r, z, n, hn)

    def step_bwd(self, params: dict[str, Array], res: Any, dh: Array, dy: Array) -> Any:
        h, r, z, n, hn = res
        dh = dh + dy
        dn = dh * (1 - z)
        dan = dn * (1 - n * n)
        dar = dan * hn * r * (1 - r)
        daz = dh * (h - n) * z * (1 - z)
        dgh = jnp.concatenate([dar, daz, dan * r])  # cotangent of h Wh (+ bhn)
        return dh * z + params["wh"] @ dgh, (dgh, dan)

    def grads(self, params: dict[str, Array], xs: Array, res: Any, dg: Any) -> Any:
        H = self.H
        dgh, dan = dg
        dgx = jnp.concatenate([dgh[:, : 2 * H], dan], axis=1)  # cotangent of x Wi + b
        dparams = {
            "wi": _outer_steps(xs, dgx),
            "wh": _outer_steps(res[0], dgh),
            "b": _sum_steps(dgx),
            "bhn": _sum_steps(dgh[:, 2 * H :]),
        }
        return dparams, jnp.einsum("ig,tgn->tin", params["wi"], dgx)


class RNNKernel(NamedTuple):
    """`RNNCell`: `h' = act(a)`, `a = x Wi + h Wh + b`, for any activation (through its VJP)."""

    activation: Any

    def prepare(self, params: dict[str, Array]) -> dict[str, Array]:
        return {"wiT": params["wi"].T, "whT": params["wh"].T, "b": params["b"][:, None]}

    def step(self, kp: dict[str, Array], h: Array, x: Array) -> Any:
        a = kp["wiT"] @ x + kp["b"] + kp["whT"] @ h
        h_new = self.activation(a)
        return h_new, h_new, (h, a)

    def step_bwd(self, params: dict[str, Array], res: Any, dh: Array, dy: Array) -> Any:
        _, a = res
        _, act_vjp = jax.vjp(self.activation, a)
        (da,) = act_vjp(dh + dy)
        return params["wh"] @ da, da

    def grads(self, params: dict[str, Array], xs: Array, res: Any, dg: Array) -> Any:
        dparams = {
            "wi": _outer_steps(xs, dg),
            "wh": _outer_steps(res[0], dg),
            "b": _sum_steps(dg),
        }
        return dparams, jnp.einsum("ig,tgn->tin", params["wi"], dg)


Kernel = LSTMKernel | GRUKernel | RNNKernel


def kernel_for(cell: object) -> Kernel | None:
    """The fused kernel of a library cell, or `None` (function cells, subclasses, others).

    Only the exact library classes qualify: a subclass may override `__call__`, and the
    kernel must compute what the cell's call computes.
    """
    kind = type(cell)
    if kind is LSTMCell:
        return LSTMKernel(cell.hidden_size)  # type: ignore[attr-defined]
    if kind is GRUCell:
        return GRUKernel(cell.hidden_size)  # type: ignore[attr-defined]
    if kind is RNNCell:
        return RNNKernel(cell.activation)  # type: ignore[attr-defined]
    return None
