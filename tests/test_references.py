"""The newer cells against their reference implementations: RGLRUCell against RecurrentGemma's
JAX `RGLRU`, SLSTMCell and MLSTMCell against the `xlstm` package's PyTorch paths, and
SelectiveSSMCell against Mamba's `selective_scan_ref`. Those packages do not install next to
recurjax's tests, so `fixtures/make_reference_fixtures.py` ran each one in its own
environment and saved its inputs, params, outputs, final states and the gradients of
`sum(y * g)`; each test maps the reference's params to the cell's layout, runs recurjax on the
same inputs and compares all of them. The mappings here are the ones a user porting weights
needs."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurjax as rj

FIXTURES = Path(__file__).parent / "fixtures"


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as f:
        return dict(f)


def _time_major(a: np.ndarray) -> jax.Array:
    """`(B, T, F)` to `(T, B, F)`."""
    return jnp.asarray(np.swapaxes(a, 0, 1))


def _close(actual, expected, rtol: float, atol: float) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


def _sequence_and_grads(cell, params, h0, xs, g, strategy):
    """`(ys, h)` of `rj.scan` and the gradients of `sum(ys * g)` for params, `xs` and `h0`."""

    def loss(params, xs, h0):
        h, ys = rj.scan(cell, params, h0, xs, strategy=strategy)
        return jnp.sum(ys * g), (ys, h)

    grads, (ys, h) = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, h0)
    return ys, h, grads


# --- RG-LRU: RecurrentGemma 1.0.1, float32 (its scan accumulates in float32) ----------------


def _rglru(f):
    """RecurrentGemma's `RGLRU` params as `RGLRUCell`'s: the same `BlockDiagonalLinear`
    blocks `w: (heads, d, d)` with the biases `(heads, d)` flattened; `a_param` is `lam`."""
    heads, d, _ = f["params.a_gate.w"].shape
    params = {
        "wa": f["params.a_gate.w"],
        "ba": f["params.a_gate.b"].reshape(-1),
        "wx": f["params.input_gate.w"],
        "bx": f["params.input_gate.b"].reshape(-1),
        "lam": f["params.a_param"],
    }
    return rj.RGLRUCell(heads * d, heads * d, num_heads=heads), jax.tree.map(jnp.asarray, params)


@pytest.mark.parametrize("strategy", ["sequential", "associative", "hoisted"])
def test_rglru_equals_recurrentgemma(strategy):
    f = _load("rglru_recurrentgemma")
    cell, params = _rglru(f)
    ys, h, (dp, dxs, dh0) = _sequence_and_grads(
        cell, params, jnp.asarray(f["h0"]), _time_major(f["x"]), _time_major(f["g"]), strategy
    )
    _close(ys, _time_major(f["y"]), 1e-5, 1e-6)
    _close(h, f["h"], 1e-5, 1e-6)
    _close(dxs, _time_major(f["dx"]), 1e-5, 1e-5)
    _close(dh0, f["dh0"], 1e-5, 1e-5)
    for ours, theirs in (("wa", "a_gate.w"), ("wx", "input_gate.w"), ("lam", "a_param")):
        _close(dp[ours], f[f"grads.{theirs}"], 1e-5, 1e-5)
    for ours, theirs in (("ba", "a_gate.b"), ("bx", "input_gate.b")):
        _close(dp[ours], f[f"grads.{theirs}"].reshape(-1), 1e-5, 1e-5)


def test_rglru_first_step_normalises_where_recurrentgemma_does_not():
    """The documented difference: at a segment's first token RecurrentGemma writes `i * x`
    into the state; the paper's recurrence, which RGLRUCell runs from any state, writes
    `sqrt(1 - a^2) * i * x`. From then on both run the same recurrence."""
    f = _load("rglru_recurrentgemma")
    cell, params = _rglru(f)
    x0 = jnp.asarray(f["x"][:, 0])
    a, b = cell.coefficients(params, x0)
    _, y0 = cell(params, jnp.zeros_like(x0), x0)
    _close(y0, b, 1e-6, 1e-7)
    _close(y0 / jnp.sqrt(1 - a**2), f["y_first"][:, 0], 1e-5, 1e-6)
    # After the first token, RecurrentGemma's state h1 = i*x continues under the recurrence.
    h1 = jnp.asarray(f["y_first"][:, 0])
    _, ys = rj.scan(cell, params, h1, _time_major(f["x"][:, 1:]))
    _close(ys, _time_major(f["y_first"][:, 1:]), 1e-5, 1e-6)


# --- sLSTM and mLSTM: xlstm 2.0.6, float64 -----------------------------------------------


def _slstm(f):
    """xlstm's sLSTM cell params as `SLSTMCell`'s. xlstm's cell takes the gate
    pre-activations `x @ W` from the layer around it, laid out gate, head, unit, which is
    `wi`'s; its recurrent kernel `(heads, d, gates, d)` is `wh: (heads, d, 4 d)` reshaped; its
    bias `(heads, gates, d)` goes gate-major."""
    heads, d, gates, _ = f["slstm_R"].shape
    params = {
        "wi": f["W"],
        "wh": f["slstm_R"].reshape(heads, d, gates * d),
        "b": f["slstm_b"].transpose(1, 0, 2).reshape(-1),
    }
    cell = rj.SLSTMCell(f["W"].shape[0], heads * d, num_heads=heads)
    return cell, jax.tree.map(jnp.asarray, params)


@pytest.mark.parametrize("start", ["zero", "state"])
def test_slstm_equals_xlstm_vanilla_backend(start):
    f = _load("xlstm_reference")
    with jax.enable_x64(True):
        cell, params = _slstm(f)
        batch = f["x"].shape[0]
        if start == "zero":
            h0 = jax.tree.map(
                lambda a: jnp.broadcast_to(a, (batch, *a.shape)), cell.initial_state(params)
            )
        else:
            h0 = rj.SLSTMState(*(jnp.asarray(a) for a in f["state0"]))
        ys, state, (dp, dxs, _) = _sequence_and_grads(
            cell, params, h0, _time_major(f["x"]), _time_major(f["g"]), "sequential"
        )
        ref = f"slstm_{start}_"
        _close(ys, _time_major(f[ref + "y"]), 1e-10, 1e-12)
        y, c, n, m = f[ref + "last"]
        _close(state.h, y, 1e-10, 1e-12)
        if start == "state":  # the same stabilised state, entry by entry
            for ours, theirs in zip(state[1:], (c, n, m), strict=True):
                _close(ours, theirs, 1e-10, 1e-12)
        else:
            # xlstm starts its stabiliser at the first input gate where the normaliser is
            # zero, recurjax at max(log f, i~); the unscaled c and n are the same.
            for ours, theirs in ((state.c, c), (state.n, n)):
                _close(ours * jnp.exp(state.m), theirs * np.exp(m), 1e-10, 1e-12)
        _close(dxs, _time_major(f[ref + "dx"]), 1e-9, 1e-12)
        _close(dp["wi"], f[ref + "dW"], 1e-9, 1e-12)
        _close(dp["wh"], f[ref + "dR"].reshape(dp["wh"].shape), 1e-9, 1e-12)
        _close(dp["b"], f[ref + "db"].transpose(1, 0, 2).reshape(-1), 1e-9, 1e-12)


def test_mlstm_equals_xlstm_recurrent_and_parallel_backends():
    """xlstm's step and parallel functions take `q, k, v` and the gate pre-activations; the
    fixture computed them from `x @ wi + b` in MLSTMCell's layout and applied the output gate
    (in xlstm's layer it sits outside the cell, after a group norm), with `eps=0`: their
    default adds 1e-6 to the read-out's denominator, which the paper and MLSTMCell do not."""
    f = _load("xlstm_reference")
    with jax.enable_x64(True):
        heads = f["mlstm_m"].shape[1]
        H = (f["mlstm_wi"].shape[1] - 2 * heads) // 4
        cell = rj.MLSTMCell(f["x"].shape[-1], H, num_heads=heads)
        params = {"wi": jnp.asarray(f["mlstm_wi"]), "b": jnp.asarray(f["mlstm_b"])}
        batch = f["x"].shape[0]
        h0 = jax.tree.map(
            lambda a: jnp.broadcast_to(a, (batch, *a.shape)), cell.initial_state(params)
        )
        ys, state, (dp, dxs, _) = _sequence_and_grads(
            cell, params, h0, _time_major(f["x"]), _time_major(f["g"]), "sequential"
        )
        _close(ys, _time_major(f["mlstm_y"]), 1e-10, 1e-12)
        _close(ys, _time_major(f["mlstm_y_parallel"]), 1e-10, 1e-12)
        # xlstm's memory is k v^T per head, MLSTMCell's v k^T.
        _close(state.C, np.swapaxes(f["mlstm_C"], -1, -2).reshape(batch, -1), 1e-10, 1e-12)
        _close(state.n, f["mlstm_n"].reshape(batch, -1), 1e-10, 1e-12)
        _close(state.m, f["mlstm_m"].reshape(batch, -1), 1e-10, 1e-12)
        _close(dxs, _time_major(f["mlstm_dx"]), 1e-9, 1e-12)
        _close(dp["wi"], f["mlstm_dwi"], 1e-9, 1e-12)
        _close(dp["b"], f["mlstm_db"], 1e-9, 1e-12)


# --- S6: Mamba's selective_scan_ref (mamba-ssm 2.3.2.post1), float32 -----------------------


@pytest.mark.parametrize("strategy", ["sequential", "associative", "hoisted"])
def test_selective_ssm_equals_mambas_selective_scan_ref(strategy):
    f = _load("s6_mamba")
    D, N = f["params.A_log"].shape
    R = f["params.dt_proj_weight"].shape[1]
    # Mamba's x_proj computes [dt_low, B, C] from the input in one matmul; dt_proj's weight
    # and bias give Δ before the softplus. SelectiveSSMCell keeps the pieces apart, as `x @ w`.
    x_proj = f["params.x_proj_weight"]
    params = {
        "A_log": f["params.A_log"],
        "w_dt1": x_proj[:R].T,
        "w_dt2": f["params.dt_proj_weight"].T,
        "b_dt": f["params.dt_proj_bias"],
        "w_B": x_proj[R : R + N].T,
        "w_C": x_proj[R + N :].T,
        "D": f["params.D"],
    }
    params = jax.tree.map(jnp.asarray, params)
    cell = rj.SelectiveSSMCell(D, state_size=N, dt_rank=R)
    xs = jnp.asarray(f["u"].transpose(2, 0, 1))  # (B, D, T) to (T, B, D)
    h0 = jnp.zeros((xs.shape[1], cell.hidden_size), xs.dtype)
    ys, h, (dp, dxs, _) = _sequence_and_grads(
        cell, params, h0, xs, jnp.asarray(f["g"].transpose(2, 0, 1)), strategy
    )
    _close(ys, f["y"].transpose(2, 0, 1), 1e-5, 1e-6)
    _close(h, f["last_state"].reshape(h.shape), 1e-5, 1e-6)
    _close(dxs, f["du"].transpose(2, 0, 1), 1e-5, 1e-5)
    d_x_proj = np.concatenate([dp["w_dt1"].T, dp["w_B"].T, dp["w_C"].T])
    _close(d_x_proj, f["grads.x_proj_weight"], 1e-5, 1e-5)
    _close(dp["w_dt2"].T, f["grads.dt_proj_weight"], 1e-5, 1e-5)
    for ours, theirs in (("b_dt", "dt_proj_bias"), ("A_log", "A_log"), ("D", "D")):
        _close(dp[ours], f[f"grads.{theirs}"], 1e-5, 1e-5)
