"""The fused strategy (hand-written kernels with a custom VJP): what the oracle grid cannot.

`test_scan.py` checks every strategy, the fused one included, against the shared oracle
(tests/oracle.py) on the options and shapes where the kernels do something of their own:
reversal, truncation masks in the backward loop, batch flattening, chains run part by part,
remat blocks. Here: float64 gradients, JAX transformations around the custom VJP, dtypes,
errors and memory.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CASES, IN, Case, elman, strategies_chosen, tree_allclose
from jax.test_util import check_grads

import recurjax as rj

T = 7
FUSED = [c for c in CASES if c.name in ("rnn_tanh", "rnn_relu", "lstm", "gru", "chain")]


@pytest.mark.parametrize(
    "case",
    # The chain runs part by part through the same kernels: the slow tier (923697d).
    [*FUSED[:-1], pytest.param(FUSED[-1], marks=pytest.mark.slow)],
    ids=[c.name for c in FUSED],
)
def test_fused_check_grads_float64(case: Case):
    with jax.enable_x64(True):
        params = case.params(0, jnp.float64)
        h0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (2, *a.shape)), case.state(params))
        xs = jax.random.normal(jax.random.key(1), (5, 2, IN), jnp.float64)

        def f(params, h0, xs):
            # No truncation here: a truncated gradient is not the derivative of the values.
            h, ys = rj.scan(case.cell, params, h0, xs, strategy="fused", reverse=True)
            return ys, h

        # Reverse mode only: a custom VJP has no forward-mode rule (see the next test).
        check_grads(jax.jit(f), (params, h0, xs), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_forward_mode_runs_sequentially_and_explicit_fused_says_so():
    cell = rj.LSTMCell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs = jnp.ones((T, 2, IN))

    def ys(params, strategy):
        return rj.scan(cell, params, cell.initial_state(params), xs, strategy=strategy)[1]

    tangent = jax.tree.map(jnp.ones_like, params)
    msg = "strategy='fused' has a hand-written reverse-mode derivative (a jax.custom_vjp)"
    with pytest.raises(TypeError, match=re.escape(msg) + ".*Use strategy='sequential'"):
        jax.jvp(lambda p: ys(p, "fused"), (params,), (tangent,))
    # auto picks the sequential strategy under forward mode.
    _, dys_auto = jax.jvp(lambda p: ys(p, "auto"), (params,), (tangent,))
    _, dys = jax.jvp(lambda p: ys(p, "sequential"), (params,), (tangent,))
    np.testing.assert_allclose(dys_auto, dys, rtol=0, atol=0)
    # The jvp equals the VJP read the other way: <J t, u> == <t, J^T u> for a random u.
    u = jax.random.normal(jax.random.key(3), dys.shape)
    _, vjp = jax.vjp(lambda p: ys(p, "auto"), params)
    (jt_u,) = vjp(u)
    lhs = jnp.vdot(dys, u)
    pairs = zip(jax.tree.leaves(tangent), jax.tree.leaves(jt_u), strict=True)
    rhs = sum(jnp.vdot(t, g) for t, g in pairs)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


def test_second_order_reverse_over_reverse():
    cell = rj.GRUCell(IN, 4)
    params = Case("gru", cell, cell.init, cell.initial_state).params(0)
    xs = jax.random.normal(jax.random.key(1), (T, 2, IN))

    def outer(params, strategy):
        def loss(params):
            _, ys = rj.scan(cell, params, cell.initial_state(params), xs, strategy=strategy)
            return jnp.sum(ys**2)

        return jnp.sum(jax.grad(loss)(params)["wh"] ** 2)

    tree_allclose(
        jax.grad(outer)(params, "fused"), jax.grad(outer)(params, "sequential"), atol=1e-5
    )


def test_vmap_of_fused_equals_batched():
    cell = rj.LSTMCell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (3, T, IN))  # vmapped axis first

    def one(p, xs):
        return rj.scan(cell, p, cell.initial_state(p), xs, strategy="fused")[1]

    batched = rj.scan(cell, params, cell.initial_state(params), xs, time_axis=1)[1]
    tree_allclose(jax.vmap(one, (None, 0))(params, xs), batched)
    g_vmap = jax.grad(lambda p: jnp.sum(jax.vmap(one, (None, 0))(p, xs) ** 2))(params)
    g_seq = jax.grad(
        lambda p: jnp.sum(
            rj.scan(cell, p, cell.initial_state(p), xs, time_axis=1, strategy="sequential")[1] ** 2
        )
    )(params)
    tree_allclose(g_vmap, g_seq, atol=1e-5)


# float16 takes the same path as bfloat16 (the params' dtype throughout): the slow tier.
@pytest.mark.parametrize(
    "dtype", [jnp.bfloat16, pytest.param(jnp.float16, marks=pytest.mark.slow)], ids=str
)
def test_fused_keeps_low_precision_dtypes(dtype):
    cell = rj.LSTMCell(IN, 4)
    params = jax.tree.map(lambda a: a.astype(dtype), cell.init(jax.random.key(0)))
    xs = jax.random.normal(jax.random.key(1), (T, 2, IN))  # float32 input: cast to dtype
    out = {}
    for strategy in ("fused", "sequential"):
        h, ys = rj.scan(cell, params, cell.initial_state(params), xs, strategy=strategy)
        assert ys.dtype == dtype and h.h.dtype == dtype and h.c.dtype == dtype
        grads = jax.grad(
            lambda p, s=strategy: jnp.sum(
                rj.scan(cell, p, cell.initial_state(p), xs, strategy=s)[1].astype(jnp.float32)
            )
        )(params)
        assert all(g.dtype == dtype for g in jax.tree.leaves(grads))
        out[strategy] = (ys, grads)
    # Rounding differs between the two formulations: compare at the dtype's resolution.
    tree_allclose(
        jax.tree.map(lambda a: a.astype(jnp.float32), out["fused"]),
        jax.tree.map(lambda a: a.astype(jnp.float32), out["sequential"]),
        rtol=5e-2,
        atol=5e-2,
    )


def test_zero_length_sequence_fused():
    cell = rj.GRUCell(IN, 4)
    params = cell.init(jax.random.key(0))
    h0 = jnp.full((2, 4), 0.5)
    h, ys = rj.scan(cell, params, h0, jnp.zeros((0, 2, IN)), strategy="fused")
    assert ys.shape == (0, 2, 4)
    np.testing.assert_array_equal(h, h0)
    g = jax.grad(lambda h0: jnp.sum(rj.scan(cell, params, h0, jnp.zeros((0, 2, IN)))[0]))(h0)
    np.testing.assert_array_equal(g, jnp.ones_like(h0))


def test_chain_with_a_function_cell_runs_part_by_part():
    """A chain mixing a fused cell, a user function cell and Dense: auto equals sequential."""

    def params_elman(key):
        k1, k2 = jax.random.split(key)
        return {
            "wxh": jax.random.normal(k1, (5, 4)),
            "whh": jax.random.normal(k2, (4, 4)),
            "b": jnp.zeros((4,)),
        }

    cell = rj.chain(rj.GRUCell(IN, 5), elman, rj.Dense(4, 2))
    k = jax.random.split(jax.random.key(0), 3)
    params = (rj.GRUCell(IN, 5).init(k[0]), params_elman(k[1]), rj.Dense(4, 2).init(k[2]))
    h0 = (jnp.zeros((5,)), jnp.zeros((4,)), ())
    xs = jax.random.normal(jax.random.key(1), (T, 3, IN))

    def run(params, strategy):
        h, ys = rj.scan(cell, params, h0, xs, strategy=strategy, truncate_every=3)
        return jnp.sum(ys**2) + jnp.sum(h[0]) + jnp.sum(h[1]), (h, ys)

    (_, out_a), g_a = jax.value_and_grad(run, has_aux=True)(params, "auto")
    (_, out_s), g_s = jax.value_and_grad(run, has_aux=True)(params, "sequential")
    tree_allclose(out_a, out_s)
    tree_allclose(g_a, g_s, atol=1e-5)
    with pytest.raises(ValueError, match="strategy='fused' needs a cell with a fused kernel"):
        rj.scan(
            rj.chain(elman, rj.Dense(4, 2)), params[1:], h0[1:], jnp.ones((T, 5)), strategy="fused"
        )


def test_strategy_errors():
    cell = rj.GRUv3Cell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs = jnp.ones((T, IN))
    with pytest.raises(
        ValueError,
        match=r"scan\(GRUv3Cell\(3 => 4\)\): expected strategy to be one of \('auto', "
        r"'fused', 'sequential', 'associative', 'chunked', 'hoisted', 'chunkwise', 'cudnn'\), got "
        r"'fast'\.",
    ):
        rj.scan(cell, params, cell.initial_state(params), xs, strategy="fast")
    with pytest.raises(
        ValueError,
        match=r"scan\(GRUv3Cell\(3 => 4\)\): strategy='fused' needs a cell with a fused "
        r"kernel \(LSTMCell, GRUCell, RNNCell.*'sequential'\.",
    ):
        rj.scan(cell, params, cell.initial_state(params), xs, strategy="fused")
    # auto falls back to the sequential strategy for a cell without a kernel.
    with strategies_chosen() as chosen:
        rj.scan(cell, params, cell.initial_state(params), xs)
    assert chosen == ["sequential"]


def test_recur_scan_passes_strategy():
    m = rj.LSTM(IN, 4, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, IN))
    with strategies_chosen() as chosen:
        m1, ys1 = m.scan(xs, strategy="fused")
        m2, ys2 = m.scan(xs, strategy="sequential")
    assert chosen == ["fused", "sequential"]
    tree_allclose((m1.state, ys1), (m2.state, ys2))


def test_remat_cuts_backward_memory():
    """XLA's own accounting of the compiled gradient: temporary buffers shrink with remat."""
    cell = rj.LSTMCell(IN, 32)
    params = cell.init(jax.random.key(0))
    xs = jnp.ones((1024, 4, IN))

    def temp_bytes(remat):
        def loss(p):
            return jnp.sum(rj.scan(cell, p, cell.initial_state(p), xs, remat=remat)[1] ** 2)

        memory = jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis()
        assert memory is not None
        return memory.temp_size_in_bytes

    full, blocks = temp_bytes(None), temp_bytes(32)
    assert blocks < full / 4, (full, blocks)


def test_remat_errors():
    cell = rj.GRUCell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs = jnp.ones((T, IN))
    h0 = cell.initial_state(params)
    with pytest.raises(ValueError, match=r"expected remat to be a positive int or None, got 0"):
        rj.scan(cell, params, h0, xs, remat=0)
    with pytest.raises(
        ValueError,
        match=r"remat=5 must be a multiple of truncate_every=2, .* Use e\.g\. remat=4\.",
    ):
        rj.scan(cell, params, h0, xs, remat=5, truncate_every=2)
