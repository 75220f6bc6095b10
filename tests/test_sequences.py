"""Real sequences: `lengths` and `resets` beyond the oracle grid.

Every cell and strategy with lengths and resets (together and alone, forward and reverse,
over one and two batch axes) is checked against the shared per-sequence oracle in
test_scan.py (tests/oracle.py). Here: the options combined with truncation and remat, the
handle's `state0`, out-of-range lengths under jit, and the errors.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import IN, tree_allclose

import recurjax as rj

T = 6


def _inputs(batch: tuple[int, ...]):
    """Inputs with NaN padding (it must never be read), lengths with 0 and T, resets."""
    n = int(np.prod(batch))
    lengths = np.array([0, T, 3, 1, 5, T][:n] + [2] * max(0, n - 6)).reshape(batch)
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((T, *batch, IN), dtype=np.float32)
    t = np.arange(T).reshape(T, *(1,) * len(batch))
    xs = np.where((t < lengths)[..., None], xs, np.float32(np.nan))
    resets = rng.random((T, *batch)) < 0.3
    return jnp.asarray(xs), lengths, resets


def test_lengths_with_truncation_and_remat_equal_the_plain_run():
    cell = rj.LSTMCell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs, lengths, resets = _inputs((6,))

    def grads(**options):
        def loss(params, xs):
            h, ys = rj.scan(
                cell, params, cell.initial_state(params), xs, lengths=lengths, **options
            )
            return jnp.sum(ys**2) + jnp.sum(h.h), (h, ys)

        return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, xs)

    plain = grads(reverse=True, truncate_every=2, resets=resets)
    tree_allclose(grads(reverse=True, truncate_every=2, resets=resets, remat=4), plain)
    tree_allclose(
        grads(reverse=True, truncate_every=2, resets=resets, strategy="sequential"),
        plain,
        rtol=1e-5,
        atol=1e-6,
    )


def test_recur_scan_resets_to_the_handles_state0_which_learns():
    m = rj.Recur(rj.GRUCell(IN, 4), key=jax.random.key(0))
    m = m.replace(state0=jnp.full(4, 0.5), state=jnp.zeros(4)).batched(2)
    xs = jnp.ones((T, 2, IN))
    resets = jnp.zeros((T, 2), bool).at[3, 0].set(True)
    _, ys = m.scan(xs, resets=resets)
    # Sequence 0 restarts from state0 at step 3: its tail equals a fresh run from state0.
    _, tail = rj.scan(m.cell, m.params, m.state0[0], xs[3:, 0])
    tree_allclose(ys[3:, 0], tail, rtol=1e-5, atol=1e-6)
    _, straight = rj.scan(m.cell, m.params, m.state[1], xs[:, 1])
    tree_allclose(ys[:, 1], straight, rtol=1e-5, atol=1e-6)
    # Batch-major: resets take the time axis of xs.
    _, ys_bm = m.scan(jnp.swapaxes(xs, 0, 1), resets=resets.T, time_axis=1)
    tree_allclose(jnp.swapaxes(ys_bm, 0, 1), ys, rtol=1e-6, atol=1e-7)

    def loss(m):
        return jnp.sum(m.scan(xs, resets=resets)[1][3:, 0])

    g = jax.grad(loss)(m)
    assert np.abs(np.asarray(g.state0[0])).max() > 0  # the reset reads state0
    np.testing.assert_array_equal(g.state[0], 0)  # and cut the path from the start
    assert np.abs(np.asarray(g.state0[1])).max() == 0


def test_out_of_range_lengths_under_jit_give_nan_for_that_sequence_only():
    cell = rj.GRUCell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs = jnp.ones((T, 3, IN))
    run = jax.jit(
        lambda lengths: rj.scan(cell, params, cell.initial_state(params), xs, lengths=lengths)
    )
    h, ys = run(jnp.array([T, T + 1, -1]))
    assert np.isfinite(h[0]).all() and np.isfinite(ys[:, 0]).all()
    assert np.isnan(h[1:]).all() and np.isnan(ys[:, 1:]).all()


def test_bad_lengths_and_resets_get_clear_errors():
    cell = rj.LSTMCell(IN, 4)
    params = cell.init(jax.random.key(0))
    h = cell.initial_state(params)
    xs = jnp.ones((T, 3, IN))

    def scan(**kwargs):
        return rj.scan(cell, params, h, xs, **kwargs)

    msg = "lengths must be in [0, T] with T=6 steps on time_axis=0, got [7]"
    with pytest.raises(ValueError, match=re.escape(msg)):
        scan(lengths=np.array([6, 7, 2]))
    with pytest.raises(ValueError, match=re.escape("got [-1]")):
        scan(lengths=[1, -1, 2])
    msg = "expected lengths to be an integer array (one length per sequence), got dtype float32"
    with pytest.raises(TypeError, match=re.escape(msg)):
        scan(lengths=jnp.array([1.0, 2.0, 3.0]))
    msg = "expected lengths with the batch shape of xs, (3,) (one entry per sequence), got (2,)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        scan(lengths=jnp.array([1, 2]))
    msg = "expected resets to be a boolean array (True where an episode starts), got dtype int32"
    with pytest.raises(TypeError, match=re.escape(msg)):
        scan(resets=jnp.zeros((T, 3), jnp.int32))
    with pytest.raises(
        ValueError, match=re.escape("resets has 5 steps on time_axis=0 but xs has 6")
    ):
        scan(resets=jnp.zeros((5, 3), bool))
    with pytest.raises(
        ValueError, match=re.escape("expected resets (without its time axis) with")
    ):
        scan(resets=jnp.zeros((T, 2), bool))
    # The cell checks a state0 of its own type; the engine checks one a function cell accepts.
    with pytest.raises(TypeError, match=re.escape("expected the state to be an LSTMState(h, c)")):
        scan(resets=jnp.zeros((T, 3), bool), state0=jnp.zeros(4))

    def fn(params, h, x):
        return h + x, h

    def keep(params, h, x):
        return h, h

    msg = "state0 (what resets return to) must have the form of the state, (3, 3), got (5,)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        rj.scan(
            keep, None, jnp.zeros((3, IN)), xs, resets=jnp.zeros((T, 3), bool), state0=jnp.zeros(5)
        )
    with pytest.raises(TypeError, match=re.escape("so pass state0= (e.g. the initial state h)")):
        rj.scan(fn, None, jnp.zeros((3, IN)), xs, resets=jnp.zeros((T, 3), bool))
    # A function cell may take a pytree xs; lengths then fix the batch axes.
    msg = "lengths gives batch shape (2,), but a leaf of xs has shape (6, 3, 3)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        rj.scan(fn, None, jnp.zeros((3, IN)), xs, lengths=jnp.array([1, 2]))
