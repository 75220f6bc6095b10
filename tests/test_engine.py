"""Engine behaviours that each live in one place of `_scan/`: the input rule for complex
data, the fused strategy's forward pass through the cell (small batches, no gradient) with
every control, and the input preparation that `scan` and `sequence_parallel_scan` share."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import tree_allclose
from jax.sharding import Mesh

import recurjax as rj
from recurjax._contracts import KernelSpec  # the protocol type of a fused kernel

T, IN, H = 6, 3, 4


def test_complex_inputs_to_real_cells_raise_naming_the_dtype_and_the_fix():
    cell = rj.GRUCell(IN, H)
    params = cell.init(jax.random.key(0))
    xs = jnp.ones((T, 2, IN), jnp.complex64)
    msg = "GRUCell(3 => 4): expected a real input x (a float, int or bool dtype, cast to the "
    msg += "params' dtype float32), got dtype complex64"
    with pytest.raises(TypeError, match=re.escape(msg) + ".*jnp.real"):
        rj.scan(cell, params, cell.initial_state(params), xs)
    with pytest.raises(TypeError, match=re.escape(msg)):
        cell(params, cell.initial_state(params), xs[0])
    # The documented casting rule stays for ints, bools and float64.
    for dtype in (jnp.int32, jnp.bool_):
        _, ys = rj.scan(cell, params, cell.initial_state(params), xs.real.astype(dtype))
        assert ys.dtype == jnp.float32


def test_small_batch_forward_through_the_cell_honours_lengths_and_resets():
    """Without differentiation `auto` steps the cell itself for at most 4 sequences
    (`policy.SMALL_BATCH`); that loop must apply resets and freeze padded steps exactly as
    the fused kernel and the sequential strategy do."""
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((T, 3, IN), dtype=np.float32)
    lengths = np.array([T, 2, 4])
    resets = rng.random((T, 3)) < 0.4
    for cell in (rj.LSTMCell(IN, H), rj.GRUCell(IN, H), rj.RNNCell(IN, H)):
        params = cell.init(jax.random.key(1))
        s0 = jax.tree.map(lambda a: a + 0.3, cell.initial_state(params))
        kw: dict[str, Any] = dict(lengths=lengths, resets=resets, state0=s0, reverse=True)
        runs = [
            rj.scan(cell, params, cell.initial_state(params), xs, strategy=s, **kw)
            for s in ("auto", "fused", "sequential")
        ]
        tree_allclose(runs[0], runs[2], rtol=1e-5, atol=1e-6)
        tree_allclose(runs[1], runs[2], rtol=1e-5, atol=1e-6)


def test_sequence_parallel_scan_marks_out_of_range_lengths_like_scan():
    """Both public functions prepare their inputs with one function, so under `jit` an
    out-of-range length gives NaN for that sequence in both (it used to be clipped)."""
    mesh = Mesh(np.array(jax.devices()[:1]), ("time",))
    cell = rj.MinGRUCell(IN, H)
    params = cell.init(jax.random.key(0))
    xs = jnp.ones((T, 2, IN))

    @jax.jit
    def both(lengths):
        h0 = cell.initial_state(params)
        split = rj.sequence_parallel_scan(
            cell, params, h0, xs, mesh=mesh, axis="time", lengths=lengths
        )
        return split, rj.scan(cell, params, h0, xs, lengths=lengths)

    (h_split, ys_split), (h, ys) = both(jnp.array([T + 1, 3]))
    for state, outputs in ((h_split, ys_split), (h, ys)):
        assert np.isnan(np.asarray(state[0])).all() and np.isfinite(np.asarray(state[1])).all()
        assert np.isnan(np.asarray(outputs[:, 0])).all()
    tree_allclose((h_split[1], ys_split[:, 1]), (h[1], ys[:, 1]))
    with pytest.raises(ValueError, match=r"lengths must be in \[0, T\] with T=6"):
        rj.sequence_parallel_scan(
            cell, params, cell.initial_state(params), xs, mesh=mesh, axis="time",
            lengths=jnp.array([T + 1, 3]),
        )  # fmt: skip


def test_associative_strategies_reverse_and_empty_sequences_equal_sequential():
    cell = rj.MinGRUCell(IN, H)
    params = cell.init(jax.random.key(2))
    h0 = cell.initial_state(params)
    xs = jnp.asarray(np.random.default_rng(2).standard_normal((T, 2, IN), dtype=np.float32))
    for strategy in ("associative", "chunked"):
        for data, kw in ((xs, {"reverse": True, "truncate_every": 4}), (xs[:0], {})):
            want = rj.scan(cell, params, h0, data, strategy="sequential", **kw)
            tree_allclose(rj.scan(cell, params, h0, data, strategy=strategy, **kw), want)


def test_engine_errors_for_protocols_it_cannot_serve():
    class Unknown(rj.LSTMCell):  # names a kernel the fused strategy does not have
        def fused_kernel(self):
            return KernelSpec("nope", self.hidden_size)

    cell = Unknown(IN, H)
    params = cell.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"no kernel named 'nope'; the kernels are \['gru'"):
        rj.scan(cell, params, cell.initial_state(params), jnp.ones((T, IN)), strategy="fused")
    mesh = Mesh(np.array(jax.devices()[:1]), ("time",))
    lstm = rj.LSTMCell(IN, H)
    p = lstm.init(jax.random.key(0))
    with pytest.raises(TypeError, match=r"sequence_parallel_scan\(LSTMCell\(3 => 4\)\): needs a"):
        rj.sequence_parallel_scan(
            lstm, p, lstm.initial_state(p), jnp.ones((T, IN)), mesh=mesh, axis="time"
        )
    gru = rj.MinGRUCell(IN, H)
    p = gru.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"mesh has axes \('time',\), not 'batch'"):
        rj.sequence_parallel_scan(
            gru, p, gru.initial_state(p), jnp.ones((T, IN)), mesh=mesh, axis="batch"
        )
