"""Real sequences: `lengths`, `resets`, reverse and `bidirectional`, against a Python loop.

The oracle runs each sequence of the batch *separately*, unbatched, with a plain Python loop
over its own valid steps (the loop in `rj.scan`'s docstring): the padded steps are never
run, a reset replaces the state by `state0`, and the reverse direction starts at the
sequence's own last valid step. Outputs, final states and the gradients of a loss that
reads both (w.r.t. params, the initial state, the inputs and `state0`) must agree, for every
library cell, a chain and a user function cell, under both strategies.
"""

from __future__ import annotations

import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CASES, IN, MINGRU, Case, tree_allclose

import recurjax as rj

T = 6
RECURRENT = [c for c in CASES if c.name != "dense"]


def _inputs(batch: tuple[int, ...], case: Case):
    """Inputs with NaN padding (it must never be read), lengths with 0 and T, resets."""
    n = int(np.prod(batch))
    lengths = np.array([0, T, 3, 1, 5, T][:n] + [2] * max(0, n - 6)).reshape(batch)
    # NumPy's generator: jax.random compiles a program per shape, which cost more than the
    # scan under test.
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((T, *batch, IN), dtype=np.float32)
    t = np.arange(T).reshape(T, *(1,) * len(batch))
    xs = np.where((t < lengths)[..., None], xs, np.float32(np.nan))
    resets = rng.random((T, *batch)) < 0.3
    w_y = rng.standard_normal((T, *batch, case.out), dtype=np.float32)
    return jnp.asarray(xs), lengths, resets, w_y


def _loss_terms(h, ys, w_y):
    state_term = sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(h))
    return jnp.sum(jnp.where(jnp.isnan(ys), 0.0, ys) * w_y) + state_term


@functools.cache
def _step_functions(cell):
    """One step of `cell` and its VJP, each compiled once per cell and shape."""

    def bwd(p, h, x, dh, dy):
        _, vjp = jax.vjp(lambda p, h, x: cell(p, h, x), p, h, x)
        return vjp((dh, dy))

    return jax.jit(lambda p, h, x: cell(p, h, x)), jax.jit(bwd)


def _oracle(cell, params, h0, s0, xs, lengths, resets, reverse, w_y):
    """Each sequence alone, unbatched, over its own valid steps, with its backward pass by
    hand: a Python loop over the steps forward, then back through them with each step's
    VJP. Returns the final states, the outputs and the gradients of `_loss_terms` w.r.t.
    `(params, h0, state0, xs)`."""
    fwd, bwd = _step_functions(cell)
    tree = jax.tree
    h0, s0 = tree.map(np.asarray, h0), tree.map(np.asarray, s0)
    xs, w_y = np.asarray(xs), np.asarray(w_y)
    batch = lengths.shape
    ys = np.zeros((*w_y.shape[:-1], w_y.shape[-1]), np.float32)
    finals = tree.map(np.zeros_like, h0)
    dparams = tree.map(lambda a: np.zeros(a.shape, np.float32), params)
    dh0, ds0, dxs = tree.map(np.zeros_like, h0), tree.map(np.zeros_like, s0), np.zeros_like(xs)
    for b in itertools.product(*(range(n) for n in batch)):
        h = tree.map(lambda a, b=b: a[b], h0)
        steps = range(int(lengths[b]))
        trace = []
        for t in reversed(steps) if reverse else steps:
            reset = resets is not None and bool(resets[(t, *b)])
            if reset:
                h = tree.map(lambda a, b=b: a[b], s0)
            trace.append((t, h, reset))
            h, y = fwd(params, h, xs[(t, *b)])
            ys[(t, *b)] = y
        for leaf, value in zip(tree.leaves(finals), tree.leaves(h), strict=True):
            leaf[b] = value
        dh = tree.map(np.cos, h)  # d/dh of sum(sin(h))
        for t, h_in, reset in reversed(trace):
            dp, dh, dx = bwd(params, h_in, xs[(t, *b)], dh, w_y[(t, *b)])
            dparams = tree.map(np.add, dparams, dp)
            dxs[(t, *b)] = dx
            if reset:  # the state entering this step was state0: the gradient goes there
                for leaf, value in zip(tree.leaves(ds0), tree.leaves(dh), strict=True):
                    leaf[b] += value
                dh = tree.map(np.zeros_like, dh)
        for leaf, value in zip(tree.leaves(dh0), tree.leaves(dh), strict=True):
            leaf[b] = value
    return finals, ys, (dparams, dh0, ds0, dxs)


def _batched(tree, batch):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (*batch, *a.shape)), tree)


def _check(case, batch, *, use_lengths, use_resets, reverse, strategy, jit):
    params = case.params(0)
    xs, lengths, resets, w_y = _inputs(batch, case)
    # A batched initial state that differs per sequence, and a different state0 to reset to.
    h0 = jax.tree.map(
        lambda a: a + 0.1 * jnp.arange(np.prod(batch), dtype=a.dtype).reshape(*batch, 1),
        _batched(case.state(params), batch),
    )
    s0 = jax.tree.map(lambda a: 0.3 - a, h0)
    lengths_arg = lengths if use_lengths else None
    resets_arg = resets if use_resets else None

    def run(params, h0, s0, xs):
        h, ys = rj.scan(
            case.cell,
            params,
            h0,
            xs,
            lengths=lengths_arg,
            resets=resets_arg,
            state0=s0 if use_resets else None,
            reverse=reverse,
            strategy=strategy,
        )
        return _loss_terms(h, ys, w_y), (h, ys)

    grad = jax.value_and_grad(run, argnums=(0, 1, 2, 3), has_aux=True)
    if jit:
        grad = jax.jit(grad)
    if not use_lengths:
        xs = jnp.nan_to_num(xs)
    (_, (h, ys)), grads = grad(params, h0, s0, xs)
    lens = lengths if use_lengths else np.full(batch, T)
    h_ref, ys_ref, grads_ref = _oracle(
        case.cell, params, h0, s0, xs, lens, resets if use_resets else None, reverse, w_y
    )
    tree_allclose(ys, ys_ref, rtol=1e-4, atol=1e-5)
    tree_allclose(h, h_ref, rtol=1e-4, atol=1e-5)
    tree_allclose(grads, grads_ref, rtol=1e-4, atol=1e-5)
    if use_lengths:  # padded steps: outputs exactly zero, inputs get exactly zero gradient
        t = np.arange(T).reshape(T, *(1,) * len(batch))
        pad = ~(t < np.asarray(lengths))
        np.testing.assert_array_equal(np.asarray(ys)[pad], 0)
        np.testing.assert_array_equal(np.asarray(grads[3])[pad], 0)


# Every cell through lengths + resets together; the combinations of options, batch axes,
# strategies and jit are spread over the cells (each case compiles one gradient program).
# Cells without a fused kernel (GRUv3, the user cell) run the sequential strategy under
# "auto", so "sequential" is added for the LSTM (the GRU and RNN kernels and the chain's
# parts are compared with the sequential strategy in test_fused.py). minGRU runs
# the chunked associative scan (test_linear.py compares it with the sequential one).
ONE_AXIS = dict(batch=(6,), use_lengths=True, use_resets=True, reverse=False, jit=True)
TWO_AXES = dict(batch=(2, 3), use_lengths=True, use_resets=True, reverse=True, jit=False)
GRID = (
    [(case, ONE_AXIS, "auto") for case in RECURRENT]
    + [(case, ONE_AXIS, "sequential") for case in RECURRENT if case.name == "lstm"]
    + [(MINGRU, ONE_AXIS, "chunked")]
    # Two batch axes: the fused RNN kernel and chains flatten them as the LSTM and GRU
    # kernels do (test_fused.py runs them with several batch axes).
    + [
        (case, TWO_AXES, "auto")
        for case in RECURRENT
        if case.name in ("lstm", "gru", "gruv3", "user_fn")
    ]
    + [(case, TWO_AXES, "sequential") for case in RECURRENT if case.name == "lstm"]
)


@pytest.mark.parametrize(
    ("case", "options", "strategy"),
    GRID,
    ids=[f"{c.name}-{o['batch']}-{'rev' if o['reverse'] else 'fwd'}-{s}" for c, o, s in GRID],
)
def test_lengths_and_resets_match_per_sequence_loop(case, options, strategy):
    _check(case, strategy=strategy, **options)


# The grid runs lengths and resets together; here each alone, once per direction.
ALONE = [("lstm", "lengths-reverse"), ("gru", "resets")]


@pytest.mark.parametrize(("name", "which"), ALONE, ids=[f"{n}-{w}" for n, w in ALONE])
def test_each_control_alone(name, which):
    case = next(c for c in RECURRENT if c.name == name)
    _check(
        case,
        (4,),
        use_lengths=which.startswith("lengths"),
        use_resets=which.startswith("resets"),
        reverse=which.endswith("reverse"),
        strategy="auto",
        jit=True,
    )


def test_lengths_with_truncation_and_remat_equal_the_plain_run():
    cell = rj.LSTMCell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs, lengths, resets, _ = _inputs((6,), RECURRENT[2])
    assert RECURRENT[2].name == "lstm"

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
