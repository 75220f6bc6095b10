"""Parity runs of recurjax cells against the live reference libraries, shared by the interop
tests and by `tests/interop_report.py` (which prints the table of max differences).

Each `parity_*` function builds a reference cell with random weights and non-zero biases,
runs it over a whole sequence (time-major `(T, B, in)`, or `(T, in)` unbatched), and runs the
converted recurjax cell over the same inputs with `rj.scan`. The loss is `sum(y * proj)` with
a fixed random `proj`. It returns the largest absolute differences between the two runs:
outputs `y`, the gradient with respect to the inputs `dx`, and the gradient with respect to
the *reference's* parameters `dparams` (scaled as `max_diff` says). On the recurjax side that
last one flows back through the `from_*` converter, so every reference parameter, PyTorch's
second bias included, is checked.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurjax as rj
from recurjax import interop

T, B, IN, H = 9, 3, 5, 6


def need(module: str) -> Any:
    """Import a reference library, or skip the test module when it is missing (CI sets
    `RECURJAX_NO_SKIPS=1`, under which a skip fails the run: tests/conftest.py)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.skip(
            f"{module} is not installed; `pip install -e '.[test]'` installs the references",
            allow_module_level=True,
        )


def max_diff(ref: Any, got: Any) -> float:
    """Largest difference over two pytrees of the same structure, leaf by leaf: each leaf's
    largest absolute difference divided by `max(1, largest |ref|)` of that leaf, an absolute
    error for values of order one and a relative one for larger values (a ReLU network's
    outputs grow over a sequence). Per leaf, so a large leaf (a bias gradient summed over
    the steps) does not widen the tolerance of a small one. NaN on either side is a
    difference of NaN, which fails every comparison with a tolerance."""
    la, lb = jax.tree.leaves(ref), jax.tree.leaves(got)
    assert len(la) == len(lb), (jax.tree.structure(ref), jax.tree.structure(got))

    def leaf(x: Any, y: Any) -> float:
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape, (x.shape, y.shape)
        if x.size == 0:
            return 0.0
        return float(np.max(np.abs(x - y))) / max(1.0, float(np.max(np.abs(x))))

    diffs = [leaf(x, y) for x, y in zip(la, lb, strict=True)]
    return max(diffs, key=lambda d: np.inf if np.isnan(d) else d, default=0.0)


def inputs(seed: int, batched: bool, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Inputs `xs` and the loss weights `proj` (shaped like the outputs)."""
    rng = np.random.default_rng(seed)
    shape = (T, B) if batched else (T,)
    xs = rng.normal(size=(*shape, IN)).astype(dtype)
    proj = rng.normal(size=(*shape, H)).astype(dtype)
    return xs, proj


def rj_loss(convert: Callable[[Any], tuple[Any, Any]]) -> Callable[..., Any]:
    """`loss(ref_params, xs, proj) -> (loss, ys)` of the converted cell, for `jax.grad`."""

    def loss(ref_params: Any, xs: jax.Array, proj: jax.Array) -> tuple[jax.Array, jax.Array]:
        cell, params = convert(ref_params)
        _, ys = rj.scan(cell, params, cell.initial_state(params), xs)
        return jnp.sum(ys * proj), ys

    return loss


def jax_parity(
    ref_loss: Callable[..., Any],
    convert: Callable[[Any], tuple[Any, Any]],
    ref_params: Any,
    xs: np.ndarray,
    proj: np.ndarray,
) -> dict[str, float]:
    """Differences between a JAX reference loss and the converted recurjax loss."""
    grad = jax.value_and_grad
    (_, y_ref), (g_ref, dx_ref) = grad(ref_loss, argnums=(0, 1), has_aux=True)(
        ref_params, jnp.asarray(xs), jnp.asarray(proj)
    )
    (_, y_rj), (g_rj, dx_rj) = grad(rj_loss(convert), argnums=(0, 1), has_aux=True)(
        ref_params, jnp.asarray(xs), jnp.asarray(proj)
    )
    return {
        "y": max_diff(y_ref, y_rj),
        "dx": max_diff(dx_ref, dx_rj),
        "dparams": max_diff(g_ref, g_rj),
    }


# --- PyTorch ---------------------------------------------------------------------------------

TORCH_KINDS = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]


def torch_module(kind: str, *, cell: bool, seed: int, dtype: Any, **kw: Any) -> Any:
    torch = importlib.import_module("torch")
    torch.manual_seed(seed)
    nn = torch.nn
    if kind.startswith("RNN"):
        kw["nonlinearity"] = kind[4:].lower()
        cls = nn.RNNCell if cell else nn.RNN
    else:
        cls = getattr(nn, f"{kind}Cell" if cell else kind)
    module = cls(IN, H, **kw)
    return module.double() if dtype == np.float64 else module.float()


def torch_run(module: Any, xs: np.ndarray, proj: np.ndarray) -> tuple[Any, Any, dict[str, Any]]:
    """Outputs, input gradient and parameter gradients of `sum(y * proj)` in PyTorch."""
    torch = importlib.import_module("torch")
    module.zero_grad()
    x = torch.from_numpy(xs).requires_grad_()
    if type(module).__name__.endswith("Cell"):
        h, ys = None, []
        for t in range(x.shape[0]):
            h = module(x[t], h)
            ys.append(h[0] if isinstance(h, tuple) else h)
        y = torch.stack(ys)
    else:
        y, _ = module(x)
    (y * torch.from_numpy(proj)).sum().backward()
    grads = {k: p.grad.numpy() for k, p in module.named_parameters()}
    return y.detach().numpy(), x.grad.numpy(), grads  # type: ignore[union-attr]


def parity_torch(
    kind: str,
    *,
    cell: bool = False,
    seed: int = 0,
    batched: bool = True,
    dtype: Any = np.float32,
    **kw: Any,
) -> dict[str, float]:
    """`kw` goes to the torch module: `num_layers`, `bias`."""
    module = torch_module(kind, cell=cell, seed=seed, dtype=dtype, **kw)
    xs, proj = inputs(seed, batched, dtype)
    y_ref, dx_ref, g_ref = torch_run(module, xs, proj)
    sd = {k: jnp.asarray(v.detach().numpy()) for k, v in module.state_dict().items()}
    loss = rj_loss(lambda p: interop.from_torch(p, mode=kind))
    (_, y), (g, dx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        sd, jnp.asarray(xs), jnp.asarray(proj)
    )
    return {"y": max_diff(y_ref, y), "dx": max_diff(dx_ref, dx), "dparams": max_diff(g_ref, g)}


# --- Flax ------------------------------------------------------------------------------------

NNX_KINDS = ["SimpleCell", "LSTMCell", "OptimizedLSTMCell", "GRUCell"]
FLAX_KINDS = [*NNX_KINDS, "MGUCell"]  # linen's; NNX has no MGU


def randomize(tree: Any, seed: int) -> Any:
    """Every leaf of a parameter tree redrawn from N(0, 0.5^2): non-zero biases."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [0.5 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, new)


def flax_carry(kind: str, batch: tuple[int, ...], dtype: Any) -> Any:
    zeros = jnp.zeros((*batch, H), dtype)
    return (zeros, zeros) if "LSTM" in kind else zeros


def parity_flax(
    kind: str, *, seed: int = 0, batched: bool = True, dtype: Any = np.float32, **options: Any
) -> dict[str, float]:
    nn = importlib.import_module("flax.linen")
    module = getattr(nn, kind)(features=H, param_dtype=dtype, **options)
    xs, proj = inputs(seed, batched, dtype)
    carry = flax_carry(kind, xs.shape[1:-1], dtype)
    params = randomize(module.init(jax.random.key(seed), carry, xs[0])["params"], seed)

    def ref_loss(p: Any, xs: jax.Array, proj: jax.Array) -> tuple[jax.Array, jax.Array]:
        def step(c: Any, x: jax.Array) -> tuple[Any, jax.Array]:
            return module.apply({"params": p}, c, x)

        _, ys = jax.lax.scan(step, carry, xs)
        return jnp.sum(ys * proj), ys

    return jax_parity(ref_loss, lambda p: interop.from_flax(module, p), params, xs, proj)


def nnx_module(kind: str, seed: int, dtype: Any) -> Any:
    nnx = importlib.import_module("flax.nnx")
    module = getattr(nnx, kind)(IN, H, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, randomize(state, seed))


def parity_nnx(
    kind: str, *, seed: int = 0, batched: bool = True, dtype: Any = np.float32
) -> dict[str, float]:
    nnx = importlib.import_module("flax.nnx")
    graphdef, state = nnx.split(nnx_module(kind, seed, dtype))
    xs, proj = inputs(seed, batched, dtype)
    carry = flax_carry(kind, xs.shape[1:-1], dtype)

    def ref_loss(s: Any, xs: jax.Array, proj: jax.Array) -> tuple[jax.Array, jax.Array]:
        module = nnx.merge(graphdef, s)
        _, ys = jax.lax.scan(lambda c, x: module(c, x), carry, xs)
        return jnp.sum(ys * proj), ys

    return jax_parity(
        ref_loss, lambda s: interop.from_nnx(nnx.merge(graphdef, s)), state, xs, proj
    )


# --- Equinox ---------------------------------------------------------------------------------

EQUINOX_KINDS = ["LSTMCell", "GRUCell"]


def equinox_module(kind: str, seed: int, dtype: Any, use_bias: bool = True) -> Any:
    eqx = importlib.import_module("equinox")
    module = getattr(eqx.nn, kind)(IN, H, use_bias=use_bias, dtype=dtype, key=jax.random.key(seed))
    arrays, static = eqx.partition(module, eqx.is_array)
    return eqx.combine(randomize(arrays, seed), static)


def parity_equinox(
    kind: str, *, seed: int = 0, batched: bool = True, dtype: Any = np.float32
) -> dict[str, float]:
    xs, proj = inputs(seed, batched, dtype)
    module = equinox_module(kind, seed, dtype)
    zeros = jnp.zeros((H,), dtype)
    h0 = (zeros, zeros) if kind == "LSTMCell" else zeros

    def ref_loss(m: Any, xs: jax.Array, proj: jax.Array) -> tuple[jax.Array, jax.Array]:
        def run(xs: jax.Array) -> jax.Array:  # one sequence (T, in); Equinox cells are unbatched
            def step(h: Any, x: jax.Array) -> tuple[Any, jax.Array]:
                h = m(x, h)
                return h, (h[0] if isinstance(h, tuple) else h)

            return jax.lax.scan(step, h0, xs)[1]

        ys = jax.vmap(run, in_axes=1, out_axes=1)(xs) if xs.ndim == 3 else run(xs)
        return jnp.sum(ys * proj), ys

    return jax_parity(ref_loss, interop.from_equinox, module, xs, proj)


# --- Haiku -----------------------------------------------------------------------------------

HAIKU_KINDS = ["VanillaRNN", "LSTM", "GRU"]


def haiku_transformed(kind: str, batched: bool) -> Any:
    hk = importlib.import_module("haiku")

    def forward(xs: jax.Array) -> jax.Array:
        core = getattr(hk, kind)(H)
        state = core.initial_state(B if batched else None)
        state = jax.tree.map(lambda a: a.astype(xs.dtype), state)
        ys, _ = hk.dynamic_unroll(core, xs, state)
        return ys

    return hk.without_apply_rng(hk.transform(forward))


def parity_haiku(
    kind: str, *, seed: int = 0, batched: bool = True, dtype: Any = np.float32
) -> dict[str, float]:
    xs, proj = inputs(seed, batched, dtype)
    f = haiku_transformed(kind, batched)
    params = randomize(f.init(jax.random.key(seed), jnp.asarray(xs)), seed)
    name = {"VanillaRNN": "vanilla_rnn", "LSTM": "lstm", "GRU": "gru"}[kind]

    def ref_loss(p: Any, xs: jax.Array, proj: jax.Array) -> tuple[jax.Array, jax.Array]:
        ys = f.apply(p, xs)
        return jnp.sum(ys * proj), ys

    return jax_parity(ref_loss, lambda p: interop.from_haiku(p, name), params, xs, proj)


PARITY = {
    "torch": (parity_torch, TORCH_KINDS),
    "flax": (parity_flax, FLAX_KINDS),
    "nnx": (parity_nnx, NNX_KINDS),
    "equinox": (parity_equinox, EQUINOX_KINDS),
    "haiku": (parity_haiku, HAIKU_KINDS),
}
