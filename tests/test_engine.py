"""Engine behaviours that each live in one place of `_scan/`: the input rule for complex
data, the `auto` policy's choice in the benchmarked configs, and the input preparation that
`scan` and `sequence_parallel_scan` share."""

from __future__ import annotations

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import tree_allclose
from jax.sharding import Mesh

import recurjax as rj
from recurjax._contracts import KernelSpec  # the protocol type of a fused kernel
from recurjax._scan import inputs, options, run
from recurjax._scan.strategies import REGISTRY

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


# benchmarks/RESULTS.md, per benchmarked config (cell, B, H): the strategy that `auto` must
# run, the fastest there or within the A/A noise of the fastest, in fwd and f+b alike.
MEASURED = {
    ("lstm", 32, 256): "fused",  # fused 23.8 / 92.6 ms, sequential 26.7 / 102.7
    ("lstm", 1, 128): "fused",  # 3.66 / 10.6 against 4.10 / 14.8
    ("lstm", 128, 512): "fused",  # 157 / 540 against 162 / 620
    ("gru", 32, 256): "fused",  # a tie: 20.3 / 73.2 against 19.8 / 72.1
    ("gru", 1, 128): "fused",  # 2.72 / 8.90 against 2.72 / 9.88
    ("gru", 128, 512): "sequential",  # fused 121 / 403 against 111 / 390
}


@pytest.mark.parametrize("config", sorted(MEASURED))
def test_auto_runs_the_measured_fastest_strategy_in_every_benchmarked_config(config):
    """The policy's choice, not a timing: with and without differentiation (the fused
    strategy runs its kernel in both) and under `jit`'s abstract inputs."""
    kind, B, hidden = config
    cell = (rj.LSTMCell if kind == "lstm" else rj.GRUCell)(8, hidden)
    xs = jax.ShapeDtypeStruct((5, B, 8), jnp.float32)
    chosen = run.choose(cell, xs, options.build(cell, REGISTRY))
    assert chosen is not None and MEASURED[config] == chosen.name


# benchmarks/RESULTS_cells.md, per benchmarked config of the cells linear in their state
# (cell, B, T, in = H): the strategy `auto` must run, with the measured ratios to the
# sequential strategy (fwd / f+b) of the hoisted one.
LINEAR = {
    "mingru": lambda H: rj.MinGRUCell(H, H),
    "lru": lambda H: rj.LRUCell(H, H),
    "rglru": lambda H: rj.RGLRUCell(H, H, num_heads=4),
    "s6": lambda H: rj.SelectiveSSMCell(H, state_size=16),
}
MEASURED_LINEAR = {
    ("mingru", 4, 256, 64): "hoisted",  # 0.86 / 0.55
    ("mingru", 32, 256, 64): "hoisted",  # 0.79 / 0.77
    ("mingru", 4, 4096, 64): "hoisted",  # 0.59 / 0.48
    ("mingru", 32, 128, 256): "hoisted",  # 0.67 / 0.64
    ("mingru", 32, 4096, 64): "sequential",  # 1.63 / 1.01
    ("rglru", 4, 256, 64): "hoisted",  # 0.30 / 0.23
    ("rglru", 32, 256, 64): "hoisted",  # 0.61 / 0.32
    ("rglru", 4, 4096, 64): "hoisted",  # 0.18 / 0.31
    ("rglru", 32, 128, 256): "hoisted",  # 0.71 / 0.74
    ("rglru", 32, 4096, 64): "sequential",  # 1.10 / 0.50: past the size, a gain unclaimed
    ("lru", 4, 256, 64): "sequential",  # 0.93 / 0.42: time-invariant, a gain unclaimed
    ("lru", 32, 256, 64): "sequential",  # 1.30 / 1.37
    ("lru", 32, 128, 256): "sequential",  # 0.83 / 1.07
    ("lru", 4, 4096, 64): "sequential",  # 0.67 / 0.62: time-invariant, a gain unclaimed
    ("s6", 4, 256, 64): "sequential",  # 0.38 / 1.75
    ("s6", 4, 4096, 64): "sequential",  # 0.84 / 1.05
    ("s6", 32, 256, 64): "sequential",  # 1.01 / 1.28
    ("s6", 32, 128, 256): "sequential",  # 1.51 / 1.51
}


@pytest.mark.parametrize("config", sorted(MEASURED_LINEAR))
def test_auto_runs_the_measured_strategy_for_linear_cells(config):
    kind, B, T, H = config
    cell = LINEAR[kind](H)
    xs = jax.ShapeDtypeStruct((T, B, H), jnp.float32)
    chosen = run.choose(cell, xs, options.build(cell, REGISTRY))
    assert chosen is not None and MEASURED_LINEAR[config] == chosen.name


# benchmarks/RESULTS_matrix.md, the matrix memories' configs (B, T, in = H; 4 heads): the
# strategy `auto` must run for each of them.
MATRIX = {
    "mlstm": lambda H: rj.MLSTMCell(H, H, num_heads=4),
    "mamba2": lambda H: rj.Mamba2Cell(H, H, num_heads=4, state_size=64),
    "gla": lambda H: rj.GLACell(H, H, num_heads=4, key_size=H // 2),
    "retention": lambda H: rj.RetentionCell(H, H, num_heads=4),
}
MEASURED_MATRIX = {(4, 4096, 256): "chunkwise", (32, 128, 256): "chunkwise"}
MEASURED_MATRIX |= {(32, 16, 256): "chunkwise", (32, 15, 256): "sequential"}


@pytest.mark.parametrize("kind", sorted(MATRIX))
def test_auto_runs_the_measured_strategy_for_matrix_memories(kind):
    cell = MATRIX[kind](256)
    for (B, T, H), expected in MEASURED_MATRIX.items():
        xs = jax.ShapeDtypeStruct((T, B, H), jnp.float32)
        chosen = run.choose(cell, xs, options.build(cell, REGISTRY))
        assert chosen is not None and chosen.name == expected, (B, T, H)


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


def test_linear_strategies_reverse_and_empty_sequences_equal_sequential():
    cell = rj.MinGRUCell(IN, H)
    params = cell.init(jax.random.key(2))
    h0 = cell.initial_state(params)
    xs = jnp.asarray(np.random.default_rng(2).standard_normal((T, 2, IN), dtype=np.float32))
    for strategy in ("associative", "chunked", "hoisted"):
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


def test_forward_mode_is_seen_under_every_forward_transformation_and_only_there():
    """`inputs.forward_mode` is the one place that reads JAX internals (a tracer class named
    `JVPTracer`, and `.primal`/`.val` to look through other tracers): no public API says
    whether a value carries forward-mode tangents. If a JAX release renames them, this test
    fails here, by name, instead of `auto` quietly running a custom-VJP strategy under
    `jax.jvp` (JAX's own error) or the sequential one everywhere (silently slower)."""
    seen: list[bool] = []

    def f(x):
        seen.append(inputs.forward_mode(x))
        return jnp.sum(jnp.sin(x))

    x = jnp.ones(3)
    forward = {
        "jvp": lambda: jax.jvp(f, (x,), (x,)),
        "jacfwd": lambda: jax.jacfwd(f)(x),
        "hessian": lambda: jax.hessian(f)(x),
        "vmap of jvp": lambda: jax.vmap(lambda v: jax.jvp(f, (v,), (v,)))(x[:, None]),
        "jvp of vmap": lambda: jax.jvp(jax.vmap(f), (x[:, None],), (x[:, None],)),
        "grad of jvp": lambda: jax.grad(lambda v: jax.jvp(f, (v,), (v,))[1])(x),
    }
    other = {
        "eager": lambda: f(x),
        "grad": lambda: jax.grad(f)(x),
        "vmap": lambda: jax.vmap(f)(x[:, None]),
        "jit": lambda: jax.jit(f)(x),
        "vmap of grad": lambda: jax.vmap(jax.grad(f))(x[:, None]),
        # The blind spot `scan`'s docstring names: traced by `jit` before the tangents exist.
        "jvp of jit": lambda: jax.jvp(jax.jit(lambda v: f(v)), (x,), (x,)),
    }
    for expected, transforms in ((True, forward), (False, other)):
        for name, call in transforms.items():
            seen.clear()
            call()
            assert seen and all(s == expected for s in seen), (name, seen)


def test_scan_options_name_every_keyword_of_scan():
    """`Recur.scan` and the NNX/Equinox modules type their `**options` with `ScanOptions`:
    it must list exactly `scan`'s keywords, with the same annotations, but `return_states`,
    which changes what is returned: `Recur.scan` takes it by name, the modules refuse it."""
    from recurjax._scan import ScanOptions

    params = inspect.signature(rj.scan).parameters
    keywords = {n: p.annotation for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    hints = {n: getattr(t, "__forward_arg__", t) for n, t in ScanOptions.__annotations__.items()}
    assert keywords.pop("return_states") == "bool"
    assert hints == keywords
    assert "return_states" in inspect.signature(rj.Recur.scan).parameters


def test_chunkwise_errors_name_the_option_and_the_cell():
    cell = rj.LSTMCell(IN, H)
    params = cell.init(jax.random.key(0))
    xs = jnp.ones((T, 2, IN))
    with pytest.raises(ValueError, match=re.escape("strategy='chunkwise' needs a cell with a")):
        rj.scan(cell, params, cell.initial_state(params), xs, strategy="chunkwise")
    msg = "scan(LSTMCell(3 => 4)): expected chunk_size to be a positive int or None, got 0."
    with pytest.raises(ValueError, match=re.escape(msg)):
        rj.scan(cell, params, cell.initial_state(params), xs, chunk_size=0)
