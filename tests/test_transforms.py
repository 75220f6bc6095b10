"""Every strategy under every JAX transformation: jit, grad, vjp, jvp, jacfwd, hessian, vmap
and grad of grad, each equal to the same transformation of the sequential strategy (which
test_scan.py checks against a Python loop). The strategies with a hand-written VJP (fused,
associative, chunked) have no forward mode: asked for by name under `jvp` they raise a
recurjax `TypeError` naming the fix, and `auto` runs sequentially there instead."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import tree_allclose

import recurjax as rj

T, B, IN, H = 4, 2, 2, 3
LSTM, MINGRU = rj.LSTMCell(IN, H), rj.MinGRUCell(IN, H)
FORWARD = ("jvp", "jacfwd", "hessian")


def _transforms(cell: Any, strategy: str) -> dict[str, Callable[[Any, jax.Array], Any]]:
    def ys(params: Any, xs: jax.Array) -> jax.Array:
        return rj.scan(cell, params, cell.initial_state(params), xs, strategy=strategy)[1]

    def loss(params: Any, xs: jax.Array) -> jax.Array:
        return jnp.sum(jnp.sin(ys(params, xs)))

    u = jnp.cos(jnp.arange(T * B * H, dtype=jnp.float32)).reshape(T, B, H)

    def vjp(p: Any, xs: jax.Array) -> Any:
        return jax.vjp(ys, p, xs)[1](u)

    def grad_of_grad(p: Any, xs: jax.Array) -> Any:
        return jax.grad(
            lambda p: sum(jnp.sum(g**2) for g in jax.tree.leaves(jax.grad(loss)(p, xs)))
        )(p)

    return {
        "jit": jax.jit(loss),
        "grad": jax.grad(loss, argnums=(0, 1)),
        "vjp": vjp,
        "jvp": lambda p, xs: jax.jvp(lambda x: ys(p, x), (xs,), (jnp.cos(xs),)),
        "jacfwd": jax.jacfwd(loss, argnums=1),
        "hessian": jax.hessian(loss, argnums=1),
        "vmap": lambda p, xs: jax.vmap(lambda x: ys(p, x), in_axes=1, out_axes=1)(xs),
        "grad_of_grad": grad_of_grad,
    }


def _data(cell: Any) -> tuple[Any, jax.Array]:
    xs = np.random.default_rng(0).standard_normal((T, B, IN), dtype=np.float32)
    return cell.init(jax.random.key(0)), jnp.asarray(xs)


@functools.cache
def _reference(cell: Any) -> dict[str, Any]:
    """Every transformation of the sequential strategy, computed once per cell."""
    params, xs = _data(cell)
    return {name: fn(params, xs) for name, fn in _transforms(cell, "sequential").items()}


# In the slow tier, which CI runs (about 25 s of CPU); every day, test_fused checks `jax.jvp`
# under `auto` and the explicit fused strategy's forward-mode error.
@pytest.mark.parametrize(
    "cell, strategy",
    [
        pytest.param(LSTM, "auto", marks=pytest.mark.slow),
        pytest.param(LSTM, "fused", marks=pytest.mark.slow),
        pytest.param(MINGRU, "auto", marks=pytest.mark.slow),
        pytest.param(MINGRU, "associative", marks=pytest.mark.slow),
        pytest.param(MINGRU, "chunked", marks=pytest.mark.slow),
        pytest.param(MINGRU, "hoisted", marks=pytest.mark.slow),
    ],
    ids=[
        "lstm-auto",
        "lstm-fused",
        "mingru-auto",
        "mingru-associative",
        "mingru-chunked",
        "mingru-hoisted",
    ],
)
def test_every_transformation_equals_the_sequential_strategy(cell, strategy):
    params, xs = _data(cell)
    want = _reference(cell)
    got = _transforms(cell, strategy)
    for name, fn in got.items():
        if strategy != "auto" and name in FORWARD:
            msg = f"strategy={strategy!r} has a hand-written reverse-mode derivative"
            with pytest.raises(TypeError, match=re.escape(msg)):
                fn(params, xs)
            continue
        tree_allclose(fn(params, xs), want[name], rtol=1e-4, atol=1e-5)
