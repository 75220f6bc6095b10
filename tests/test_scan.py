"""The scan engine against the shared oracle (tests/oracle.py): outputs, states, gradients.

Every strategy is checked against the oracle, not against another strategy: each case
compiles one gradient program (the oracle compiles only one step and its VJP per cell). The
explicit grid covers every path of the engine (every option on the LSTM and the user cell,
the involved combinations on every other cell, each strategy, each batch layout); the
property-based test draws further combinations of options; the `slow` tier runs the full
grids that earlier commits trimmed for time.
"""

from __future__ import annotations

import os
import secrets

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from cases import (
    CASES,
    IN,
    KERNEL,
    LINEAR,
    LINEAR_STRATEGIES,
    MEMORY,
    RECURRENT,
    SLOW_CONTRACT,
    Case,
    everyday,
    scan_data,
    strategies_of,
    tree_allclose,
)
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import recurjax as rj

T, B = 7, 3  # 7 = 2 * 3 + 1: truncation every 3 steps leaves a tail step
# Tolerances: the strictest of the tests this grid merged (fused vs sequential, scan vs loop,
# remat vs none, lengths and resets vs the per-sequence loop), for every case.
OUT_TOL = {"rtol": 1e-5, "atol": 1e-6}
GRAD_TOL = {"rtol": 1e-5, "atol": 1e-5}
BY_NAME = {c.name: c for c in [*CASES, *LINEAR, MEMORY]}


def check_against_oracle(case: Case, strategy: str, options: dict, batch=(B,), jit=True):
    """`rj.scan` with `strategy` and `options` (scan's keywords; `lengths` and `resets` as
    booleans) equals the oracle: outputs, final states, and the gradients of
    `oracle.loss_terms` w.r.t. params, the initial state, `state0` and the inputs."""
    options = dict(options)
    use_lengths = options.pop("lengths", False)
    use_resets = options.pop("resets", False)
    time_axis = options.pop("time_axis", 0)
    params, h0, s0, xs, lengths, resets, w_y = scan_data(case, batch, T)
    if not use_lengths:
        xs = np.nan_to_num(xs)
    lengths_arg = lengths if use_lengths else None
    resets_arg = resets if use_resets else None
    if time_axis:  # batch-major: the library sees time on axis 1, the oracle time-major
        move = lambda a: None if a is None else jnp.moveaxis(a, 0, time_axis)  # noqa: E731
        back = lambda a: jnp.moveaxis(a, time_axis, 0)  # noqa: E731
    else:
        move = back = lambda a: a

    def run(params, h0, s0, xs):
        h, ys = rj.scan(
            case.cell,
            params,
            h0,
            move(xs),
            lengths=lengths_arg,
            resets=move(resets_arg),
            state0=s0 if use_resets else None,
            strategy=strategy,
            time_axis=time_axis,
            **options,
        )
        ys = back(ys)
        return oracle.loss_terms(h, ys, w_y), (h, ys)

    grad = jax.value_and_grad(run, argnums=(0, 1, 2, 3), has_aux=True)
    if jit:
        grad = jax.jit(grad)
    (_, (h, ys)), grads = grad(params, h0, s0, jnp.asarray(xs))
    h_ref, ys_ref, grads_ref = oracle.run(
        case.cell,
        params,
        h0,
        xs,
        batch=batch,
        lengths=lengths_arg,
        resets=resets_arg,
        state0=s0,
        reverse=options.get("reverse", False),
        truncate_every=options.get("truncate_every"),
        w_y=w_y,
    )
    tree_allclose(ys, ys_ref, **OUT_TOL)
    tree_allclose(h, h_ref, **OUT_TOL)
    tree_allclose(grads, grads_ref, **GRAD_TOL)
    if use_lengths:  # padded steps: outputs exactly zero, inputs get exactly zero gradient
        t = np.arange(T).reshape(T, *(1,) * len(batch))
        pad = ~(t < lengths)
        np.testing.assert_array_equal(np.asarray(ys)[pad], 0)
        np.testing.assert_array_equal(np.asarray(grads[3])[pad], 0)


# Named option sets (`lengths` and `resets` switch those controls on).
OPTIONS = {
    "plain": {},
    "reverse": {"reverse": True},
    "trunc3": {"truncate_every": 3},  # two full blocks and a tail step
    "trunc3-rev": {"truncate_every": 3, "reverse": True},
    "trunc2-rev": {"truncate_every": 2, "reverse": True},
    "trunc7": {"truncate_every": 7},  # one block: no cut
    "trunc10": {"truncate_every": 10},  # longer than the sequence
    "unroll2": {"unroll": 2},  # unroll > 1 runs the sequential strategy
    "lengths": {"lengths": True},
    "lengths-rev": {"lengths": True, "reverse": True},
    "resets": {"resets": True},
    "resets-rev": {"resets": True, "reverse": True},
    "lengths-resets": {"lengths": True, "resets": True},
    "lengths-resets-rev": {"lengths": True, "resets": True, "reverse": True},
    "remat2": {"remat": 2},  # three blocks and a tail
    "remat2-rev": {"remat": 2, "reverse": True},
    "remat6-trunc3": {"remat": 6, "truncate_every": 3},
    "batch-major-resets": {"resets": True, "time_axis": 1},
    # Chunks shorter than the sequence: resets and padding inside chunks, chunk padding,
    # chunks within truncation blocks (5 = 2 + 2 + 1, then a tail of 2).
    "chunk3-lengths-resets-rev": {
        "chunk_size": 3,
        "lengths": True,
        "resets": True,
        "reverse": True,
    },
    "chunk2-trunc5-resets": {"chunk_size": 2, "truncate_every": 5, "resets": True},
    "chunk2-everything": {
        "chunk_size": 2,
        "lengths": True,
        "resets": True,
        "reverse": True,
        "remat": 6,
        "truncate_every": 3,
    },
    # Every control at once (truncation points fall in padding too).
    "lengths-resets-remat-rev": {
        "lengths": True,
        "resets": True,
        "reverse": True,
        "remat": 4,
        "truncate_every": 2,
    },
    "resets-trunc2-remat4-rev": {
        "resets": True,
        "reverse": True,
        "truncate_every": 2,
        "remat": 4,
    },
}
SCAN_OPTIONS = ["plain", "reverse", "trunc3", "trunc3-rev", "trunc7", "trunc10", "unroll2"]
FUSED_OPTIONS = ["plain", "reverse", "trunc3", "trunc2-rev"]
REMAT_OPTIONS = ["remat2", "remat2-rev", "remat6-trunc3"]
EVERYTHING = ["lengths-resets-remat-rev", "resets-trunc2-remat4-rev"]
CHUNK_OPTIONS = ["chunk3-lengths-resets-rev", "chunk2-trunc5-resets", "chunk2-everything"]


def _cases(names, strategies, options, batches=((B,),), jit=True):
    return [
        (name, strategy, option, batch, jit)
        for name in names
        for strategy in strategies
        for option in options
        for batch in batches
    ]


# The everyday grid, one case per path of the engine rather than every strategy x option x
# cell: each kernel cell through the fused strategy with truncation in reverse (blocks, a
# tail, the backward keep mask) and with lengths and resets; forward truncation in the GRU
# kernel; the sequential strategy's truncation blocks (with a tail, with one block),
# unrolling, and a structured state; lengths and resets alone, over two batch axes (eager),
# batch-major; unbatched and several batch axes through the kernels; remat blocks (several
# with a tail, reversed, with truncation; through a chain part by part); the associative and
# chunked scans; every control at once. The slow tier runs the full grids.
GRID = sorted(
    set(
        _cases(KERNEL, ["fused"], ["trunc3-rev"])
        + _cases(KERNEL, ["auto"], ["lengths-resets"], [(6,)])
        + _cases(["gru"], ["fused"], ["trunc3"])
        + _cases(["lstm"], ["sequential"], ["trunc2-rev"])
        + _cases(["gruv3"], ["auto"], ["lengths-resets"], [(6,)])
        + _cases(["user_fn"], ["auto"], ["trunc3", "trunc7", "unroll2"])
        + _cases(["lstm"], ["sequential"], ["lengths-resets-rev"], [(2, 3)], jit=False)
        + _cases(["gru"], ["auto"], ["lengths-resets-rev"], [(2, 3)], jit=False)
        + _cases(["lstm"], ["auto"], ["lengths-rev"], [(4,)])
        + _cases(["gru"], ["auto"], ["resets"], [(4,)])
        + _cases(["gru"], ["auto"], ["batch-major-resets"])
        + _cases(["lstm"], ["fused"], ["plain"], [(), (2, 3)])
        + _cases(["gru"], ["fused"], ["plain"], [(1,)])
        + _cases(["chain"], ["fused"], ["plain"], [(2, 3)])
        + _cases(["lstm"], ["auto"], ["remat2-rev", "remat6-trunc3"], [(2,)])
        + _cases(["chain", "user_fn"], ["auto"], ["remat6-trunc3"], [(2,)])
        + _cases(["mingru"], ["chunked"], ["lengths-resets"], [(6,)])
        + _cases(["mingru"], ["associative"], ["resets-trunc2-remat4-rev"])
        + _cases(["mingru"], ["hoisted"], ["lengths-resets-remat-rev"])
        + _cases(["minlstm"], ["associative"], ["lengths-resets-rev"], [(6,)])
        + _cases(["lru"], ["hoisted"], ["lengths-resets-remat-rev"])
        + _cases(["lstm"], ["auto"], ["lengths-resets-remat-rev"])
        + _cases(["user_fn"], ["auto"], ["resets-trunc2-remat4-rev"])
        + _cases(["mlstm"], ["chunkwise"], ["chunk3-lengths-resets-rev"], [(6,)])
        + _cases(["memory"], ["chunkwise"], ["chunk2-everything"], [(6,)])
        + _cases(["gla"], ["chunkwise"], ["chunk3-lengths-resets-rev"], [(6,)])
    ),
    key=str,
)


def _id(entry) -> str:
    name, strategy, option, batch, jit = entry
    return f"{name}-{strategy}-{option}-{batch}" + ("" if jit else "-eager")


@pytest.mark.parametrize("entry", GRID, ids=_id)
def test_scan_equals_oracle(entry):
    name, strategy, option, batch, jit = entry
    check_against_oracle(BY_NAME[name], strategy, OPTIONS[option], batch, jit)


# The slow tier: the full grids that earlier commits trimmed for time (923697d, 3a817df,
# 1b3fded, 5c688d4): every option of scan on every cell; every fused-kernel option and batch
# layout under both strategies; every remat option on every remat cell; lengths and resets
# on every cell and strategy over one and two batch axes, and each control alone.
# Retention and Mamba-2 step as GLA does (`_MemoryCell`) and run chunkwise as GatedMemory
# does: the chunk options below are their grid.
ALL = [c.name for c in [*RECURRENT, *LINEAR] if c.name not in SLOW_CONTRACT]
LINEAR_NAMES = [name for name in ALL if isinstance(BY_NAME[name].cell, rj.LinearCell)]
SLOW_GRID = sorted(
    set(
        _cases(ALL, ["auto"], SCAN_OPTIONS)
        + _cases(KERNEL, ["fused", "sequential"], FUSED_OPTIONS)
        + _cases(["lstm", "gru", "chain"], ["fused", "sequential"], ["plain"], [(), (1,), (2, 3)])
        + _cases(["lstm", "gruv3", "chain", "user_fn"], ["auto"], REMAT_OPTIONS, [(2,)])
        + _cases(ALL, ["auto", "sequential"], ["lengths-resets"], [(6,)])
        + _cases(LINEAR_NAMES, LINEAR_STRATEGIES, ["lengths-resets"], [(6,)])
        + _cases(ALL, ["auto"], ["lengths-resets-rev"], [(2, 3)], jit=False)
        + _cases(KERNEL, ["sequential"], ["lengths-resets-rev"], [(2, 3)], jit=False)
        + _cases(
            ["lstm", "gru"], ["auto"], ["lengths", "lengths-rev", "resets", "resets-rev"], [(4,)]
        )
        + _cases(LINEAR_NAMES, LINEAR_STRATEGIES, EVERYTHING)
        + _cases(["lstm", "gru", "user_fn"], ["auto", "sequential"], EVERYTHING)
        + _cases(["mlstm"], ["chunkwise"], CHUNK_OPTIONS)
        + _cases(["memory", "mamba2", "gla"], ["chunkwise"], CHUNK_OPTIONS)
    )
    - set(GRID),
    key=str,
)


@pytest.mark.slow
@pytest.mark.parametrize("entry", SLOW_GRID, ids=_id)
def test_scan_equals_oracle_full_grid(entry):
    name, strategy, option, batch, jit = entry
    check_against_oracle(BY_NAME[name], strategy, OPTIONS[option], batch, jit)


@st.composite
def _combinations(draw):
    """A cell, one of its strategies and a combination of scan's options."""
    case = draw(st.sampled_from([*RECURRENT, *LINEAR]))
    strategy = draw(st.sampled_from(strategies_of(case)))
    batch = draw(st.sampled_from([(), (B,), (2, 3)]))
    options: dict = {"reverse": draw(st.booleans())}
    options["lengths"] = draw(st.booleans())
    k = draw(st.sampled_from([None, 1, 2, 3, 7, 10]))
    if k is not None:
        options["truncate_every"] = k
    remat = draw(st.sampled_from([None, 1, 2, 3]))
    if remat is not None:
        options["remat"] = remat * (k or 2)  # a multiple of truncate_every
    options["resets"] = draw(st.booleans())
    if strategy == "sequential" and draw(st.booleans()):
        options["unroll"] = 2
    if strategy in ("chunked", "chunkwise") and draw(st.booleans()):
        options["chunk_size"] = draw(st.sampled_from([1, 2, 3]))
    if batch and draw(st.booleans()):
        options["time_axis"] = 1
    return case, strategy, options, batch, draw(st.booleans())


def _check_drawn(drawn):
    case, strategy, options, batch, jit = drawn
    check_against_oracle(case, strategy, options, batch, jit)


# A fixed small budget of drawn combinations every day; a real one in the slow tier, from a
# fixed seed so that CI is deterministic. `RECURJAX_HYPOTHESIS_SEED=random pytest -m slow -k
# drawn` explores from a fresh seed (any integer replays one); a failure prints the seed.
_SEED = os.environ.get("RECURJAX_HYPOTHESIS_SEED", "0")
SEED = secrets.randbelow(2**32) if _SEED == "random" else int(_SEED)
_DRAWN = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow],
}


@settings(max_examples=4, derandomize=True, **_DRAWN)
@given(_combinations())
def test_scan_equals_oracle_drawn_options(drawn):
    _check_drawn(drawn)


@pytest.mark.slow
@seed(SEED)
@settings(max_examples=30, **_DRAWN)
@given(_combinations())
def test_scan_equals_oracle_drawn_options_many(drawn):
    note(f"hypothesis seed {SEED}: RECURJAX_HYPOTHESIS_SEED={SEED} replays this run")
    _check_drawn(drawn)


def test_drawn_combinations_reach_every_cell_and_strategy():
    """The drawn combinations can reach every cell and every strategy of each: 3,000 draws
    (without running a scan) see every pair."""
    seen = set()

    @seed(0)
    @settings(max_examples=3000, **_DRAWN)
    @given(_combinations())
    def draw(drawn):
        seen.add((drawn[0].name, drawn[1]))

    draw()
    wanted = {(c.name, s) for c in [*RECURRENT, *LINEAR] for s in strategies_of(c)}
    assert not wanted - seen, sorted(wanted - seen)


@pytest.mark.parametrize(
    "name, strategy", [("gru", "fused"), ("gru", "sequential"), ("mingru", "associative")]
)
def test_truncation_past_a_length_keeps_the_last_blocks_gradient(name, strategy):
    """Lengths 5, 0, 7 with a cut every 2 steps: the first sequence's last valid block is
    step 4, and its final state must still pass gradient to that step (the oracle's loop
    stops at the length, so there is no cut at the padded step 6). The engine cut there
    until this test found it."""
    check_against_oracle(BY_NAME[name], strategy, {"lengths": True, "truncate_every": 2})


@pytest.mark.parametrize("case", everyday(RECURRENT))
def test_scan_unbatched_and_two_batch_axes(case: Case):
    """Forward only, eagerly (the kernels' forward paths without a gradient): unbatched (one
    sequence runs the cell itself) and two batch axes."""
    for shape in [(T,), (T, 2, 3)]:
        params = case.params(0)
        h0 = case.state(params)
        xs = np.random.default_rng(1).standard_normal((*shape, IN), dtype=np.float32)
        h_ref, ys_ref, _ = oracle.run(case.cell, params, oracle.batched(h0, shape[1:]), xs)
        tree_allclose(rj.scan(case.cell, params, h0, jnp.asarray(xs)), (h_ref, ys_ref))


@pytest.mark.parametrize("case", everyday(RECURRENT))
def test_batch_major_time_axis(case: Case):
    params = case.params(0)
    h0 = case.state(params)
    xs = jnp.asarray(np.random.default_rng(1).standard_normal((T, B, IN), dtype=np.float32))
    h, ys = rj.scan(case.cell, params, h0, jnp.swapaxes(xs, 0, 1), time_axis=1)
    h_ref, ys_ref = rj.scan(case.cell, params, h0, xs)
    assert ys.shape == (B, T, ys_ref.shape[-1])
    tree_allclose((h, ys), (h_ref, jnp.swapaxes(ys_ref, 0, 1)))
    h2, ys2 = rj.scan(case.cell, params, h0, jnp.swapaxes(xs, 0, 1), time_axis=-2)
    tree_allclose((h2, ys2), (h, ys))


def test_truncation_cuts_gradients_exactly():
    cell = rj.GRUCell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, IN))

    def output_at(t, k):
        return lambda xs: rj.scan(cell, params, cell.initial_state(params), xs, truncate_every=k)[
            1
        ][t].sum()

    # With k = 3 the blocks are steps [0, 3), [3, 6), [6]: the output at step 4 depends on the
    # inputs of steps 3 and 4 only, and the tail step 6 on its own input only.
    g = jax.grad(output_at(4, 3))(xs)
    np.testing.assert_array_equal(g[:3], 0)
    assert bool(jnp.all(jnp.abs(g[3:5]).sum(-1) > 0))
    np.testing.assert_array_equal(g[5:], 0)
    g = jax.grad(output_at(6, 3))(xs)
    np.testing.assert_array_equal(g[:6], 0)
    assert bool(jnp.abs(g[6]).sum() > 0)
    # Without truncation the gradient reaches every earlier step.
    g = jax.grad(output_at(6, None))(xs)
    assert bool(jnp.all(jnp.abs(g).sum(-1) > 0))


def test_truncation_keeps_values_and_tail():
    cell = rj.LSTMCell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (10, B, IN))
    h0 = cell.initial_state(params)
    ref = rj.scan(cell, params, h0, xs)
    for k in [1, 2, 3, 4, 9, 10, 11]:
        out = rj.scan(cell, params, h0, xs, truncate_every=k)
        assert out[1].shape == (10, B, 4)
        tree_allclose(out, ref, rtol=0, atol=0)


def test_truncation_gradient_to_initial_state_only_from_first_block():
    cell = rj.RNNCell(IN, 4)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, IN))
    h0 = jnp.ones(4)

    def loss(h0, t):
        return rj.scan(cell, params, h0, xs, truncate_every=3)[1][t].sum()

    assert bool(jnp.abs(jax.grad(loss)(h0, 2)).sum() > 0)
    for t in range(3, T):
        np.testing.assert_array_equal(jax.grad(loss)(h0, t), 0)
    # The final state's gradient does not reach h0 either (it is past a cut)...
    final = jax.grad(lambda h0: rj.scan(cell, params, h0, xs, truncate_every=3)[0].sum())(h0)
    np.testing.assert_array_equal(final, 0)
    # ...but it does when the whole sequence fits in one block.
    final = jax.grad(lambda h0: rj.scan(cell, params, h0, xs, truncate_every=T)[0].sum())(h0)
    assert bool(jnp.abs(final).sum() > 0)


def test_zero_length_sequence():
    cell = rj.LSTMCell(IN, 4)
    params = cell.init(jax.random.key(0))
    h0 = rj.LSTMState(jnp.full(4, 0.5), jnp.full(4, -0.5))
    h, ys = rj.scan(cell, params, h0, jnp.zeros((0, B, IN)))
    assert ys.shape == (0, B, 4)
    tree_allclose(h, jax.tree.map(lambda a: jnp.broadcast_to(a, (B, 4)), h0), rtol=0, atol=0)
    h, ys = rj.scan(cell, params, h0, jnp.zeros((0, IN)), truncate_every=2)
    tree_allclose(h, h0, rtol=0, atol=0)
    assert ys.shape == (0, 4)


def test_scan_check_grads_float64():
    cell = rj.LSTMCell(IN, 4, forget_bias=1.0)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0)))
        xs = jax.random.normal(jax.random.key(1), (5, 2, IN), jnp.float64)
        h0 = cell.initial_state(params)
        # Numerical differences see the untruncated function, so no truncate_every here;
        # truncated gradients are checked against the loop oracle above.
        check_grads(
            lambda p, h, xs: rj.scan(cell, p, h, xs), (params, h0, xs), order=1, modes=["rev"]
        )


def test_scan_jit_equals_eager_and_pytree_inputs():
    def cell(params, h, x):
        # A user cell with structured input: x = {"a": (..., 2), "b": (..., 1)}.
        h = h * params + x["a"].sum(-1, keepdims=True) - x["b"]
        return h, {"double": 2 * h}

    xs = {"a": jnp.ones((4, 3, 2)), "b": jnp.arange(12.0).reshape(4, 3, 1)}
    h0 = jnp.zeros((3, 1))
    h, ys = rj.scan(cell, jnp.float32(0.5), h0, xs)
    hj, ysj = jax.jit(lambda p, h, xs: rj.scan(cell, p, h, xs))(jnp.float32(0.5), h0, xs)
    tree_allclose((h, ys), (hj, ysj))
    tree_allclose((h, ys), oracle.run(cell, jnp.float32(0.5), h0, xs, batch=(3,))[:2])
