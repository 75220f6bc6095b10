"""Bad input fails at trace time with a message naming the cell, expected, got and the fix."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurjax as rj

KEY = jax.random.key(0)


def _rnn():
    cell = rj.RNNCell(10, 5)
    params = cell.init(KEY)
    return cell, params, cell.initial_state(params)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_wrong_feature_size(jit):
    cell, params, h = _rnn()
    call = jax.jit(cell) if jit else cell
    msg = (
        r"RNNCell(10 => 5, tanh): expected x with 10 features on its last axis, shape "
        r"(..., 10), got shape (3, 7). Check the cell's in_features"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        call(params, h, jnp.ones((3, 7)))
    with pytest.raises(ValueError, match=re.escape("got shape ()")):
        cell(params, h, jnp.float32(1.0))
    with pytest.raises(TypeError, match=r"expected x to be an array .* got list"):
        cell(params, h, [1.0] * 10)  # pyright: ignore[reportArgumentType]


def test_wrong_state_shape_and_structure():
    cell, params, _ = _rnn()
    with pytest.raises(ValueError, match=re.escape("expected state h of shape (..., 5), got")):
        cell(params, jnp.zeros(7), jnp.ones(10))
    lstm = rj.LSTMCell(10, 15)
    p = lstm.init(KEY)
    with pytest.raises(
        TypeError, match=r"expected the state to be an LSTMState\(h, c\), got tuple"
    ):
        lstm(p, (jnp.zeros(15), jnp.zeros(15)), jnp.ones(10))  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match=re.escape("expected state c of shape (..., 15)")):
        lstm(p, rj.LSTMState(jnp.zeros(15), jnp.zeros(4)), jnp.ones(10))
    with pytest.raises(TypeError, match="expected state h to be an array"):
        cell(params, None, jnp.ones(10))  # pyright: ignore[reportArgumentType]


def test_params_of_another_cell():
    gru, lstm = rj.GRUCell(10, 5), rj.LSTMCell(10, 5)
    msg = r"LSTMCell(10 => 5): params do not match this cell: expected shapes {'wi': (10, 20)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        lstm(gru.init(KEY), lstm.initial_state(lstm.init(KEY)), jnp.ones(10))
    with pytest.raises(ValueError, match=r"Are these the params of another cell or size\?"):
        rj.GRUv3Cell(10, 5).initial_state(gru.init(KEY))
    with pytest.raises(ValueError, match=re.escape("got {'wi': (10, 15)")):
        rj.RNNCell(10, 5)(rj.RNNCell(10, 15).init(KEY), jnp.zeros(5), jnp.ones(10))
    with pytest.raises(TypeError, match="expected params to be a dict"):
        lstm((1, 2), None, jnp.ones(10))  # pyright: ignore[reportArgumentType]
    p = lstm.init(KEY)
    p = {**p, "b": p["b"].astype(jnp.float16)}
    with pytest.raises(TypeError, match="expected all params to share one floating dtype"):
        lstm(p, lstm.initial_state(lstm.init(KEY)), jnp.ones(10))


def test_xs_without_time_axis():
    cell, params, h = _rnn()
    msg = "scan(RNNCell(10 => 5, tanh)): xs has no time axis: expected shape (T, ..., 10), got"
    with pytest.raises(ValueError, match=re.escape(msg + " shape (10,)")):
        rj.scan(cell, params, h, jnp.ones(10))
    with pytest.raises(ValueError, match=re.escape("use xs[None]")):
        rj.Recur(cell, params).scan(jnp.ones(10))
    with pytest.raises(ValueError, match=r"time_axis=2 is out of range for xs of shape \(4, 10\)"):
        rj.scan(cell, params, h, jnp.ones((4, 10)), time_axis=2)
    with pytest.raises(TypeError, match=r"expected xs to be one array of shape \(T, ..., 10\)"):
        rj.scan(cell, params, h, {"a": jnp.ones((4, 10))})


def test_not_a_cell():
    for make in [
        lambda: rj.Recur(3, {}),  # type: ignore[arg-type]
        lambda: rj.scan("lstm", {}, None, jnp.ones((2, 1))),  # type: ignore[arg-type]
        lambda: rj.stateless(None),  # type: ignore[arg-type]
    ]:
        with pytest.raises(TypeError, match=r"expected a cell, a callable `cell\(params, h, x\)"):
            make()


def test_recur_construction_errors():
    with pytest.raises(TypeError, match=r"expected params \(or key= to initialise them\)"):
        rj.Recur(rj.GRUCell(2, 3))
    with pytest.raises(TypeError, match="pass params or key=, not both"):
        rj.Recur(rj.GRUCell(2, 3), {}, key=KEY)

    def fn(params, h, x):
        return h, x

    with pytest.raises(TypeError, match=r"plain function cell has no initial_state\(\)"):
        rj.Recur(fn, {})
    with pytest.raises(TypeError, match=r"key= needs a cell with an init\(key\) method"):
        rj.Recur(fn, key=KEY)
    with pytest.raises(TypeError, match=r"expected in_features to be a positive int, got 2.5"):
        rj.LSTMCell(2.5, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expected hidden_size to be a positive int, got 0"):
        rj.GRUCell(2, 0)


def test_cell_that_changes_its_state():
    def grows(params, h, x):
        return (h, h), x  # returns a tuple where it took an array

    m = rj.Recur(grows, (), jnp.zeros(2))
    with pytest.raises(ValueError, match="the cell returned a state with structure"):
        m(jnp.ones(2))
    with pytest.raises(ValueError, match="A cell must return its state in the form it takes it"):
        rj.scan(grows, (), jnp.zeros(2), jnp.ones((3, 2)))

    def reshapes(params, h, x):
        return jnp.zeros(3), x

    with pytest.raises(ValueError, match=r"turned state of shape \(2,\) into shape \(3,\)"):
        rj.scan(reshapes, (), jnp.zeros(2), jnp.ones((3, 2)))


def test_bad_scan_options_and_sequences():
    cell, params, h = _rnn()
    xs = jnp.ones((4, 10))
    for k in [0, -1, 2.0, True]:
        with pytest.raises(ValueError, match=r"expected truncate_every to be a positive int"):
            rj.scan(cell, params, h, xs, truncate_every=k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expected unroll to be a positive int or a bool"):
        rj.scan(cell, params, h, xs, unroll=0)
    with pytest.raises(TypeError, match="expected time_axis to be an int"):
        rj.scan(cell, params, h, xs, time_axis=None)  # type: ignore[arg-type]
    m = rj.Recur(cell, params)
    with pytest.raises(ValueError, match=r"empty list of steps.* shape \(0, ..., in\)"):
        m.scan([])
    with pytest.raises(ValueError, match=r"step 0 has shape \(10,\) and step 2 has shape \(9,\)"):
        m.scan([jnp.ones(10), jnp.ones(10), jnp.ones(9)])
    with pytest.raises(ValueError, match="every leaf of xs needs the same number of steps"):
        rj.scan(
            lambda p, h, x: (h, x),
            (),
            jnp.zeros(1),
            {"a": jnp.ones((3, 1)), "b": jnp.ones((4, 1))},
        )


def test_function_cell_may_not_broadcast_a_stale_batch():
    def elman(params, h, x):  # broadcasts h against x without any check
        h = jnp.tanh(x @ params + jnp.broadcast_to(h, x.shape))
        return h, h

    params = jnp.eye(3)
    stale = jnp.zeros((1, 3))  # a batch of 1 left over from the previous batch
    msg = r"turned state of shape \(1, 3\) into shape \(5, 3\).*call reset\(\)"
    with pytest.raises(ValueError, match=msg):
        rj.scan(elman, params, stale, jnp.ones((4, 5, 3)))
    with pytest.raises(ValueError, match=msg):
        rj.Recur(elman, params, stale)(jnp.ones((5, 3)))
    # Adding leading batch axes to an unbatched state is the one allowed change.
    m, y = rj.Recur(elman, params, jnp.zeros(3))(jnp.ones((5, 3)))
    assert m.state.shape == y.shape == (5, 3)
    h, ys = rj.scan(elman, params, jnp.zeros(3), jnp.ones((4, 5, 3)))
    assert h.shape == (5, 3) and ys.shape == (4, 5, 3)


def test_class_or_handle_is_not_a_cell():
    with pytest.raises(TypeError, match=r"got the class RNNCell itself. Instantiate it"):
        rj.Recur(rj.RNNCell, {})  # type: ignore[arg-type]
    m = rj.GRU(2, 3, key=KEY)
    msg = r"got the handle Recur\(GRUCell\(2 => 3\)\).*its cell is m.cell"
    with pytest.raises(TypeError, match=msg):
        rj.scan(m, m.params, m.state, jnp.ones((4, 2)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=msg):
        rj.Recur(m, m.params)  # type: ignore[arg-type]


def test_numpy_integers_are_ints():
    cell = rj.LSTMCell(np.int64(10), np.int32(5))  # type: ignore[arg-type]
    assert cell == rj.LSTMCell(10, 5) and type(cell.hidden_size) is int
    assert repr(rj.Dense(np.int64(3), np.int64(2))) == "Dense(3 => 2)"  # type: ignore[arg-type]
    params = cell.init(KEY)
    xs = jnp.ones((2, 7, 10))
    # unroll > 1 runs the sequential strategy: compare with it, bit for bit.
    h1, ys1 = rj.scan(
        cell,
        params,
        cell.initial_state(params),
        xs,
        time_axis=1,
        truncate_every=3,
        strategy="sequential",
    )
    h2, ys2 = rj.scan(
        cell,
        params,
        cell.initial_state(params),
        xs,
        time_axis=np.int64(1),  # type: ignore[arg-type]
        truncate_every=np.int32(3),  # type: ignore[arg-type]
        unroll=np.int64(2),  # type: ignore[arg-type]
    )
    np.testing.assert_array_equal(ys1, ys2)
    np.testing.assert_array_equal(h1.c, h2.c)
    with pytest.raises(
        TypeError, match=r"expected hidden_size to be a positive int, got np.float32\(2.0\)"
    ):
        rj.GRUCell(3, np.float32(2.0))  # type: ignore[arg-type]


def test_chain_state_as_a_list_says_to_make_it_a_tuple():
    c = rj.chain(rj.RNNCell(3, 4), rj.Dense(4, 2))
    params = c.init(KEY)
    state = list(c.initial_state(params))
    msg = r"expected state to be a tuple with one entry per part \(2\), got list of length 2. "
    with pytest.raises(ValueError, match=msg + r"Convert it with tuple\(state\)"):
        c(params, state, jnp.ones(3))  # type: ignore[arg-type]
