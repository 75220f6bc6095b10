"""The cell contract, run on every cell, and each cell's equations against NumPy oracles."""

from __future__ import annotations

import functools
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CASES, IN, LIBRARY, LINEAR, Case, contract, everyday, tree_allclose
from jax.test_util import check_grads

import recurjax as rj

B = 5


def _inputs(case: Case, seed: int = 0, batch: tuple[int, ...] = (B,)):
    params = case.params(seed)
    x = jax.random.normal(jax.random.key(seed + 7), (*batch, IN), jnp.float32)
    h0 = case.state(params)
    # A batched, non-zero state: one step from h0 on other inputs.
    h, _ = case.cell(
        params, h0, jax.random.normal(jax.random.key(seed + 8), (*batch, IN), jnp.float32)
    )
    return params, h, x


# --- the contract suite ---------------------------------------------------------------------


@pytest.mark.parametrize("case", contract(CASES))
def test_shapes_dtype_finite(case: Case):
    params, h, x = _inputs(case)
    new_h, y = case.cell(params, h, x)
    assert y.shape == (B, case.out)
    assert y.dtype == jnp.float32
    assert jax.tree.structure(new_h) == jax.tree.structure(h)
    for a, b in zip(jax.tree.leaves(new_h), jax.tree.leaves(h), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves((new_h, y)))


LOW_T = 16


@functools.cache
def _low_precision_run(case: Case):
    """The case's cell over `LOW_T` steps from its initial state (`lax.scan` of the cell: the
    cell's own arithmetic), jitted once per case (one trace per dtype)."""

    def run(p, xs):
        h0 = jax.tree.map(
            lambda a: jnp.broadcast_to(a, (*xs.shape[1:-1], *a.shape)), case.state(p)
        )
        return jax.lax.scan(partial(case.cell, p), h0, xs)

    return jax.jit(run)


@pytest.mark.parametrize("case", everyday([*LIBRARY, *LINEAR]))
@pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(jnp.bfloat16, id="bfloat16"),
        pytest.param(jnp.float16, id="float16", marks=pytest.mark.slow),
    ],
)
def test_dtype_of_params_is_kept_and_values_match_float32(case: Case, dtype):
    """Params in a low dtype keep the outputs and the carry in it (the LRU's complex carry:
    complex64), and the values equal a float32 run of the same (rounded) params and inputs
    to the dtype's resolution: at step `t`, within `4 eps sqrt(t)` of `max(1, |y|)`, an
    error that grows like a random walk of one rounding per step (the largest measured
    over three seeds, every cell: 1.4 eps sqrt(t), S6 in bfloat16)."""
    params = case.params(0, dtype)
    xs = jax.random.normal(jax.random.key(5), (LOW_T, 2, IN)).astype(dtype)
    h, ys = _low_precision_run(case)(params, xs)
    assert ys.dtype == dtype
    assert all(a.dtype in (dtype, jnp.complex64) for a in jax.tree.leaves(h))
    up = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float32), tree)  # noqa: E731
    _, ys32 = _low_precision_run(case)(up(params), up(xs))
    err = np.abs(np.asarray(up(ys)) - np.asarray(ys32)).max(axis=(1, 2))
    scale = np.maximum(1.0, np.abs(np.asarray(ys32)).max(axis=(1, 2)))
    bound = 4 * float(jnp.finfo(dtype).eps) * np.sqrt(np.arange(1, LOW_T + 1))
    assert (err / scale <= bound).all(), (err / scale / bound).max()


@pytest.mark.parametrize("case", contract(CASES))
def test_jit_equals_eager(case: Case):
    params, h, x = _inputs(case)
    tree_allclose(jax.jit(case.cell)(params, h, x), case.cell(params, h, x))


@pytest.mark.parametrize("case", contract(CASES))
def test_vmap_equals_batched(case: Case):
    params, h, x = _inputs(case)
    vmapped = jax.vmap(case.cell, in_axes=(None, 0, 0))(params, h, x)
    tree_allclose(vmapped, case.cell(params, h, x))


@pytest.mark.parametrize("case", contract(CASES))
def test_batched_equals_unbatched_per_example(case: Case):
    params, h, x = _inputs(case)
    batched_h, batched_y = case.cell(params, h, x)
    for b in range(B):
        hb = jax.tree.map(lambda a, b=b: a[b], h)
        one_h, one_y = case.cell(params, hb, x[b])
        tree_allclose(one_y, batched_y[b])
        tree_allclose(one_h, jax.tree.map(lambda a, b=b: a[b], batched_h))


@pytest.mark.parametrize("case", contract(CASES))
def test_two_batch_axes(case: Case):
    params, h, x = _inputs(case, batch=(2, 3))
    new_h, y = case.cell(params, h, x)
    assert y.shape == (2, 3, case.out)
    flat = case.cell(
        params, jax.tree.map(lambda a: a.reshape(6, *a.shape[2:]), h), x.reshape(6, IN)
    )
    tree_allclose((new_h, y), jax.tree.map(lambda a: a.reshape(2, 3, *a.shape[1:]), flat))


@pytest.mark.parametrize(
    "mode",
    # Reverse mode (what training uses) every day; forward mode in the slow tier.
    ["rev", pytest.param("fwd", marks=pytest.mark.slow)],
)
@pytest.mark.parametrize("case", contract(CASES))
def test_check_grads_float64(case: Case, mode: str):
    with jax.enable_x64(True):
        params, h, x = _inputs(case)
        params, h, x = jax.tree.map(lambda a: a.astype(jnp.float64), (params, h, x))
        if case.name == "rnn_relu":  # keep pre-activations away from relu's kink
            params = {**params, "b": params["b"] + 3.0}
        # Jitted: the same derivatives, as a few compiled programs instead of every op of
        # the JVP and VJP compiled on its own (jit == eager is checked above).
        cell = jax.jit(lambda p, h, x: case.cell(p, h, x))
        check_grads(cell, (params, h, x), order=1, modes=[mode])


@pytest.mark.parametrize("case", contract(CASES))
def test_gradients_reach_every_param(case: Case):
    params, h, x = _inputs(case)

    def loss(p):
        return jnp.sum(case.cell(p, h, x)[1] ** 2)

    grads = jax.grad(loss)(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.any(g != 0)), f"zero gradient for {jax.tree_util.keystr(path)}"


# --- equations against NumPy oracles --------------------------------------------------------


def _sig(a):
    return 1 / (1 + np.exp(-a))


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def rnn_oracle(p, h, x, act=np.tanh):
    return act(x @ p["wi"] + h @ p["wh"] + p["b"])


def lstm_oracle(p, h, c, x):
    H = h.shape[-1]
    g = x @ p["wi"] + h @ p["wh"] + p["b"]
    i, f, gg, o = (g[..., k * H : (k + 1) * H] for k in range(4))
    c = _sig(f) * c + _sig(i) * np.tanh(gg)
    return _sig(o) * np.tanh(c), c


def gru_oracle(p, h, x):
    H = h.shape[-1]
    wi, wh, b = p["wi"], p["wh"], p["b"]
    r = _sig(x @ wi[:, :H] + h @ wh[:, :H] + b[:H])
    z = _sig(x @ wi[:, H : 2 * H] + h @ wh[:, H : 2 * H] + b[H : 2 * H])
    n = np.tanh(x @ wi[:, 2 * H :] + b[2 * H :] + r * (h @ wh[:, 2 * H :] + p["bhn"]))
    return (1 - z) * n + z * h


def gruv3_oracle(p, h, x):
    H = h.shape[-1]
    wi, wh, b = p["wi"], p["wh"], p["b"]
    r = _sig(x @ wi[:, :H] + h @ wh[:, :H] + b[:H])
    z = _sig(x @ wi[:, H : 2 * H] + h @ wh[:, H:] + b[H : 2 * H])
    n = np.tanh(x @ wi[:, 2 * H :] + (r * h) @ p["whn"] + b[2 * H :])
    return (1 - z) * n + z * h


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equations(seed: int):
    by_name = {c.name: c for c in CASES}
    x = jax.random.normal(jax.random.key(seed), (B, IN))
    for name in ["rnn_tanh", "rnn_relu", "gru", "gruv3"]:
        case = by_name[name]
        p, h, _ = _inputs(case, seed)
        new_h, y = case.cell(p, h, x)
        pn, hn, xn = _np(p), _np(h), _np(x)
        if name == "rnn_tanh":
            want = rnn_oracle(pn, hn, xn)
        elif name == "rnn_relu":
            want = rnn_oracle(pn, hn, xn, act=lambda a: np.maximum(a, 0))
        elif name == "gru":
            want = gru_oracle(pn, hn, xn)
        else:
            want = gruv3_oracle(pn, hn, xn)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(new_h, y)
    case = by_name["lstm"]
    p, state, _ = _inputs(case, seed)
    new_state, y = case.cell(p, state, x)
    h_np, c_np = _np(tuple(state))
    want_h, want_c = lstm_oracle(_np(p), h_np, c_np, _np(x))
    np.testing.assert_allclose(new_state.h, want_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state.c, want_c, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y, new_state.h)
    case = by_name["dense"]
    p = _np(case.params(seed))
    _, y = case.cell(case.params(seed), (), x)
    np.testing.assert_allclose(y, np.tanh(_np(x) @ p["w"] + p["b"]), rtol=1e-5, atol=1e-6)


def test_gru_with_zero_bhn_is_flux_gru():
    # Flux's GRU: n = tanh(Wxn x + r * (Whn h) + bn), one bias: GRUCell with bhn = 0.
    case = next(c for c in CASES if c.name == "gru")
    p, h, x = _inputs(case)
    p = {**p, "bhn": jnp.zeros_like(p["bhn"])}
    pn, hn, xn = _np(p), _np(h), _np(x)
    H = hn.shape[-1]
    r = _sig(xn @ pn["wi"][:, :H] + hn @ pn["wh"][:, :H] + pn["b"][:H])
    z = _sig(xn @ pn["wi"][:, H : 2 * H] + hn @ pn["wh"][:, H : 2 * H] + pn["b"][H : 2 * H])
    n = np.tanh(xn @ pn["wi"][:, 2 * H :] + r * (hn @ pn["wh"][:, 2 * H :]) + pn["b"][2 * H :])
    np.testing.assert_allclose(case.cell(p, h, x)[1], (1 - z) * n + z * hn, rtol=1e-5, atol=1e-6)


def test_flux_identity_rnn_by_hand():
    # Flux's own test: 1 -> 1 RNN with identity activation, Wi = 5, Wh = 4, b = 0, state0 = 7,
    # inputs 2 then 3, loss = output of step 2:
    #   h1 = 5*2 + 4*7 = 38;  h2 = 5*3 + 4*38 = 167
    #   h2 = Wi x2 + Wh (Wi x1 + Wh h0) + (1 + Wh) b
    #   dWi = x2 + Wh x1 = 3 + 8 = 11;  dWh = Wi x1 + 2 Wh h0 + b = 10 + 56 = 66
    #   db = 1 + Wh = 5;  dh0 = Wh^2 = 16
    cell = rj.RNNCell(1, 1, activation=lambda a: a)
    params = {"wi": jnp.array([[5.0]]), "wh": jnp.array([[4.0]]), "b": jnp.array([0.0])}
    xs = jnp.array([[2.0], [3.0]])

    def loss(params, h0):
        _, ys = rj.scan(cell, params, h0, xs)
        return ys[-1, 0]

    value, (g, gh0) = jax.value_and_grad(loss, argnums=(0, 1))(params, jnp.array([7.0]))
    assert value == 167
    assert (g["wi"].item(), g["wh"].item(), g["b"].item(), gh0.item()) == (11, 66, 5, 16)


# --- initialisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell, shapes",
    [
        (rj.RNNCell(10, 5), {"wi": (10, 5), "wh": (5, 5), "b": (5,)}),
        (rj.LSTMCell(10, 15), {"wi": (10, 60), "wh": (15, 60), "b": (60,)}),
        (rj.GRUCell(10, 5), {"wi": (10, 15), "wh": (5, 15), "b": (15,), "bhn": (5,)}),
        (rj.GRUv3Cell(10, 5), {"wi": (10, 15), "wh": (5, 10), "whn": (5, 5), "b": (15,)}),
        (rj.Dense(15, 5), {"w": (15, 5), "b": (5,)}),
    ],
    ids=str,
)
def test_init_layout_glorot_zero_bias(cell, shapes):
    params = cell.init(jax.random.key(0))
    assert {k: v.shape for k, v in params.items()} == shapes
    for name, value in params.items():
        assert value.dtype == jnp.float32
        if value.ndim == 1:
            np.testing.assert_array_equal(value, 0)
        else:
            # Glorot uniform on the stacked matrix: U(-l, l), l = sqrt(6 / (fan_in + fan_out)),
            # whose standard deviation is l / sqrt(3).
            limit = np.sqrt(6 / sum(value.shape))
            assert float(jnp.abs(value).max()) <= limit, name
            assert float(jnp.abs(value).max()) > 0.9 * limit, name
            np.testing.assert_allclose(float(value.std()), limit / np.sqrt(3), rtol=0.25)


def test_lstm_forget_bias_argument():
    params = rj.LSTMCell(3, 4, forget_bias=1.5).init(jax.random.key(0))
    np.testing.assert_array_equal(params["b"], np.r_[np.zeros(4), np.full(4, 1.5), np.zeros(8)])


def test_init_dtype_and_keys():
    cell = rj.GRUCell(3, 4)
    p64 = cell.init(jax.random.key(0), jnp.bfloat16)
    assert all(v.dtype == jnp.bfloat16 for v in p64.values())
    a, b = cell.init(jax.random.key(0)), cell.init(jax.random.key(1))
    assert not np.allclose(a["wi"], b["wi"])
    tree_allclose(a, cell.init(jax.random.key(0)), rtol=0, atol=0)


def test_initial_state_is_unbatched_zeros():
    for cell in [rj.RNNCell(3, 4), rj.GRUCell(3, 4), rj.GRUv3Cell(3, 4)]:
        h = cell.initial_state(cell.init(jax.random.key(0)))
        assert h.shape == (4,) and not h.any()
    lstm = rj.LSTMCell(3, 4)
    state = lstm.initial_state(lstm.init(jax.random.key(0)))
    assert isinstance(state, rj.LSTMState)
    assert state.h.shape == state.c.shape == (4,)


def test_cells_are_hashable_and_compare_by_config():
    assert rj.LSTMCell(3, 4) == rj.LSTMCell(3, 4)
    assert hash(rj.GRUCell(3, 4)) == hash(rj.GRUCell(3, 4))
    assert rj.RNNCell(3, 4) != rj.RNNCell(3, 4, activation=jax.nn.relu)


def test_reprs():
    assert repr(rj.RNNCell(10, 5)) == "RNNCell(10 => 5, tanh)"
    assert repr(rj.RNNCell(10, 5, activation=jax.nn.relu)) == "RNNCell(10 => 5, relu)"
    assert repr(rj.LSTMCell(10, 15)) == "LSTMCell(10 => 15)"
    assert repr(rj.LSTMCell(10, 15, forget_bias=1.0)) == "LSTMCell(10 => 15, forget_bias=1.0)"
    assert repr(rj.PeepholeLSTMCell(10, 15)) == "PeepholeLSTMCell(10 => 15)"
    assert repr(rj.IndRNNCell(10, 5)) == "IndRNNCell(10 => 5, relu)"
    assert repr(rj.GRUCell(10, 5)) == "GRUCell(10 => 5)"
    assert repr(rj.GRUv3Cell(10, 5)) == "GRUv3Cell(10 => 5)"
    assert repr(rj.Dense(15, 5)) == "Dense(15 => 5)"
    assert repr(rj.Dense(15, 5, activation=jax.nn.relu)) == "Dense(15 => 5, relu)"


def test_flux_lstm_equations_by_hand():
    # Flux's LSTM equations on one unit, with numbers chosen so every value is exact:
    # all weights zero, bias [i, f, g, o] = [0, 0, ln 2, 0], c0 = 1, h0 = 0, any x.
    #   i = f = o = sigmoid(0) = 1/2;  g = tanh(ln 2) = (2 - 1/2) / (2 + 1/2) = 3/5
    #   c1 = f c0 + i g = 1/2 + 3/10 = 4/5;  loss = c1
    #   d/db_i = sigmoid'(0) g = 1/4 * 3/5 = 3/20;  d/db_f = sigmoid'(0) c0 = 1/4
    #   d/db_g = i (1 - g^2) = 1/2 * 16/25 = 8/25;  d/db_o = 0 (c1 does not use o)
    #   d/dc0 = f = 1/2;  d/dwi = x * d/db (x = 2 here)
    cell = rj.LSTMCell(1, 1)
    params = {
        "wi": jnp.zeros((1, 4)),
        "wh": jnp.zeros((1, 4)),
        "b": jnp.array([0.0, 0.0, np.log(2.0), 0.0], jnp.float32),
    }

    def loss(params, c0):
        state, _ = cell(params, rj.LSTMState(jnp.zeros(1), c0), jnp.array([2.0]))
        return state.c[0]

    value, (g, gc0) = jax.value_and_grad(loss, argnums=(0, 1))(params, jnp.array([1.0]))
    np.testing.assert_allclose(value, 4 / 5, rtol=1e-6)
    np.testing.assert_allclose(g["b"], [3 / 20, 1 / 4, 8 / 25, 0], rtol=1e-6)
    np.testing.assert_allclose(g["wi"][0], [6 / 20, 2 / 4, 16 / 25, 0], rtol=1e-6)
    np.testing.assert_allclose(gc0, [1 / 2], rtol=1e-6)


@pytest.mark.parametrize("cell", [rj.GRUCell(1, 1), rj.GRUv3Cell(1, 1)], ids=repr)
def test_flux_gru_equations_by_hand(cell):
    # Both GRU forms on one unit, all weights zero, b = [b_r, b_z, b_n] = [0, 0, ln 2], h0 = 1:
    #   r = z = sigmoid(0) = 1/2;  n = tanh(ln 2) = 3/5  (the reset gate meets a zero matmul)
    #   h1 = (1 - z) n + z h0 = 3/10 + 1/2 = 4/5
    #   d/db_z = sigmoid'(0) (h0 - n) = 1/4 * 2/5 = 1/10;  d/db_n = (1 - z)(1 - n^2) = 8/25
    #   d/db_r = 0 (r multiplies zero);  d/dh0 = z = 1/2 (every matmul is zero)
    params = jax.tree.map(jnp.zeros_like, cell.init(jax.random.key(0)))
    params["b"] = jnp.array([0.0, 0.0, np.log(2.0)], jnp.float32)

    def loss(params, h0):
        h, _ = cell(params, h0, jnp.array([2.0]))
        return h[0]

    value, (g, gh0) = jax.value_and_grad(loss, argnums=(0, 1))(params, jnp.array([1.0]))
    np.testing.assert_allclose(value, 4 / 5, rtol=1e-6)
    np.testing.assert_allclose(g["b"], [0, 1 / 10, 8 / 25], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gh0, [1 / 2], rtol=1e-6)


def test_peephole_lstm_equations_by_hand():
    # One unit, all matrix weights zero, b = [0, 0, ln 2, 0], c0 = 1, h0 = 0, any x, and
    # peepholes p = [p_i, p_f, p_o] = [ln 3, -ln 3, (10/7) ln 3]:
    #   i = sigmoid(ln 3 * c0) = 3/4;  f = sigmoid(-ln 3 * c0) = 1/4;  g = tanh(ln 2) = 3/5
    #   c1 = f c0 + i g = 1/4 + 9/20 = 7/10
    #   o = sigmoid(p_o * c1) = sigmoid(ln 3) = 3/4 (the output gate sees the *new* state)
    #   h1 = 3/4 tanh(7/10)
    #   dc1/dp_i = i(1 - i) c0 g = 9/80;  dc1/dp_f = f(1 - f) c0^2 = 3/16;  dc1/dp_o = 0
    #   dc1/dc0 = f + p_f f(1 - f) c0 + p_i i(1 - i) g = 1/4 - (3/40) ln 3
    #   dh1/dp_o = o(1 - o) c1 tanh(c1) = 3/16 * 7/10 * tanh(7/10)
    cell = rj.PeepholeLSTMCell(1, 1)
    ln3 = np.log(3.0)
    params = {
        "wi": jnp.zeros((1, 4)),
        "wh": jnp.zeros((1, 4)),
        "b": jnp.array([0.0, 0.0, np.log(2.0), 0.0], jnp.float32),
        "p": jnp.array([[ln3], [-ln3], [10 / 7 * ln3]], jnp.float32),
    }

    def step(params, c0):
        state, y = cell(params, rj.LSTMState(jnp.zeros(1), c0), jnp.array([2.0]))
        return state.c[0], y[0]

    c0 = jnp.array([1.0])
    (c1, h1) = step(params, c0)
    np.testing.assert_allclose(c1, 7 / 10, rtol=1e-6)
    np.testing.assert_allclose(h1, 3 / 4 * np.tanh(0.7), rtol=1e-6)
    g, gc0 = jax.grad(lambda p, c: step(p, c)[0], argnums=(0, 1))(params, c0)
    np.testing.assert_allclose(g["p"][:, 0], [9 / 80, 3 / 16, 0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gc0, [1 / 4 - 3 / 40 * ln3], rtol=1e-5)
    gh = jax.grad(lambda p: step(p, c0)[1])(params)
    np.testing.assert_allclose(gh["p"][2, 0], 3 / 16 * 7 / 10 * np.tanh(0.7), rtol=1e-5)


def test_indrnn_equations_by_hand_and_its_vector_recurrence():
    # One unit: wi = 2, u = 1/2, b = -1, h0 = 4, x = 3: h1 = relu(6 + 2 - 1) = 7, and
    # d/dwi = x = 3, d/du = h0 = 4, d/db = 1, d/dh0 = u = 1/2; with x = -3, relu cuts: 0.
    cell = rj.IndRNNCell(1, 1)
    params = {"wi": jnp.array([[2.0]]), "u": jnp.array([0.5]), "b": jnp.array([-1.0])}

    def h1(params, h0, x):
        return cell(params, h0, x)[0][0]

    x = jnp.array([3.0])
    assert float(h1(params, jnp.array([4.0]), x)) == 7.0
    g, gh0 = jax.grad(h1, argnums=(0, 1))(params, jnp.array([4.0]), x)
    assert {k: float(v.ravel()[0]) for k, v in g.items()} == {"wi": 3.0, "u": 4.0, "b": 1.0}
    assert float(gh0[0]) == 0.5
    assert float(h1(params, jnp.array([4.0]), -x)) == 0.0
    # Each unit recurs on itself only: a change of unit 0's state never reaches unit 1.
    cell = rj.IndRNNCell(2, 3, activation=jnp.tanh)
    params = cell.init(jax.random.key(0))
    jac = jax.jacobian(lambda h: cell(params, h, jnp.ones(2))[0])(jnp.full(3, 0.5))
    np.testing.assert_array_equal(jac, np.diag(np.diag(jac)))
    assert cell.init(jax.random.key(1))["u"].shape == (3,)


def test_indrnn_given_a_recurrent_matrix_names_the_layout():
    cell = rj.IndRNNCell(3, 4)
    params = {**cell.init(jax.random.key(0)), "u": jnp.ones((4, 4))}
    msg = "expected shapes {'wi': (3, 4), 'u': (4,), 'b': (4,)}, got {'wi': (3, 4), "
    msg += "'u': (4, 4), 'b': (4,)}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        cell(params, jnp.zeros(4), jnp.ones(3))


def _ln_lstm_numpy(params, xs, eps=1e-5):
    """Ba et al. (2016), section 3.1, as a float64 NumPy loop over one sequence `xs: (T, in)`:
    separate norms of `x Wi` and `h Wh` (over all 4H), the bias, the LSTM update, and the
    normalised cell state inside the output's tanh (the carried c is not normalised)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}

    def ln(z, gain):
        return gain * (z - z.mean()) / np.sqrt(z.var() + eps)

    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    H = p["wh"].shape[0]
    h, c, ys = np.zeros(H), np.zeros(H), []
    for x in np.asarray(xs, np.float64):
        a = ln(x @ p["wi"], p["gx"]) + ln(h @ p["wh"], p["gh"]) + p["b"]
        i, f, g, o = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(ln(c, p["gc"]) + p["bc"])
        ys.append(h)
    return np.stack(ys), h, c


def test_layer_norm_lstm_equals_a_numpy_loop_of_the_papers_equations():
    cell = rj.LayerNormLSTMCell(IN, 5)
    case = Case("lnlstm", cell, cell.init, cell.initial_state, 5)
    params = case.params(seed=3)  # every leaf random: gains and shifts too
    xs = np.random.default_rng(0).standard_normal((9, IN)).astype(np.float32)
    state, ys = rj.scan(cell, params, cell.initial_state(params), jnp.asarray(xs))
    ys_ref, h_ref, c_ref = _ln_lstm_numpy(params, xs)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.h, h_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.c, c_ref, rtol=1e-4, atol=1e-5)
    # Inputs a million times larger: the norms keep every value and gradient finite.
    big = jnp.asarray(xs) * 1e6
    grads = jax.grad(lambda p: jnp.sum(rj.scan(cell, p, cell.initial_state(p), big)[1]))(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def _slstm_numpy(params, xs, heads, exp_forget=False):
    """xLSTM's sLSTM (Beck et al. 2024, eq. 8-18) *without* the stabiliser, float64 NumPy,
    one sequence: `i = exp(i~)`, `c = f c + i z`, `n = f n + i`, `h = o c / n`, with the
    recurrent weights block-diagonal per head (gate blocks i, f, z, o)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    H = p["wi"].shape[1] // 4
    d = H // heads
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h, c, n, ys = np.zeros(H), np.zeros(H), np.zeros(H), []
    for x in np.asarray(xs, np.float64):
        rec = np.zeros(4 * H)
        for k in range(heads):  # head k: its d units of h to its d units of each gate
            g = h[k * d : (k + 1) * d] @ p["wh"][k]  # (4d,), gates i, f, z, o
            for gate in range(4):
                rec[gate * H + k * d : gate * H + (k + 1) * d] = g[gate * d : (gate + 1) * d]
        a = x @ p["wi"] + rec + p["b"]
        i_t, f_t, z_t, o_t = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
        f = np.exp(f_t) if exp_forget else sig(f_t)
        c = f * c + np.exp(i_t) * np.tanh(z_t)
        n = f * n + np.exp(i_t)
        h = sig(o_t) * c / n
        ys.append(h)
    return np.stack(ys)


def _check_xlstm_cell(cls, numpy_loop, exp_forget, seed):
    """An xLSTM cell (3 heads of 2 units) equals the NumPy loop of the paper's unstabilised
    equations. (Finite values and gradients where `exp(i~)` overflows without the
    stabiliser, at every scale to 1e5, with and without `exp_forget`: tests/test_finite.py.)"""
    cell = cls(IN, 6, num_heads=3, exp_forget=exp_forget)
    params = Case(cell.__class__.__name__, cell, cell.init, cell.initial_state, 6).params(seed)
    xs = np.random.default_rng(seed + 1).standard_normal((8, IN)).astype(np.float32)
    _, ys = rj.scan(cell, params, cell.initial_state(params), jnp.asarray(xs))
    np.testing.assert_allclose(ys, numpy_loop(params, xs, 3, exp_forget), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("exp_forget", [False, True])
def test_slstm_equals_the_papers_unstabilised_equations(exp_forget):
    _check_xlstm_cell(rj.SLSTMCell, _slstm_numpy, exp_forget, seed=2)


def test_slstm_heads_must_divide_the_hidden_size():
    with pytest.raises(ValueError, match=re.escape("num_heads=3 must divide hidden_size=4")):
        rj.SLSTMCell(2, 4, num_heads=3)
    assert repr(rj.SLSTMCell(2, 4, num_heads=2)) == "SLSTMCell(2 => 4, num_heads=2)"


def _mlstm_numpy(params, xs, heads, exp_forget=False):
    """xLSTM's mLSTM (Beck et al. 2024, eq. 19-27) *without* the stabiliser, float64 NumPy,
    one sequence: per head `C = f C + i v k^T`, `n = f n + i k`, `h = o * C q / max(|n q|, 1)`."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    H = (p["wi"].shape[1] - 2 * heads) // 4
    d = H // heads
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    C, n, ys = np.zeros((heads, d, d)), np.zeros((heads, d)), []
    for x in np.asarray(xs, np.float64):
        a = x @ p["wi"] + p["b"]
        q, k, v, o = (a[j * H : (j + 1) * H].reshape(heads, d) for j in range(4))
        k = k / np.sqrt(d)
        i_t, f_t = a[4 * H : 4 * H + heads], a[4 * H + heads :]
        i, f = np.exp(i_t), (np.exp(f_t) if exp_forget else sig(f_t))
        C = f[:, None, None] * C + i[:, None, None] * np.einsum("hi,hj->hij", v, k)
        n = f[:, None] * n + i[:, None] * k
        num = np.einsum("hij,hj->hi", C, q)
        den = np.maximum(np.abs(np.sum(n * q, axis=-1)), 1.0)
        ys.append((sig(o) * num / den[:, None]).reshape(H))
    return np.stack(ys)


@pytest.mark.parametrize("exp_forget", [False, True])
def test_mlstm_equals_the_papers_unstabilised_equations(exp_forget):
    _check_xlstm_cell(rj.MLSTMCell, _mlstm_numpy, exp_forget, seed=4)
    with pytest.raises(ValueError, match=re.escape("num_heads=4 must divide hidden_size=6")):
        rj.MLSTMCell(IN, 6, num_heads=4)
