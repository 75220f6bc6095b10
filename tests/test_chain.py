"""Composition: chains of cells, handle chains, Dense and stateless layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import tree_allclose

import recurjax as rj


def test_chain_is_the_parts_in_order():
    lstm, dense = rj.LSTMCell(10, 15), rj.Dense(15, 5, activation=jnp.tanh)
    c = rj.chain(lstm, dense)
    params = c.init(jax.random.key(0))
    state = c.initial_state(params)
    assert isinstance(params, tuple) and len(params) == 2
    assert state[1] == () and isinstance(state[0], rj.LSTMState)
    x = jax.random.normal(jax.random.key(1), (3, 10))
    (s_lstm, s_dense), y = c(params, state, x)
    ref_s, h = lstm(params[0], state[0], x)
    _, ref_y = dense(params[1], (), h)
    tree_allclose((s_lstm, y), (ref_s, ref_y), rtol=0, atol=0)
    assert s_dense == ()
    assert repr(c) == "Chain(LSTMCell(10 => 15), Dense(15 => 5, tanh))"


def test_chain_scans_as_one_cell():
    c = rj.chain(rj.GRUCell(4, 6), rj.Dense(6, 6, activation=jax.nn.relu), rj.RNNCell(6, 3))
    params = c.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (8, 2, 4))
    h, ys = rj.scan(c, params, c.initial_state(params), xs)
    # The same as scanning each recurrent part over the previous part's outputs.
    h1, ys1 = rj.scan(c.cells[0], params[0], c.cells[0].initial_state(params[0]), xs)
    ys2 = jax.nn.relu(ys1 @ params[1]["w"] + jnp.broadcast_to(params[1]["b"], (8, 2, 6)))
    h3, ys3 = rj.scan(c.cells[2], params[2], c.cells[2].initial_state(params[2]), ys2)
    tree_allclose((h, ys), ((h1, (), h3), ys3), rtol=1e-5, atol=1e-6)


def test_chain_of_handles_is_a_handle_of_the_chain():
    k1, k2 = jax.random.split(jax.random.key(0))
    lstm = rj.LSTM(10, 15, key=k1)
    dense = rj.Recur(rj.Dense(15, 5), key=k2)
    m = rj.chain(lstm, dense)
    assert isinstance(m, rj.Recur)
    assert repr(m) == "Recur(Chain(LSTMCell(10 => 15), Dense(15 => 5)))"
    tree_allclose(m.params, (lstm.params, dense.params), rtol=0, atol=0)
    xs = jax.random.normal(jax.random.key(1), (4, 10))
    m2, ys = m.scan(xs)
    lstm2, hs = lstm.scan(xs)
    _, ref = dense.scan(hs)
    tree_allclose(ys, ref, rtol=1e-6, atol=1e-6)
    tree_allclose(m2.state[0], lstm2.state)
    # reset and truncate act on every part at once.
    tree_allclose(m2.reset().state, (lstm.state0, ()), rtol=0, atol=0)
    g = jax.grad(lambda s: jnp.sum(m.replace(state=s).truncate().scan(xs)[1]))(m.state)
    for leaf in jax.tree.leaves(g):
        np.testing.assert_array_equal(leaf, 0)


def test_chain_keeps_each_parts_state0():
    k1, k2 = jax.random.split(jax.random.key(0))
    a = rj.GRU(3, 4, key=k1).replace(state0=jnp.full(4, 0.5), state=jnp.zeros(4))
    b = rj.GRU(4, 2, key=k2)
    m = rj.chain(a, b)
    tree_allclose(m.state0, (jnp.full(4, 0.5), jnp.zeros(2)), rtol=0, atol=0)
    tree_allclose(m.state, (jnp.zeros(4), jnp.zeros(2)), rtol=0, atol=0)


def test_stateless_lifts_a_function():
    embed = rj.stateless(
        lambda p, tokens: p[tokens], init=lambda key: jax.random.normal(key, (7, 3))
    )
    params = embed.init(jax.random.key(0))
    assert embed.initial_state(params) == ()
    state, y = embed(params, (), jnp.array([1, 4]))
    assert state == () and y.shape == (2, 3)
    np.testing.assert_array_equal(y, params[jnp.array([1, 4])])
    # In a chain with a recurrent cell, over integer token sequences.
    c = rj.chain(embed, rj.LSTMCell(3, 5))
    p = c.init(jax.random.key(1))
    _h, ys = rj.scan(c, p, c.initial_state(p), jnp.array([[1, 2], [3, 4], [5, 6]]))
    assert ys.shape == (3, 2, 5)
    free = rj.stateless(lambda p, x: 2 * x)
    assert free.init(jax.random.key(0)) == ()
    assert repr(free) == "stateless(<lambda>)"


def test_chain_handle_from_stateless_layer():
    double = rj.Recur(rj.stateless(lambda p, x: x * p), jnp.float32(2.0))
    m = rj.chain(rj.RNN(2, 3, key=jax.random.key(0)), double)
    m, y = m(jnp.ones(2))
    assert y.shape == (3,)
    np.testing.assert_allclose(y, 2 * m.state[0], rtol=1e-6)


def test_chain_errors():
    with pytest.raises(TypeError, match="at least one"):
        rj.chain()
    with pytest.raises(TypeError, match=r"mixed with bare cells \['Dense\(15 => 5\)'\]"):
        rj.chain(rj.LSTM(10, 15, key=jax.random.key(0)), rj.Dense(15, 5))
    with pytest.raises(TypeError, match="part 1: expected a cell"):
        rj.chain(rj.LSTMCell(10, 15), 3)
    c = rj.chain(rj.LSTMCell(2, 3), rj.Dense(3, 1))
    p = c.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected params to be a tuple with one entry per part"):
        c(p[0], c.initial_state(p), jnp.ones(2))
    with pytest.raises(ValueError, match=r"expected state to be a tuple .* got tuple of length 1"):
        c(p, (c.initial_state(p)[0],), jnp.ones(2))
    with pytest.raises(
        ValueError, match=r"Dense\(3 => 1\): a stateless layer has the empty state"
    ):
        c(p, (c.initial_state(p)[0], jnp.zeros(1)), jnp.ones(2))

    def fn(params, h, x):
        return h, x

    with pytest.raises(
        TypeError, match=r"init\(\) needs every part .* \[.cell function 'test_chain_errors"
    ):
        rj.chain(rj.LSTMCell(2, 3), fn).init(jax.random.key(0))


def test_chain_init_calls_key_only_inits_and_passes_an_explicit_dtype():
    class Scale(rj.Cell):  # a user cell whose init takes only a key
        in_features = 3

        def init(self, key):  # type: ignore[override]
            return {"s": jax.random.uniform(key, (3,))}

        def initial_state(self, params):
            return ()

        def __call__(self, params, h, x):
            return (), x * params["s"]

        def __hash__(self):
            return 0

        def __eq__(self, other):
            return isinstance(other, Scale)

    c = rj.chain(Scale(), rj.RNNCell(3, 2))
    params = c.init(jax.random.key(0))
    assert params[0]["s"].shape == (3,) and params[1]["wi"].dtype == jnp.float32
    with jax.enable_x64(True):
        p64 = rj.chain(rj.RNNCell(3, 2), rj.Dense(2, 1)).init(jax.random.key(0), jnp.float64)
    assert {a.dtype for a in jax.tree.leaves(p64)} == {jnp.dtype(jnp.float64)}
