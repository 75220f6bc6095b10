"""Bad input fails at trace time with a message naming the cell, expected, got and the fix."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
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
