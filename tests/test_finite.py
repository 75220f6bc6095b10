"""Finiteness as a property of every library cell, not a point: values and gradients finite
for inputs at every scale from 1e-3 to 1e5.

Each cell runs `rj.scan` over `T` steps from its initial state, on inputs `scale * pattern`
for 17 scales (half decades, 1e-3 to 1e5) and two patterns (all ones; a standard normal
draw), each input one lane of a `vmap`, and the outputs, the final state and the gradients
of `sum(ys) + sum(sin(h))` with respect to the params, the initial state and the inputs must
all be finite in every lane. The scales are data, so each cell and strategy compiles once
and every lane runs in one call; the cell's own `init` (what a user gets) and the shared
cases' random params (every leaf N(0, 0.5^2), biases included) both run through it.

`test_every_library_cell_is_here` fails when a cell class is added to `recurjax` without a
case here, so the property covers the cells to come as well. The everyday tier runs each
cell kind under `auto` (`DAILY`); the slow tier runs the other cells and every other strategy
of each cell.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from cases import EVERYDAY, IN, LIBRARY, LINEAR, Case, library_case, strategies_of

import recurjax as rj
from recurjax._contracts import is_matrix_memory

T = 12
SCALES = 10.0 ** np.arange(-3.0, 5.5, 0.5)  # 1e-3, 3.2e-3, 1e-2, ..., 1e5
PATTERNS = ("ones", "normal")


def _two_positions(params: object, x: jax.Array) -> jax.Array:
    """A step `(..., IN)` as two positions of one spatial axis, `(..., 2, IN)`."""
    return jnp.stack([x, -x], axis=-2)


def _conv_case(name: str, cell: object) -> Case:
    """A convolutional cell behind `_two_positions`: the lanes' `(T, IN)` inputs become
    `(T, 2, IN)`, so the kernel mixes the positions and pads at both ends."""
    return library_case(name, rj.chain(rj.stateless(_two_positions), cell))


CELLS = [
    *LIBRARY,
    *LINEAR,
    library_case("slstm_exp", rj.SLSTMCell(IN, 4, num_heads=2, exp_forget=True)),
    library_case("mlstm_exp", rj.MLSTMCell(IN, 4, num_heads=2, exp_forget=True)),
    _conv_case("convlstm", rj.ConvLSTMCell(IN, 4, kernel_size=3, spatial_dims=1)),
    _conv_case("convgru", rj.ConvGRUCell(IN, 4, kernel_size=3, spatial_dims=1)),
]
# Cells whose finiteness is their parts' (composites and wrappers, covered through the
# `chain` case and their parts), bases, and Dropout (a mask times its input).
NOT_CELLS = {"Cell", "LinearCell", "Chain", "Bidirectional", "Residual", "Stateless"}
NOT_CELLS |= {"Dropout", "VariationalDropout"}


def test_every_library_cell_is_here():
    """Every cell class that `recurjax` exports has a case in `CELLS`."""
    exported = {
        name
        for name in rj.__all__
        if inspect.isclass(obj := getattr(rj, name)) and issubclass(obj, rj.Cell)
    }
    parts = [(c.cell, *getattr(c.cell, "cells", ())) for c in CELLS]  # a chain's parts too
    covered = {type(cell).__name__ for cells in parts for cell in cells}
    assert exported - NOT_CELLS <= covered, sorted(exported - NOT_CELLS - covered)


def _lanes() -> tuple[np.ndarray, list[str]]:
    """`(lanes, T, IN)` inputs, one lane per pattern and scale, and each lane's name."""
    normal = np.random.default_rng(0).standard_normal((T, IN)).astype(np.float32)
    patterns = {"ones": np.ones((T, IN), np.float32), "normal": normal}
    xs = np.stack([s * patterns[p] for p in PATTERNS for s in SCALES]).astype(np.float32)
    return xs, [f"{p} x {s:.3g}" for p in PATTERNS for s in SCALES]


@functools.cache
def _values_and_grads(case: Case, strategy: str):
    """Per lane: `(h, ys)` and the gradients for `(params, h0, xs)`, jitted once."""

    def one(params, h0, xs):
        def loss(params, h0, xs):
            h, ys = rj.scan(case.cell, params, h0, xs, strategy=strategy)
            return jnp.sum(ys) + oracle.state_terms(h), (h, ys)

        return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, h0, xs)

    return jax.jit(jax.vmap(one, in_axes=(None, None, 0)))


def _non_finite(tree, names: list[str]) -> list[str]:
    """`path: lanes` for each leaf with a non-finite entry in some lane (axis 0)."""
    found = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        values = np.asarray(leaf).reshape(len(names), -1)
        lanes = [n for n, row in zip(names, values, strict=True) if not np.isfinite(row).all()]
        if lanes:
            found.append(f"{jax.tree_util.keystr(path)}: {', '.join(lanes)}")
    return found


def check_finite(case: Case, strategy: str) -> None:
    xs, names = _lanes()
    run = _values_and_grads(case, strategy)
    for label, params in (("init", case.cell.init(jax.random.key(0))), ("random", case.params(0))):
        grads, (h, ys) = run(params, case.state(params), jnp.asarray(xs))
        tree = {"ys": ys, "h": h, "d_params": grads[0], "d_h0": grads[1], "d_xs": grads[2]}
        bad = "; ".join(_non_finite(tree, names))
        assert not bad, f"{case.name} ({label} params, {strategy}): non-finite in {bad}"


# Under `auto`, every day: one cell per kind (cases.EVERYDAY), the xLSTM cells (whose
# stabiliser this property caught) and the LRU (a complex state); the others in the slow
# tier, which also runs every other strategy of every cell.
DAILY = {*EVERYDAY, "mlstm", "slstm_exp", "mlstm_exp", "lru"}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name, marks=() if c.name in DAILY else pytest.mark.slow) for c in CELLS],
)
def test_values_and_gradients_finite_at_every_scale(case: Case):
    check_finite(case, "auto")


SLOW = [(c, s) for c in CELLS for s in strategies_of(c) if s != "auto"]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "strategy"), SLOW, ids=[f"{c.name}-{s}" for c, s in SLOW])
def test_values_and_gradients_finite_at_every_scale_every_strategy(case: Case, strategy: str):
    check_finite(case, strategy)


# --- the chunkwise strategy at large inputs and over long sequences --------------------------

MEMORIES = [c for c in CELLS if is_matrix_memory(c.cell)]
# One cell per path of the chunkwise strategy (normalised, one decay per head, one per key
# channel, the delta rule): retention runs Mamba-2's path, and mLSTM's exponential forget
# gate its own.
LONG = [c for c in MEMORIES if c.name in ("mlstm", "mamba2", "gla", "gdn")]
LARGE = [c for c in MEMORIES if c.name != "retention"]


@functools.cache
def _chunked_loss(case: Case, strategy: str):
    """Values, final state and gradients (params, initial state, inputs) of `sum(ys * g) +
    sum(h * 0.5)` under `strategy`, with lengths and resets, in chunks of 3; jitted once. The
    state enters linearly: a cotangent that does not depend on the state's rounding."""

    def loss(params, h0, xs, g, lengths, resets):
        h, ys = rj.scan(
            case.cell, params, h0, xs, strategy=strategy, chunk_size=3, lengths=lengths,
            resets=resets,
        )  # fmt: skip
        state = sum(jnp.sum(a * 0.5) for a in jax.tree.leaves(h))
        return jnp.sum(ys * g) + state, (h, ys)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.slow
@pytest.mark.parametrize("case", LARGE, ids=[c.name for c in LARGE])
def test_chunkwise_equals_sequential_in_float64_at_large_inputs(case: Case):
    """Inputs of 100 and 1e4 times a normal draw (gate pre-activations of that order), in
    float64: the chunkwise strategy (chunks of 3 over 20 steps, lengths and resets inside
    chunks) equals the sequential one, values, final state and every gradient, to 1e-9 of
    each array's largest entry."""
    with jax.enable_x64(True):
        params = case.params(0, jnp.float64)
        h0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (2, *a.shape)), case.state(params))
        rng = np.random.default_rng(3)
        g = jnp.asarray(rng.standard_normal((20, 2, case.out)))
        lengths = jnp.array([20, 13])
        resets = jnp.asarray(rng.random((20, 2)) < 0.15)
        for scale in (1e2, 1e4):
            xs = jnp.asarray(scale * rng.standard_normal((20, 2, IN)))
            args = (params, h0, xs, g, lengths, resets)
            want = _chunked_loss(case, "sequential")(*args)
            got = _chunked_loss(case, "chunkwise")(*args)
            for (path, a), b in zip(
                jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
            ):
                a, b = np.asarray(a), np.asarray(b)
                assert np.isfinite(a).all() and np.isfinite(b).all(), (scale, path)
                bound = 1e-9 * max(np.abs(b).max(initial=0.0), 1e-300) + 1e-300
                worst = np.abs(a - b).max(initial=0.0)
                assert worst <= bound, (case.name, scale, jax.tree_util.keystr(path), worst)


@pytest.mark.slow
@pytest.mark.parametrize("case", LONG, ids=[c.name for c in LONG])
def test_chunkwise_is_finite_over_65536_steps(case: Case):
    """One sequence of 65,536 steps of normal inputs through the chunkwise strategy (1,024
    chunks of 64, or 4,096 of 16 with per-channel decays): values, final state and the
    gradients for the params and the initial state are finite."""
    params = case.params(0)
    h0 = case.state(params)
    xs = jax.random.normal(jax.random.key(7), (65536, IN))

    def loss(params, h0):
        h, ys = rj.scan(case.cell, params, h0, xs, strategy="chunkwise")
        return jnp.sum(ys**2) / ys.size + oracle.state_terms(h), (h, ys)

    grads, (h, ys) = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, h0)
    bad = _non_finite(jax.tree.map(lambda a: a[None], (grads, h, ys)), ["T=65536"])
    assert not bad, f"{case.name}: non-finite in {'; '.join(bad)}"
