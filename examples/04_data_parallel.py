"""Data-parallel training of a character LSTM: the batch sharded over every device.

The model is the byte-level language model of `01_char_lm.py`, kept small: a learned embedding
(`rj.stateless`) -> `rj.LSTMCell` -> `rj.Dense` to 256 logits, in one `rj.Recur` handle. The
training text is cut into `--batch` parallel streams and walked in chunks of `--seq` steps
(truncated backpropagation through time), the handle's state carried from chunk to chunk.

Data parallelism uses JAX's own sharding, nothing else:

- a `jax.sharding.Mesh` over the devices, with one axis named `"data"`;
- every batch axis split over it with `NamedSharding(mesh, PartitionSpec(..., "data"))`: the
  inputs and targets `(seq, batch)` on axis 1, the handle's `state` and `state0` (leaves
  `(batch, hidden)`) on axis 0, so each device holds `batch / devices` streams;
- params and Adam's state replicated, `NamedSharding(mesh, PartitionSpec())`;
- one `jax.jit` train step, whose shardings propagate from its arguments: XLA runs each
  device's streams locally and all-reduces the gradient. The state comes back split like it
  went in, so the next chunk starts where the last one ended, on the same devices.

At the end the script prints the sharding of the carried state and asserts that it is still
split over every device, and that the params are still replicated. See docs/parallel.md.

Devices. On a machine with accelerators the mesh spans `jax.devices()`, the GPUs or TPU
cores. On a CPU-only machine XLA shows a single device, so this script asks it for 8 host
devices before importing JAX, by adding `--xla_force_host_platform_device_count=8` to
`XLA_FLAGS` unless that variable already sets a count (it is only honoured before JAX starts,
so it does nothing when this file is imported by a process that already uses JAX, and it does
not affect GPUs or TPUs). The 8 "devices" then share the machine's cores: this demonstrates the
layout and the result, not a speed-up. `--devices N` uses only the first `N` devices; the batch
must be a multiple of it.

Data: the `*.py` files at the top level of the running interpreter's standard library
(`sysconfig.get_paths()["stdlib"]`), which every machine has; every 10th file (sorted order) is
held out. Loss is in bits per byte (bpc), next to the order-0 (unigram) entropy of the text.

Run it (about 40 seconds on a 2-core CPU)::

    python examples/04_data_parallel.py
    python examples/04_data_parallel.py --devices 4 --steps 300
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python examples/04_data_parallel.py
"""

from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):  # must happen before JAX is imported
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=8".strip()

import argparse  # noqa: E402
import math  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from tqdm import tqdm  # noqa: E402

import recurjax as rj  # noqa: E402

VOCAB = 256  # byte values
LN2 = math.log(2.0)
VAL_EVERY = 10  # hold out every 10th stdlib file
VAL_MAX_BYTES = 64_000  # cap on held-out bytes: one evaluation is one scan

# --- data ------------------------------------------------------------------------------------


def load_text(train_bytes: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The stdlib sources as bytes: `(train, held_out, description)`, split by file."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    if len(files) < VAL_EVERY:
        raise SystemExit(f"expected Python sources in {stdlib}, found {len(files)} files")
    val_files = files[VAL_EVERY - 1 :: VAL_EVERY]
    train_files = [f for f in files if f not in val_files]
    train = np.frombuffer(b"\n".join(f.read_bytes() for f in train_files), np.uint8)
    val = np.frombuffer(b"\n".join(f.read_bytes() for f in val_files), np.uint8)
    desc = (
        f"Python stdlib {stdlib}/*.py: {len(train_files)} train, {len(val_files)} held-out files"
    )
    return train[:train_bytes], val[:VAL_MAX_BYTES], desc


def make_streams(text: np.ndarray, streams: int) -> tuple[np.ndarray, np.ndarray]:
    """`text` as `streams` contiguous streams, time-major `(T, streams)`: inputs, targets."""
    length = len(text) // streams
    if length < 2:
        raise SystemExit(f"{len(text)} bytes are too few for {streams} streams")
    walk = text[: streams * length].reshape(streams, length).T
    return walk[:-1], walk[1:]


def unigram_bits(text: np.ndarray) -> float:
    """Order-0 entropy of the bytes of `text`, in bits per byte."""
    counts = np.bincount(text, minlength=VOCAB).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


# --- model -----------------------------------------------------------------------------------


def _embed(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """Look up byte ids `x: (...)` in the table `(VOCAB, E)`: `(..., E)`."""
    return params["table"][x.astype(jnp.int32)]


def build_model(key: jax.Array, hidden: int, embed: int, batch: int) -> rj.Recur:
    """`Recur(chain(embedding, LSTMCell, Dense))` with its state batched to `(batch, ...)`."""

    def init_table(k: jax.Array) -> dict[str, jax.Array]:
        return {"table": jax.random.normal(k, (VOCAB, embed), jnp.float32)}

    cell = rj.chain(
        rj.stateless(_embed, init_table),
        rj.LSTMCell(embed, hidden, forget_bias=1.0),
        rj.Dense(hidden, VOCAB),
    )
    # Batched up front: a state (hidden,) has no batch axis to shard.
    return rj.Recur(cell, key=key).batched(batch)


def mean_nll(model: rj.Recur, xs: jax.Array, ys: jax.Array) -> tuple[jax.Array, rj.Recur]:
    """Mean next-byte cross-entropy (nats) over a chunk `xs, ys: (T, B)`; the new handle."""
    model, logits = model.scan(xs)  # (T, B, VOCAB), split over the devices on B
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, ys.astype(jnp.int32))
    return nll.mean(), model  # the mean over B sums across devices: XLA inserts an all-reduce


def make_train_step(optimizer: optax.GradientTransformation) -> Any:
    """The jitted step `(model, opt_state, xs, ys) -> (model, opt_state, loss)`.

    Nothing in it mentions devices: the shardings of the arguments propagate through it.
    """

    def loss_of_params(
        params: Any, model: rj.Recur, xs: jax.Array, ys: jax.Array
    ) -> tuple[jax.Array, rj.Recur]:
        return mean_nll(model.replace(params=params), xs, ys)

    @jax.jit
    def step(
        model: rj.Recur, opt_state: Any, xs: jax.Array, ys: jax.Array
    ) -> tuple[rj.Recur, Any, jax.Array]:
        grad_fn = jax.value_and_grad(loss_of_params, has_aux=True)
        (loss, model_next), grads = grad_fn(model.params, model, xs, ys)
        updates, opt_state = optimizer.update(grads, opt_state, model.params)
        params = optax.apply_updates(model.params, updates)
        return model_next.replace(params=params), opt_state, loss

    return step


@jax.jit
def evaluate(model: rj.Recur, xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats) of the whole held-out streams, from the initial state."""
    loss, _ = mean_nll(model.reset(), xs, ys)
    return loss


# --- sharding --------------------------------------------------------------------------------


def describe(a: jax.Array) -> str:
    """`spec, shards of shape on devices`, e.g. `P('data',): 8 shards of (8, 128) ...`."""
    spec = getattr(a.sharding, "spec", a.sharding)
    shapes = sorted({tuple(s.data.shape) for s in a.addressable_shards})
    shape_text = ", ".join(str(s) for s in shapes)
    devices = len({s.device for s in a.addressable_shards})
    return f"{spec}: {len(a.addressable_shards)} shards of {shape_text} on {devices} devices"


def check_batch_sharded(a: jax.Array, mesh: Mesh, batch_axis: int, name: str) -> None:
    """Assert that `a` is split on `batch_axis` over the mesh axis "data", nothing gathered."""
    n = mesh.devices.size
    spec = tuple(getattr(a.sharding, "spec", ()))
    spec = spec + (None,) * (a.ndim - len(spec))
    expected = tuple("data" if i == batch_axis else None for i in range(a.ndim))
    rows = {s.data.shape[batch_axis] for s in a.addressable_shards}
    assert isinstance(a.sharding, NamedSharding) and spec == expected, (name, a.sharding)
    assert len(a.addressable_shards) == n and rows == {a.shape[batch_axis] // n}, (name, rows)


# --- training --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--devices", type=int, default=None, help="use the first N devices (all)")
    p.add_argument("--steps", type=int, default=150, help="train steps (chunks)")
    p.add_argument("--batch", type=int, default=64, help="parallel streams, over all devices")
    p.add_argument("--seq", type=int, default=32, help="steps per chunk (BPTT length)")
    p.add_argument("--hidden", type=int, default=128, help="LSTM hidden size")
    p.add_argument("--embed", type=int, default=16, help="byte embedding size")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--train-bytes", type=int, default=400_000, help="cap on training bytes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train data-parallel, check the shardings, and return the metrics."""
    args = parse_args(argv)
    available = jax.devices()
    n = len(available) if args.devices is None else args.devices
    if not 1 <= n <= len(available):
        raise SystemExit(f"--devices {n}: this process has {len(available)} devices")
    if args.batch % n:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the {n} devices")

    # The mesh: one axis, "data", over the devices. (jax.make_mesh((n,), ("data",)) works as
    # well; recent JAX makes its axes Explicit, see docs/parallel.md.)
    mesh = Mesh(np.asarray(available[:n]), ("data",))
    replicated = NamedSharding(mesh, P())
    batch_rows = NamedSharding(mesh, P("data"))  # state leaves (B, features): split axis 0
    batch_cols = NamedSharding(mesh, P(None, "data"))  # chunks (T, B): split axis 1
    print(f"{n} of {len(available)} {available[0].platform} devices; mesh {dict(mesh.shape)}")

    train_text, val_text, source = load_text(args.train_bytes)
    xs_all, ys_all = make_streams(train_text, args.batch)
    xs_val, ys_val = make_streams(val_text, args.batch)
    chunks_per_pass = len(xs_all) // args.seq  # full chunks only: one compile
    if chunks_per_pass < 1:
        raise SystemExit(f"--train-bytes {args.train_bytes} is too short for --seq {args.seq}")
    unigram = unigram_bits(train_text)
    print(source)
    print(
        f"train {train_text.size:,} bytes as {args.batch} streams ({args.batch // n} per "
        f"device) of {len(xs_all):,} steps, {chunks_per_pass} chunks of {args.seq} per pass; "
        f"held-out {val_text.size:,} bytes; unigram entropy {unigram:.3f} bits/char"
    )

    model = build_model(jax.random.key(args.seed), args.hidden, args.embed, args.batch)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.lr))
    opt_state = optimizer.init(model.params)
    # Place everything once. A Recur is a pytree, so a Recur of shardings (made with
    # replace) places its params, state and state0 in one device_put.
    model = jax.device_put(
        model, model.replace(params=replicated, state=batch_rows, state0=batch_rows)
    )
    opt_state = jax.device_put(opt_state, replicated)
    val_xs, val_ys = jax.device_put((xs_val, ys_val), batch_cols)
    n_params = sum(p.size for p in jax.tree.leaves(model.params))
    print(f"model: {model}, {n_params:,} params, replicated on {n} devices")

    step = make_train_step(optimizer)
    val_start = float(evaluate(model, val_xs, val_ys)) / LN2
    bpcs: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(args.steps), desc="train", unit="step", disable=args.quiet)
    for i in bar:
        c = i % chunks_per_pass
        if c == 0:  # a new pass over the text: the streams start again (reset)
            model = model.reset()
        window = slice(c * args.seq, (c + 1) * args.seq)
        # Each step's batch goes straight from the host to its devices, already split.
        xs, ys = jax.device_put((xs_all[window], ys_all[window]), batch_cols)
        model, opt_state, loss = step(model, opt_state, xs, ys)
        if (i + 1) % 10 == 0 or i + 1 == args.steps:
            bpcs.append(float(loss) / LN2)  # waits for the step: the bar shows real speed
            bar.set_postfix(bpc=f"{bpcs[-1]:.3f}")
            if (i + 1) % 50 == 0 or i + 1 == args.steps:
                tqdm.write(f"step {i + 1}: train {bpcs[-1]:.3f} bpc")
    bar.close()
    seconds = time.perf_counter() - start
    val_bpc = float(evaluate(model, val_xs, val_ys)) / LN2
    print(
        f"done in {seconds:.1f} s: held-out {val_start:.3f} -> {val_bpc:.3f} bits/char "
        f"(unigram {unigram:.3f})"
    )

    # The carried state is still split over every device, and the params still replicated.
    for path, leaf in jax.tree_util.tree_leaves_with_path(model.state):
        print(f"state{jax.tree_util.keystr(path)} {leaf.shape}: {describe(leaf)}")
        check_batch_sharded(leaf, mesh, 0, f"state{jax.tree_util.keystr(path)}")
    for leaf in jax.tree.leaves(model.state0):
        check_batch_sharded(leaf, mesh, 0, "state0")
    for leaf in jax.tree.leaves((model.params, opt_state)):
        assert leaf.sharding.is_fully_replicated and len(leaf.addressable_shards) == n
    print(f"params and optimizer state: replicated on {n} devices")

    state_leaf = jax.tree.leaves(model.state)[0]
    return {
        "devices": n,
        "steps": args.steps,
        "train_bpc_first": bpcs[0],
        "train_bpc": bpcs[-1],
        "val_bpc_start": val_start,
        "val_bpc": val_bpc,
        "unigram_bits": unigram,
        "train_seconds": seconds,
        "state_spec": str(state_leaf.sharding.spec),
        "state_shards": len(state_leaf.addressable_shards),
        "state_shard_rows": state_leaf.addressable_shards[0].data.shape[0],
    }


if __name__ == "__main__":
    main()
