"""A composite cell defined here, outside recurjax, runs through `rj.scan` by the
`SequenceCell` protocol alone: part by part, with lengths, resets and truncation, equal to
stepping it in a Python loop (values and gradients)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from cases import tree_allclose

import recurjax as rj

T, B, IN, H = 7, 3, 3, 4
RUNS: list[str] = []  # one entry per trace of `run_sequence`


@dataclasses.dataclass(frozen=True)
class SideBySide:
    """Two cells reading the same input; their outputs summed. State: `(state_a, state_b)`."""

    a: Any
    b: Any

    @property
    def in_features(self) -> int:
        return self.a.in_features

    def init(self, key: jax.Array) -> tuple[Any, Any]:
        ka, kb = jax.random.split(key)
        return self.a.init(ka), self.b.init(kb)

    def initial_state(self, params: Any) -> tuple[Any, Any]:
        return self.a.initial_state(params[0]), self.b.initial_state(params[1])

    def __call__(self, params: Any, h: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        sa, ya = self.a(params[0], h[0], x)
        sb, yb = self.b(params[1], h[1], x)
        return (sa, sb), ya + yb

    # The protocol: the engine calls run_sequence instead of stepping the cell.
    def parts(self) -> tuple[Any, Any]:
        return (self.a, self.b)

    def run_sequence(self, run: Any, params: Any, h: Any, xs: jax.Array) -> Any:
        RUNS.append("run_sequence")
        sa, ya = run(self.a, params[0], h[0], xs, select=lambda tree: tree[0])
        sb, yb = run(self.b, params[1], h[1], xs, select=lambda tree: tree[1])
        return (sa, sb), ya + yb


CELL = SideBySide(rj.LSTMCell(IN, H), rj.MinGRUCell(IN, H))


def _loop(params, h, xs, lengths, resets, s0, k):
    """The scan's definition, batched: a Python loop of steps with `where` for the
    controls, `stop_gradient` every `k` steps within each sequence's length."""
    ys = []
    h = jax.tree.map(lambda a: jnp.broadcast_to(a, (B, *a.shape)), h)
    s0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (B, *a.shape)), s0)
    for t in range(T):
        v = (t < lengths)[:, None]
        if t and t % k == 0:  # a sequence's loop stops at its length: no cut past it
            h = jax.tree.map(lambda a, v=v: jnp.where(v, jax.lax.stop_gradient(a), a), h)
        r = resets[t][:, None] & v  # past its length a sequence is frozen: no reset there
        h = jax.tree.map(lambda a, b, r=r: jnp.where(r, a, b), s0, h)
        new, y = CELL(params, h, xs[t])
        h = jax.tree.map(lambda a, b, v=v: jnp.where(v, a, b), new, h)
        ys.append(jnp.where(v, y, 0.0))
    return h, jnp.stack(ys)


def test_a_composite_defined_outside_runs_with_lengths_resets_and_truncation():
    params = CELL.init(jax.random.key(0))
    h0 = CELL.initial_state(params)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((T, B, IN), dtype=np.float32)
    lengths = np.array([T, 4, 0])
    resets = rng.random((T, B)) < 0.3
    w = rng.standard_normal((T, B, H), dtype=np.float32)
    s0 = jax.tree.map(lambda a: a + 0.5, h0)
    padded = np.where((np.arange(T)[:, None] < lengths)[..., None], xs, np.nan)

    def loss(run, params, s0, xs):
        h, ys = run(params, s0, xs)
        return jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(h))

    def by_engine(strategy):
        def run(params, s0, xs):
            return rj.scan(
                CELL, params, h0, xs, lengths=lengths, resets=resets, state0=s0,
                truncate_every=3, strategy=strategy,
            )  # fmt: skip

        return run

    def by_loop(params, s0, xs):
        return _loop(params, h0, xs, lengths, resets, s0, 3)

    want = jax.value_and_grad(lambda *a: loss(by_loop, *a), argnums=(0, 1))(params, s0, xs)
    for strategy in ("auto", "associative"):  # LSTM fused and minGRU associative
        RUNS.clear()
        got = jax.value_and_grad(lambda *a, s=strategy: loss(by_engine(s), *a), argnums=(0, 1))(
            params, s0, padded
        )
        assert RUNS, "the engine did not call run_sequence"
        tree_allclose(got, want, rtol=1e-5, atol=1e-5)
    h, ys = by_engine("auto")(params, s0, padded)
    tree_allclose((h, ys), by_loop(params, s0, xs), rtol=1e-5, atol=1e-6)
    assert not np.asarray(ys)[4:, 1].any() and not np.asarray(ys)[:, 2].any()  # padding: zeros
