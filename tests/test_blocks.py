"""`rj.mamba_block`: the whole block against the oracle's loop with lengths, resets and
reverse (values and every gradient: the causal convolution's carried inputs are state, so
they stop at a reset and freeze past a length like any state), its parts' errors. The
comparison with mamba-ssm's `mamba_inner_ref` is in tests/test_references.py."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from cases import tree_allclose

import recurjax as rj
from recurjax._cells.blocks import CausalConv

T, B, D = 5, 3, 4


@pytest.mark.slow
def test_the_block_equals_the_loop():
    block = rj.mamba_block(D, state_size=3)
    params = jax.tree.map(
        lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape),
        block.init(jax.random.key(0)),
    )
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((T, B, D), dtype=np.float32)
    lengths, resets = np.array([T, 4, 0]), rng.random((T, B)) < 0.3
    h0 = jax.tree.map(
        lambda a: jnp.broadcast_to(a, (B, *a.shape)) + 0.2, block.initial_state(params)
    )
    s0 = jax.tree.map(lambda a: 0.1 - a, h0)
    w_y = rng.standard_normal((T, B, D), dtype=np.float32)

    def loss(params, h0, s0, xs):
        h, ys = rj.scan(block, params, h0, xs, lengths=lengths, resets=resets, state0=s0,
                        reverse=True)  # fmt: skip
        return oracle.loss_terms(h, ys, w_y), (h, ys)

    (_, (h, ys)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
        params, h0, s0, jnp.asarray(xs)
    )
    h_ref, ys_ref, grads_ref = oracle.run(
        block, params, h0, xs, lengths=lengths, resets=resets, state0=s0, reverse=True, w_y=w_y
    )
    tol = {"rtol": 1e-5, "atol": 1e-5}
    tree_allclose(ys, ys_ref, **tol)
    tree_allclose(h, h_ref, **tol)
    tree_allclose(grads, grads_ref, **tol)


def test_the_parts_name_what_is_wrong():
    with pytest.raises(ValueError, match=re.escape("expected passthrough to be an int >= 0")):
        CausalConv(4, 3, passthrough=-1)
    conv = CausalConv(4, 3, passthrough=2)
    p = conv.init(jax.random.key(0))
    with pytest.raises(ValueError, match=re.escape("expected x with 6 features")):
        conv(p, conv.initial_state(p), jnp.ones((2, 4)))
    # the state holds the last two inputs: a step outputs silu(w . window + b)
    h, y = conv(p, conv.initial_state(p), jnp.ones(6))
    np.testing.assert_allclose(y[:4], jax.nn.silu(p["w"][-1] + p["b"]), rtol=1e-6)
    np.testing.assert_array_equal(y[4:], 1.0)
    np.testing.assert_array_equal(h, np.r_[np.zeros(4), np.ones(4)])
