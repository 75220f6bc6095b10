"""Data parallelism check, run by tests/test_sharding.py in a subprocess; prints one JSON object.

The parent sets `XLA_FLAGS=--xla_force_host_platform_device_count=8` and `JAX_PLATFORMS=cpu`
(a pytest process has already initialised JAX with one device, so this needs a process of its
own). The script trains a character model, `chain(embedding, LSTMCell, GRUCell, Dense)` in a
batched `Recur` handle, with optax Adam for a few truncated-BPTT chunks (the state carried from
chunk to chunk, with a `reset()` midway) twice, with the same jitted train step:

- on a single device (every array on `jax.devices()[0]`);
- data parallel: a `Mesh` over all devices with one axis `"data"`, the batch axis of the inputs
  and of the handle's `state` and `state0` sharded with `NamedSharding(mesh, P(..., "data"))`,
  params and optimizer state replicated, and `jax.jit` left to propagate the shardings.

It reports the largest differences between the two runs (loss, gradients, updated params,
outputs, carried state), the sharding of every output and of the carried state after every
step, how often the sharded step compiled, the collectives in its compiled program, and the
same for an eager `scan`/step and for a step jitted with explicit `in_shardings` and
`out_shardings`. The parent asserts on the JSON; this script asserts nothing itself.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

import recurjax as rj

# As the test suite (conftest.py): a silent broadcast is an error here too.
jax.config.update("jax_numpy_rank_promotion", "raise")

VOCAB, EMBED, HIDDEN = 64, 8, 32
BATCH, SEQ, STEPS, RESET_AT = 32, 12, 5, 3  # a reset() before step RESET_AT
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # one per XLA compilation
COMPILES: list[str] = []


def _count_compiles(event: str, duration_secs: float, **kwargs: Any) -> None:
    if event == COMPILE_EVENT:
        COMPILES.append(event)


def _embed(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return params["table"][x.astype(jnp.int32)]


def _init_table(key: jax.Array) -> dict[str, jax.Array]:
    return {"table": jax.random.normal(key, (VOCAB, EMBED), jnp.float32)}


def build_model() -> rj.Recur:
    cell = rj.chain(
        rj.stateless(_embed, _init_table),
        rj.LSTMCell(EMBED, HIDDEN, forget_bias=1.0),
        rj.GRUCell(HIDDEN, HIDDEN),
        rj.Dense(HIDDEN, VOCAB),
    )
    return rj.Recur(cell, key=jax.random.key(0)).batched(BATCH)


OPTIMIZER = optax.adam(1e-2)


def _init_opt(params: Any) -> Any:
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam: float ** int32
        return OPTIMIZER.init(params)


def train_step(
    model: rj.Recur, opt_state: Any, xs: jax.Array, ys: jax.Array
) -> tuple[rj.Recur, Any, jax.Array, Any, jax.Array]:
    """One chunk: `(model with new params and carried state, opt_state, loss, grads, logits)`."""

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[rj.Recur, jax.Array]]:
        m, logits = model.replace(params=params).scan(xs)  # (T, B, VOCAB)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, ys)
        return nll.mean(), (m, logits)

    (loss, (m, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(model.params)
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = OPTIMIZER.update(grads, opt_state, model.params)
    params = optax.apply_updates(model.params, updates)
    return m.replace(params=params), opt_state, loss, grads, logits


def make_data() -> tuple[np.ndarray, np.ndarray]:
    """Token streams `(STEPS * SEQ, BATCH)`, time-major: inputs and next-token targets."""
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.integers(1, 4, (STEPS * SEQ + 1, BATCH)), axis=0) % VOCAB
    walk = walk.astype(np.int32)
    return walk[:-1], walk[1:]


def run(
    step: Any, model: rj.Recur, opt_state: Any, place_batch: Any, data: Any
) -> list[dict[str, Any]]:
    """`STEPS` chunks through `step`, the state carried across them; every step's results."""
    inputs, targets = data
    records = []
    for i in range(STEPS):
        if i == RESET_AT:
            model = model.reset()
        xs = place_batch(inputs[i * SEQ : (i + 1) * SEQ])
        ys = place_batch(targets[i * SEQ : (i + 1) * SEQ])
        model, opt_state, loss, grads, logits = step(model, opt_state, xs, ys)
        records.append(
            {
                "model": model,
                "opt_state": opt_state,
                "loss": loss,
                "grads": grads,
                "logits": logits,
            }
        )
    return records


def max_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two pytrees of arrays (as host NumPy arrays)."""
    diffs = [
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return max(diffs, default=0.0)


def max_abs(a: Any) -> float:
    return max(float(np.max(np.abs(np.asarray(x)), initial=0.0)) for x in jax.tree.leaves(a))


def describe(arr: jax.Array, batch_axis: int | None) -> dict[str, Any]:
    """How `arr` is laid out: its sharding, shards, and whether it is split on `batch_axis`."""
    sharding = arr.sharding
    named = isinstance(sharding, NamedSharding)
    spec = tuple(sharding.spec) if named else ()
    spec = spec + (None,) * (arr.ndim - len(spec))
    if batch_axis is None:
        expected: tuple[Any, ...] = (None,) * arr.ndim
    else:
        expected = tuple("data" if ax == batch_axis else None for ax in range(arr.ndim))
    shards = arr.addressable_shards
    return {
        "shape": list(arr.shape),
        "sharding": type(sharding).__name__,
        "spec": str(sharding.spec) if named else None,
        "spec_ok": named and spec == expected,
        "fully_replicated": bool(sharding.is_fully_replicated),
        "n_shards": len(shards),
        "n_devices": len({s.device for s in shards}),
        "shard_shapes": sorted({tuple(s.data.shape) for s in shards}),
    }


def describe_tree(tree: Any, batch_axis: int | None) -> list[dict[str, Any]]:
    return [
        {"path": jax.tree_util.keystr(path), **describe(leaf, batch_axis)}
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    ]


def collectives(compiled_text: str) -> dict[str, int]:
    """Count the cross-device collectives in an optimised HLO module."""
    ops = r"all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter"
    return dict(Counter(re.findall(rf"\b({ops})(?:-start)?\(", compiled_text)))


def sequence_parallel(devices: list[Any]) -> dict[str, Any]:
    """One long sequence with its time axis split over every device (`shard_map`), against
    `rj.scan` on one device: values, final states and gradients, for minGRU and the LRU and
    the matrix memories mLSTM, GLA, Mamba-2 and Gated DeltaNet, with `lengths` and `resets`
    (and minGRU without); and the sharding of the outputs."""
    mesh = Mesh(np.asarray(devices), ("time",))
    T = 16 * len(devices)
    out: dict[str, Any] = {}
    cells = (
        rj.MinGRUCell(3, 4),
        rj.LRUCell(3, 4, r_min=0.5),
        rj.MLSTMCell(3, 4, num_heads=2),  # the stabilised fold
        rj.GLACell(3, 4, num_heads=2, key_size=4),  # the plain fold, a decay per key channel
        rj.Mamba2Cell(3, 4, num_heads=2, state_size=2),  # the plain fold, a decay per head
        rj.GatedDeltaNetCell(3, 4, num_heads=2),  # the delta rule's fold, S -> S G + S_zero
    )
    for cell in cells:
        params = cell.init(jax.random.key(0))
        xs = jax.random.normal(jax.random.key(1), (T, 2, 3))
        h0 = jax.tree.map(
            lambda a: jnp.full((2, *a.shape), 0.3, a.dtype), cell.initial_state(params)
        )
        controls: dict[str, Any] = {
            "lengths+resets": {
                "lengths": jnp.array([T, 37]),
                "resets": jax.random.bernoulli(jax.random.key(2), 0.1, (T, 2)),
            }
        }
        if isinstance(cell, rj.MinGRUCell):
            controls["plain"] = {}
        for label, kw in controls.items():

            def loss(
                params: Any,
                xs: jax.Array,
                parallel: bool,
                kw: Any = kw,
                cell: Any = cell,
                h0: Any = h0,
            ) -> Any:
                if parallel:
                    h, ys = rj.sequence_parallel_scan(
                        cell, params, h0, xs, mesh=mesh, axis="time", **kw
                    )
                else:
                    h, ys = rj.scan(cell, params, h0, xs, **kw)
                state = sum(jnp.sum(jnp.abs(a) ** 2) for a in jax.tree.leaves(h))
                return jnp.sum(ys**2) + state, (h, ys)

            grad = jax.jit(
                jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2
            )
            one = grad(params, jax.device_put(xs, devices[0]), False)
            split = grad(params, jax.device_put(xs, NamedSharding(mesh, P("time"))), True)
            out[f"{cell!r} {label}"] = {
                "rel_diff": max_diff(one, split) / max_abs(one),
                "ys_time_split": split[0][1][1].sharding.spec == P("time"),
            }
    return out


def orbax_restore(last: dict[str, Any], model_shardings: Any, replicated: Any) -> dict[str, Any]:
    """The trained, sharded handle and its optax state saved with orbax, then restored twice:
    onto one device, and onto the data-parallel layout (the target's shardings). Reports the
    largest difference from the saved arrays (0 when bit for bit) and the restored layout."""
    saved = {"model": last["model"], "opt_state": last["opt_state"]}
    directory = Path(tempfile.mkdtemp()) / "checkpoint"
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, saved)
    one = SingleDeviceSharding(jax.devices()[0])
    shardings = {
        "model": model_shardings,
        "opt_state": jax.tree.map(lambda _: replicated, saved["opt_state"]),
    }
    targets = {
        "single": jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), saved
        ),
        "sharded": jax.tree.map(  # shardings is a prefix of saved: one sharding a subtree
            lambda s, sub: jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), sub
            ),
            shardings,
            saved,
        ),
    }
    out: dict[str, Any] = {}
    for name, target in targets.items():
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(directory, target)
        out[name] = {
            "same_structure": jax.tree.structure(restored) == jax.tree.structure(saved),
            "max_diff": max_diff(restored, saved),
            "state": describe_tree(restored["model"].state, 0),
            "params": describe_tree(restored["model"].params, None),
            "n_devices": sorted({len(a.sharding.device_set) for a in jax.tree.leaves(restored)}),
        }
    return out


def main() -> dict[str, Any]:
    # As strict as the test suite (tests/conftest.py): no silent rank or dtype promotion.
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.monitoring.register_event_duration_secs_listener(_count_compiles)
    devices = jax.devices()
    n = len(devices)
    data = make_data()
    model = build_model()
    opt_state = _init_opt(model.params)

    # --- the reference: one device -----------------------------------------------------------
    one = SingleDeviceSharding(devices[0])
    single_step = jax.jit(train_step)
    single = run(
        single_step,
        jax.device_put(model, one),
        jax.device_put(opt_state, one),
        lambda a: jax.device_put(a, one),
        data,
    )

    # --- data parallel: the batch axis over a mesh of every device -----------------------------
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    batch_state = NamedSharding(mesh, P("data"))  # state leaves are (B, features)
    batch_xs = NamedSharding(mesh, P(None, "data"))  # inputs are time-major (T, B)
    model_shardings = model.replace(params=replicated, state=batch_state, state0=batch_state)
    sharded_model = jax.device_put(model, model_shardings)
    sharded_opt = jax.device_put(opt_state, replicated)
    placed = {
        "state": describe_tree(sharded_model.state, 0),
        "state0": describe_tree(sharded_model.state0, 0),
    }
    sharded_step = jax.jit(train_step)  # shardings propagate from the arguments
    COMPILES.clear()
    sharded = run(
        sharded_step, sharded_model, sharded_opt, lambda a: jax.device_put(a, batch_xs), data
    )
    compiles = len(COMPILES)  # XLA compilations in the whole sharded run, the reset included
    xs0 = jax.device_put(data[0][:SEQ], batch_xs)
    compiled = sharded_step.lower(sharded_model, sharded_opt, xs0, xs0).compile()

    steps = []
    for i, (a, b) in enumerate(zip(single, sharded, strict=True)):
        steps.append(
            {
                "step": i,
                "loss_single": float(a["loss"]),
                "loss_sharded": float(b["loss"]),
                "loss_diff": abs(float(a["loss"]) - float(b["loss"])),
                "grads_diff": max_diff(a["grads"], b["grads"]),
                "grads_scale": max_abs(a["grads"]),
                "params_diff": max_diff(a["model"].params, b["model"].params),
                "update_scale": max_diff(
                    a["model"].params, (single[i - 1]["model"] if i else model).params
                ),
                "opt_state_diff": max_diff(a["opt_state"], b["opt_state"]),
                "logits_diff": max_diff(a["logits"], b["logits"]),
                "state_diff": max_diff(a["model"].state, b["model"].state),
                "state": describe_tree(b["model"].state, 0),
                "state0": describe_tree(b["model"].state0, 0),
                "logits": describe(b["logits"], 1),
                "loss": describe(b["loss"], None),
                "params": describe_tree(b["model"].params, None),
                "grads": describe_tree(b["grads"], None),
                "opt_state": describe_tree(b["opt_state"], None),
            }
        )

    # --- the same step with the shardings spelled out: in_shardings / out_shardings -----------
    explicit_step = jax.jit(
        train_step,
        in_shardings=(model_shardings, replicated, batch_xs, batch_xs),
        out_shardings=(model_shardings, replicated, replicated, replicated, batch_xs),
    )
    ys0 = jax.device_put(data[1][:SEQ], batch_xs)
    explicit = explicit_step(sharded_model, sharded_opt, xs0, ys0)
    first = sharded_step(sharded_model, sharded_opt, xs0, ys0)
    explicit_diff = max_diff(explicit, first)

    # --- eager use of the sharded handle: no jit of our own ------------------------------------
    eager_model, eager_ys = sharded_model.scan(xs0)
    step_model, step_y = eager_model(xs0[0])
    eager = {
        "scan_state": describe_tree(eager_model.state, 0),
        "scan_ys": describe(eager_ys, 1),
        "call_state": describe_tree(step_model.state, 0),
        "call_y": describe(step_y, 0),
    }

    return {
        "orbax": orbax_restore(sharded[-1], model_shardings, replicated),
        "sequence_parallel": sequence_parallel(devices),
        "jax": jax.__version__,
        "devices": n,
        "platform": devices[0].platform,
        "batch": BATCH,
        "rows_per_shard": BATCH // n,
        "steps": steps,
        "placed": placed,
        "compiles": compiles,
        "collectives": collectives(compiled.as_text() or ""),
        "explicit_shardings_diff": explicit_diff,
        "explicit_state": describe_tree(explicit[0].state, 0),
        "eager": eager,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
