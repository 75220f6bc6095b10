"""The cells' shared base (`_cells/base.py`): the repr, the fused kernel of exactly the class
that names it, and a linear cell's step checking its params once."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

import recurjax as rj
from recurjax._cells import base
from recurjax._contracts import KernelSpec

# Each repr as the cells wrote their own before the base: the sizes, then the options that
# differ from their defaults (an activation by its name, always where it has one).
REPRS = [
    (rj.RNNCell(3, 4), "RNNCell(3 => 4, tanh)"),
    (rj.RNNCell(3, 4, jax.nn.relu), "RNNCell(3 => 4, relu)"),
    (rj.IndRNNCell(3, 4), "IndRNNCell(3 => 4, relu)"),
    (rj.IndRNNCell(3, 4, jnp.tanh, recurrent_max=0.5), "IndRNNCell(3 => 4, tanh)"),
    (rj.LSTMCell(3, 4), "LSTMCell(3 => 4)"),
    (rj.LSTMCell(3, 4, forget_bias=1.0), "LSTMCell(3 => 4, forget_bias=1.0)"),
    (rj.PeepholeLSTMCell(3, 4, 2.0), "PeepholeLSTMCell(3 => 4, forget_bias=2.0)"),
    (rj.ProjLSTMCell(3, 8, proj_size=2), "ProjLSTMCell(3 => 8, proj_size=2)"),
    (
        rj.ProjLSTMCell(3, 8, 1.0, proj_size=3),
        "ProjLSTMCell(3 => 8, forget_bias=1.0, proj_size=3)",
    ),
    (rj.LayerNormLSTMCell(3, 4), "LayerNormLSTMCell(3 => 4)"),
    (
        rj.LayerNormLSTMCell(3, 4, forget_bias=1.0, eps=1e-3),
        "LayerNormLSTMCell(3 => 4, forget_bias=1.0, eps=0.001)",
    ),
    (rj.GRUCell(3, 4), "GRUCell(3 => 4)"),
    (rj.GRUv3Cell(3, 4), "GRUv3Cell(3 => 4)"),
    (rj.MinGRUCell(3, 4), "MinGRUCell(3 => 4)"),
    (rj.MinLSTMCell(3, 4), "MinLSTMCell(3 => 4)"),
    (rj.LRUCell(3, 8, r_min=0.5, r_max=0.9, max_phase=1.0), "LRUCell(3 => 8)"),
    (rj.RGLRUCell(8, 8), "RGLRUCell(8 => 8)"),
    (rj.RGLRUCell(8, 8, num_heads=2), "RGLRUCell(8 => 8, num_heads=2)"),
    (rj.SLSTMCell(3, 8, num_heads=2, forget_bias=1.0), "SLSTMCell(3 => 8, num_heads=2)"),
    (rj.MLSTMCell(3, 8, exp_forget=True), "MLSTMCell(3 => 8)"),
    (rj.SelectiveSSMCell(4, state_size=3, dt_rank=2), "SelectiveSSMCell(4, state_size=3)"),
    (rj.Dense(3, 4), "Dense(3 => 4)"),
    (rj.Dense(3, 4, jax.nn.relu), "Dense(3 => 4, relu)"),
]


@pytest.mark.parametrize("cell, text", REPRS, ids=[t for _, t in REPRS])
def test_repr(cell, text):
    assert repr(cell) == text


def test_fused_kernel_serves_exactly_the_class_that_names_it():
    cells = (rj.RNNCell(3, 4, jax.nn.relu), rj.LSTMCell(3, 4), rj.GRUCell(3, 4))
    assert [c.fused_kernel() for c in cells] == [
        KernelSpec("rnn", 4, jax.nn.relu),
        KernelSpec("lstm", 4),
        KernelSpec("gru", 4),
    ]

    @dataclasses.dataclass(frozen=True, repr=False)
    class Mine(rj.LSTMCell):
        pass

    for cell in (
        Mine(3, 4),
        rj.GRUv3Cell(3, 4),
        rj.IndRNNCell(3, 4),
        rj.PeepholeLSTMCell(3, 4),
        rj.ProjLSTMCell(3, 4, proj_size=2),
        rj.LayerNormLSTMCell(3, 4),
    ):
        assert cell.fused_kernel() is None, cell


LINEAR = [
    rj.MinGRUCell(3, 4),
    rj.MinLSTMCell(3, 4),
    rj.LRUCell(3, 8),
    rj.RGLRUCell(8, 8, num_heads=2),
    rj.SelectiveSSMCell(4, state_size=3),
]


@pytest.mark.parametrize("cell", LINEAR, ids=repr)
def test_a_linear_step_checks_its_params_once(cell, monkeypatch):
    calls = []
    check = base.check_params

    def counted(*args):
        calls.append(args[0])
        return check(*args)

    monkeypatch.setattr(base, "check_params", counted)
    params = cell.init(jax.random.key(0))
    h, x = cell.initial_state(params), jnp.ones((2, cell.in_features))
    calls.clear()
    jax.make_jaxpr(lambda p, h, x: cell(p, h, x))(params, h, x)
    assert calls == [cell]
    # The public methods still check for themselves.
    small = {k: v[..., :1] for k, v in params.items()}
    with pytest.raises(ValueError, match="params do not match this cell"):
        cell.coefficients(small, x)
    if isinstance(cell, (rj.LRUCell, rj.SelectiveSSMCell)):
        with pytest.raises(ValueError, match="params do not match this cell"):
            cell.readout(small, cell.coefficients(params, x)[1], x)


def test_a_subclass_steps_with_its_own_coefficients():
    @dataclasses.dataclass(frozen=True, repr=False)
    class Doubled(rj.MinGRUCell):
        def coefficients(self, params, x):
            a, b = super().coefficients(params, x)
            return a, 2 * b

    plain, doubled = rj.MinGRUCell(3, 4), Doubled(3, 4)
    params = plain.init(jax.random.key(0))
    h, x = plain.initial_state(params), jnp.ones((2, 3))
    assert jnp.array_equal(doubled(params, h, x)[1], 2 * plain(params, h, x)[1])
