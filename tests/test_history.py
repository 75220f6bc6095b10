"""The state history, `scan(..., return_states=True)`: the state after every step, checked
against the oracle's loop (a cell that outputs its state beside `y`), with lengths (frozen
past each length), resets, reverse, truncation and remat, values and gradients; which
strategies give it, and the errors where one cannot."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from cases import CASES, LINEAR, MEMORY, Case, scan_data, strategies_chosen, tree_allclose

import recurjax as rj

T, B = 7, 3
BY_NAME = {c.name: c for c in [*CASES, *LINEAR, MEMORY]}
TOL = {"rtol": 1e-5, "atol": 1e-5}


def real_view(tree: Any) -> Any:
    """Every complex leaf (the LRU's state) as its real and imaginary parts side by side, so
    that a real loss weighs both."""
    return jax.tree.map(
        lambda a: jnp.concatenate([a.real, a.imag], -1) if jnp.iscomplexobj(a) else a, tree
    )


@dataclasses.dataclass(frozen=True)
class WithState:
    """The oracle's cell: `cell`'s step, its output `(y, h')` (`h'` in its `real_view`)."""

    cell: Any

    def __call__(self, params: Any, h: Any, x: Any) -> tuple[Any, Any]:
        h, y = self.cell(params, h, x)
        return h, (y, real_view(h))


def check_states(case: Case, strategy: str, options: dict[str, Any]) -> None:
    """`rj.scan(..., return_states=True)` equals the oracle's loop of `WithState(cell)`:
    outputs, final states and the states after every step (the final state past each
    length), and the gradients of a loss on all three."""
    options = dict(options)
    use_lengths, use_resets = options.pop("lengths", False), options.pop("resets", False)
    params, h0, s0, xs, lengths, resets, w_y = scan_data(case, (B,), T)
    lengths_arg = lengths if use_lengths else None
    if not use_lengths:
        xs = np.nan_to_num(xs)
    valid = np.arange(T)[:, None] < (lengths if use_lengths else np.full(B, T))  # (T, B)
    rng = np.random.default_rng(7)
    # Weights of the states, zero past each length: there the library's entries are the
    # final state (weighed through `h` already), the oracle's zeros.
    w_s = jax.tree.map(
        lambda a: (
            rng.standard_normal((T, *a.shape), np.float32)
            * valid.reshape(T, B, *(1,) * (a.ndim - 1))
        ),
        real_view(h0),
    )

    def loss(params, h0, s0, xs):
        h, ys, hs = rj.scan(
            case.cell,
            params,
            h0,
            xs,
            lengths=lengths_arg,
            resets=resets if use_resets else None,
            state0=s0 if use_resets else None,
            strategy=strategy,
            return_states=True,
            **options,
        )
        hs = real_view(hs)
        return oracle.loss_terms(h, (ys, hs), (w_y, w_s)), (h, ys, hs)

    run = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
    (_, (h, ys, hs)), grads = run(params, h0, s0, jnp.asarray(xs))
    h_ref, (ys_ref, hs_ref), grads_ref = oracle.run(
        WithState(case.cell),
        params,
        h0,
        xs,
        batch=(B,),
        lengths=lengths_arg,
        resets=resets if use_resets else None,
        state0=s0,
        reverse=options.get("reverse", False),
        truncate_every=options.get("truncate_every"),
        w_y=(w_y, w_s),
    )
    frozen = jax.tree.map(
        lambda s, f: np.where(valid.reshape(T, B, *(1,) * (s.ndim - 2)), s, f[None]),
        hs_ref,
        real_view(h_ref),
    )
    tree_allclose(hs, frozen, **TOL)
    tree_allclose(ys, ys_ref, **TOL)
    tree_allclose(h, h_ref, **TOL)
    tree_allclose(grads, grads_ref, **TOL)


MASKS = {"lengths": True, "resets": True, "reverse": True}
EVERYTHING = {**MASKS, "truncate_every": 2, "remat": 4}
# Every day one case per path: the sequential strategy on a NamedTuple state, a linear
# cell's read-out of its states, a composite as one cell; the rest in the slow tier.
GRID = [
    ("mingru", "hoisted", {"lengths": True, "resets": True}),  # a linear cell's read-out
    ("chain", "auto", MASKS),  # a composite (an LSTM and a Dense) as one cell, sequential
]
SLOW_GRID = [
    ("lstm", "sequential", EVERYTHING),
    ("chain", "auto", EVERYTHING),
    ("mingru", "hoisted", EVERYTHING),
    ("mingru", "chunked", {"lengths": True, "resets": True, "chunk_size": 3}),
    # one cell per kind of state under auto (the wrapper is the same for every cell): an
    # array (GRU), sLSTM's four-field NamedTuple, a flattened matrix memory with the delta
    # rule, a complex linear state (the LRU), a function cell's
    *[(name, "auto", MASKS) for name in ("gru", "slstm", "gdn", "lru", "user_fn")],
]


@pytest.mark.parametrize(("name", "strategy", "options"), GRID, ids=lambda v: str(v))
def test_states_equal_the_loop(name, strategy, options):
    check_states(BY_NAME[name], strategy, options)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "strategy", "options"), SLOW_GRID, ids=lambda v: str(v))
def test_states_equal_the_loop_every_cell(name, strategy, options):
    check_states(BY_NAME[name], strategy, options)


@pytest.mark.slow
def test_auto_runs_a_strategy_that_gives_the_states():
    xs = jnp.ones((20, 2, 3))
    runs = {
        "lstm": rj.LSTMCell(3, 4),  # fused without the states
        "mingru": rj.MinGRUCell(3, 4),  # a linear strategy either way
        "mlstm": rj.MLSTMCell(3, 4, num_heads=2),  # chunkwise without the states
    }
    with strategies_chosen() as names:  # one clearing of JAX's caches for all six scans
        for cell in runs.values():
            p = cell.init(jax.random.key(0))
            rj.scan(cell, p, cell.initial_state(p), xs)
            rj.scan(cell, p, cell.initial_state(p), xs, return_states=True)
    chosen = dict(zip(runs, zip(names[::2], names[1::2], strict=True), strict=True))
    assert chosen["lstm"] == ("fused", "sequential")
    assert chosen["mingru"][0] == chosen["mingru"][1] != "sequential"
    assert chosen["mlstm"] == ("chunkwise", "sequential")


@pytest.mark.parametrize(
    ("cell", "strategy", "why"),
    [
        (rj.LSTMCell(3, 4), "fused", "it does not form the state after every step"),
        (rj.MLSTMCell(3, 4), "chunkwise", "it does not form the state after every step"),
        (
            rj.chain(rj.MinGRUCell(3, 4), rj.Dense(4, 2)),
            "hoisted",
            "a composite (a chain, bidirectional, residual) returns its states step by step",
        ),
    ],
    ids=["fused", "chunkwise", "composite"],
)
def test_a_strategy_that_cannot_give_the_states_is_named(cell, strategy, why):
    p = cell.init(jax.random.key(0))
    message = (
        f"strategy={strategy!r} cannot return the state after every step "
        f"(return_states=True): {why}"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        rj.scan(
            cell, p, cell.initial_state(p), jnp.ones((5, 3)), strategy=strategy, return_states=True
        )


def test_return_states_is_a_bool():
    cell = rj.GRUCell(3, 4)
    p = cell.init(jax.random.key(0))
    with pytest.raises(TypeError, match=r"expected return_states to be a bool, got 'yes'"):
        rj.scan(cell, p, cell.initial_state(p), jnp.ones((5, 3)), return_states="yes")  # type: ignore[arg-type]


def test_handle_batch_major_zero_steps_and_forward_mode():
    m = rj.LSTM(3, 4, key=jax.random.key(0)).batched(2)
    xs = jax.random.normal(jax.random.key(1), (2, 6, 3))  # batch-major
    m2, ys, states = m.scan(xs, time_axis=1, return_states=True)
    assert isinstance(states, rj.LSTMState) and states.h.shape == states.c.shape == (2, 6, 4)
    np.testing.assert_allclose(states.h, ys, atol=1e-6)  # an LSTM's output is its h
    tree_allclose(jax.tree.map(lambda a: a[:, -1], states), m2.state)
    m3, ys3 = m.scan(xs, time_axis=1)
    tree_allclose((m3.state, ys3), (m2.state, ys))
    # no steps: no states, the shapes of one
    _, _, empty = m.scan(jnp.ones((0, 2, 3)), return_states=True)
    assert empty.h.shape == (0, 2, 4)
    # forward mode (auto runs the sequential strategy there)
    cell = rj.GRUCell(3, 4)
    p = cell.init(jax.random.key(0))
    x = jnp.ones((5, 3))

    def states_of(x):
        return rj.scan(cell, p, cell.initial_state(p), x, return_states=True)[2]

    tangent = jax.jvp(states_of, (x,), (jnp.ones_like(x),))[1]
    np.testing.assert_allclose(tangent, jax.jacfwd(states_of)(x).sum((-2, -1)), rtol=1e-5)


def test_the_modules_say_where_the_option_is():
    nnx = pytest.importorskip("flax.nnx")
    from recurjax.nnx import Recurrent

    module = Recurrent(rj.GRUCell(3, 4), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"Use module.handle\(\).scan\(xs, return_states=True\)"):
        module(jnp.ones((5, 3)), return_states=True)  # type: ignore[call-arg]
