"""Checkpoints with orbax: a `Recur` handle (a chain with dropout, its PRNG keys in the state)
and its optax state save and restore bit for bit, and training goes on from the restored
ones exactly as from the originals. (The restore onto a sharded layout runs on 8 host
devices in `sharding_check.py`.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import recurjax as rj

# Needs orbax: the `extras` marker, which .ci/floor deselects.
pytestmark = pytest.mark.extras

OPTIMIZER = optax.adam(1e-2)


def _step(model: rj.Recur, opt_state: Any, xs: jax.Array) -> tuple[rj.Recur, Any, jax.Array]:
    def loss(params: Any) -> tuple[jax.Array, rj.Recur]:
        m, ys = model.replace(params=params).scan(xs)
        return jnp.mean(ys**2), m

    (value, model), grads = jax.value_and_grad(loss, has_aux=True)(model.params)
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam: float ** int32
        updates, opt_state = OPTIMIZER.update(grads, opt_state)
    return model.replace(params=optax.apply_updates(model.params, updates)), opt_state, value


STEP = jax.jit(_step)


def _plain(tree: Any) -> list[np.ndarray]:
    """Every leaf as NumPy, PRNG keys as their raw data, for bitwise comparisons."""
    return [
        np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a)
        for a in jax.tree.leaves(tree)
    ]


def test_recur_with_dropout_keys_and_optax_state_round_trip_through_orbax(tmp_path: Path):
    cell = rj.chain(rj.LSTMCell(3, 8), rj.Dropout(0.25), rj.GRUCell(8, 4))
    model = rj.Recur(cell, key=jax.random.key(0)).batched(2).seed_dropout(jax.random.key(1))
    with jax.numpy_dtype_promotion("standard"):
        opt_state = OPTIMIZER.init(model.params)
    xs = jax.random.normal(jax.random.key(2), (5, 2, 3))
    model, opt_state, _ = STEP(model, opt_state, xs)  # a carried state, a moved optimizer
    checkpoint = {"model": model, "opt_state": opt_state}

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "step_1", checkpoint)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, checkpoint)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "step_1", target)

    assert type(restored["model"]) is rj.Recur and restored["model"].cell == cell
    assert jax.tree.structure(restored) == jax.tree.structure(checkpoint)
    for a, b in zip(_plain(restored), _plain(checkpoint), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    # The dropout keys came back as keys, and training goes on exactly as before.
    assert restored["model"].state[1].dtype == model.state[1].dtype
    going_on = STEP(model, opt_state, xs)
    resumed = STEP(restored["model"], restored["opt_state"], xs)
    for a, b in zip(_plain(resumed), _plain(going_on), strict=True):
        np.testing.assert_array_equal(a, b)
