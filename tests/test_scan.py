"""The scan engine against a plain Python loop of single steps: outputs and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import IN, RECURRENT, Case, ids, tree_allclose
from jax.test_util import check_grads

import recurjax as rj

T, B = 7, 3


def loop(cell, params, h, xs, *, truncate_every=None, reverse=False):
    """The oracle: one cell call per step, in Python, as `scan`'s docstring defines it."""
    steps = list(range(jax.tree.leaves(xs)[0].shape[0]))
    order = steps[::-1] if reverse else steps
    ys = [None] * len(steps)
    for n, t in enumerate(order):
        if truncate_every and n > 0 and n % truncate_every == 0:
            h = jax.lax.stop_gradient(h)
        h, ys[t] = cell(params, h, jax.tree.map(lambda a, t=t: a[t], xs))
    return h, jax.tree.map(lambda *a: jnp.stack(a), *ys)


def _data(case: Case, seed: int = 0, shape=(T, B)):
    params = case.params(seed)
    xs = jax.random.normal(jax.random.key(seed + 1), (*shape, IN), jnp.float32)
    return params, case.state(params), xs


def _vjp_both(f, g, *args):
    """Outputs of f and g and their VJPs for one random cotangent, compared."""
    out = jax.eval_shape(f, *args)
    leaves, treedef = jax.tree.flatten(out)
    keys = jax.random.split(jax.random.key(42), len(leaves))
    ct = jax.tree.unflatten(
        treedef,
        [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=True)],
    )

    # jit the oracle too: an eager loop under vjp is slow, and jit does not change its maths.
    out_f, grads_f = jax.jit(lambda *a: _value_and_vjp(f, ct, a))(*args)
    out_g, grads_g = jax.jit(lambda *a: _value_and_vjp(g, ct, a))(*args)
    tree_allclose(out_f, out_g)
    tree_allclose(grads_f, grads_g, rtol=1e-4, atol=1e-5)
    return out_f


def _value_and_vjp(fn, ct, args):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(ct)


OPTIONS = [
    {},
    {"reverse": True},
    {"truncate_every": 3},  # 7 = 2 * 3 + 1: a tail step
    {"truncate_every": 3, "reverse": True},
    {"truncate_every": 7},
    {"truncate_every": 10},
    {"unroll": 2},
]


# Every option on an LSTM (a structured state) and a user function cell; the most involved
# combination on every other cell. Each test compiles two programs, so the grid stays small.
GRID = [
    (case, options)
    for case in RECURRENT
    for options in (
        OPTIONS
        if case.name in ("lstm", "user_fn")
        else [{}, {"truncate_every": 3, "reverse": True}]
    )
]


@pytest.mark.parametrize("case, options", GRID, ids=[f"{c.name}-{o}" for c, o in GRID])
def test_scan_equals_loop(case: Case, options):
    params, h0, xs = _data(case)
    loop_options = {k: v for k, v in options.items() if k != "unroll"}

    def f(params, h0, xs):
        return rj.scan(case.cell, params, h0, xs, **options)

    def g(params, h0, xs):
        # The loop starts from the state settled to the batch, as scan's docstring says.
        h0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (B, *a.shape)), h0)
        return loop(case.cell, params, h0, xs, **loop_options)

    _vjp_both(f, g, params, h0, xs)


@pytest.mark.parametrize("case", RECURRENT, ids=ids(RECURRENT))
def test_scan_unbatched_and_two_batch_axes(case: Case):
    for shape in [(T,), (T, 2, 3)]:
        params, h0, xs = _data(case, shape=shape)
        h0b = jax.tree.map(lambda a, s=shape: jnp.broadcast_to(a, (*s[1:], *a.shape)), h0)
        tree_allclose(rj.scan(case.cell, params, h0, xs), loop(case.cell, params, h0b, xs))


@pytest.mark.parametrize("case", RECURRENT, ids=ids(RECURRENT))
def test_batch_major_time_axis(case: Case):
    params, h0, xs = _data(case)
    h, ys = rj.scan(case.cell, params, h0, jnp.swapaxes(xs, 0, 1), time_axis=1)
    h_ref, ys_ref = rj.scan(case.cell, params, h0, xs)
    assert ys.shape == (B, T, ys_ref.shape[-1])
    tree_allclose((h, ys), (h_ref, jnp.swapaxes(ys_ref, 0, 1)))
    h2, ys2 = rj.scan(case.cell, params, h0, jnp.swapaxes(xs, 0, 1), time_axis=-2)
    tree_allclose((h2, ys2), (h, ys))


def test_truncation_cuts_gradients_exactly():
    cell = rj.GRUCell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, IN))

    def output_at(t, k):
        return lambda xs: rj.scan(cell, params, cell.initial_state(params), xs, truncate_every=k)[
            1
        ][t].sum()

    # With k = 3 the blocks are steps [0, 3), [3, 6), [6]: the output at step 4 depends on the
    # inputs of steps 3 and 4 only, and the tail step 6 on its own input only.
    g = jax.grad(output_at(4, 3))(xs)
    np.testing.assert_array_equal(g[:3], 0)
    assert bool(jnp.all(jnp.abs(g[3:5]).sum(-1) > 0))
    np.testing.assert_array_equal(g[5:], 0)
    g = jax.grad(output_at(6, 3))(xs)
    np.testing.assert_array_equal(g[:6], 0)
    assert bool(jnp.abs(g[6]).sum() > 0)
    # Without truncation the gradient reaches every earlier step.
    g = jax.grad(output_at(6, None))(xs)
    assert bool(jnp.all(jnp.abs(g).sum(-1) > 0))


def test_truncation_keeps_values_and_tail():
    cell = rj.LSTMCell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (10, B, IN))
    h0 = cell.initial_state(params)
    ref = rj.scan(cell, params, h0, xs)
    for k in [1, 2, 3, 4, 9, 10, 11]:
        out = rj.scan(cell, params, h0, xs, truncate_every=k)
        assert out[1].shape == (10, B, 4)
        tree_allclose(out, ref, rtol=0, atol=0)


def test_truncation_gradient_to_initial_state_only_from_first_block():
    cell = rj.RNNCell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, IN))
    h0 = jnp.ones(4)

    def loss(h0, t):
        return rj.scan(cell, params, h0, xs, truncate_every=3)[1][t].sum()

    assert bool(jnp.abs(jax.grad(loss)(h0, 2)).sum() > 0)
    for t in range(3, T):
        np.testing.assert_array_equal(jax.grad(loss)(h0, t), 0)
    # The final state's gradient does not reach h0 either (it is past a cut)...
    final = jax.grad(lambda h0: rj.scan(cell, params, h0, xs, truncate_every=3)[0].sum())(h0)
    np.testing.assert_array_equal(final, 0)
    # ...but it does when the whole sequence fits in one block.
    final = jax.grad(lambda h0: rj.scan(cell, params, h0, xs, truncate_every=T)[0].sum())(h0)
    assert bool(jnp.abs(final).sum() > 0)


def test_zero_length_sequence():
    cell = rj.LSTMCell(IN, 4)
    params = cell.init(jax.random.key(0))
    h0 = rj.LSTMState(jnp.full(4, 0.5), jnp.full(4, -0.5))
    h, ys = rj.scan(cell, params, h0, jnp.zeros((0, B, IN)))
    assert ys.shape == (0, B, 4)
    tree_allclose(h, jax.tree.map(lambda a: jnp.broadcast_to(a, (B, 4)), h0), rtol=0, atol=0)
    h, ys = rj.scan(cell, params, h0, jnp.zeros((0, IN)), truncate_every=2)
    tree_allclose(h, h0, rtol=0, atol=0)
    assert ys.shape == (0, 4)


def test_scan_check_grads_float64():
    cell = rj.LSTMCell(IN, 4, forget_bias=1.0)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0)))
        xs = jax.random.normal(jax.random.key(1), (5, 2, IN), jnp.float64)
        h0 = cell.initial_state(params)
        # Numerical differences see the untruncated function, so no truncate_every here;
        # truncated gradients are checked against the loop oracle above.
        check_grads(
            lambda p, h, xs: rj.scan(cell, p, h, xs), (params, h0, xs), order=1, modes=["rev"]
        )


def test_scan_jit_equals_eager_and_pytree_inputs():
    def cell(params, h, x):
        # A user cell with structured input: x = {"a": (..., 2), "b": (..., 1)}.
        h = h * params + x["a"].sum(-1, keepdims=True) - x["b"]
        return h, {"double": 2 * h}

    xs = {"a": jnp.ones((4, 3, 2)), "b": jnp.arange(12.0).reshape(4, 3, 1)}
    h0 = jnp.zeros((3, 1))
    h, ys = rj.scan(cell, jnp.float32(0.5), h0, xs)
    hj, ysj = jax.jit(lambda p, h, xs: rj.scan(cell, p, h, xs))(jnp.float32(0.5), h0, xs)
    tree_allclose((h, ys), (hj, ysj))
    tree_allclose((h, ys), loop(cell, jnp.float32(0.5), h0, xs))
