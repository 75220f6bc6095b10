"""The fused strategy: a library cell's hand-written kernel with a hand-written VJP.

For `LSTMCell`, `GRUCell` and `RNNCell` (any cell whose `fused_kernel()` names a kernel in
`kernels.py`). The forward loop runs the kernel's step feature-major; the backward pass
(`jax.custom_vjp`) runs the recurrence once backwards and computes the weight and input
gradients as single large matmuls over all steps. Reverse-mode only: a custom VJP has no
forward mode.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, cast

import jax
import jax.numpy as jnp
from jax import lax

from ..._contracts import CellFn, PyTree, Strategy, kernel_spec
from .. import policy
from ..blocks import StepMasks
from .kernels import Kernel, kernel_for

if TYPE_CHECKING:
    from ..options import Options


def run(
    cell: CellFn,
    params: PyTree,
    h: PyTree,
    xs: jax.Array,
    opts: Options,
    masks: StepMasks | None = None,
) -> tuple[PyTree, jax.Array]:
    """`lax.scan` of a library cell through its fused kernel.

    `xs: (T, *batch, in)` time-major and `h` settled to `(*batch, H)` leaves. The batch is
    flattened to `N`; the state runs feature-major (`(H, N)`) inside the loop. Outputs at
    padded steps are zero (the hand-written VJP relies on it).
    """
    spec = kernel_spec(cell)
    assert spec is not None, "the engine runs the fused strategy only where it applies"
    kernel = kernel_for(spec)
    params = cell.with_biases(params)  # zeros for a cell without biases (no gradient)
    dtype = jax.tree.leaves(h)[0].dtype
    xs = xs.astype(dtype)
    T, batch, n_in = xs.shape[0], tuple(xs.shape[1:-1]), xs.shape[-1]
    N = math.prod(batch)

    def feature_major(tree: PyTree) -> PyTree:
        return jax.tree.map(lambda a: a.reshape(N, a.shape[-1]).T, tree)

    flags = None
    if masks is not None:
        flags = tuple(None if m is None else m.reshape(T, N) for m in (masks.valid, masks.reset))
    out = _fused_core(
        kernel,
        opts.reverse,
        opts.truncate_every,
        params,
        feature_major(h),
        xs.reshape(T, N, n_in),
        flags,
        None if masks is None or masks.state0 is None else feature_major(masks.state0),
    )
    h_fm, ys = cast("tuple[PyTree, jax.Array]", out)
    h = jax.tree.map(lambda a: a.T.reshape(*batch, a.shape[0]), h_fm)
    return h, ys.reshape(T, *batch, ys.shape[-1])


def _no_kernel(cell: object, opts: object) -> str | None:
    if kernel_spec(cell) is not None:
        return None
    return (
        "needs a cell with a fused kernel (LSTMCell, GRUCell, RNNCell, or a chain of them and "
        "Dense layers); this cell has none. Use strategy='auto' (which falls back to "
        "'sequential') or 'sequential'."
    )


def _auto(cell: object, xs: PyTree, backend: str) -> bool:
    spec = kernel_spec(cell)
    return spec is not None and policy.fused_picks(spec, math.prod(xs.shape[1:-1]), backend)


FUSED = Strategy("fused", run, _no_kernel, auto=_auto)


def _cols(mask: jax.Array, a: PyTree, b: PyTree) -> PyTree:
    """`where` by column for feature-major leaves `(H, N)` and `mask: (N,)`."""
    return jax.tree.map(lambda u, v: jnp.where(mask[None, :], u, v), a, b)


def _zeros(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.zeros_like, tree)


def _fused_loop(
    kernel: Kernel,
    reverse: bool,
    params: PyTree,
    h: PyTree,
    xs: jax.Array,
    flags: Any,
    s0: PyTree,
    keep_res: bool,
) -> tuple[PyTree, jax.Array, PyTree]:
    """The forward loop: `xs: (T, N, in)`, `h` feature-major; `ys: (T, N, H)` and, with
    `keep_res`, the stacked residuals of the backward pass. `flags` is `None` or the step
    masks `(valid, reset)`, each `(T, N)` or `None`."""
    kp = kernel.prepare(params)
    valid, reset = flags if flags is not None else (None, None)

    def step(h: PyTree, data: Any) -> tuple[PyTree, Any]:
        x, v, r = data
        if r is not None:
            h = _cols(r, s0, h)
        if keep_res or flags is not None:
            new, y, res = kernel.step(kp, h, x)  # type: ignore[arg-type]
        else:  # (with masks, the LSTM's primal step measured 1.5x slower than `step`)
            (new, y), res = kernel.primal_step(kp, h, x), None  # type: ignore[arg-type]
        if v is not None:
            new = _cols(v, new, h)
            y = jnp.where(v[:, None], y, jnp.zeros_like(y))
        return new, ((y, res) if keep_res else y)

    xs_fm = jnp.transpose(xs, (0, 2, 1))
    h, out = lax.scan(step, h, (xs_fm, valid, reset), reverse=reverse)
    return (h, *out) if keep_res else (h, out, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused_core(
    kernel: Kernel,
    reverse: bool,
    truncate_every: int | None,
    params: PyTree,
    h: PyTree,
    xs: jax.Array,
    flags: Any,
    s0: PyTree,
) -> tuple[PyTree, jax.Array]:
    h, ys, _ = _fused_loop(kernel, reverse, params, h, xs, flags, s0, keep_res=False)
    return h, ys


def _fused_core_fwd(
    kernel: Kernel,
    reverse: bool,
    truncate_every: int | None,
    params: PyTree,
    h: PyTree,
    xs: jax.Array,
    flags: Any,
    s0: PyTree,
) -> tuple[tuple[PyTree, jax.Array], tuple[Any, ...]]:
    h_out, ys, res = _fused_loop(kernel, reverse, params, h, xs, flags, s0, keep_res=True)
    return (h_out, ys), (params, xs, res, flags, s0)


def _fused_core_bwd(
    kernel: Kernel,
    reverse: bool,
    truncate_every: int | None,
    saved: tuple[Any, ...],
    cts: tuple[PyTree, jax.Array],
) -> tuple[PyTree, PyTree, jax.Array, None, PyTree]:
    params, xs, res, flags, s0 = saved
    valid, reset = flags if flags is not None else (None, None)
    dh, dys = cts
    T = xs.shape[0]
    # keep[t] = 0 where the state entering step t was cut (`truncate_every`): the gradient
    # stops there, as `stop_gradient` on the carry does in the sequential strategy.
    order = jnp.arange(T)
    n = T - 1 - order if reverse else order
    k = truncate_every
    keep = None if k is None else (n == 0) | (n % k != 0)

    def step(carry: Any, data: Any) -> tuple[Any, PyTree]:
        dh, ds0 = carry
        res_t, dy, keep_t, v, r = data
        if v is not None:  # a padded step passed the state through and output zeros
            dy = jnp.where(v[:, None], dy, jnp.zeros_like(dy))
            passed = _cols(v, _zeros(dh), dh)
            dh = _cols(v, dh, _zeros(dh))
        dh_in, dg = kernel.step_bwd(params, res_t, dh, dy)  # type: ignore[arg-type]
        if v is not None:
            dh_in = jax.tree.map(jnp.add, dh_in, passed)
        if r is not None:  # the state entering a reset step was replaced by s0
            ds0 = jax.tree.map(jnp.add, ds0, _cols(r, dh_in, _zeros(dh_in)))
            dh_in = _cols(r, _zeros(dh_in), dh_in)
        if keep_t is not None:
            if v is not None:  # past its length a sequence is frozen and never cut
                keep_t = jnp.logical_or(keep_t, jnp.logical_not(v))[None, :]
            dh_in = jax.tree.map(lambda a: jnp.where(keep_t, a, jnp.zeros_like(a)), dh_in)
        return (dh_in, ds0), dg

    ds0 = None if s0 is None else _zeros(s0)
    data = (res, dys, keep, valid, reset)
    (dh0, ds0), dg = _scan_prefetched(step, (dh, ds0), data, reverse=not reverse)
    dparams, dxs = kernel.grads(params, xs, res, dg)  # type: ignore[arg-type]
    return dparams, dh0, dxs, None, ds0


_fused_core.defvjp(_fused_core_fwd, _fused_core_bwd)


def _scan_prefetched(
    f: Any, carry: PyTree, xs: PyTree, reverse: bool = False
) -> tuple[PyTree, PyTree]:
    """`lax.scan(f, carry, xs, reverse=reverse)`, with each step's slice of `xs` read one step
    ahead into the carry.

    On XLA:CPU a slice of a stacked input read inside the loop is fused into the step's
    elementwise kernels, which then ran several times slower (profiled: the LSTM backward's
    gate kernel 86 us instead of about 25 us per step at B=32, H=256). Loaded one step ahead,
    the slice is a plain copy and the step reads a contiguous buffer.
    """
    T = jax.tree.leaves(xs)[0].shape[0]
    if T == 0:
        return lax.scan(f, carry, xs, reverse=reverse)
    first = T - 1 if reverse else 0

    def at(t: jax.Array) -> PyTree:
        return jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, t, keepdims=False), xs)

    def step(c: tuple[PyTree, PyTree], t: jax.Array) -> tuple[tuple[PyTree, PyTree], PyTree]:
        carry, x = c
        nxt = at(jnp.clip(t - 1 if reverse else t + 1, 0, T - 1))
        carry, y = f(carry, x)
        return (carry, nxt), y

    (carry, _), ys = lax.scan(
        step, (carry, at(jnp.asarray(first))), jnp.arange(T), reverse=reverse
    )
    return carry, ys
