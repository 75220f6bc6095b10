"""The classic cells' initialiser and bias options: `kernel_init`, `recurrent_init`,
`bias_init` (names or functions) and `use_bias=False`, in every classic cell, every strategy
that runs it, and the converters."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import tree_allclose

import recurjax as rj
from recurjax._init import glorot_uniform
from recurjax._scan.api import _scan_jit

IN, H = 3, 4
# Every classic cell and variant, and the strategies that run it.
KINDS = {
    "rnn": (lambda **o: rj.RNNCell(IN, H, **o), ("fused", "sequential")),
    "lstm": (lambda **o: rj.LSTMCell(IN, H, forget_bias=1.0, **o), ("fused", "sequential")),
    "gru": (lambda **o: rj.GRUCell(IN, H, **o), ("fused", "sequential")),
    "gruv3": (lambda **o: rj.GRUv3Cell(IN, H, **o), ("sequential",)),
    "mgu": (lambda **o: rj.MGUCell(IN, H, **o), ("sequential",)),
    "indrnn": (lambda **o: rj.IndRNNCell(IN, H, **o), ("sequential",)),
    "peephole": (lambda **o: rj.PeepholeLSTMCell(IN, H, **o), ("sequential",)),
    "projlstm": (lambda **o: rj.ProjLSTMCell(IN, H + 2, proj_size=H, **o), ("sequential",)),
    "lnlstm": (lambda **o: rj.LayerNormLSTMCell(IN, H, **o), ("sequential",)),
}


def test_the_defaults_draw_as_before():
    """The default options draw exactly what the cells always drew: Glorot-uniform on the
    whole fused matrix, one key split per weight, zero biases, the forget bias set."""
    key = jax.random.key(3)
    ki, kh = jax.random.split(key)
    p = rj.LSTMCell(IN, H, forget_bias=1.0).init(key)
    np.testing.assert_array_equal(p["wi"], glorot_uniform(ki, (IN, 4 * H)))
    np.testing.assert_array_equal(p["wh"], glorot_uniform(kh, (H, 4 * H)))
    np.testing.assert_array_equal(p["b"], np.repeat([0.0, 1.0, 0.0, 0.0], H))
    kn = jax.random.split(key, 3)[2]
    np.testing.assert_array_equal(rj.GRUv3Cell(IN, H).init(key)["whn"], glorot_uniform(kn, (H, H)))


# Every day: the LSTM (the fused kernel's zeros, and the sequential step); the others in the
# slow tier.
DAILY = ("lstm",)


@pytest.mark.parametrize(
    "kind", [k if k in DAILY else pytest.param(k, marks=pytest.mark.slow) for k in KINDS]
)
def test_no_bias_is_the_cell_with_zero_biases(kind):
    """`use_bias=False`: no bias in the params, and every strategy computes the cell with
    zero biases (outputs, final state, and the gradients of the weights and inputs)."""
    make, strategies = KINDS[kind]
    cell, plain = make(use_bias=False), make()
    params = cell.init(jax.random.key(0))
    assert not {"b", "bhn", "bc"} & set(params)
    assert set(params) == set(cell.param_shapes())
    full = plain.init(jax.random.key(0))
    with_zeros = {k: params.get(k, jnp.zeros_like(v)) for k, v in full.items()}
    if kind == "lstm":  # the forget bias lives in b: without b there is none
        with_zeros["b"] = jnp.zeros_like(full["b"])
    xs = jax.random.normal(jax.random.key(1), (5, 2, IN))

    def loss(cell, params, xs, strategy):
        h, ys = rj.scan(cell, params, cell.initial_state(params), xs, strategy=strategy)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(a) for a in jax.tree.leaves(h))

    for strategy in strategies:
        got = jax.value_and_grad(loss, argnums=(1, 2))(cell, params, xs, strategy)
        ref = jax.value_and_grad(loss, argnums=(1, 2))(plain, with_zeros, xs, strategy)
        ref_grads = ({k: ref[1][0][k] for k in params}, ref[1][1])
        tree_allclose((got[0], got[1]), (ref[0], ref_grads), rtol=1e-5, atol=1e-6)


def test_initialisers_by_name():
    key = jax.random.key(0)
    ortho = rj.LSTMCell(IN, H, recurrent_init="orthogonal").init(key)["wh"]
    for block in np.split(np.asarray(ortho), 4, axis=1):  # each gate's block, as Flax's
        np.testing.assert_allclose(block @ block.T, np.eye(H), atol=1e-5)
    torch_like = rj.GRUCell(IN, 16, kernel_init="pytorch", recurrent_init="pytorch",
                            bias_init="pytorch").init(key)  # fmt: skip
    for name in ("wi", "wh", "b", "bhn"):
        a = np.asarray(torch_like[name])
        assert np.abs(a).max() <= 1 / 4 and np.abs(a).max() > 0.2, name  # U(-1/sqrt(H), ..)
    big = rj.RNNCell(400, 300, kernel_init="he_normal", recurrent_init="lecun_uniform")
    p = big.init(key)
    np.testing.assert_allclose(np.std(p["wi"]), np.sqrt(2 / 400), rtol=0.05)
    np.testing.assert_allclose(np.std(p["wh"]), np.sqrt(1 / 300), rtol=0.05)
    ones = rj.LSTMCell(IN, H, bias_init="ones", forget_bias=1.0).init(key)["b"]
    np.testing.assert_array_equal(ones, np.repeat([1.0, 2.0, 1.0, 1.0], H))  # forget added
    fn = jax.nn.initializers.constant(0.5)
    np.testing.assert_array_equal(rj.RNNCell(IN, H, kernel_init=fn).init(key)["wi"], 0.5)


def test_options_compare_equal_and_share_compiled_scans():
    a = rj.LSTMCell(IN, H, recurrent_init="orthogonal", use_bias=False)
    b = rj.LSTMCell(IN, H, recurrent_init="orthogonal", use_bias=False)
    assert a == b and hash(a) == hash(b) and a != rj.LSTMCell(IN, H, use_bias=False)
    assert repr(a) == "LSTMCell(3 => 4, recurrent_init='orthogonal', use_bias=False)"
    params = a.init(jax.random.key(0))
    xs = jnp.ones((3, 2, IN))
    rj.scan(a, params, a.initial_state(params), xs)
    size = _scan_jit._cache_size()  # pyright: ignore[reportAttributeAccessIssue]
    rj.scan(b, params, b.initial_state(params), xs)  # an equal cell: the same program
    assert _scan_jit._cache_size() == size  # pyright: ignore[reportAttributeAccessIssue]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"kernel_init": "xavier"},
            "RNNCell: expected kernel_init to be one of ('glorot_uniform', 'glorot_normal', "
            "'lecun_uniform', 'lecun_normal', 'he_uniform', 'he_normal', 'orthogonal', "
            "'pytorch', 'zeros', 'ones') or a function (key, shape, dtype) -> array (e.g. "
            "jax.nn.initializers.orthogonal()), got 'xavier'.",
        ),
        (
            {"bias_init": "orthogonal"},
            "RNNCell: expected bias_init to be one of ('zeros', 'ones', 'pytorch') or a "
            "function (key, shape, dtype) -> array (e.g. jax.nn.initializers.constant(0.1)), "
            "got 'orthogonal'.",
        ),
    ],
)
def test_an_unknown_initialiser_is_named(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        rj.RNNCell(IN, H, **options)


def test_use_bias_is_a_bool_and_indrnn_has_no_recurrent_matrix():
    with pytest.raises(TypeError, match=r"GRUCell: expected use_bias to be a bool, got 0"):
        rj.GRUCell(IN, H, use_bias=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"recurrent_init='orthogonal' does not apply"):
        rj.IndRNNCell(IN, H, recurrent_init="orthogonal")


@pytest.mark.extras
@pytest.mark.slow  # tests/test_interop.py checks the conversion's flags and keys every day
def test_torch_bias_false_converts_both_ways():
    torch = pytest.importorskip("torch")
    from recurjax import interop

    module = torch.nn.GRU(IN, H, num_layers=2, bias=False)
    cell, params = interop.from_torch(module)
    assert all(not c.use_bias for c in cell.cells)
    assert all(set(p) == {"wi", "wh"} for p in params)
    sd = interop.to_torch(cell, params)
    assert not any(k.startswith("bias") for k in sd)
    back = torch.nn.GRU(IN, H, num_layers=2, bias=False)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = torch.randn(5, 2, IN)
    np.testing.assert_allclose(back(x)[0].detach(), module(x)[0].detach(), atol=1e-6)
    _, ys = rj.scan(cell, params, cell.initial_state(params), jnp.asarray(x.numpy()))
    np.testing.assert_allclose(ys, module(x)[0].detach().numpy(), atol=1e-5)
    # a bias-free cell into a module with biases: zeros
    with_b = interop.to_torch(cell, params, bias=True)
    assert all(not v.any() for k, v in with_b.items() if k.startswith("bias"))
