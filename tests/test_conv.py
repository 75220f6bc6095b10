"""The convolutional cells, ConvLSTMCell and ConvGRUCell: the oracle's loop with every scan
option (the batch axes before the step's spatial axes and channels), Flax linen's
`ConvLSTMCell` and Haiku's `ConvNDLSTM` (values and gradients, converted both ways), the
GRU at every position for kernels of size 1, composition, streaming, and the errors."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from cases import tree_allclose
from interop_util import jax_parity, need
from jax.test_util import check_grads

import recurjax as rj
from recurjax import interop

T, B, C, H = 6, 3, 2, 3
TOL = {"rtol": 1e-5, "atol": 1e-5}
SLOW = pytest.mark.slow


def randomized(cell, seed=0):
    """`cell`'s params with every leaf redrawn from N(0, 0.5^2): non-zero biases."""
    p = cell.init(jax.random.key(seed))
    keys = jax.random.split(jax.random.key(seed + 1), len(p))
    return {
        k: 0.5 * jax.random.normal(kk, v.shape) for kk, (k, v) in zip(keys, p.items(), strict=True)
    }


def data(spatial, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((T, B, *spatial, C), dtype=np.float32)
    lengths = np.array([T, 2, 0])
    resets = rng.random((T, B)) < 0.3
    return xs, lengths, resets


@pytest.mark.parametrize(
    ("cell", "spatial", "options"),
    [
        (rj.ConvLSTMCell(C, H, kernel_size=(3, 2)), (4, 5), {"lengths": True, "resets": True}),
        pytest.param(  # ConvGRU's step runs every day in the kernel-1 test below
            rj.ConvGRUCell(C, H, kernel_size=3, spatial_dims=1),
            (7,),
            {"reverse": True, "truncate_every": 2, "lengths": True},
            marks=SLOW,
        ),
        pytest.param(
            rj.ConvLSTMCell(C, H, kernel_size=2, spatial_dims=3),
            (3, 2, 3),
            {"lengths": True, "resets": True},
            marks=SLOW,
        ),
    ],
    ids=["lstm-2d", "gru-1d", "lstm-3d"],
)  # fmt: skip
def test_conv_cells_equal_the_loop(cell, spatial, options):
    """Outputs, final states and the gradients (params, initial state, `state0`, inputs)
    against the oracle's per-sequence loop; `lengths` and `resets` shaped `(B,)` and `(T,
    B)`: the batch axes are those before the step's spatial axes and channels."""
    options = dict(options)
    use_lengths, use_resets = options.pop("lengths", False), options.pop("resets", False)
    xs, lengths, resets = data(spatial)
    params = randomized(cell)
    state = jax.tree.map(
        lambda a: jnp.broadcast_to(a, (B, *spatial, H)) + 0.1, cell.initial_state(params)
    )
    s0 = jax.tree.map(lambda a: 0.2 - a, state)
    w_y = np.random.default_rng(5).standard_normal((T, B, *spatial, H), dtype=np.float32)
    kw = {"lengths": lengths if use_lengths else None, "resets": resets if use_resets else None}

    def loss(params, h0, s0, xs):
        h, ys = rj.scan(cell, params, h0, xs, state0=s0 if use_resets else None, **kw, **options)
        return oracle.loss_terms(h, ys, w_y), (h, ys)

    (_, (h, ys)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
        params, state, s0, jnp.asarray(xs)
    )
    h_ref, ys_ref, grads_ref = oracle.run(
        cell, params, state, xs, batch=(B,), state0=s0, w_y=w_y,
        reverse=options.get("reverse", False), truncate_every=options.get("truncate_every"), **kw,
    )  # fmt: skip
    tree_allclose(ys, ys_ref, **TOL)
    tree_allclose(h, h_ref, **TOL)
    tree_allclose(grads, grads_ref, **TOL)


@SLOW  # ConvGRU's step runs every day in its doctest
def test_a_conv_gru_of_kernel_one_is_the_gru_at_every_position():
    conv = rj.ConvGRUCell(C, H, kernel_size=1)
    p = randomized(conv)
    gru = rj.GRUCell(C, H)
    flat = {**p, "wi": p["wi"][0, 0], "wh": p["wh"][0, 0]}
    xs = jnp.asarray(data((4, 4))[0])
    _, ys = rj.scan(conv, p, conv.initial_state(p), xs)
    _, ys_gru = rj.scan(gru, flat, gru.initial_state(flat), xs)  # (B, 4, 4) as batch axes
    np.testing.assert_allclose(ys, ys_gru, atol=1e-6)


@SLOW
def test_conv_lstm_float64_gradients():
    cell = rj.ConvLSTMCell(C, 2, kernel_size=3, spatial_dims=1)
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: a.astype(jnp.float64), randomized(cell))
        xs = jnp.asarray(data((5,))[0][:3, :2], jnp.float64)

        def f(p, xs):
            return rj.scan(cell, p, cell.initial_state(p), xs)[1]

        check_grads(f, (p, xs), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@SLOW  # streaming and chains are the engine's, tested every day on other cells
def test_a_chain_streams():
    """A ConvLSTM, a pointwise `Dense` (a 1x1 convolution over channels) and a ConvGRU in one
    chain: `Recur` stepping equals the whole-sequence run."""
    model = rj.chain(
        rj.ConvLSTMCell(C, H, kernel_size=3), rj.Dense(H, 2), rj.ConvGRUCell(2, H, kernel_size=1)
    )
    m = rj.Recur(model, key=jax.random.key(0)).batched((B, 4, 4))  # batch and spatial axes
    xs = jnp.asarray(data((4, 4))[0])
    m_all, ys = m.scan(xs)
    m_step, steps = m, []
    for x in xs:
        m_step, y = m_step(x)
        steps.append(y)
    np.testing.assert_allclose(ys, jnp.stack(steps), atol=1e-5)
    tree_allclose(m_all.state, m_step.state)


@SLOW
def test_bidirectional():
    """A bidirectional pair with lengths equals running each direction (the backward one on
    each reversed sequence)."""
    xs = jnp.asarray(data((4, 4))[0])
    fwd, bwd = rj.ConvGRUCell(C, H, kernel_size=3), rj.ConvGRUCell(C, H, kernel_size=3)
    pair = rj.bidirectional(fwd, bwd)
    pp = (randomized(fwd, 1), randomized(bwd, 2))
    lengths = jnp.array([6, 4, 1])
    _, y2 = rj.scan(pair, pp, pair.initial_state(pp), xs, lengths=lengths)
    _, yf = rj.scan(fwd, pp[0], fwd.initial_state(pp[0]), xs, lengths=lengths)
    _, yb = rj.scan(bwd, pp[1], bwd.initial_state(pp[1]), xs, lengths=lengths, reverse=True)
    np.testing.assert_allclose(y2, jnp.concatenate([yf, yb], -1), atol=1e-6)


@SLOW  # the options are the classic cells', tested every day there
def test_options_and_bias_free_conv_cells():
    cell = rj.ConvLSTMCell(C, H, kernel_size=(3, 3), recurrent_init="orthogonal", use_bias=False)
    p = cell.init(jax.random.key(0))
    assert sorted(p) == ["wh", "wi"] and p["wh"].shape == (3, 3, H, 4 * H)
    block = np.asarray(p["wh"][..., :H]).reshape(-1, H)  # one gate's kernel, orthogonal
    np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
    _, y = cell(p, cell.initial_state(p), jnp.ones((2, 5, 5, C)))
    assert y.shape == (2, 5, 5, H)
    assert repr(cell) == (
        "ConvLSTMCell(2 => 3, kernel_size=(3, 3), recurrent_init='orthogonal', use_bias=False)"
    )


@pytest.mark.parametrize(
    ("make", "x", "message"),
    [
        (
            lambda: rj.ConvLSTMCell(C, H, kernel_size=(3, 3)),
            jnp.ones((5, C)),
            "expected x of shape (..., H, W, channels) with 2 spatial axes, got shape (5, 2)",
        ),
        (
            lambda: rj.ConvGRUCell(C, H, kernel_size=3, spatial_dims=1),
            jnp.ones((2, 7, 5)),
            "expected x with 2 features on its last axis, shape (..., 2), got shape (2, 7, 5)",
        ),
    ],
    ids=["spatial-rank", "channels"],
)
def test_bad_inputs_are_named(make, x, message):
    cell = make()
    p = cell.init(jax.random.key(0))
    with pytest.raises(ValueError, match=re.escape(message)):
        cell(p, cell.initial_state(p), x)


def test_bad_sizes_and_shapes_are_named():
    with pytest.raises(ValueError, match=re.escape("expected 1, 2 or 3 spatial axes")):
        rj.ConvLSTMCell(C, H, kernel_size=(3, 3), spatial_dims=1)
    with pytest.raises(TypeError, match=re.escape("expected kernel_size to be an int or a tuple")):
        rj.ConvGRUCell(C, H, kernel_size=[3, 3])
    cell = rj.ConvLSTMCell(C, H, kernel_size=3)
    p = cell.init(jax.random.key(0))
    state = jax.tree.map(lambda a: jnp.broadcast_to(a, (2, 4, 4, H)), cell.initial_state(p))
    with pytest.raises(ValueError, match=re.escape("has batch shape (2, 4, 4) but x has")):
        cell(p, state, jnp.ones((2, 8, 8, C)))  # the state's spatial shape is not x's
    xs = jnp.ones((T, B, 4, 4, C))
    message = "batch axes are those between time and the step's 3 axes (spatial, channels)"
    with pytest.raises(ValueError, match=re.escape(message)):
        rj.scan(cell, p, cell.initial_state(p), xs, lengths=jnp.ones((B, 4, 4), int))


# --- Flax linen's ConvLSTMCell and Haiku's ConvNDLSTM ----------------------------------------


def _randomize(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [0.5 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, new)


@pytest.mark.extras
@pytest.mark.parametrize(
    ("kernel", "spatial"),
    [pytest.param((3, 2), (4, 5), marks=SLOW)],
)
def test_flax_conv_lstm(kernel, spatial):
    nn = need("flax.linen")
    module = nn.ConvLSTMCell(features=H, kernel_size=kernel)
    xs = data(spatial)[0]
    carry = (jnp.zeros((B, *spatial, H)),) * 2
    params = _randomize(module.init(jax.random.key(0), carry, xs[0])["params"], 0)
    proj = np.random.default_rng(1).standard_normal((T, B, *spatial, H), dtype=np.float32)

    def ref_loss(p, xs, proj):
        ys = jax.lax.scan(lambda c, x: module.apply({"params": p}, c, x), carry, xs)[1]
        return jnp.sum(ys * proj), ys

    diffs = jax_parity(ref_loss, lambda p: interop.from_flax(module, p), params, xs, proj)
    assert all(d <= 1e-5 for d in diffs.values()), diffs
    cell, ours = interop.from_flax(module, {"params": params})
    assert cell == rj.ConvLSTMCell(C, H, kernel_size=kernel)
    back_module, back = interop.to_flax(cell, ours)
    assert back_module.kernel_size == kernel
    again, again_params = interop.from_flax(back_module, back)
    assert again == cell
    tree_allclose(again_params, ours, rtol=0, atol=1e-6)


@pytest.mark.extras
@SLOW  # the shared conversion (`conv_lstm_params`) runs every day with Flax's
def test_haiku_conv2d_lstm():
    hk = need("haiku")
    spatial = (4, 5)

    def run(xs):
        core = hk.Conv2DLSTM(spatial, H, (3, 2))
        return hk.dynamic_unroll(core, xs, core.initial_state(B))[0]

    f = hk.transform(run)
    xs = data(spatial)[0]
    params = _randomize(f.init(jax.random.key(0), jnp.asarray(xs)), 0)
    proj = np.random.default_rng(1).standard_normal((T, B, *spatial, H), dtype=np.float32)

    def ref_loss(p, xs, proj):
        ys = f.apply(p, None, xs)
        return jnp.sum(ys * proj), ys

    diffs = jax_parity(ref_loss, lambda p: interop.from_haiku(p, "conv2_dlstm"), params, xs, proj)
    assert all(d <= 1e-5 for d in diffs.values()), diffs
    cell, ours = interop.from_haiku(params, "conv2_dlstm")
    back = interop.to_haiku(cell, ours)
    again, again_params = interop.from_haiku(back, "conv2_dlstm")
    assert again == cell
    tree_allclose(again_params, ours, rtol=0, atol=1e-6)
