"""recurjax.interop against the live reference libraries: PyTorch, Flax (linen, NNX), Equinox
and Haiku. Parity of outputs and gradients over whole sequences (tests/interop_util.py), exact
round trips, and the errors for what cannot be converted.

A missing reference library skips its tests, except in CI, which sets `RECURJAX_NO_SKIPS=1`
so that a skip fails the run (tests/conftest.py).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from interop_util import (
    EQUINOX_KINDS,
    FLAX_KINDS,
    NNX_KINDS,
    PARITY,
    TORCH_KINDS,
    equinox_module,
    need,
    nnx_module,
    parity_flax,
    parity_torch,
    randomize,
    torch_module,
)

import recurjax as rj
from recurjax import interop

# Needs torch, Flax, Equinox and Haiku: the `extras` marker, which .ci/floor deselects.
pytestmark = pytest.mark.extras

LIBRARY = {"torch": "torch", "flax": "flax.linen", "nnx": "flax.nnx", "equinox": "equinox"}
LIBRARY["haiku"] = "haiku"
CASES = [(ref, kind) for ref, (_, kinds) in PARITY.items() for kind in kinds]
F32, F64 = 1e-5, 1e-12
SLOW = pytest.mark.slow


def exact(a: Any, b: Any) -> None:
    """Same structure, same dtypes, bit-identical leaves."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def check(diffs: dict[str, float], tol: float) -> None:
    assert all(d <= tol for d in diffs.values()), diffs  # a NaN difference fails too


# --- parity: outputs and gradients over whole sequences -------------------------------------


# Batched and unbatched inputs alternate over the cases (each run compiles both libraries'
# programs, so running every case both ways doubled this test's time for no new path). The
# first case of every library and every other case run every day, the rest in the slow tier.
F32_GRID = [(ref, kind, i % 2 == 0) for i, (ref, kind) in enumerate(CASES)]
FIRSTS = {next(i for i, (r, _) in enumerate(CASES) if r == ref) for ref in PARITY}


@pytest.mark.parametrize(
    ("ref", "kind", "batched"),
    [
        case if i % 2 == 0 or i in FIRSTS else pytest.param(*case, marks=SLOW)
        for i, case in enumerate(F32_GRID)
    ],
    ids=[f"{r}-{k}-{'batched' if b else 'unbatched'}" for r, k, b in F32_GRID],
)
def test_parity_float32(ref, kind, batched):
    need(LIBRARY[ref])
    fn = PARITY[ref][0]
    check(fn(kind, seed=0 if batched else 1, batched=batched), F32)


# float64 on every case, in the slow tier (the tight tolerance checks the conversion's
# arithmetic; float32 parity checks the cases' layouts every day; 3a817df ran only half).
F64_CASES = [pytest.param(ref, kind, marks=SLOW) for ref, kind in CASES]


@pytest.mark.parametrize(("ref", "kind"), F64_CASES, ids=[f"{r}-{k}" for r, k in CASES])
def test_parity_float64(ref, kind):
    need(LIBRARY[ref])
    with jax.enable_x64(True):
        check(PARITY[ref][0](kind, seed=2, dtype=np.float64), F64)


# Batched and unbatched inputs alternate over the kinds, as in test_parity_float32; the
# other half runs in the slow tier (1b3fded ran only this half).
TORCH_CELL_GRID = [
    (kind, batched) if batched == (i % 2 == 0) else pytest.param(kind, batched, marks=SLOW)
    for i, kind in enumerate(TORCH_KINDS)
    for batched in (True, False)
]


@pytest.mark.parametrize(
    ("kind", "batched"),
    TORCH_CELL_GRID,
    ids=[f"{k}-{b}" for k in TORCH_KINDS for b in (True, False)],
)
def test_parity_torch_cells(kind, batched):
    need("torch")
    check(parity_torch(kind, cell=True, batched=batched), F32)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_parity_torch_layers_and_no_bias(kind):
    need("torch")
    check(parity_torch(kind, num_layers=3), F32)
    check(parity_torch(kind, bias=False, seed=3), F32)
    cell, params = interop.from_torch(
        torch_module(kind, cell=False, seed=0, dtype=np.float32, num_layers=3)
    )
    assert isinstance(cell, rj.Chain) and len(cell.cells) == 3 and len(params) == 3
    # bias=False: cells without biases, and back to a bias-free state_dict
    module = torch_module(kind, cell=False, seed=0, dtype=np.float32, bias=False)
    cell, params = interop.from_torch(module)
    assert not cell.use_bias and set(params) == {"wi", "wh"}
    assert set(interop.to_torch(cell, params)) == {"weight_ih_l0", "weight_hh_l0"}


# --- round trips ----------------------------------------------------------------------------


def _torch_state(module: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("kind", TORCH_KINDS)
def test_torch_round_trips(kind):
    torch = need("torch")
    module = torch_module(kind, cell=False, seed=0, dtype=np.float32, num_layers=2)
    cell, params = interop.from_torch(module)
    # recurjax -> torch -> recurjax: the same numbers.
    back_cell, back_params = interop.from_torch(interop.to_torch(cell, params), mode=kind)
    assert back_cell == cell
    exact(back_params, params)
    # torch -> recurjax -> torch: the same function; bias_hh is folded into bias_ih.
    sd = interop.to_torch(cell, params)
    for key, value in _torch_state(module).items():
        if key.startswith("weight"):
            np.testing.assert_array_equal(sd[key], value)
    back = torch_module(kind, cell=False, seed=9, dtype=np.float32, num_layers=2)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = torch.randn(7, 2, 5)
    np.testing.assert_allclose(back(x)[0].detach(), module(x)[0].detach(), atol=1e-6)
    # With bias_hh zero (b_hn excepted), the torch -> recurjax -> torch trip is exact too.
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("bias_hh"):
                p[: 2 * p.shape[0] // 3 if kind == "GRU" else None] = 0
    exact(interop.to_torch(*interop.from_torch(module)), _torch_state(module))


def test_torch_cell_state_dict_needs_no_torch_module():
    need("torch")
    module = torch_module("LSTM", cell=True, seed=0, dtype=np.float32)
    sd = _torch_state(module)  # plain NumPy arrays, keys weight_ih, ...
    cell, params = interop.from_torch(sd, mode="LSTM")
    assert cell == rj.LSTMCell(5, 6)
    exact(params, interop.from_torch(module)[1])


@pytest.mark.parametrize("kind", FLAX_KINDS)
def test_flax_round_trips(kind):
    nn = need("flax.linen")
    module = getattr(nn, kind)(features=6)
    carry = (jnp.zeros(6), jnp.zeros(6)) if "LSTM" in kind else jnp.zeros(6)
    variables = {
        "params": randomize(module.init(jax.random.key(0), carry, jnp.zeros(5))["params"], 0)
    }
    cell, params = interop.from_flax(module, variables)
    back_module, back = interop.to_flax(cell, params, optimized=kind == "OptimizedLSTMCell")
    assert type(back_module) is type(module)
    exact(back, variables)
    exact(interop.from_flax(back_module, back), (cell, params))


@SLOW
def test_flax_mgu_without_reset_gate():
    """linen's `MGUCell(reset_gate=False)`: its `hn` has no bias; recurjax's `bhn`, added
    unscaled there, goes into the `in` bias on the way back, the same function."""
    nn = need("flax.linen")
    check(parity_flax("MGUCell", seed=4, reset_gate=False), F32)
    cell = rj.MGUCell(5, 6, reset_gate=False)
    params = randomize(cell.init(jax.random.key(0)), 0)
    module, variables = interop.to_flax(cell, params)
    assert isinstance(module, nn.MGUCell) and not module.reset_gate
    assert "bias" not in variables["params"]["hn"]
    xs = jax.random.normal(jax.random.key(1), (4, 3, 5))
    h0 = jnp.zeros((3, 6))
    _, ys = rj.scan(cell, params, h0, xs)
    ys_flax = jax.lax.scan(lambda c, x: module.apply(variables, c, x), h0, xs)[1]
    np.testing.assert_allclose(ys_flax, ys, atol=1e-6)
    back_cell, back = interop.from_flax(module, variables)
    assert back_cell == cell and not np.any(back["bhn"])
    with pytest.raises(TypeError, match=r"flax.nnx has no MGU cell: to_flax converts MGUCell"):
        interop.to_nnx(cell, params)


@pytest.mark.parametrize("kind", NNX_KINDS)
def test_nnx_round_trips(kind):
    nnx = need("flax.nnx")
    module = nnx_module(kind, 0, np.float32)
    cell, params = interop.from_nnx(module)
    if kind == "GRUCell":
        assert not np.any(params["bhn"])  # nnx.GRUCell has no b_hn
    back = interop.to_nnx(cell, params, optimized=kind == "OptimizedLSTMCell")
    assert type(back) is type(module)
    exact(nnx.state(back, nnx.Param), nnx.state(module, nnx.Param))


@pytest.mark.parametrize("kind", EQUINOX_KINDS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_equinox_round_trips(kind, use_bias):
    eqx = need("equinox")
    module = equinox_module(kind, 0, np.float32, use_bias=use_bias)
    cell, params = interop.from_equinox(module)
    back = interop.to_equinox(cell, params, use_bias=use_bias)
    exact(eqx.filter(back, eqx.is_array), eqx.filter(module, eqx.is_array))
    exact(interop.from_equinox(back)[1], params)


@pytest.mark.parametrize(
    "cell", [rj.LSTMCell(5, 6), rj.GRUv3Cell(5, 6), rj.RNNCell(5, 6, jax.nn.relu)], ids=repr
)
def test_haiku_round_trips(cell):
    need("haiku")
    params = rj.Recur(cell, key=jax.random.key(0)).params
    params = randomize(params, 1)
    back_cell, back = interop.from_haiku(
        interop.to_haiku(cell, params),
        {rj.LSTMCell: "lstm", rj.GRUv3Cell: "gru", rj.RNNCell: "vanilla_rnn"}[type(cell)],
    )
    assert back_cell == cell
    if isinstance(cell, rj.LSTMCell):
        # (b_f - 1) + 1: the forget bias comes back within one float32 rounding of 1.
        np.testing.assert_allclose(back["b"], params["b"], rtol=0, atol=2.0**-23)
        exact(
            {k: v for k, v in back.items() if k != "b"},
            {k: v for k, v in params.items() if k != "b"},
        )
    else:
        exact(back, params)


def test_haiku_gru_maps_to_gruv3_with_negated_update_gate():
    hk = need("haiku")
    f = hk.without_apply_rng(hk.transform(lambda x: hk.GRU(6)(x, jnp.zeros(6))))
    hk_params = randomize(f.init(jax.random.key(0), jnp.zeros(5)), 0)
    cell, params = interop.from_haiku(hk_params, "gru")
    assert cell == rj.GRUv3Cell(5, 6)
    z_block = hk_params["gru"]["w_i"][:, :6]  # Haiku's blocks: z, r, a
    np.testing.assert_array_equal(params["wi"][:, 6:12], -z_block)
    exact(interop.to_haiku(cell, params), hk_params)


# --- what cannot be converted ---------------------------------------------------------------


LENGTHS = np.array([7, 3, 5, 1])


def _torch_packed(module: Any, width: int) -> tuple[Any, ...]:
    """Run a torch module on a `pack_padded_sequence` of 4 sequences (lengths `LENGTHS`) and
    backpropagate `sum(y * proj)`: `(xs, proj, x, ys_ref, final)`, `x.grad` set."""
    torch = need("torch")
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(7, 4, 5)).astype(np.float32)
    proj = rng.normal(size=(7, 4, width)).astype(np.float32)
    rnn = torch.nn.utils.rnn
    x = torch.from_numpy(xs).requires_grad_()
    packed = rnn.pack_padded_sequence(x, torch.from_numpy(LENGTHS), enforce_sorted=False)
    out, final = module(packed)
    ys_ref, _ = rnn.pad_packed_sequence(out, total_length=7)
    (ys_ref * torch.from_numpy(proj)).sum().backward()
    return xs, proj, x, ys_ref, final


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_torch_bidirectional_packed_sequences(kind):
    """A 2-layer bidirectional torch module on a `pack_padded_sequence` equals the converted
    chain of `rj.bidirectional` layers run with `lengths=`: outputs (zero past each length),
    final states of both directions of both layers, and the input gradient."""
    torch = need("torch")
    torch.manual_seed(0)
    module = getattr(torch.nn, kind)(5, 6, num_layers=2, bidirectional=True)
    xs, proj, x, ys_ref, final = _torch_packed(module, 12)
    h_ref = (final[0] if kind == "LSTM" else final).detach().numpy()  # (layers * 2, B, H)

    cell, params = interop.from_torch(module)
    assert cell == rj.stacked(getattr(rj, f"{kind}Cell"), 5, 6, num_layers=2, bidirectional=True)

    def loss(xs):
        h, ys = rj.scan(cell, params, cell.initial_state(params), xs, lengths=LENGTHS)
        return jnp.sum(ys * proj), (h, ys)

    (_, (h, ys)), dx = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(xs))
    np.testing.assert_allclose(ys, ys_ref.detach().numpy(), atol=1e-5)
    finals = [d.h if kind == "LSTM" else d for layer in h for d in layer]
    np.testing.assert_allclose(np.stack(finals), h_ref, atol=1e-5)
    np.testing.assert_allclose(dx, x.grad.numpy(), atol=1e-5)
    sd = interop.to_torch(cell, params)  # and back: the keys of the module, the same params
    assert set(sd) == set(module.state_dict())
    back_cell, back_params = interop.from_torch(sd, mode=kind)
    assert back_cell == cell
    exact(back_params, params)


def test_torch_projected_lstm_outputs_gradients_and_round_trip():
    """`nn.LSTM(proj_size=P)`, 2 layers, bidirectional, on a packed sequence equals the
    converted chain of bidirectional `ProjLSTMCell` layers run with `lengths=`: outputs,
    final `h` (size P) and `c` (size H) of every layer and direction, and the gradients of
    every weight (`weight_hr` included) and of the input."""
    torch = need("torch")
    torch.manual_seed(0)
    module = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=3)
    xs, proj, x, ys_ref, (h_ref, c_ref) = _torch_packed(module, 6)

    cell, params = interop.from_torch(module)
    layer = rj.ProjLSTMCell(5, 6, proj_size=3)
    assert cell.cells[0] == rj.bidirectional(layer, layer)
    assert cell.cells[1].forward == rj.ProjLSTMCell(6, 6, proj_size=3)

    def loss(sd, xs):
        cell, params = interop.from_torch(sd, mode="LSTM")
        h, ys = rj.scan(cell, params, cell.initial_state(params), xs, lengths=LENGTHS)
        return jnp.sum(ys * proj), (h, ys)

    sd = {k: jnp.asarray(v.detach().numpy()) for k, v in module.state_dict().items()}
    (_, (h, ys)), (g, dx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        sd, jnp.asarray(xs)
    )
    np.testing.assert_allclose(ys, ys_ref.detach().numpy(), atol=1e-5)
    finals = [d for layer in h for d in layer]
    np.testing.assert_allclose(np.stack([d.h for d in finals]), h_ref.detach(), atol=1e-5)
    np.testing.assert_allclose(np.stack([d.c for d in finals]), c_ref.detach(), atol=1e-5)
    np.testing.assert_allclose(dx, x.grad.numpy(), atol=1e-5)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(g[name], p.grad.numpy(), atol=1e-4, err_msg=name)
    back = interop.to_torch(cell, params)
    assert set(back) == set(module.state_dict())
    back_cell, back_params = interop.from_torch(back, mode="LSTM")
    assert back_cell == cell
    exact(back_params, params)


def test_torch_unsupported_modules():
    torch = need("torch")
    sd = _torch_state(torch.nn.LSTM(5, 6, proj_size=3))
    with pytest.raises(ValueError, match=re.escape("in a 'GRU' state_dict of shape (3, 6)")):
        interop.from_torch(sd, mode="GRU")
    sd = _torch_state(torch.nn.GRU(5, 6, num_layers=2, bidirectional=True))
    sd = {k: v for k, v in sd.items() if not k.endswith("l1_reverse")}
    with pytest.raises(ValueError, match=re.escape("needs '_reverse' keys for every layer")):
        interop.from_torch(sd, mode="GRU")
    with pytest.raises(TypeError, match=r"expected a torch.nn.RNN, LSTM, GRU"):
        interop.from_torch(torch.nn.Linear(5, 6))


def test_torch_state_dict_errors():
    rng = np.random.default_rng(0)
    sd = {"weight_ih_l0": rng.normal(size=(24, 5)), "weight_hh_l0": rng.normal(size=(24, 6))}
    with pytest.raises(ValueError, match=r"a state_dict does not say which cell.*mode='LSTM'"):
        interop.from_torch(sd)
    with pytest.raises(ValueError, match=r"mode 'GRU' has 3 gate block.*\(18, 6\); got \(24, 6\)"):
        interop.from_torch(sd, mode="GRU")
    with pytest.raises(ValueError, match=r"mode must be one of"):
        interop.from_torch(sd, mode="lstm")
    with pytest.raises(ValueError, match=r"only one of bias_ih and bias_hh"):
        interop.from_torch({**sd, "bias_ih_l0": np.zeros(24)}, mode="LSTM")


def test_to_torch_errors():
    gru3 = rj.GRUv3Cell(5, 6)
    with pytest.raises(TypeError, match=r"GRUv3Cell.*reset gate after the matmul"):
        interop.to_torch(gru3, gru3.init(jax.random.key(0)))
    rnn = rj.RNNCell(5, 6, activation=jax.nn.sigmoid)
    with pytest.raises(ValueError, match=r"activation.*supports \['relu', 'tanh'\]"):
        interop.to_torch(rnn, rnn.init(jax.random.key(0)))
    lstm = rj.LSTMCell(5, 6, forget_bias=1.0)
    with pytest.raises(ValueError, match=r"bias=False, but part 0 has non-zero biases"):
        interop.to_torch(lstm, lstm.init(jax.random.key(0)), bias=False)
    mixed = rj.chain(rj.LSTMCell(5, 6), rj.GRUCell(6, 6))
    with pytest.raises(ValueError, match=r"one cell type and one hidden size"):
        interop.to_torch(mixed, mixed.init(jax.random.key(0)))


def test_cell_variants_convert_to_no_module_of_their_base_class():
    """A subclass computes another step: converting it as its base class would drop the
    peepholes (or read IndRNN's vector as a matrix), so every converter refuses it."""
    for cell in (rj.PeepholeLSTMCell(5, 6), rj.IndRNNCell(5, 6)):
        params = cell.init(jax.random.key(0))
        for convert in (interop.to_torch, interop.to_flax, interop.to_equinox):
            with pytest.raises(TypeError, match=re.escape(f"got {cell!r}")):
                convert(cell, params)
    peephole = rj.PeepholeLSTMCell(5, 6)
    with pytest.raises(TypeError, match=re.escape("got PeepholeLSTMCell(5 => 6)")):
        interop.to_haiku(peephole, peephole.init(jax.random.key(0)))


def test_flax_errors():
    nn = need("flax.linen")
    need("flax.nnx")
    gru = rj.GRUCell(5, 6)
    p = gru.init(jax.random.key(0))
    p = {**p, "bhn": jnp.ones(6)}
    with pytest.raises(
        ValueError, match=r"bhn .* non-zero, and flax.nnx.GRUCell has no such bias"
    ):
        interop.to_nnx(gru, p)
    gru3 = rj.GRUv3Cell(5, 6)
    with pytest.raises(TypeError, match=r"no Flax cell matches GRUv3Cell"):
        interop.to_flax(gru3, gru3.init(jax.random.key(0)))
    module = nn.LSTMCell(features=6, gate_fn=jax.nn.hard_sigmoid)
    carry = (jnp.zeros(6), jnp.zeros(6))
    with pytest.raises(
        ValueError, match=r"recurjax's gated cells use jax.nn.sigmoid and jnp.tanh"
    ):
        interop.from_flax(module, module.init(jax.random.key(0), carry, jnp.zeros(5)))
    module = nn.SimpleCell(features=6, residual=True)
    with pytest.raises(ValueError, match=r"residual=True is not supported"):
        interop.from_flax(module, module.init(jax.random.key(0), jnp.zeros(6), jnp.zeros(5)))
    with pytest.raises(ValueError, match=r"lacks \['hn'\]"):
        tree = {k: {} for k in ["ir", "iz", "in", "hr", "hz"]}
        interop.from_flax(nn.GRUCell(features=6), tree)


def test_equinox_and_haiku_errors():
    need("equinox")
    rnn = rj.RNNCell(5, 6)
    with pytest.raises(TypeError, match=r"Equinox has no Elman RNN cell"):
        interop.to_equinox(rnn, rnn.init(jax.random.key(0)))
    gru = rj.GRUCell(5, 6)
    with pytest.raises(TypeError, match=r"it matches GRUv3Cell, not GRUCell"):
        interop.to_haiku(gru, gru.init(jax.random.key(0)))
    with pytest.raises(ValueError, match=r"supports \['relu'\]"):
        interop.to_haiku(rnn, rnn.init(jax.random.key(0)))
    with pytest.raises(
        ValueError, match=r"found no Haiku LSTM, GRU or VanillaRNN under that name"
    ):
        interop.from_haiku({"lstm/linear": {}}, "gru")
