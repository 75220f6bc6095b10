"""The delta rule as a property of DeltaNetCell and GatedDeltaNetCell: a write with `beta =
1` at a unit key replaces the value held there (`S k = v`, not the old value plus the new),
leaves what is held at orthogonal keys, and a write with `beta = 0` changes nothing, under
the sequential strategy and chunkwise in chunks of 2 and 3.

The cells read their inputs through `wi`; with `wi` the identity, an input is exactly the
blocks `[q, k, v, b]` (and Gated DeltaNet's decay pre-activation `a`), so the test writes
chosen keys and values: keys of norm 100 (unit after the L2 norm, to 5e-11), `b = +-40`
(`sigmoid(40)` is 1 and `sigmoid(-40)` 4e-18 in float32).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurjax as rj

HEADS, DK, DV = 2, 3, 2
STRATEGIES = [("sequential", None), ("chunkwise", 2), ("chunkwise", 3)]


def _cell_and_params(gated: bool):
    kind = rj.GatedDeltaNetCell if gated else rj.DeltaNetCell
    width = 2 * HEADS * DK + HEADS * DV + HEADS * (2 if gated else 1)
    cell = kind(width, HEADS * DV, num_heads=HEADS, key_size=HEADS * DK)
    params = cell.init(jax.random.key(0))
    params["wi"] = jnp.eye(width)  # the input is the blocks themselves
    return cell, params


def _step(key: np.ndarray, value: np.ndarray, b: float, gated: bool, a: float) -> np.ndarray:
    """One input: the same unit `key` (times 100) and `value` for every head, `b` for beta's
    logit, `a` for Gated DeltaNet's decay pre-activation."""
    q = np.ones(HEADS * DK)
    parts = [q, np.tile(100 * key, HEADS), np.tile(value, HEADS), np.full(HEADS, b)]
    return np.concatenate([*parts, *([np.full(HEADS, a)] if gated else [])])


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
@pytest.mark.parametrize(("strategy", "chunk"), STRATEGIES, ids=["sequential", "chunk2", "chunk3"])
def test_a_write_replaces_the_value_at_its_key(gated: bool, strategy: str, chunk):
    cell, params = _cell_and_params(gated)
    rng = np.random.default_rng(0)
    k = rng.standard_normal(DK)
    k /= np.linalg.norm(k)
    k_perp = rng.standard_normal(DK)
    k_perp -= (k_perp @ k) * k  # Gram-Schmidt
    k_perp /= np.linalg.norm(k_perp)
    v1, v2, v3 = rng.standard_normal((3, DV))
    S0 = rng.standard_normal((HEADS, DV, DK))
    # Gated DeltaNet: a decay a_t = exp(-exp(A_log) softplus(1 + dt_bias)) per step
    xs = np.stack(
        [
            _step(k, v1, 40.0, gated, 1.0),
            _step(k, v2, 40.0, gated, 1.0),  # replaces v1 at k
            _step(k_perp, v3, -40.0, gated, 1.0),  # beta = 0: no write
        ]
    )[:, None]  # (T, batch 1, in)
    h0 = jnp.asarray(S0.reshape(1, -1), jnp.float32)
    h, _ = rj.scan(cell, params, h0, jnp.asarray(xs, jnp.float32), strategy=strategy,
                   chunk_size=chunk)  # fmt: skip
    S = np.asarray(h).reshape(HEADS, DV, DK)
    if gated:
        dt = jax.nn.softplus(1.0 + params["dt_bias"])
        decay = np.asarray(jnp.exp(-jnp.exp(params["A_log"]) * dt))  # (heads,)
    else:
        decay = np.ones(HEADS)
    # after the two writes at k and the empty one at k_perp:
    np.testing.assert_allclose(S @ k, decay[:, None] * np.tile(v2, (HEADS, 1)), atol=1e-6)
    # orthogonal keys keep what they held, decayed by the three steps
    np.testing.assert_allclose(
        S @ k_perp, decay[:, None] ** 3 * (S0 @ k_perp), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(("strategy", "chunk"), STRATEGIES, ids=["sequential", "chunk2", "chunk3"])
def test_a_write_with_beta_zero_leaves_the_state(strategy: str, chunk):
    cell, params = _cell_and_params(False)
    rng = np.random.default_rng(1)
    xs = np.stack([_step(k / np.linalg.norm(k), v, -40.0, False, 0.0)
                   for k, v in zip(rng.standard_normal((4, DK)), rng.standard_normal((4, DV)),
                                   strict=True)])[:, None]  # fmt: skip
    h0 = jnp.asarray(rng.standard_normal((1, cell.state_width)), jnp.float32)
    h, _ = rj.scan(cell, params, h0, jnp.asarray(xs, jnp.float32), strategy=strategy,
                   chunk_size=chunk)  # fmt: skip
    np.testing.assert_allclose(h, h0, atol=1e-6)


def test_heads_must_divide_the_key_and_hidden_sizes():
    with pytest.raises(ValueError, match=re.escape("num_heads=4 must divide key_size=6")):
        rj.DeltaNetCell(3, 8, num_heads=4, key_size=6)
    with pytest.raises(ValueError, match=re.escape("num_heads=3 must divide hidden_size=8")):
        rj.GatedDeltaNetCell(3, 8, num_heads=3, key_size=6)
    with pytest.raises(TypeError, match=re.escape("expected key_size to be a positive int")):
        rj.DeltaNetCell(3, 8, key_size=0)
    assert repr(rj.GatedDeltaNetCell(3, 8, num_heads=2)) == (
        "GatedDeltaNetCell(3 => 8, num_heads=2, key_size=8)"
    )


def test_chunkwise_names_what_the_delta_rule_does_not_take():
    """A user's memory whose steps have a beta and a decay per key channel: a clear error."""
    cell, params = _cell_and_params(False)

    class PerChannel(rj.DeltaNetCell):
        def memory_steps(self, params, xs):
            steps = super().memory_steps(params, xs)
            return steps._replace(log_decay=jnp.zeros_like(steps.k))

    odd = PerChannel(cell.in_features, cell.hidden_size, num_heads=HEADS, key_size=HEADS * DK)
    xs = jnp.zeros((4, 1, cell.in_features))
    with pytest.raises(ValueError, match=re.escape("the delta rule (memory_steps with a beta) "
                                                   "takes one decay per head")):  # fmt: skip
        rj.scan(odd, params, odd.initial_state(params), xs, strategy="chunkwise")
