"""`recurjax.nnx.Recurrent` and `recurjax.equinox.Recurrent`: each equals `rj.scan` on the
same params (with `rj.scan`'s options), steps like a `Recur` handle, and trains with its
framework's own tools (`nnx.Optimizer` under `nnx.jit`; `eqx.filter_value_and_grad` with
optax). And `rj.reset` / `rj.truncate` / `rj.batched` over pytrees that hold handles: nested
containers, NNX and Equinox modules, under `jit`."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import recurjax as rj
from recurjax.equinox import Recurrent as EqxRecurrent
from recurjax.nnx import Recurrent, RecurrentState

# Needs Flax and Equinox: the `extras` marker, which .ci/floor deselects.
pytestmark = pytest.mark.extras

T, B, IN, H = 6, 3, 4, 5
XS = jax.random.normal(jax.random.key(1), (T, B, IN))
OPTIONS: dict[str, Any] = {
    "lengths": jnp.array([6, 2, 4]),
    "resets": jnp.zeros((T, B), bool).at[3, 0].set(True),
}


def _leaves_equal(a: Any, b: Any) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _params(module: Recurrent) -> Any:
    return jax.tree.map(
        lambda v: v.get_value(), module.params, is_leaf=lambda v: isinstance(v, nnx.Variable)
    )


def test_nnx_module_equals_scan_steps_and_resets():
    model = Recurrent(rj.LSTMCell(IN, H), rngs=nnx.Rngs(0))
    params = _params(model)
    assert all(
        isinstance(v, nnx.Param)
        for v in jax.tree.leaves(model.params, is_leaf=lambda v: isinstance(v, nnx.Variable))
    )
    h0 = rj.LSTMCell(IN, H).initial_state(params)
    want_h, want = rj.scan(rj.LSTMCell(IN, H), params, h0, XS, reverse=True, **OPTIONS)
    _leaves_equal(model(XS, reverse=True, **OPTIONS), want)
    _leaves_equal(model.handle().state, want_h)  # the final state is carried
    # Stepping carries on from there; reset() goes back to the zeros.
    handle, y = rj.Recur(rj.LSTMCell(IN, H), params, want_h)(XS[0])
    _leaves_equal(model.step(XS[0]), y)
    _leaves_equal(model.handle().state, handle.state)
    model.reset()
    assert not np.asarray(model.state.h.get_value()).any()
    assert isinstance(model.state.h, RecurrentState)


def test_nnx_module_trains_with_nnx_optimizer_under_nnx_jit():
    model = Recurrent(rj.GRUCell(IN, H), rngs=nnx.Rngs(0), learn_state0=True)
    optimizer = nnx.Optimizer(model, optax.adam(5e-2), wrt=nnx.Param)
    before = _params(model)

    @nnx.jit
    def train_step(model, optimizer, xs):
        def loss_fn(model):
            model.reset()
            return jnp.mean((model(xs) - 0.5) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    with jax.numpy_dtype_promotion("standard"):  # optax's Adam: float ** int32
        losses = [float(train_step(model, optimizer, XS)) for _ in range(4)]
    assert losses[-1] < losses[0], losses
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(_params(model)), strict=True)
    )
    assert np.asarray(model.state0.get_value()).any()  # the learned initial state moved
    # The loss is the plain rj.scan loss of the module's current params.
    model.reset()
    h0 = model.state0.get_value()
    _, ys = rj.scan(rj.GRUCell(IN, H), _params(model), h0, XS)
    _leaves_equal(model(XS), ys)


def test_equinox_module_equals_scan_and_trains_with_filter_value_and_grad():
    model = EqxRecurrent(rj.GRUCell(IN, H), key=jax.random.key(0))
    # The module's call is rj.scan with its handle's state0 for the resets (one program, so
    # bit-equal; the default state0, made inside the program, may round otherwise).
    want_h, want = rj.scan(
        model.cell, model.params, model.state0, XS, state0=model.state0, **OPTIONS
    )
    h, ys = model(XS, **OPTIONS)
    _leaves_equal((h, ys), (want_h, want))
    h2, y = model.step(h, XS[0])
    _leaves_equal((h2, y), model.cell(model.params, h, XS[0]))

    optim = optax.adam(5e-2)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def train_step(model, opt_state, xs):
        loss = lambda m: jnp.mean((m(xs)[1] - 0.5) ** 2)  # noqa: E731
        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, opt_state = optim.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, value

    losses = []
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(4):
            model, opt_state, value = train_step(model, opt_state, XS)
            losses.append(float(value))
    assert losses[-1] < losses[0], losses


def test_modules_need_their_params_or_a_key():
    with pytest.raises(TypeError, match="expected params"):
        Recurrent(rj.GRUCell(IN, H))
    with pytest.raises(TypeError, match="expected params"):
        EqxRecurrent(rj.GRUCell(IN, H))


class _Holder(eqx.Module):
    encoder: rj.Recur
    steps: int


class _NNXHolder(nnx.Module):
    def __init__(self, handle: rj.Recur):
        self.rnn = nnx.data(handle)
        self.steps = 3


def test_reset_truncate_and_batched_reach_every_handle_in_any_pytree():
    k1, k2 = jax.random.split(jax.random.key(0))
    lstm, gru = rj.LSTM(IN, H, key=k1), rj.GRU(IN, 2, key=k2)
    moved_lstm, _ = lstm.scan(XS)
    moved_gru, _ = gru.scan(XS)
    tree = {"layers": [moved_lstm, (moved_gru, jnp.ones(2))], "lr": 0.1, "none": None}
    fresh = rj.reset(tree)
    _leaves_equal(fresh["layers"][0].state, lstm.state0)
    _leaves_equal(fresh["layers"][1][0].state, gru.state0)
    assert fresh["lr"] == 0.1 and fresh["none"] is None
    np.testing.assert_array_equal(fresh["layers"][1][1], jnp.ones(2))

    # Under jit, inside Equinox and NNX modules.
    eqx_model = jax.jit(rj.reset)(_Holder(moved_lstm, 7))
    _leaves_equal(eqx_model.encoder.state, lstm.state0)
    assert eqx_model.steps == 7
    nnx_model = rj.reset(_NNXHolder(moved_gru))
    _leaves_equal(nnx_model.rnn.state, gru.state0)

    # truncate: same values, no gradient through the state.
    def loss(state):
        m = rj.truncate({"m": moved_gru.replace(state=state)})["m"]
        return jnp.sum(m(XS[0])[1])

    assert not np.asarray(jax.grad(loss)(moved_gru.state)).any()
    _leaves_equal(rj.truncate(tree), tree)
    batched = rj.batched({"a": lstm, "b": [gru]}, (2, 3))
    assert batched["a"].state.h.shape == (2, 3, H) and batched["b"][0].state0.shape == (2, 3, 2)
