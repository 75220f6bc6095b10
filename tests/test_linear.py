"""Linear recurrences: minGRU, minLSTM, LRU, RG-LRU and a user `LinearCell`, sequential vs
associative.

The sequential strategy is `lax.scan` of the cell's step, itself checked against a Python
loop of steps for minGRU in the shared contract suite (cases.py) and test_sequences.py.
Here the associative and chunked strategies must equal it to 1e-5 (relative, float32) in
outputs, final states and gradients, with a non-zero initial state, lengths, resets and
reverse, under jit; and each cell's step must be its paper's equations.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurjax as rj


@dataclasses.dataclass(frozen=True)
class Leaky(rj.LinearCell):
    """A user linear cell: `h' = sigmoid(d) h + x W`, output `tanh(h')`."""

    in_features: int
    hidden_size: int

    def init(self, key, dtype=jnp.float32):
        w = jax.random.normal(key, (self.in_features, self.hidden_size), dtype)
        return {"w": w, "d": jnp.full((self.hidden_size,), 2.0, dtype)}

    def coefficients(self, params, x):
        b = x @ params["w"]
        return jnp.broadcast_to(jax.nn.sigmoid(params["d"]), b.shape), b

    def readout(self, params, h, x):
        return jnp.tanh(h)


CELLS = [
    rj.MinGRUCell(3, 4),
    rj.MinLSTMCell(3, 4),
    rj.LRUCell(3, 4, r_min=0.5),
    Leaky(3, 4),
    rj.RGLRUCell(4, 4, num_heads=2),
    rj.SelectiveSSMCell(3, state_size=2, dt_rank=2),
]


def _rel(a, b):
    return max(
        float(
            np.max(np.abs(np.asarray(x) - np.asarray(y)))
            / max(np.max(np.abs(np.asarray(y))), 1e-30)
        )
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _strategy_runs(cell):
    """`run(strategy)`: values and gradients of one loss through `rj.scan`, T = 300 (more
    than one chunk of 256, with a tail), lengths, resets, reverse, a non-zero `h0`."""
    T = 300
    params = cell.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((T, 2, cell.in_features), dtype=np.float32))
    lengths = np.array([T, 170])
    resets = rng.random((T, 2)) < 0.02
    h0 = jnp.ones((2, cell.hidden_size), cell.initial_state(params).dtype) * 0.5

    def run(strategy):
        def loss(params, h0, xs):
            h, ys = rj.scan(
                cell, params, h0, xs, strategy=strategy, lengths=lengths, resets=resets,
                reverse=True,
            )  # fmt: skip
            return jnp.sum(ys**2) + jnp.sum(jnp.abs(h) ** 2), (h, ys)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, h0, xs)

    return run


# Every day, minGRU (the strategies do not depend on the cell, only on its protocol); the
# other cells, the user's among them, in the slow tier.
EVERYDAY = (rj.MinGRUCell,)


@pytest.mark.parametrize(
    "cell",
    [
        pytest.param(c, id=repr(c), marks=() if isinstance(c, EVERYDAY) else pytest.mark.slow)
        for c in CELLS
    ],
)
def test_associative_hoisted_and_chunked_equal_sequential(cell):
    run = _strategy_runs(cell)
    reference = run("sequential")
    for strategy in ("associative", "hoisted", "chunked"):
        assert _rel(run(strategy), reference) < 1e-5, strategy


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS, ids=repr)
def test_auto_equals_sequential_on_every_cell(cell):
    run = _strategy_runs(cell)
    assert _rel(run("auto"), run("sequential")) < 1e-5


def test_steps_are_the_papers_equations():
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    h = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731

    cell = rj.MinGRUCell(3, 4)
    p = {k: np.asarray(v) for k, v in cell.init(jax.random.key(0)).items()}
    p["b"] = np.linspace(-1, 1, 8, dtype=np.float32)
    pre = x @ p["wi"] + p["b"]
    z, cand = sig(pre[:, :4]), pre[:, 4:]
    new, y = cell(p, h, x)
    np.testing.assert_allclose(new, (1 - z) * h + z * cand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, new)

    cell = rj.MinLSTMCell(3, 4)
    p = {k: np.asarray(v) for k, v in cell.init(jax.random.key(0)).items()}
    p["b"] = np.linspace(-1, 1, 12, dtype=np.float32)
    pre = x @ p["wi"] + p["b"]
    f, i, cand = sig(pre[:, :4]), sig(pre[:, 4:8]), pre[:, 8:]
    new, _ = cell(p, h, x)
    np.testing.assert_allclose(new, f / (f + i) * h + i / (f + i) * cand, rtol=1e-5, atol=1e-6)

    cell = rj.LRUCell(3, 4)
    p = {k: np.asarray(v, np.float64) for k, v in cell.init(jax.random.key(0)).items()}
    hc = h + 0.5j * h[::-1]
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    B, C = p["B_re"] + 1j * p["B_im"], p["C_re"] + 1j * p["C_im"]
    expected = lam * hc + np.exp(p["gamma_log"]) * (x @ B)
    f32 = {k: v.astype(np.float32) for k, v in p.items()}
    new, y = cell(f32, hc.astype(np.complex64), x)
    np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, (expected @ C).real + p["D"] * x, rtol=1e-5, atol=1e-5)
    # Ring initialisation: |lambda| in [r_min, r_max], gamma = sqrt(1 - |lambda|^2).
    cell = rj.LRUCell(3, 64, r_min=0.4, r_max=0.9, max_phase=0.5)
    p = cell.init(jax.random.key(3))
    r = np.exp(-np.exp(np.asarray(p["nu_log"])))
    assert r.min() >= 0.4 - 1e-6 and r.max() <= 0.9 + 1e-6
    assert np.exp(np.asarray(p["theta_log"])).max() <= 0.5
    np.testing.assert_allclose(np.exp(p["gamma_log"]), np.sqrt(1 - r**2), rtol=1e-5)


# 65,536 steps: the slow tier, minGRU and the LRU (3a817df had dropped the LRU for time).
@pytest.mark.slow
@pytest.mark.parametrize(
    "cell",
    [
        rj.MinGRUCell(2, 8),
        rj.LRUCell(2, 8, r_min=0.99),
        rj.RGLRUCell(8, 8, num_heads=2),
        rj.SelectiveSSMCell(2, state_size=4),
    ],
    ids=repr,
)
def test_long_sequences_stay_finite(cell):
    T = 65_536
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, 1, cell.in_features))

    def loss(params, strategy):
        _, ys = rj.scan(cell, params, cell.initial_state(params), xs, strategy=strategy)
        return jnp.mean(ys**2), ys

    grads = {}
    for strategy in ("sequential", "associative", "chunked", "hoisted"):
        (value, ys), g = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(
            params, strategy
        )
        assert np.isfinite(float(value)) and np.isfinite(np.asarray(ys)).all(), strategy
        assert all(np.isfinite(a).all() for a in jax.tree.leaves(g)), strategy
        grads[strategy] = (ys, g)
    assert _rel(grads["associative"], grads["sequential"]) < 1e-4
    assert _rel(grads["chunked"], grads["sequential"]) < 1e-4
    assert _rel(grads["hoisted"], grads["sequential"]) < 1e-4


def test_linear_cells_in_chains_and_errors():
    net = rj.chain(rj.MinGRUCell(3, 4), rj.Dense(4, 2))
    params = net.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (20, 3))
    h1, ys1 = rj.scan(net, params, net.initial_state(params), xs, strategy="sequential")
    h2, ys2 = rj.scan(net, params, net.initial_state(params), xs, strategy="associative")
    assert _rel((h2, ys2), (h1, ys1)) < 1e-5
    lstm = rj.LSTMCell(3, 4)
    msg = "strategy='associative' needs a cell that is linear in its state"
    with pytest.raises(ValueError, match=re.escape(msg)):
        rj.scan(
            lstm,
            lstm.init(jax.random.key(0)),
            lstm.initial_state(lstm.init(jax.random.key(0))),
            xs,
            strategy="associative",
        )
    with pytest.raises(ValueError, match=re.escape("expected 0 <= r_min < r_max <= 1")):
        rj.LRUCell(3, 4, r_min=0.9, r_max=0.5)


def _rg_lru_numpy(params, xs, h0):
    """Griffin's RG-LRU (De et al. 2024, eq. 1-4) as a float64 NumPy loop over one sequence:
    block-diagonal gates, `a_t = sigmoid(-lam)^(8 r_t)`, `h = a h + sqrt(1 - a^2) (i x)`."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    n, d, _ = p["wa"].shape

    def blocks(x, w, b):
        return np.concatenate([x[k * d : (k + 1) * d] @ w[k] for k in range(n)]) + b

    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h, ys = np.asarray(h0, np.float64), []
    for x in np.asarray(xs, np.float64):
        r, i = sig(blocks(x, p["wa"], p["ba"])), sig(blocks(x, p["wx"], p["bx"]))
        a = sig(-p["lam"]) ** (8 * r)
        h = a * h + np.sqrt(1 - a**2) * (i * x)
        ys.append(h)
    return np.stack(ys), h


def test_rg_lru_step_is_griffins_equations_and_its_errors():
    cell = rj.RGLRUCell(6, 6, num_heads=3)
    params = jax.tree.map(
        lambda a: a + 0.3 * jax.random.normal(jax.random.key(7), a.shape),
        cell.init(jax.random.key(0)),
    )  # non-zero biases
    xs = np.random.default_rng(0).standard_normal((12, 6)).astype(np.float32)
    h0 = np.linspace(-1, 1, 6).astype(np.float32)
    h, ys = rj.scan(cell, params, jnp.asarray(h0), jnp.asarray(xs))
    ys_ref, h_ref = _rg_lru_numpy(params, xs, h0)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-6)
    a = jax.nn.sigmoid(-cell.init(jax.random.key(1))["lam"]) ** 8  # the decay at r = 1
    assert bool(((a >= 0.9 - 1e-6) & (a <= 0.999 + 1e-6)).all())
    fix = "rj.chain(rj.Dense(3, 4), rj.RGLRUCell(4, 4))"
    with pytest.raises(ValueError, match=re.escape(fix)):
        rj.RGLRUCell(3, 4)
    with pytest.raises(ValueError, match=re.escape("num_heads=3 must divide hidden_size=4")):
        rj.RGLRUCell(4, 4, num_heads=3)


def _s6_numpy(params, xs):
    """Mamba's S6 recurrence as in the paper's reference scan (`selective_scan_ref`), float64
    NumPy, one sequence: `h = exp(Δ A) h + Δ B x`, `y = C h + D x`, per channel."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    softplus = lambda z: np.log1p(np.exp(z))  # noqa: E731
    A = -np.exp(p["A_log"])  # (D, N)
    h, ys = np.zeros_like(A), []
    for x in np.asarray(xs, np.float64):
        dt = softplus(x @ p["w_dt1"] @ p["w_dt2"] + p["b_dt"])  # (D,)
        B, C = x @ p["w_B"], x @ p["w_C"]  # (N,)
        h = np.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B[None, :]
        ys.append(h @ C + p["D"] * x)
    return np.stack(ys), h


def test_selective_ssm_step_is_mambas_recurrence_and_its_errors():
    cell = rj.SelectiveSSMCell(5, state_size=3, dt_rank=2)
    params = jax.tree.map(
        lambda a: a + 0.2 * jax.random.normal(jax.random.key(5), a.shape),
        cell.init(jax.random.key(0)),
    )
    xs = np.random.default_rng(1).standard_normal((10, 5)).astype(np.float32)
    h, ys = rj.scan(cell, params, cell.initial_state(params), jnp.asarray(xs))
    ys_ref, h_ref = _s6_numpy(params, xs)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, h_ref.reshape(-1), rtol=1e-5, atol=1e-6)
    init = cell.init(jax.random.key(2))
    dt = jax.nn.softplus(init["b_dt"])
    assert bool(((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all())
    np.testing.assert_allclose(-jnp.exp(init["A_log"][0]), [-1.0, -2.0, -3.0], rtol=1e-6)
    assert rj.SelectiveSSMCell(40).dt_rank == 3  # ceil(40 / 16), Mamba's default
    with pytest.raises(TypeError, match="expected state_size to be a positive int, got 0"):
        rj.SelectiveSSMCell(4, state_size=0)
