"""Fused kernels of the library cells: one time step forward and backward, by hand.

The fused strategy (`fused.py`) runs these instead of autodiff through
`lax.scan`. Inside the loop the state is *feature-major*, `(H, N)` with the batch flattened
to `N` columns, because on XLA:CPU the recurrent matmul `Wh^T h` ran 1.6-1.8x faster in
that layout than `h Wh` at B=32, H=256; per-step outputs, residuals kept for the weight
gradients, and gate cotangents are stored batch-major, `(N, .)`, so that the whole-sequence
matmuls afterwards read them without a transpose. A kernel has:

- `prepare(params) -> kp`: the weights as the loop uses them (transposed; for LSTM and GRU
  the sigmoid blocks pre-scaled by 1/2 so that `tanh` gives every gate, through
  `sigmoid(a) = (1 + tanh(a / 2)) / 2`);
- `step(kp, state, x) -> (state, y, res)`: one step for `x: (in, N)`, with `y: (N, H)` and
  the residuals `res` its backward needs (activated gates: no matmul is redone);
- `primal_step(kp, state, x) -> (state, y)`: the same step where nothing differentiates and
  no step is masked (no `lengths` or `resets`);
- `step_bwd(params, res, dstate, dy) -> (dstate_prev, dg)`: the cotangent of the previous
  state and the step's gate cotangents `dg: (N, G)`; the only matmul is `Wh dg` for the state;
- `grads(params, xs, res, dg) -> (dparams, dxs)`: the weight and input cotangents of the
  whole sequence (`xs: (T, N, in)`, `dg: (T, N, G)`) as single large matmuls over all `T*N`
  rows (cuDNN's order), instead of one small matmul per step accumulated through the loop.

Every kernel equals its cell's `__call__` to float rounding (tests/test_fused.py compares
outputs and gradients with the sequential strategy and a Python loop).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..._contracts import KernelSpec
from ..._states import LSTMState

Array = jax.Array


def _prepare(params: dict[str, Array], blocks: str, H: int) -> dict[str, Array]:
    """`wiT`, `whT` and the column `b` of a fused cell, each gate block scaled by 1/2 where it
    feeds a sigmoid (`s`) and left as is where it feeds a tanh (`t`)."""
    dtype = params["wh"].dtype
    s = jnp.concatenate([jnp.full((H,), 0.5 if b == "s" else 1.0, dtype) for b in blocks])
    return {
        "wiT": s[:, None] * params["wi"].T,
        "whT": s[:, None] * params["wh"].T,
        "b": (s * params["b"])[:, None],
    }


def _outer_steps(u: Array, v: Array) -> Array:
    """`sum_{t,n} u[t,n]^T v[t,n]` for `u: (T, N, P)`, `v: (T, N, G)`: one `(P, G)` matmul.

    Contracting both leading axes (not reshaping to `T*N` rows first) keeps a batch axis that
    is sharded over devices sharded: each device contracts its rows, then one all-reduce.
    """
    return jnp.einsum("tnp,tng->pg", u, v)


def _sum_steps(a: Array) -> Array:
    """Sum `(T, N, G)` over steps and batch: `(G,)`."""
    return a.sum(axis=(0, 1))


def _input_grads(params: dict[str, Array], xs: Array, dgx: Array) -> tuple[Any, Array]:
    """The cotangents of `x Wi + b` for `xs: (T, N, in)`, `dgx: (T, N, G)`."""
    dxs = jnp.einsum("tng,ig->tni", dgx, params["wi"])
    return {"wi": _outer_steps(xs, dgx), "b": _sum_steps(dgx)}, dxs


class LSTMKernel(NamedTuple):
    """`LSTMCell`: gates `i, f, g, o`; `sigmoid(a) = (1 + tanh(a/2)) / 2` for i, f, o."""

    H: int

    def prepare(self, params: dict[str, Array]) -> dict[str, Array]:
        kp = _prepare(params, "ssts", self.H)
        return {**kp, "wT": jnp.concatenate([kp["wiT"], kp["whT"]], axis=1)}

    def _cell(self, z: Array, c: Array) -> tuple[LSTMState, Array]:
        H = self.H
        # One tanh per block (not one over all 4H): XLA then fuses each gate into its use.
        i, f, o = (
            0.5 + 0.5 * jnp.tanh(z[k]) for k in (slice(0, H), slice(H, 2 * H), slice(3 * H, None))
        )
        g = jnp.tanh(z[2 * H : 3 * H])
        c_new = f * c + i * g
        return LSTMState(o * jnp.tanh(c_new), c_new), jnp.concatenate([i, f, g, o])

    def step(self, kp: dict[str, Array], state: LSTMState, x: Array) -> Any:
        h, c = state
        new, acts = self._cell(kp["wiT"] @ x + kp["b"] + kp["whT"] @ h, c)
        return new, new.h.T, (h.T, c, acts)

    def primal_step(self, kp: dict[str, Array], state: LSTMState, x: Array) -> Any:
        """One matmul of `[x; h]` (faster on CPU than two where nothing is kept or masked;
        `step`, which keeps residuals, stays with two)."""
        h, c = state
        new, _ = self._cell(kp["wT"] @ jnp.concatenate([x, h]) + kp["b"], c)
        return new, new.h.T

    def step_bwd(self, params: dict[str, Array], res: Any, dstate: LSTMState, dy: Array) -> Any:
        H = self.H
        _, c, acts = res
        dh, dc = dstate
        dh = dh + dy.T
        i, f, g, o = acts[:H], acts[H : 2 * H], acts[2 * H : 3 * H], acts[3 * H :]
        tc = jnp.tanh(f * c + i * g)  # recomputed: cheaper than storing it
        do = dh * tc
        dc = dc + dh * o * (1 - tc * tc)
        dg = jnp.concatenate(
            [dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g), do * o * (1 - o)]
        )
        return LSTMState(params["wh"] @ dg, dc * f), dg.T

    def grads(self, params: dict[str, Array], xs: Array, res: Any, dg: Array) -> Any:
        dparams, dxs = _input_grads(params, xs, dg)
        return {**dparams, "wh": _outer_steps(res[0], dg)}, dxs


class GRUKernel(NamedTuple):
    """`GRUCell` (reset after the matmul): gates `r, z, n`."""

    H: int

    def prepare(self, params: dict[str, Array]) -> dict[str, Array]:
        return {**_prepare(params, "sst", self.H), "bhn": params["bhn"][:, None]}

    def step(self, kp: dict[str, Array], h: Array, x: Array) -> Any:
        H = self.H
        ax = kp["wiT"] @ x + kp["b"]
        ah = kp["whT"] @ h
        rz = 0.5 + 0.5 * jnp.tanh(ax[: 2 * H] + ah[: 2 * H])
        r, z = rz[:H], rz[H:]
        hn = ah[2 * H :] + kp["bhn"]
        n = jnp.tanh(ax[2 * H :] + r * hn)
        h_new = n + z * (h - n)
        return h_new, h_new.T, (h.T, r, z, n, hn)

    def primal_step(self, kp: dict[str, Array], h: Array, x: Array) -> Any:
        return self.step(kp, h, x)[:2]

    def step_bwd(self, params: dict[str, Array], res: Any, dh: Array, dy: Array) -> Any:
        h_rows, r, z, n, hn = res
        dh = dh + dy.T
        dan = dh * (1 - z) * (1 - n * n)
        dar = dan * hn * r * (1 - r)
        daz = dh * (h_rows.T - n) * z * (1 - z)
        dgh = jnp.concatenate([dar, daz, dan * r])  # cotangent of h Wh (+ bhn)
        return dh * z + params["wh"] @ dgh, (dgh.T, dan.T)

    def grads(self, params: dict[str, Array], xs: Array, res: Any, dg: Any) -> Any:
        H = self.H
        dgh, dan = dg
        dgx = jnp.concatenate([dgh[..., : 2 * H], dan], axis=-1)  # cotangent of x Wi + b
        dparams, dxs = _input_grads(params, xs, dgx)
        wh_grads = {"wh": _outer_steps(res[0], dgh), "bhn": _sum_steps(dgh[..., 2 * H :])}
        return {**dparams, **wh_grads}, dxs


class RNNKernel(NamedTuple):
    """`RNNCell`: `h' = act(a)`, `a = x Wi + h Wh + b`, for any activation (through its VJP)."""

    activation: Any

    def prepare(self, params: dict[str, Array]) -> dict[str, Array]:
        return {"wiT": params["wi"].T, "whT": params["wh"].T, "b": params["b"][:, None]}

    def step(self, kp: dict[str, Array], h: Array, x: Array) -> Any:
        a = kp["wiT"] @ x + kp["b"] + kp["whT"] @ h
        h_new = self.activation(a)
        return h_new, h_new.T, (h.T, a)

    def primal_step(self, kp: dict[str, Array], h: Array, x: Array) -> Any:
        return self.step(kp, h, x)[:2]

    def step_bwd(self, params: dict[str, Array], res: Any, dh: Array, dy: Array) -> Any:
        _, a = res
        _, act_vjp = jax.vjp(self.activation, a)
        (da,) = act_vjp(dh + dy.T)
        return params["wh"] @ da, da.T

    def grads(self, params: dict[str, Array], xs: Array, res: Any, dg: Array) -> Any:
        dparams, dxs = _input_grads(params, xs, dg)
        return {**dparams, "wh": _outer_steps(res[0], dg)}, dxs


Kernel = LSTMKernel | GRUKernel | RNNKernel


KERNELS: dict[str, Any] = {
    "lstm": lambda spec: LSTMKernel(spec.hidden_size),
    "gru": lambda spec: GRUKernel(spec.hidden_size),
    "rnn": lambda spec: RNNKernel(spec.activation),
}


def kernel_for(spec: KernelSpec) -> Kernel:
    """The kernel a cell's `fused_kernel()` names (`ValueError` for an unknown name)."""
    make = KERNELS.get(spec.name)
    if make is None:
        raise ValueError(
            f"fused strategy: no kernel named {spec.name!r}; the kernels are {sorted(KERNELS)}."
        )
    return make(spec)
