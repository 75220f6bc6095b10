"""Truncated BPTT: `rj.chunks` and `rj.tbptt` against hand-written loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import tree_allclose

import recurjax as rj

T, K, B, IN, H = 11, 4, 3, 2, 5  # 2 full chunks of 4 steps and a tail of 3


def _data(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (T, B, IN)), jax.random.normal(ky, (T, B, H))


def _model() -> rj.Recur:
    m = rj.LSTM(IN, H, key=jax.random.key(1))
    # A non-zero initial state, so that a leak of gradient into it would show.
    return m.replace(state=jax.tree.map(lambda a: a + 0.3, m.state))


def _chunk_loss(params, m: rj.Recur, chunk):
    xs, ys = chunk
    m, out = m.replace(params=params).scan(xs)
    return jnp.mean((out - ys) ** 2), m


def _grad_step(m: rj.Recur, chunk):
    """Advance the state through the chunk; collect (loss, grad w.r.t. params)."""
    (loss, m_next), g = jax.value_and_grad(_chunk_loss, has_aux=True)(m.params, m, chunk)
    return m.replace(state=m_next.state), (loss, g)


def _oracle_chunk_grads(m: rj.Recur, xs, ys):
    """Per chunk: a plain Python loop over the steps from the detached carry, differentiated."""
    cell, params, h = m.cell, m.params, m.state
    results = []
    for start in range(0, T, K):
        stop = min(start + K, T)
        h0 = jax.tree.map(np.asarray, h)  # a constant: no gradient can reach earlier chunks

        def loss(p, h0=h0, start=start, stop=stop):
            s, total = h0, 0.0
            for t in range(start, stop):
                s, y = cell(p, s, xs[t])
                total = total + jnp.sum((y - ys[t]) ** 2)
            return total / ((stop - start) * B * H), s

        (value, h), g = jax.value_and_grad(loss, has_aux=True)(params)
        results.append((value, g))
    return results, h


def test_chunks_cover_every_step_once():
    xs = np.arange(T)
    parts = rj.chunks(xs, K)
    assert [len(c) for c in parts] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(parts), xs)
    assert all(isinstance(c, np.ndarray) for c in parts)  # NumPy in, NumPy out
    inputs, targets = np.zeros((B, T, IN)), np.arange(B * T).reshape(B, T)
    parts = rj.chunks((inputs, targets), K, time_axis=1)
    assert [(x.shape, y.shape) for x, y in parts] == [
        ((B, 4, IN), (B, 4)),
        ((B, 4, IN), (B, 4)),
        ((B, 3, IN), (B, 3)),
    ]
    np.testing.assert_array_equal(np.concatenate([y for _, y in parts], axis=1), targets)
    assert len(rj.chunks(xs, T)) == 1 and len(rj.chunks(xs, 100)) == 1
    assert [len(c) for c in rj.chunks(np.arange(8), 4)] == [4, 4]


def test_every_step_contributes_to_exactly_one_chunk_loss():
    seen, called = [], []

    def step(carry, chunk):
        seen.append(np.asarray(chunk))
        return carry + 1, chunk.shape[0]

    count, sizes = rj.tbptt(
        step, 0, np.arange(T), K, callback=lambda i, aux: called.append((i, aux))
    )
    assert count == 3 and sizes == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(T))
    assert called == [(0, 4), (1, 4), (2, 3)]  # after each chunk, in order


def test_chunk_gradients_equal_a_loop_from_the_detached_carry():
    # Jitted; test_results_equal_with_and_without_jit checks the eager walk against this one.
    xs, ys = _data()
    m = _model()
    step = jax.jit(_grad_step)
    m_end, auxes = rj.tbptt(step, m, (xs, ys), K)
    expected, h_end = _oracle_chunk_grads(m, xs, ys)
    assert len(auxes) == len(expected) == 3
    for (loss, g), (loss_ref, g_ref) in zip(auxes, expected, strict=True):
        np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
        tree_allclose(g, g_ref, rtol=1e-4, atol=1e-6)
    tree_allclose(m_end.state, h_end)


def test_results_equal_with_and_without_jit():
    xs, ys = _data(1)
    m = _model()
    eager = rj.tbptt(_grad_step, m, (xs, ys), K)
    jitted = rj.tbptt(jax.jit(_grad_step), m, (xs, ys), K)
    tree_allclose(eager, jitted, rtol=1e-5, atol=1e-6)


def test_no_gradient_leaks_across_chunks():
    """Differentiate *through* a whole tbptt walk: chunk j's loss reaches only chunk j."""
    xs, ys = _data(2)
    m = _model()

    def step(m, chunk):
        loss, m = _chunk_loss(m.params, m, chunk)
        return m, loss

    def chunk_loss_of(j):
        def f(xs, state):
            _, losses = rj.tbptt(step, m.replace(state=state), (xs, ys), K)
            return losses[j]

        return jax.grad(f, argnums=(0, 1))

    for j in range(3):
        gx, gstate = chunk_loss_of(j)(xs, m.state)
        gx = np.asarray(gx)
        assert np.all(gx[: j * K] == 0.0), f"chunk {j} leaked into earlier steps"
        assert np.all(gx[(j + 1) * K :] == 0.0)  # and nothing from later steps (causality)
        assert np.abs(gx[j * K : (j + 1) * K]).min() > 0.0
        leaves = [np.asarray(a) for a in jax.tree.leaves(gstate)]
        if j == 0:
            assert all(np.abs(a).max() > 0.0 for a in leaves)  # the first chunk sees h0
        else:
            assert all(np.all(a == 0.0) for a in leaves), f"chunk {j} reached the initial state"


def test_sum_of_chunk_losses_matches_the_one_pass_form():
    """`scan(..., truncate_every=k)` in one loss gives the summed gradient of the chunks."""
    xs, ys = _data(3)
    m = _model()
    _, auxes = rj.tbptt(jax.jit(_grad_step), m, (xs, ys), K)
    summed = jax.tree.map(lambda *g: sum(g), *[g for _, g in auxes])

    def one_pass(params):
        _, out = rj.scan(m.cell, params, m.state, xs, truncate_every=K)
        err = jnp.sum((out - ys) ** 2, axis=(1, 2))
        sizes = [min(K, T - s) for s in range(0, T, K)]
        weights = jnp.concatenate([jnp.full((n,), 1.0 / (n * B * H)) for n in sizes])
        return jnp.sum(err * weights)

    tree_allclose(jax.grad(one_pass)(m.params), summed, rtol=1e-4, atol=1e-6)


def test_a_jitted_step_compiles_at_most_twice_for_all_epochs():
    xs, ys = _data(4)
    traces = []

    @jax.jit
    def step(m, chunk):
        traces.append(chunk[0].shape[0])
        return _grad_step(m, chunk)

    m = rj.LSTM(IN, H, key=jax.random.key(1)).batched(B)  # state shapes fixed from step 1
    for _ in range(3):  # three epochs, reset between them (independent passes)
        m, _ = rj.tbptt(step, m.reset(), (xs, ys), K)
    assert traces == [K, T % K]
    traces.clear()
    rj.tbptt(step, m.reset(), (xs[:8], ys[:8]), K)  # T a multiple of K: no tail, no trace
    assert traces == []
    # An unbatched handle (state0 unbatched too) gains its batch on the first step: one
    # more trace for the first chunk, in the first epoch only.
    unbatched = _model()
    for _ in range(2):
        rj.tbptt(step, unbatched.reset(), (xs, ys), K)
    assert traces == [K, K, T % K]


def test_handles_anywhere_in_the_carry_are_truncated():
    m = _model()

    def walk(state):
        def step(carry, chunk):
            model, count = carry["model"], carry["count"]
            # A loss of the state handed in: non-zero gradient unless it was detached.
            loss = jax.tree.leaves(model.state)[0].sum() * count
            return {"model": model, "count": count + 1.0}, loss

        carry = {"model": m.replace(state=state), "count": jnp.ones(())}
        carry, losses = rj.tbptt(step, carry, np.zeros(3), 1)
        return losses[1] + losses[2] + carry["count"]  # the count is carried as is

    expected = 2.0 * np.asarray(m.state.h).sum() + 3.0 * np.asarray(m.state.h).sum() + 4.0
    np.testing.assert_allclose(walk(m.state), expected, rtol=1e-6)
    grads = jax.grad(walk)(m.state)
    assert all(np.all(np.asarray(a) == 0.0) for a in jax.tree.leaves(grads))


def test_bad_arguments_are_named():
    xs = np.zeros((5, 2))
    with pytest.raises(ValueError, match=r"expected k, the chunk length in steps, .* got 0"):
        rj.chunks(xs, 0)
    with pytest.raises(ValueError, match=r"positive int, got 2.5"):
        rj.tbptt(lambda c, x: (c, None), None, xs, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"same number of steps on time_axis=0, got \[4, 5\]"):
        rj.chunks((xs, np.zeros(4)), 2)
    with pytest.raises(ValueError, match=r"time_axis=2 is out of range .* shape \(5, 2\)"):
        rj.chunks(xs, 2, time_axis=2)
    with pytest.raises(TypeError, match=r"leaf of type int"):
        rj.chunks({"a": [1, 2]}, 2)
    with pytest.raises(TypeError, match=r"step must return a pair \(carry, aux\), got float"):
        rj.tbptt(lambda c, x: 1.0, None, xs, 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected step to be a function"):
        rj.tbptt(None, None, xs, 2)  # type: ignore[arg-type]
