"""The cuDNN strategy (`strategy="cudnn"`), checked on the CPU.

No cuDNN here: the tests run the strategy with its one call to cuDNN replaced by what cuDNN
computes, `jax.experimental.rnn.lstm_ref` on the weights that
`jax.experimental.rnn.unpack_lstm_weights` reads out of recurjax's packed vector
(`cudnn.reference_lstm`). Everything around that call runs as on a GPU: which cells form a
stack, the packing, the flattened batch, lengths (0 included) as `seq_lengths`, reversal,
the initial and final states of every layer and direction. Each case is compared with
`strategy="sequential"` (itself checked against the oracle loop in test_scan.py): outputs,
final states, and the gradients w.r.t. the params, the initial state and the inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import IN, strategies_chosen, tree_allclose
from jax.experimental import rnn

import recurjax as rj
from recurjax._scan import policy
from recurjax._scan.strategies import REGISTRY, cudnn

T, H = 6, 4
KEY = jax.random.key(0)


@pytest.fixture
def cudnn_calls(monkeypatch):
    """`strategy="cudnn"` with cuDNN's call replaced by its reference; yields the keyword
    arguments of every call made while tracing."""
    calls: list[dict] = []

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return cudnn.reference_lstm(*args, **kwargs)

    monkeypatch.setitem(REGISTRY, "cudnn", cudnn.on_any_backend(counted))
    jax.clear_caches()  # trace afresh, so that the calls are counted
    return calls


def test_packed_weights_unpack_to_each_cells_own():
    net = rj.stacked(rj.LSTMCell, IN, H, num_layers=2, bidirectional=True)
    net = rj.chain(
        rj.bidirectional(rj.LSTMCell(IN, H), rj.LSTMCell(IN, H, use_bias=False)),
        net.cells[1],
    )
    params = net.init(KEY)
    cells, directions = net.layers()
    flat = cudnn.pack(cells, net.split_layers(params))
    assert flat.shape == (rnn.get_num_params_in_lstm(IN, H, 2, True),)
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, IN, H, 2, True)
    for k, (cell, p) in enumerate(zip(cells, net.split_layers(params), strict=True)):
        p = cell.with_biases(p)
        np.testing.assert_array_equal(w_ih[k], p["wi"].T)
        np.testing.assert_array_equal(w_hh[k], p["wh"].T)
        np.testing.assert_array_equal(b_ih[k], p["b"])
        np.testing.assert_array_equal(b_hh[k], np.zeros(4 * H))
    assert directions == 2 and not np.any(b_ih[1])  # the cell without biases


def _stack(layers, bidirectional):
    return rj.stacked(rj.LSTMCell, IN, H, num_layers=layers, bidirectional=bidirectional)


# name: (cell, batch, scan options, cuDNN calls as (num_layers, bidirectional))
CASES = {
    "stacked-bidirectional-lengths": (_stack(2, True), (3,), {"lengths": True}, [(2, True)]),
    "lstm-reverse-two-batch-axes": (
        rj.LSTMCell(IN, H, forget_bias=1.0),
        (2, 3),
        {"reverse": True},
        [(1, False)],
    ),
    "lstm-reverse-lengths": (
        rj.LSTMCell(IN, H),
        (3,),
        {"reverse": True, "lengths": True},
        [(1, False)],
    ),
    "bidirectional-batch-major": (
        rj.bidirectional(rj.LSTMCell(IN, H), rj.LSTMCell(IN, H)),
        (3,),
        {"lengths": True, "time_axis": 1},
        [(1, True)],
    ),
    "stacked-3-reverse-lengths": (
        _stack(3, False),
        (3,),
        {"lengths": True, "reverse": True},
        [(3, False)],
    ),
    "chain-with-a-dense-head": (
        rj.chain(rj.LSTMCell(IN, H), rj.LSTMCell(H, H, use_bias=False), rj.Dense(H, 2)),
        (3,),
        {"lengths": True},
        [(1, False), (1, False)],  # part by part: the chain is no stack
    ),
    "unbatched": (rj.LSTMCell(IN, H), (), {}, [(1, False)]),
    # A stack nested in a chain with a head stays one call.
    "stack-in-a-chain-with-a-dense-head": (
        rj.chain(_stack(2, True), rj.Dense(2 * H, 2)),
        (3,),
        {"lengths": True},
        [(2, True)],
    ),
    # No stack: each direction alone, the backward one reversed within the lengths by cuDNN's
    # strategy itself (the engine reverses a whole scan with lengths before it).
    "bidirectional-sum-reverse-lengths": (
        rj.bidirectional(rj.LSTMCell(IN, H), rj.LSTMCell(IN, H), "sum"),
        (3,),
        {"lengths": True, "reverse": True},
        [(1, False), (1, False)],
    ),
}
EVERYDAY = (
    "stacked-bidirectional-lengths",
    "lstm-reverse-two-batch-axes",
    "bidirectional-sum-reverse-lengths",
)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in EVERYDAY else pytest.mark.slow) for n in CASES]
)
def test_cudnn_equals_the_sequential_strategy(name, cudnn_calls):
    check_against_sequential(name)
    made = [(c["num_layers"], c["bidirectional"]) for c in cudnn_calls]
    assert made == CASES[name][3]


def check_against_sequential(name):
    """`strategy="cudnn"` equals `"sequential"` on the case `name`: outputs, final states,
    and the gradients w.r.t. params, initial state and inputs."""
    cell, batch, options, _ = CASES[name]
    options = dict(options)
    rng = np.random.default_rng(0)
    params = cell.init(KEY)
    h0 = jax.tree.map(
        lambda a: jnp.asarray(rng.standard_normal((*batch, *a.shape), dtype=np.float32)),
        cell.initial_state(params),
    )
    xs = rng.standard_normal((T, *batch, IN), dtype=np.float32)
    if options.pop("lengths", False):
        options["lengths"] = np.array([T, 0, 3])  # 0: cuDNN takes none, and runs one step
        xs[np.arange(T)[:, None] >= options["lengths"]] = np.nan  # never read
    if options.get("time_axis") == 1:
        xs = np.swapaxes(xs, 0, 1)
    xs = jnp.asarray(xs)
    out = jax.eval_shape(lambda: rj.scan(cell, params, h0, xs, **options)[1])
    w = jnp.asarray(rng.standard_normal(out.shape, dtype=np.float32))

    def run(strategy):
        def loss(params, h0, xs):
            h, ys = rj.scan(cell, params, h0, xs, strategy=strategy, **options)
            return jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(h)), (h, ys)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, h0, xs)

    (_, (h, ys)), grads = run("cudnn")
    (_, (h_want, ys_want)), grads_want = run("sequential")
    tree_allclose(ys, ys_want, rtol=1e-5, atol=1e-6)
    tree_allclose(h, h_want, rtol=1e-5, atol=1e-6)
    tree_allclose(grads, grads_want, rtol=1e-5, atol=1e-5)
    if "lengths" in options:  # the sequence of length 0 keeps its initial state, exactly
        for a, a0 in zip(jax.tree.leaves(h), jax.tree.leaves(h0), strict=True):
            np.testing.assert_array_equal(a[1], a0[1])


def test_cudnn_runs_where_cudnn_is():
    """On this CPU, naming it is an error that says where it runs; `auto` never picks it."""
    if jax.default_backend() == "gpu":
        pytest.skip("this backend has cuDNN (test_cudnn_on_a_gpu)")
    cell = rj.LSTMCell(IN, H)
    params = cell.init(KEY)
    xs = jnp.zeros((T, 2, IN))
    with pytest.raises(
        ValueError,
        match=r"scan\(LSTMCell\(3 => 4\)\): strategy='cudnn' runs on a GPU only \(cuDNN's "
        r"LSTM, jax.experimental.rnn\); this backend is 'cpu'. Use strategy='auto' or 'fused'",
    ):
        rj.scan(cell, params, cell.initial_state(params), xs, strategy="cudnn")
    with strategies_chosen() as chosen:
        rj.scan(cell, params, cell.initial_state(params), xs)
    assert chosen == ["fused"]


def test_auto_picks_cudnn_on_no_backend_until_a_gpu_run_measures_it():
    xs = jnp.zeros((T, 2, IN))
    assert policy.for_backend("cpu").measured
    for backend in ("cpu", "gpu", "tpu", "some-new-backend"):
        assert not policy.cudnn_picks(rj.LSTMCell(IN, H), xs, backend)
    assert not policy.for_backend("gpu").measured
    # Unmeasured backends keep the CPU's rules (what `auto` did before per-backend rules).
    assert policy.for_backend("gpu") == policy.dataclasses.replace(policy.CPU, measured=False)


BAD = {
    "resets": (
        rj.LSTMCell(IN, H),
        {"resets": np.zeros((T, 2), bool)},
        r"strategy='cudnn' cannot take resets \(it runs each sequence from its initial state "
        r"to its length\). Use strategy='fused' \(or 'auto'\)",
    ),
    "truncation": (rj.LSTMCell(IN, H), {"truncate_every": 2}, r"cannot take truncate_every"),
    "remat": (_stack(2, True), {"remat": 2}, r"cannot take remat \(it runs the whole sequence"),
    "a GRU": (
        rj.GRUCell(IN, H),
        {},
        r"strategy='cudnn' needs an LSTMCell, a bidirectional pair of them with "
        r"merge='concat', or a chain of such layers .*; GRUCell\(3 => 4\) is not one\.",
    ),
    "a peephole LSTM in a chain": (
        rj.chain(rj.PeepholeLSTMCell(IN, H), rj.Dense(H, 2)),
        {},
        r"scan\(Chain\(PeepholeLSTMCell\(3 => 4\), Dense\(4 => 2\)\)\): strategy='cudnn' "
        r"needs an LSTMCell, .*; Chain\(PeepholeLSTMCell\(3 => 4\), Dense\(4 => 2\)\) is "
        r"not such a stack\.",
    ),
}


@pytest.mark.parametrize("name", BAD)
def test_what_cudnn_cannot_do_raises(name, cudnn_calls):
    cell, options, message = BAD[name]
    params = cell.init(KEY)
    xs = jnp.zeros((T, 2, IN))
    with pytest.raises(ValueError, match=message):
        rj.scan(cell, params, cell.initial_state(params), xs, strategy="cudnn", **options)
    assert cudnn_calls == []


def test_dtypes_forward_mode_and_state_history_raise(cudnn_calls):
    cell = rj.LSTMCell(IN, H)
    params = cell.init(KEY)
    xs = jnp.zeros((T, 2, IN))
    h0 = cell.initial_state(params)
    p16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    with pytest.raises(
        ValueError,
        match=r"strategy='cudnn' computes in float32 only \(jax.experimental.rnn\); got params, "
        r"state and inputs of \['bfloat16', 'float32'\]. Cast them to float32",
    ):
        rj.scan(cell, p16, h0, xs, strategy="cudnn")
    with pytest.raises(TypeError, match=r"strategy='cudnn' has a hand-written reverse-mode"):
        jax.jvp(lambda xs: rj.scan(cell, params, h0, xs, strategy="cudnn")[1], (xs,), (xs,))
    with pytest.raises(ValueError, match=r"strategy='cudnn' cannot return the state after"):
        rj.scan(cell, params, h0, xs, strategy="cudnn", return_states=True)
    with pytest.raises(
        ValueError, match=r"strategy='cudnn' cannot take jax.vmap \(cuDNN's call has no batching"
    ):
        jax.vmap(lambda xs: rj.scan(cell, params, h0, xs, strategy="cudnn")[1])(xs[None])


def test_zero_steps(cudnn_calls):
    net = _stack(2, True)
    params = net.init(KEY)
    h0 = net.initial_state(params)
    h, ys = rj.scan(net, params, h0, jnp.zeros((0, 2, IN)), strategy="cudnn")
    assert ys.shape == (0, 2, 2 * H)
    tree_allclose(h, jax.tree.map(lambda a: jnp.broadcast_to(a, (2, *a.shape)), h0))


# Composites that are no stack: cuDNN runs each LSTM part alone, the rest as `auto` picks.
NO_STACK = {
    "a sum merge": rj.bidirectional(rj.LSTMCell(IN, H), rj.LSTMCell(IN, H), "sum"),
    "dropout between layers": rj.stacked(rj.LSTMCell, IN, H, num_layers=2, dropout=0.1),
    "two hidden sizes": rj.chain(rj.LSTMCell(IN, H), rj.LSTMCell(H, 5)),
}


@pytest.mark.parametrize("name", NO_STACK)
def test_a_composite_that_is_no_stack_runs_each_lstm_alone(name, cudnn_calls):
    cell = NO_STACK[name]
    params = cell.init(KEY)
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((T, 2, IN), dtype=np.float32))
    h, ys = rj.scan(cell, params, cell.initial_state(params), xs, strategy="cudnn")
    h_want, ys_want = rj.scan(cell, params, cell.initial_state(params), xs, strategy="sequential")
    tree_allclose((h, ys), (h_want, ys_want))
    assert [(c["num_layers"], c["bidirectional"]) for c in cudnn_calls] == [(1, False)] * 2


@pytest.mark.gpu
@pytest.mark.parametrize("name", CASES)
def test_cudnn_on_a_gpu(name):
    """cuDNN itself against the sequential strategy, on a GPU only (`pytest -m gpu`), in full
    float32 (no TF32)."""
    if jax.default_backend() != "gpu":
        pytest.skip("needs a GPU with cuDNN")
    with jax.default_matmul_precision("highest"):
        check_against_sequential(name)
