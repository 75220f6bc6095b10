"""The Recur handle: stateful steps, batches, reset, truncate, jit, vmap, casting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cases import IN, RECURRENT, Case, elman, everyday, tree_allclose

import recurjax as rj


def _handle(case: Case, seed: int = 0) -> rj.Recur:
    params = case.params(seed)
    return rj.Recur(case.cell, params, case.state(params))


def test_same_input_twice_gives_different_outputs():
    m = rj.RNN(10, 5, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (10,))
    m1, y1 = m(x)
    _m2, y2 = m1(x)
    assert not np.allclose(y1, y2)
    # Nothing mutates: the old handle still gives the first output.
    np.testing.assert_array_equal(m(x)[1], y1)
    np.testing.assert_array_equal(m.state, jnp.zeros(5))


def test_flux_hand_written_rnn_is_a_cell():
    # Flux's guide: h = tanh(Wxh x + Whh h + b) as a plain function, wrapped in Recur.
    k = jax.random.split(jax.random.key(0), 4)
    params = {
        "wxh": jax.random.normal(k[0], (10, 5)),
        "whh": jax.random.normal(k[1], (5, 5)),
        "b": jax.random.normal(k[2], (5,)),
    }
    h0 = jax.random.uniform(k[3], (5,))
    x = jnp.linspace(0, 1, 10)
    m = rj.Recur(elman, params, h0)
    m1, y1 = m(x)
    _m2, y2 = m1(x)
    np.testing.assert_allclose(y1, jnp.tanh(x @ params["wxh"] + h0 @ params["whh"] + params["b"]))
    assert not np.allclose(y1, y2)
    # The library RNNCell with the same numbers is the same function.
    cell = rj.RNNCell(10, 5)
    lib = {"wi": params["wxh"], "wh": params["whh"], "b": params["b"]}
    np.testing.assert_allclose(cell(lib, h0, x)[1], y1, rtol=1e-6)
    assert repr(m) == "Recur(cell function 'elman')"


@pytest.mark.parametrize("case", everyday(RECURRENT))
def test_recur_scan_equals_steps_and_keeps_final_state(case: Case):
    m = _handle(case)
    xs = jax.random.normal(jax.random.key(3), (6, 2, IN), jnp.float32)
    m_scan, ys = m.scan(xs)
    m_loop, ys_loop = m, []
    for x in xs:
        m_loop, y = m_loop(x)
        ys_loop.append(y)
    tree_allclose(ys, jnp.stack(ys_loop))
    tree_allclose(m_scan.state, m_loop.state)
    tree_allclose(m_scan.state0, m.state0, rtol=0, atol=0)
    # A list of per-step arrays is the same sequence.
    m_list, ys_list = m.scan(list(xs))
    tree_allclose((m_list.state, ys_list), (m_scan.state, ys))
    # Scanning in two pieces continues from the carried state.
    m_a, ys_a = m.scan(xs[:4])
    m_b, ys_b = m_a.scan(xs[4:])
    tree_allclose(jnp.concatenate([ys_a, ys_b]), ys)
    tree_allclose(m_b.state, m_scan.state)


def test_unbatched_state_broadcasts_and_stays_batched():
    m = rj.LSTM(IN, 4, key=jax.random.key(0))
    xb = jax.random.normal(jax.random.key(1), (2, IN))
    m1, y = m(xb)
    assert y.shape == (2, 4)
    assert m1.state.h.shape == m1.state.c.shape == (2, 4)
    assert m1.state0.h.shape == (4,)
    m2, _ = m1(xb)
    assert m2.state.h.shape == (2, 4)
    # Each example of the batch is the unbatched model run on that example alone.
    _m_single, y0 = m(xb[0])
    np.testing.assert_allclose(y[0], y0, rtol=1e-6)


@pytest.mark.parametrize("case", everyday([c for c in RECURRENT if c.name != "user_fn"]))
def test_batched_state_meeting_another_batch_raises(case: Case):
    m = _handle(case)
    m, _ = m(jnp.ones((3, IN)))
    for x in [jnp.ones((4, IN)), jnp.ones((2, 3, IN)), jnp.ones(IN)]:
        with pytest.raises(ValueError, match=r"call reset\(\) .*between independent batches"):
            m(x)
    # After reset() any batch works again.
    m.reset()(jnp.ones((4, IN)))


def test_reset_returns_to_state0():
    m = rj.GRU(IN, 4, key=jax.random.key(0))
    m = m.replace(state=jnp.full(4, 0.25), state0=jnp.full(4, 0.25))
    moved, _ = m.scan(jnp.ones((5, 2, IN)))
    assert not np.allclose(moved.state, 0.25)
    back = moved.reset()
    np.testing.assert_array_equal(back.state, jnp.full(4, 0.25))
    assert back.state is moved.state0
    tree_allclose(back.params, m.params, rtol=0, atol=0)


def test_learnable_initial_state_gets_gradients_through_reset():
    m = rj.LSTM(IN, 4, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (5, 2, IN))
    m, _ = m.scan(xs)  # a state left over from an earlier sequence

    def loss(m):
        m, ys = m.reset().scan(xs)
        return jnp.sum(ys**2)

    g = jax.grad(loss)(m)
    assert isinstance(g, rj.Recur)
    assert float(jnp.abs(g.state0.h).sum()) > 0 and float(jnp.abs(g.state0.c).sum()) > 0
    for leaf in jax.tree.leaves(g.state):  # reset() discards the current state
        np.testing.assert_array_equal(leaf, 0)
    # The gradient equals that of a function of state0 alone.
    ref = jax.grad(lambda s0: jnp.sum(rj.scan(m.cell, m.params, s0, xs)[1] ** 2))(m.state0)
    tree_allclose(g.state0, ref)
    # One optax step on the whole handle moves state0 and params, as a learnable state should.
    opt = optax.sgd(0.1)
    updates, _ = opt.update(g, opt.init(m))  # pyright: ignore[reportArgumentType]
    new = optax.apply_updates(m, updates)  # pyright: ignore[reportArgumentType]
    assert isinstance(new, rj.Recur) and not np.allclose(new.state0.h, m.state0.h)


def test_truncate_keeps_values_and_cuts_gradients():
    m = rj.RNN(IN, 4, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (6, IN))

    def loss(params, cut):
        h = m.replace(params=params)
        h, _ = h.scan(xs[:3])
        if cut:
            h = h.truncate()
        _, ys = h.scan(xs[3:])
        return jnp.sum(ys**2), h.state

    (v_cut, s_cut), g_cut = jax.value_and_grad(loss, has_aux=True)(m.params, True)
    (v_full, s_full), g_full = jax.value_and_grad(loss, has_aux=True)(m.params, False)
    assert v_cut == v_full
    np.testing.assert_array_equal(s_cut, s_full)
    # With the cut, the gradient is that of the second chunk from a constant state.
    h3 = m.scan(xs[:3])[0].state

    def chunk(params):
        return jnp.sum(rj.scan(m.cell, params, h3, xs[3:])[1] ** 2)

    tree_allclose(g_cut, jax.grad(chunk)(m.params))
    assert not np.allclose(g_cut["wi"], g_full["wi"])
    # And no gradient at all reaches the state before the cut.
    g_state = jax.grad(lambda s: jnp.sum(m.replace(state=s).truncate().scan(xs)[1] ** 2))(m.state)
    np.testing.assert_array_equal(g_state, 0)


def test_jitted_step_does_not_retrace():
    traces = []

    @jax.jit
    def step(m, x):
        traces.append(1)
        return m(x)

    m = rj.LSTM(IN, 4, key=jax.random.key(0))
    x = jnp.ones(IN)
    for _ in range(3):
        m, _ = step(m, x)
    assert len(traces) == 1
    # An equal cell in another handle (new params, same shapes) reuses the trace too.
    step(rj.LSTM(IN, 4, key=jax.random.key(1)), x)
    assert len(traces) == 1
    # A batched input meets the unbatched state once (one trace), which makes the state
    # batched (one more trace for batched x with a batched state); then no more.
    xb = jnp.ones((2, IN))
    for _ in range(4):
        m, _ = step(m, xb)
    assert len(traces) == 3
    assert m.state.h.shape == (2, 4)


def test_eager_scan_reuses_compilation():
    m = rj.GRU(IN, 4, key=jax.random.key(0))
    xs = jnp.ones((5, IN))
    m.scan(xs)
    with jax.log_compiles():
        import logging

        records = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logger = logging.getLogger("jax")
        logger.addHandler(handler)
        try:
            m.scan(xs)
            m.reset().scan(xs)
        finally:
            logger.removeHandler(handler)
    assert not [r for r in records if "Compiling" in r.getMessage()]


def test_vmap_over_examples_equals_batched_call():
    m = rj.GRUv3(IN, 4, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (5, 3, IN))  # (T, B, in)
    m_batched, ys = m.scan(xs)
    # vmap over the batch axis of xs: each example scanned on its own.
    per_example = jax.vmap(lambda x: m.scan(x)[1], in_axes=1, out_axes=1)(xs)
    tree_allclose(per_example, ys)
    # vmap over per-example states of one handle equals one batched step.
    x0 = xs[0]
    per_state = jax.vmap(lambda s, x: m.replace(state=s)(x)[1])(m_batched.state, x0)
    tree_allclose(per_state, m_batched(x0)[1])


def test_pytree_structure_and_immutability():
    m = rj.LSTM(IN, 4, key=jax.random.key(0))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(m)]
    assert paths[0].startswith(".params")
    assert any(p.startswith(".state0") for p in paths)
    assert any(p.startswith(".state.") or p.startswith(".state[") for p in paths)
    doubled = jax.tree.map(lambda a: 2 * a, m)
    assert isinstance(doubled, rj.Recur) and doubled.cell == m.cell
    with pytest.raises(AttributeError, match="immutable"):
        m.state = m.state0  # type: ignore[misc]
    assert repr(m) == f"Recur(LSTMCell({IN} => 4))"


def test_constructors_equal_recur_of_cell():
    key = jax.random.key(0)
    for ctor, cell in [
        (rj.RNN, rj.RNNCell(10, 5)),
        (rj.LSTM, rj.LSTMCell(10, 5)),
        (rj.GRU, rj.GRUCell(10, 5)),
        (rj.GRUv3, rj.GRUv3Cell(10, 5)),
    ]:
        m = ctor(10, 5, key=key)
        ref = rj.Recur(cell, cell.init(key))
        assert m.cell == cell
        tree_allclose(m, ref, rtol=0, atol=0)
    assert repr(rj.RNN(10, 5, key=key)) == "Recur(RNNCell(10 => 5, tanh))"
    relu = rj.RNN(10, 5, key=key, activation=jax.nn.relu)
    assert repr(relu) == "Recur(RNNCell(10 => 5, relu))"


def test_casting_rule_float64_and_integer_inputs():
    cell = rj.GRUCell(IN, 4)
    params = cell.init(jax.random.key(0))
    h0 = cell.initial_state(params)
    x32 = jnp.array([1.0, -2.0, 3.0], jnp.float32)
    _ref_h, ref_y = cell(params, h0, x32)
    # Integers are cast to the params' dtype, as values.
    h, y = cell(params, h0, jnp.array([1, -2, 3]))
    assert y.dtype == h.dtype == jnp.float32
    np.testing.assert_array_equal(y, ref_y)
    with jax.enable_x64(True):
        x64 = jnp.array([1.0, -2.0, 3.0], jnp.float64)
        h, y = cell(params, h0, x64)
        assert y.dtype == jnp.float32
        np.testing.assert_array_equal(y, ref_y)
        _, ys = rj.scan(cell, params, h0.astype(jnp.float64), jnp.stack([x64, x64]))
        assert ys.dtype == jnp.float32


def test_copy_and_deepcopy_give_an_equal_handle():
    import copy

    m = rj.LSTM(IN, 4, key=jax.random.key(0))
    m, _ = m(jnp.ones(IN))
    for dup in (copy.copy(m), copy.deepcopy(m)):
        assert isinstance(dup, rj.Recur) and dup.cell == m.cell
        tree_allclose(dup, m, rtol=0, atol=0)
        with pytest.raises(AttributeError, match="immutable"):
            dup.params = {}  # type: ignore[misc]


def test_slots_class_cell_runs_in_scan():
    class Scaled:  # a callable cell that cannot be weakly referenced
        __slots__ = ("a",)

        def __init__(self, a):
            self.a = a

        def __call__(self, params, h, x):
            h = self.a * h + x @ params
            return h, h

    cell = Scaled(0.5)
    params = jnp.eye(3)
    h, ys = rj.scan(cell, params, jnp.zeros(3), jnp.ones((4, 3)))
    expected, hh = [], np.zeros(3)
    for _ in range(4):
        hh = 0.5 * hh + np.ones(3)
        expected.append(hh)
    np.testing.assert_allclose(ys, np.stack(expected), rtol=1e-6)
    np.testing.assert_allclose(h, expected[-1], rtol=1e-6)


def test_batched_gives_state_and_state0_batch_axes():
    m = rj.LSTM(IN, 4, key=jax.random.key(0))
    mb = m.batched((2, 3))
    assert mb.state.h.shape == mb.state0.c.shape == (2, 3, 4)
    np.testing.assert_array_equal(mb.state.h[1, 2], m.state.h)
    x = jnp.ones((2, 3, IN))
    tree_allclose(mb(x)[1], m(x)[1])  # the same computation, with the batch up front
    assert rj.GRU(IN, 4, key=jax.random.key(0)).batched(np.int64(5)).state.shape == (5, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"state is already batched .* right after making"):
        mb.batched(2)
    with pytest.raises(TypeError, match=r"expected batch to be an int or a tuple of ints, got"):
        m.batched(2.0)  # type: ignore[arg-type]
