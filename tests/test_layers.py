"""Deep and regularised models: `bidirectional`, `residual`, `stacked`, dropout, dtypes.

`bidirectional` is checked against the shared per-sequence loop oracle (tests/oracle.py), run
forward for one cell and in reverse for the other; the rest against the cells they are
built from, run step by step.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from cases import IN, tree_allclose

import recurjax as rj

T, H = 6, 4
KEY = jax.random.key(0)


def _padded(batch=(3,), seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([T, 0, 4][: batch[0]])
    xs = rng.standard_normal((T, *batch, IN), dtype=np.float32)
    xs[np.arange(T)[:, None] >= lengths] = np.nan  # never read
    return jnp.asarray(xs), lengths


# "auto": the fused LSTM and GRU; "sequential" in the slow tier (3a817df dropped it for time).
STRATEGIES = ["auto", pytest.param("sequential", marks=pytest.mark.slow)]


@pytest.mark.parametrize(
    ("strategy", "remat"), [("auto", 4), pytest.param("sequential", None, marks=pytest.mark.slow)]
)
def test_bidirectional_equals_a_loop_each_way(strategy, remat):
    # With remat, each direction runs in blocks of its own (blocks of the whole pair once
    # started the backward cell at each block's end).
    fwd, bwd = rj.LSTMCell(IN, H), rj.GRUCell(IN, H)
    bi = rj.bidirectional(fwd, bwd)
    params = bi.init(KEY)
    h0 = bi.initial_state(params)
    xs, lengths = _padded()
    w = np.random.default_rng(5).standard_normal((T, 3, 2 * H), dtype=np.float32)

    def loss(params, xs):
        (hf, hb), ys = rj.scan(bi, params, h0, xs, lengths=lengths, strategy=strategy, remat=remat)
        state = sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves((hf, hb)))
        return jnp.sum(ys * w) + state, ((hf, hb), ys)

    (_, ((hf, hb), ys)), (dparams, dxs) = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    )(params, xs)

    def reference(cell, p, h, w_part, reverse):
        return oracle.run(
            cell, p, oracle.batched(h, (3,)), xs, lengths=lengths, reverse=reverse, w_y=w_part
        )

    hf_ref, yf_ref, gf = reference(fwd, params[0], h0[0], w[..., :H], False)
    hb_ref, yb_ref, gb = reference(bwd, params[1], h0[1], w[..., H:], True)
    tree_allclose(ys, np.concatenate([yf_ref, yb_ref], -1), rtol=1e-4, atol=1e-5)
    tree_allclose((hf, hb), (hf_ref, hb_ref), rtol=1e-4, atol=1e-5)
    tree_allclose(dparams, (gf[0], gb[0]), rtol=1e-4, atol=1e-5)
    tree_allclose(dxs, gf[3] + gb[3], rtol=1e-4, atol=1e-5)
    # The backward direction of the length-0 sequence never ran: its state is h0, exactly.
    np.testing.assert_array_equal(hb[1], h0[1])


def test_remat_blocks_a_causal_chain_whole_and_a_bidirectional_one_part_by_part(monkeypatch):
    """A chain that reads no later step is cut into remat blocks as a whole (the backward
    pass keeps only each block's entering states); a bidirectional stack cannot be (its
    backward cells start at the end), so each of its cells runs in blocks of its own."""
    from recurjax._scan import run as run_stage

    blocked = []
    remat_blocks = run_stage._remat_blocks

    def spy(cell, *args):
        blocked.append(cell)
        return remat_blocks(cell, *args)

    monkeypatch.setattr(run_stage, "_remat_blocks", spy)
    xs = jnp.ones((T, 2, IN))
    for bi in (False, True):
        net = rj.stacked(rj.LSTMCell, IN, H, num_layers=2, bidirectional=bi)
        params = net.init(KEY)
        jax.clear_caches()
        rj.scan(net, params, net.initial_state(params), xs, remat=2)
    lstm, wide = rj.LSTMCell(IN, H), rj.LSTMCell(2 * H, H)
    assert blocked == [rj.stacked(rj.LSTMCell, IN, H, num_layers=2), lstm, lstm, wide, wide]
    assert not rj.residual(rj.bidirectional(lstm, lstm)).causal


def test_bidirectional_in_a_chain_and_as_a_handle():
    net = rj.chain(rj.bidirectional(rj.GRUCell(IN, H), rj.GRUCell(IN, H), "sum"), rj.Dense(H, 2))
    params = net.init(KEY)
    xs, lengths = _padded()
    _, ys = rj.scan(net, params, net.initial_state(params), xs, lengths=lengths)
    assert ys.shape == (T, 3, 2)
    np.testing.assert_array_equal(ys[:, 1], 0)  # length 0: every output is padding
    (_, yf), (_, yb) = (
        rj.scan(net.cells[0].forward, params[0][0], jnp.zeros(H), xs, lengths=lengths),
        rj.scan(
            net.cells[0].backward, params[0][1], jnp.zeros(H), xs, lengths=lengths, reverse=True
        ),
    )
    expected = jnp.where(
        jnp.isnan(xs[..., :1]), 0.0, (yf + yb) @ params[1]["w"] + params[1]["b"][None, None]
    )
    tree_allclose(ys, expected, rtol=1e-5, atol=1e-6)
    m = rj.Recur(net, params)
    _, ys2 = m.scan(xs, lengths=lengths)
    tree_allclose(ys2, ys)
    with pytest.raises(TypeError, match=re.escape("cannot run one step at a time")):
        m(xs[0])


def test_stacked_is_the_chain_it_describes():
    net = rj.stacked(rj.LSTMCell, IN, H, num_layers=3, residual=True, dropout=0.25)
    assert net == rj.chain(
        rj.LSTMCell(IN, H),
        rj.Dropout(0.25),
        rj.residual(rj.LSTMCell(H, H)),
        rj.Dropout(0.25),
        rj.residual(rj.LSTMCell(H, H)),
    )
    bi = rj.stacked(rj.GRUCell, IN, H, num_layers=2, bidirectional=True, residual=True)
    assert bi.cells[1] == rj.residual(rj.bidirectional(rj.GRUCell(2 * H, H), rj.GRUCell(2 * H, H)))
    params = bi.init(KEY)
    _, ys = rj.scan(bi, params, bi.initial_state(params), jnp.ones((T, 2, IN)))
    assert ys.shape == (T, 2, 2 * H)
    # Layer 2 adds its input (layer 1's output) to its own output.
    _, y1 = rj.scan(
        bi.cells[0], params[0], bi.cells[0].initial_state(params[0]), jnp.ones((T, 2, IN))
    )
    _, y2 = rj.scan(bi.cells[1].cell, params[1], bi.cells[1].initial_state(params[1]), y1)
    tree_allclose(ys, y1 + y2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_layers to be a positive int"):
        rj.stacked(rj.LSTMCell, IN, H, num_layers=0)


def test_residual_steps_and_scans_alike():
    cell = rj.residual(rj.GRUCell(H, H))
    params = cell.init(KEY)
    xs = jax.random.normal(jax.random.key(1), (T, 2, H))
    h, y = cell.initial_state(params), None
    ys = []
    for t in range(T):
        h, y = cell(params, h, xs[t])
        ys.append(y)
    h_scan, ys_scan = rj.scan(cell, params, cell.initial_state(params), xs)
    tree_allclose(ys_scan, jnp.stack(ys), rtol=1e-5, atol=1e-6)
    tree_allclose(h_scan, h, rtol=1e-5, atol=1e-6)
    bad = rj.residual(rj.GRUCell(IN, H))
    msg = "a residual connection adds the input to the output, so they need one shape"
    with pytest.raises(ValueError, match=re.escape(msg)):
        rj.scan(bad, bad.init(KEY), bad.initial_state(bad.init(KEY)), jnp.ones((T, IN)))


# --- dropout ------------------------------------------------------------------------------


def test_dropout_is_off_until_seeded_and_scan_equals_steps():
    net = rj.chain(rj.LSTMCell(IN, H), rj.Dropout(0.5), rj.Dense(H, 2))
    plain = rj.chain(rj.LSTMCell(IN, H), rj.Dense(H, 2))
    params = net.init(KEY)
    xs = jax.random.normal(jax.random.key(1), (T, 3, IN))
    state = net.initial_state(params)
    assert state[1] is None
    _, ys_off = rj.scan(net, params, state, xs)
    _, ys_plain = rj.scan(plain, (params[0], params[2]), plain.initial_state(params[::2]), xs)
    tree_allclose(ys_off, ys_plain)

    seeded = rj.seed_dropout(net, state, jax.random.key(7))
    _, ys_on = rj.scan(net, params, seeded, xs)
    h, ys_steps = seeded, []
    for t in range(T):  # the scan runs part by part; stepping must draw the same masks
        h, y = net(params, h, xs[t])
        ys_steps.append(y)
    tree_allclose(ys_on, jnp.stack(ys_steps), rtol=1e-5, atol=1e-6)
    assert not np.allclose(ys_on, ys_off)
    # A new mask at every step: the zero pattern of the dropped LSTM outputs changes.
    cell = rj.Dropout(0.5)
    _, drops = rj.scan(cell, (), jax.random.key(3), jnp.ones((T, 64)))
    assert len({tuple(np.asarray(d) == 0) for d in drops}) == T
    assert set(np.unique(drops).tolist()) == {0.0, 2.0}
    assert rj.seed_dropout(net, seeded, None)[1] is None


def test_variational_masks_are_reused_at_every_step():
    drop = rj.Dropout(0.5, variational=True)
    _, ys = rj.scan(drop, (), jax.random.key(3), jnp.ones((T, 2, 64)))
    np.testing.assert_array_equal(ys, jnp.broadcast_to(ys[0], ys.shape))  # one mask per sequence
    assert not np.array_equal(ys[0, 0], ys[0, 1])  # each sequence its own

    # State dropout: a cell that returns the state it reads keeps the same entries alive.
    def keep(params, h, x):
        return h, h

    cell = rj.VariationalDropout(keep, state_rate=0.5)
    h0 = (jnp.ones((2, 64)), jax.random.key(4))
    (h, _), ys = rj.scan(cell, None, h0, jnp.ones((T, 2, 1)))
    alive = np.asarray(ys[0]) != 0
    for t in range(T):  # step t reads the state masked t + 1 times: 0 or 2 ** (t + 1)
        np.testing.assert_array_equal(np.asarray(ys[t]), np.where(alive, 2.0 ** (t + 1), 0.0))

    # Input dropout: an accumulator sums the same masked input at every step.
    def total(params, h, x):
        return h + x, h + x

    acc = rj.VariationalDropout(total, input_rate=0.5)
    (h, _), _ = rj.scan(acc, None, (jnp.zeros((2, 64)), jax.random.key(5)), jnp.ones((T, 2, 64)))
    assert set(np.unique(h).tolist()) == {0.0, 2.0 * T}


def test_variational_dropout_on_an_lstm_masks_h_only_and_trains():
    cell = rj.VariationalDropout(rj.LSTMCell(IN, H), input_rate=0.3, state_rate=0.3)
    params = cell.init(KEY)
    off = cell.initial_state(params)
    xs = jax.random.normal(jax.random.key(1), (T, 2, IN))
    _, ys_off = rj.scan(cell, params, off, xs)
    _, ys_plain = rj.scan(cell.cell, params, cell.cell.initial_state(params), xs)
    tree_allclose(ys_off, ys_plain)
    m = rj.Recur(cell, params).seed_dropout(jax.random.key(2))
    assert m.reset().state[1] is not None  # reset keeps dropout on

    def loss(params, m):
        _, ys = m.replace(params=params).scan(xs)
        return jnp.sum(ys**2)

    g = jax.jit(jax.grad(loss))(params, m)
    assert all(np.isfinite(a).all() and np.abs(a).max() > 0 for a in jax.tree.leaves(g))
    assert m.seed_dropout(None).state[1] is None
    with pytest.raises(ValueError, match=re.escape("expected rate to be a float in [0, 1)")):
        rj.Dropout(1.0)
    with pytest.raises(
        TypeError, match=re.escape("expected a PRNG key from jax.random.key(seed)")
    ):
        rj.seed_dropout(cell, off, 3)  # pyright: ignore[reportArgumentType]


# --- mixed precision ----------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bfloat16_end_to_end_keeps_the_carry_in_bfloat16(strategy):
    # test_fused.py also compares bf16 under the fused and sequential strategies.
    net = rj.stacked(rj.LSTMCell, IN, H, num_layers=2, bidirectional=True)
    params32 = net.init(KEY)
    params16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params32)
    xs, lengths = _padded()
    resets = jnp.zeros((T, 3), bool).at[2].set(True)

    def run(params):
        return rj.scan(
            net,
            params,
            net.initial_state(params),
            xs,
            lengths=lengths,
            resets=resets,
            strategy=strategy,
        )

    h16, ys16 = jax.jit(run)(params16)
    assert {a.dtype for a in jax.tree.leaves((h16, ys16))} == {jnp.dtype(jnp.bfloat16)}
    _, ys32 = jax.jit(run)(params32)
    tree_allclose(ys16.astype(jnp.float32), ys32, rtol=0.05, atol=0.05)

    # f32 master params, bf16 compute: the gradient arrives in float32.
    def loss(params32):
        params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params32)
        return jnp.sum(run(params)[1].astype(jnp.float32) ** 2)

    g = jax.jit(jax.grad(loss))(params32)
    assert {a.dtype for a in jax.tree.leaves(g)} == {jnp.dtype(jnp.float32)}
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(g))
