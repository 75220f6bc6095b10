"""recurjax against Flax, Haiku, Equinox, memax and PyTorch: LSTM and GRU over whole sequences.

    pip install -e ".[bench]"
    python benchmarks/rnn.py                 # everything (7 or 3 processes), writes RESULTS.md
    python benchmarks/rnn.py --policy-processes 9 --processes 5   # more processes per config
    python benchmarks/rnn.py --order-seed 1234   # the build and call orders of a former run
    python benchmarks/rnn.py --quick         # small configs, one process, no file
    python benchmarks/rnn.py --only lstm-32  # the jobs whose name contains "lstm-32"

The same LSTM and GRU table on a GPU, with cuDNN and the newer cells: `benchmarks/gpu.py`.

How the numbers are made, so that they can be trusted:

- Same function, checked outputs and gradients: the weights of one PyTorch module are copied
  into every implementation with `recurjax.interop`. Before anything is timed (in the
  first process of each job; the later ones build the same functions), every row's outputs
  and its gradients of `sum(y * g)` (`g` a fixed random cotangent) w.r.t. its params and
  its inputs are checked against recurjax's `strategy="sequential"` on the same inputs
  (`check`): within 1e-4 of each array's scale (its largest |value|, at least 1), no NaN,
  or the run stops with an `AssertionError`. A peer's param gradients are compared
  through its weight mapping (JAX peers: differentiated through the `recurjax.interop`
  conversion; torch: in its own layout, the reference's pulled back through
  `interop.from_torch`); recurjax's own rows also have the gradients that their timed f+b
  returns checked. Haiku's and memax's GRU put the reset gate before the matmul, so they
  are checked against `rj.GRUv3Cell` with the same weights; memax's LSTM has `h = o * c`
  without the `tanh`, so it is checked against a recurjax cell of those equations. The
  floor is not the same function and is not checked.
- Separate processes: each job (one config) runs in fresh Python processes, one after
  another, never two at once; the passes over all jobs are interleaved (process 1 of every
  job, then process 2, ...), so that slow drifts of the machine spread over all. The jobs
  behind `src/recurjax/_scan/policy.py`'s thresholds and the targets table (every LSTM and
  GRU config, the streaming step) run in `--policy-processes` processes (7), the others
  (padded, memory) in `--processes` (3).
- Within a process, the rows are built (made and compiled) in a random order, and every
  round calls them in a new random order. Each row runs one untimed call and then `burst`
  timed calls back to back, as a training loop calls it (torch's worker threads are awake,
  JAX's buffers reused); the round's time is the median of the burst, the process's time
  the median of the rounds. The orders come from `--order-seed` (random unless given; the
  report records it, and each process's seed is derived from it).
- Ratios are formed per process (recurjax's time over the implementation's, below 1:
  recurjax is faster) and reported as the median over processes with their min-max. Over 7
  processes the min-max is a 98.4% interval for the median per-process ratio whatever the
  noise's distribution (it misses only if all 7 fall on one side: 2 / 2^7); over 3 only
  75%, which cannot separate +-5%. A bootstrap interval was not chosen: from 7 values the
  percentile bootstrap of a median spans about the 2nd to 6th of them, which covers the
  median only 87.5% of the time though it claims 95%. A ratio whose range contains 1 is a
  tie.
- The A/A row is the default recurjax function built a second time and timed as a row of
  its own: its ratio shows the noise of the measurement and must contain 1. Where it does
  not in a job of `--policy-processes`, fwd or f+b, the job runs again once in fresh
  processes with new seeds and its rerun's numbers are reported; if the A/A range still
  excludes 1, the report says so in bold above the job's table and at the top.
- fwd: the outputs of the whole sequence; f+b: the gradient of `sum(y**2)` w.r.t. the
  params (JAX: one jitted function each; PyTorch: `backward()`, torch on all cores, both
  `batch_first=True` and time-major).
- The jobs named "... with GLIBC_TUNABLES=glibc.malloc.hugetlb=1" run every implementation
  with transparent huge pages for malloc: the difference to the plain job is what page
  faults of the large temporary buffers cost (the guide's "Speed and memory" section).
- GFLOP/s counts the gate matmuls, `2 B T (F + H) G H` for fwd and three times that for
  f+b (G = 4 for LSTM, 3 for GRU); "% peak" divides by a 2048^3 float32 matmul under
  `jax.jit` measured in the same process. The floor is `lax.scan` of the step's two
  matmuls alone (no gates).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

# memax checks its annotations at trace time with jaxtyping; with an input projection of
# another size than the state (F != H, as in every config here) the annotation
# `input: Float[Array, "Recurrent"]` rejects it. Only memax's checks are affected.
os.environ.setdefault("JAXTYPING_DISABLE", "1")

import jax
import jax.numpy as jnp
import numpy as np

import recurjax as rj
from recurjax import interop

GATES = {"lstm": 4, "gru": 3}
PACKAGES = ("jax", "jaxlib", "numpy", "torch", "flax", "equinox", "dm-haiku", "memax")


def _job(
    kind: str, B: int, T: int, F: int, H: int, rounds: int, burst: int, env: str = ""
) -> dict[str, Any]:
    """One config; `env` (`NAME=value`) is set for the worker process, for every
    implementation alike. Every LSTM and GRU config is behind `_scan/policy.py`'s
    thresholds or the targets table: `"policy"` (`--policy-processes`, the A/A rule)."""
    name = f"{kind}-{B}-{T}-{F}-{H}" + (f" with {env}" if env else "")
    return {
        "name": name,
        "kind": kind,
        "size": [B, T, F, H],
        "rounds": rounds,
        "burst": burst,
        "env": env,
        "policy": True,
    }


# glibc gives a large allocation (over its 32 MB mmap threshold) fresh pages from the kernel
# on every call, and XLA's temporary buffer of an f+b program above that size is page-faulted
# in each time (so are torch's buffers). With transparent huge pages for malloc (glibc >=
# 2.35) a fault brings 2 MB instead of 4 kB: these jobs measure what the faults cost.
HUGETLB = "GLIBC_TUNABLES=glibc.malloc.hugetlb=1"

JOBS = [
    _job(kind, *size)
    for kind in ("lstm", "gru")
    for size in ((32, 128, 64, 256, 8, 3), (1, 1000, 32, 128, 8, 3), (128, 64, 256, 512, 3, 1))
] + [
    _job("lstm", 32, 128, 64, 256, 8, 3, HUGETLB),
    _job("lstm", 128, 64, 256, 512, 3, 1, HUGETLB),
    {"name": "streaming", "kind": "streaming", "rounds": 300, "policy": True},
    {"name": "padded", "kind": "padded", "size": [32, 128, 64, 256], "rounds": 8, "burst": 3},
    {"name": "memory", "kind": "memory", "size": [4096, 32, 64, 256], "rounds": 2},
]
QUICK = [_job("lstm", 8, 32, 16, 32, 3, 2), _job("gru", 8, 32, 16, 32, 3, 2)]


@dataclasses.dataclass
class Impl:
    """One row: its fwd and f+b callables (blocking), and for the check its outputs and
    gradients of `sum(ys * g)` for a cotangent `g`: `vjp(g) -> (ys, d params, d xs)`, in the
    layouts of its reference's outputs, params and inputs (a torch row's param gradients in
    torch's: `layout` maps the reference's there)."""

    name: str
    fwd: Callable[[], Any]
    fb: Callable[[], Any]
    vjp: Callable[[Any], tuple[Any, Any, Any]]
    reference: str = "recurjax"  # the reference it must equal ("" for none)
    layout: Callable[[Any], Any] | None = None
    fb_grads: bool = False  # whether `fb()` returns the gradients of the reference's params
    compile_s: list[float] = dataclasses.field(default_factory=list)
    temp_mb: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Reference:
    """recurjax's sequential strategy on a job's inputs: what the rows are checked against.
    `vjp(g) -> (ys, d params, d xs)` as `Impl.vjp`; `shape` is the shape of `ys`."""

    vjp: Callable[[Any], tuple[Any, Any, Any]]
    shape: tuple[int, ...]


def _block(x: Any) -> Any:
    return jax.block_until_ready(x)


def fwd_and_fb(ys_fn: Callable[..., Any]) -> tuple[Any, Any]:
    """`ys_fn(params, xs)` jitted, and the jitted gradient of `sum(ys**2)` w.r.t. `params`:
    the fwd and f+b every benchmark here times."""
    return jax.jit(ys_fn), jax.jit(jax.grad(lambda p, xs: jnp.sum(ys_fn(p, xs) ** 2)))


def vjp_fn(ys_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Jitted `(params, xs, g) -> (ys, d params, d xs)`: the outputs of `ys_fn(params, xs)`
    and the gradients of `sum(ys * g)` w.r.t. both arguments, what `check` compares."""

    def run(p: Any, xs: jax.Array, g: jax.Array) -> tuple[Any, Any, Any]:
        ys, pull = jax.vjp(ys_fn, p, xs)
        return ys, *pull(g)

    return jax.jit(run)


def reference(ys_fn: Callable[..., Any], params: Any, xs: jax.Array) -> Reference:
    """`ys_fn` (recurjax's sequential strategy) as the reference of `check`."""
    run = vjp_fn(ys_fn)
    return Reference(lambda g: run(params, xs, g), jax.eval_shape(ys_fn, params, xs).shape)


def jax_impl(
    name: str,
    ys_fn: Callable[..., Any],
    params: Any,
    xs: jax.Array,
    reference: str = "recurjax",
    convert: Callable[[Any], Any] | None = None,
    swap: bool = False,
    fb_grads: bool | None = None,
) -> Impl:
    """Wrap `ys_fn(params, xs) -> ys` as a jitted fwd and a jitted f+b, compiled now.
    `params` and `xs` are the reference's: a peer runs on `convert(params)` (its layout of
    the same weights; its check differentiates through `convert`, so that its gradients are
    the reference's params'), and with `swap` on `xs` with the first two axes swapped (its
    outputs too; the check swaps them back). `fb_grads` (default: no `convert`) has the
    check compare the timed f+b's gradients with the reference's as well."""
    own = params if convert is None else convert(params)
    own_xs = jnp.swapaxes(xs, 0, 1) if swap else xs

    def checked(p: Any, xs: jax.Array) -> jax.Array:
        p = p if convert is None else convert(p)
        if not swap:
            return ys_fn(p, xs)
        return jnp.swapaxes(ys_fn(p, jnp.swapaxes(xs, 0, 1)), 0, 1)

    fwd, fb = fwd_and_fb(ys_fn)
    run = vjp_fn(checked)
    impl = Impl(
        name,
        lambda: _block(fwd(own, own_xs)),
        lambda: _block(fb(own, own_xs)),
        lambda g: run(params, xs, g),
        reference,
        fb_grads=convert is None if fb_grads is None else fb_grads,
    )
    for fn in (fwd, fb):
        t0 = time.perf_counter()
        compiled = fn.lower(own, own_xs).compile()
        _block(compiled(own, own_xs))
        impl.compile_s.append(time.perf_counter() - t0)
        mem = compiled.memory_analysis()
        impl.temp_mb.append(getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20)
    return impl


def torch_impl(
    name: str,
    module: Any,
    xs: np.ndarray,
    run: Callable[[Any, Any], Any] = lambda module, x: module(x)[0],
    swap: bool = False,
    reference: str = "recurjax",
    device: str = "cpu",
) -> Impl:
    """A torch recurrent module as a row, on all cores (or on `device`, e.g. `"cuda"`: cuDNN):
    fwd `run(module, x)` under `no_grad`, f+b the `backward()` of `sum(y**2)`. `xs` is in
    the reference's layout; with `swap` the module reads it with the first two axes swapped
    (time-major), and its outputs and input gradients are swapped back for the check. Its
    param gradients stay in torch's layout: the check pulls the reference's back through
    `interop.from_torch`."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device(device)
    module = module.to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def layout(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.swapaxes(a, 0, 1) if swap else a)

    def tensor(a: np.ndarray) -> Any:
        return torch.from_numpy(layout(a)).to(dev)

    x = tensor(xs)

    def fwd() -> Any:
        with torch.no_grad():
            out = run(module, x)
        sync()
        return out

    def fb() -> None:
        module.zero_grad(set_to_none=True)
        (run(module, x) ** 2).sum().backward()
        sync()

    def numpy(t: Any) -> np.ndarray:
        return t.detach().cpu().numpy().copy()

    def vjp(g: Any) -> tuple[Any, Any, Any]:
        module.zero_grad(set_to_none=True)
        x_g = tensor(xs).requires_grad_(True)
        y = run(module, x_g)
        (y * tensor(np.asarray(g))).sum().backward()
        grads = {k: numpy(p.grad) for k, p in module.named_parameters()}
        module.zero_grad(set_to_none=True)
        assert x_g.grad is not None
        return layout(numpy(y)), grads, layout(numpy(x_g.grad))

    state = {k: jnp.asarray(numpy(v)) for k, v in module.state_dict().items()}
    pull = jax.vjp(lambda sd: interop.from_torch(sd, mode=module.mode)[1], state)[1]
    return Impl(name, fwd, fb, vjp, reference, layout=lambda d: pull(d)[0])


def build_shuffled(builders: list[Callable[[], Impl]], seed: int) -> list[Impl]:
    """Call the builders (each makes one row, and compiles it) in a random order drawn from
    `seed`; the rows come back in the builders' order."""
    built: dict[int, Impl] = {}
    for i in np.random.default_rng([seed, 1]).permutation(len(builders)):
        built[int(i)] = builders[i]()
    return [built[i] for i in range(len(builders))]


TOLERANCE = 1e-4


def assert_close(what: str, got: Any, want: Any, tol: float = TOLERANCE) -> float:
    """Raise `AssertionError` unless the pytrees `got` and `want` have one structure and every
    leaf agrees within `tol` of the leaf's scale (its largest |value|, at least 1) plus `tol`
    of each value, NaN nowhere. Returns the largest |difference| over the scale."""
    got_leaves, got_def = jax.tree.flatten(got)
    want_paths, want_def = jax.tree_util.tree_flatten_with_path(want)
    if got_def != want_def:
        raise AssertionError(f"{what}: a tree {got_def}, expected {want_def}")
    worst = 0.0
    for a, (path, b) in zip(got_leaves, want_paths, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        where = f"{what}{jax.tree_util.keystr(path)}"
        if a.shape != b.shape:
            raise AssertionError(f"{where}: shape {a.shape}, expected {b.shape}")
        if not np.isfinite(b).all():
            bad = int(np.sum(~np.isfinite(b)))
            raise AssertionError(f"{where}: the reference has {bad} of {b.size} values not finite")
        scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
        np.testing.assert_allclose(
            a, b, rtol=tol, atol=tol * scale, equal_nan=False, err_msg=where, verbose=False
        )
        worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)) / scale)
    return worst


def check(
    impls: list[Impl], refs: dict[str, Reference], mask: np.ndarray | None = None
) -> dict[str, tuple[float, float]]:
    """Check every row with a reference against it: outputs, and the gradients of
    `sum(ys * g)` (`g` a fixed random cotangent, zero where `mask` is False) w.r.t. params
    and inputs; for `fb_grads` rows the timed f+b's gradients too. Outputs are compared
    where `mask` is True. Raises one `AssertionError` with every mismatch (`assert_close`)
    after checking all rows. Returns each row's largest output and gradient difference
    (over the scale)."""
    wants: dict[str, Any] = {}
    diffs, errors = {}, []
    for impl in impls:
        if not impl.reference:
            continue
        if impl.reference not in wants:
            ref = refs[impl.reference]
            g = np.random.default_rng(0).standard_normal(ref.shape).astype(np.float32)
            if mask is not None:
                g = g * mask
            ys, dp, dx = ref.vjp(g)
            wants[impl.reference] = g, ys, dp, dx, ref.vjp(2 * ys)[1]
        g, ys_want, dp_want, dx_want, fb_want = wants[impl.reference]
        ys, dp, dx = impl.vjp(g)
        if mask is not None:
            ys, ys_want = np.asarray(ys) * mask, np.asarray(ys_want) * mask
        where = f"{impl.name} against {impl.reference} (strategy='sequential')"
        pairs = [
            ("outputs", ys, ys_want),
            (
                "gradients w.r.t. the params",
                dp,
                dp_want if impl.layout is None else impl.layout(dp_want),
            ),
            ("gradients w.r.t. the inputs", dx, dx_want),
        ]
        if impl.fb_grads:
            pairs.append(("the timed f+b's gradients", impl.fb(), fb_want))
        try:
            out, *grads = (assert_close(f"{where}: {what}", a, b) for what, a, b in pairs)
            diffs[impl.name] = (out, max(grads))
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        raise AssertionError(f"{len(errors)} row(s) differ:\n" + "\n".join(errors))
    return diffs


def _recurjax(cell: Any, strategy: str, time_axis: int = 1) -> Callable[[Any, jax.Array], Any]:
    """A fresh function (its own jit cache entry) running `rj.scan` over `time_axis` of its
    inputs (batch-major by default), the other of the first two axes the batch."""

    def ys(p: Any, xs: jax.Array) -> Any:
        batch = xs.shape[1 - time_axis]
        h0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (batch, *a.shape)), cell.initial_state(p))
        return rj.scan(cell, p, h0, xs, time_axis=time_axis, strategy=strategy)[1]

    return ys


def _gruv3(params: Any, H: int) -> dict[str, Any]:
    """A `GRUCell`'s params as `GRUv3Cell` params (the peers' reset-before form)."""
    return {
        "wi": params["wi"],
        "wh": params["wh"][:, : 2 * H],
        "whn": params["wh"][:, 2 * H :],
        "b": params["b"],
    }


class _MemaxLSTMCell(rj.Cell):
    """memax's LSTM equations (`h' = o * c'`, no `tanh` on the cell) as a recurjax cell: the
    reference that the memax row is checked against."""

    def __init__(self, F: int, H: int) -> None:
        self.F, self.H = F, H

    def init(self, key: Any, dtype: Any = jnp.float32) -> Any:
        return rj.LSTMCell(self.F, self.H).init(key, dtype)

    def initial_state(self, params: Any) -> Any:
        z = jnp.zeros((self.H,), params["b"].dtype)
        return (z, z)

    def __call__(self, params: Any, h: Any, x: jax.Array) -> Any:
        H, (hh, c) = self.H, h
        z = x @ params["wi"] + hh @ params["wh"] + params["b"]
        i, f, o = (jax.nn.sigmoid(z[..., k * H : (k + 1) * H]) for k in (0, 1, 3))
        c = f * c + i * jnp.tanh(z[..., 2 * H : 3 * H])
        h = o * c
        return (h, c), h


def _memax(kind: str, params: Any, F: int, H: int) -> tuple[Any, Any]:
    """memax's equinox GRU or LSTM layer with recurjax's weights (equinox `Linear`s are
    `(out, in)`); its GRU's update gate has the opposite role, so its z-blocks are negated."""
    import equinox as eqx
    from memax.equinox.set_actions.gru import GRU  # pyright: ignore[reportMissingImports]
    from memax.equinox.set_actions.lstm import LSTM  # pyright: ignore[reportMissingImports]

    layer = (LSTM if kind == "lstm" else GRU)(H, key=jax.random.key(0))
    blocks = {"lstm": ("i", "f", "c", "o"), "gru": ("r", "z", "h")}[kind]
    wh = params["wh"] if kind == "lstm" else jnp.concatenate([params["wh"], params["whn"]], 1)
    for k, g in enumerate(blocks):
        sign = -1.0 if g == "z" else 1.0
        cols = slice(k * H, (k + 1) * H)
        lin_w = eqx.nn.Linear(F, H, key=jax.random.key(0))
        lin_w = eqx.tree_at(
            lambda m: (m.weight, m.bias),
            lin_w,
            (sign * params["wi"][:, cols].T, sign * params["b"][cols]),
        )
        lin_u = eqx.nn.Linear(H, H, use_bias=False, key=jax.random.key(0))
        lin_u = eqx.tree_at(lambda m: m.weight, lin_u, sign * wh[:, cols].T)
        layer = eqx.tree_at(lambda m, g=g: getattr(m.algebra.algebra, f"W_{g}"), layer, lin_w)
        layer = eqx.tree_at(lambda m, g=g: getattr(m.algebra.algebra, f"U_{g}"), layer, lin_u)
    return eqx.partition(layer, eqx.is_array)


def flax_builders(
    kind: str, cell: Any, params: Any, xs: jax.Array
) -> dict[str, Callable[[], Impl]]:
    """Flax linen rows by Flax cell: `nn.RNN` over its `LSTMCell` and `OptimizedLSTMCell`
    (or `GRUCell`), batch-major, with `cell`'s weights through `recurjax.interop`."""
    import flax.linen as nn

    def flax_row(name: str) -> Callable[[], Impl]:
        optimized = name == "OptimizedLSTMCell"

        def convert(p: Any) -> Any:
            return {"params": {"cell": interop.to_flax(cell, p, optimized=optimized)[1]["params"]}}

        def make() -> Impl:
            rnn = nn.RNN(interop.to_flax(cell, params, optimized=optimized)[0])

            def ys(p: Any, xs: jax.Array) -> Any:
                return rnn.apply(p, xs)

            return jax_impl(f"flax {name}", ys, params, xs, convert=convert)

        return make

    names = ["LSTMCell", "OptimizedLSTMCell"] if kind == "lstm" else ["GRUCell"]
    return {n: flax_row(n) for n in names}


def equinox_builder(kind: str, cell: Any, params: Any, xs: jax.Array) -> Callable[[], Impl]:
    """The Equinox row: its cell (unbatched) under `lax.scan` over time and `vmap` over the
    batch, batch-major, with `cell`'s weights through `recurjax.interop`."""
    import equinox as eqx

    H = cell.hidden_size

    def eqx_arrays(p: Any) -> Any:
        return eqx.partition(interop.to_equinox(cell, p), eqx.is_array)[0]

    estatic = eqx.partition(interop.to_equinox(cell, params), eqx.is_array)[1]

    def eqx_ys(arrays: Any, xs: jax.Array) -> jax.Array:
        m = eqx.combine(arrays, estatic)

        def one(x: jax.Array) -> jax.Array:
            zeros = jnp.zeros((H,), x.dtype)

            def step(h: Any, x: jax.Array) -> tuple[Any, jax.Array]:
                h = m(x, h)
                return h, (h[0] if kind == "lstm" else h)

            return jax.lax.scan(step, (zeros, zeros) if kind == "lstm" else zeros, x)[1]

        return jax.vmap(one)(xs)

    return lambda: jax_impl("equinox", eqx_ys, params, xs, convert=eqx_arrays)


def build(
    kind: str, B: int, T: int, F: int, H: int, seed: int = 0
) -> tuple[list[Impl], dict[str, Reference]]:
    """All implementations of `kind` ("lstm" or "gru") for one config, with shared weights
    (from seed 0), built in a random order drawn from `seed`; and their references."""
    import equinox as eqx
    import haiku as hk
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    Module = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    module = Module(F, H, batch_first=True)
    module_tm = Module(F, H)
    module_tm.load_state_dict(module.state_dict())
    cell, params = interop.from_torch(module)
    xs_np = np.random.default_rng(0).normal(size=(B, T, F)).astype(np.float32)
    xs = jnp.asarray(xs_np)
    v3 = rj.GRUv3Cell(F, H)
    v3_params = _gruv3(params, H) if kind == "gru" else None
    refs = {"recurjax": reference(_recurjax(cell, "sequential"), params, xs)}
    if kind == "gru":
        refs["GRUv3Cell"] = reference(_recurjax(v3, "sequential"), v3_params, xs)
    else:
        refs["memax form"] = reference(_recurjax(_MemaxLSTMCell(F, H), "sequential"), params, xs)

    def recurjax_row(name: str, strategy: str) -> Callable[[], Impl]:
        return lambda: jax_impl(name, _recurjax(cell, strategy), params, xs)

    builders = [
        recurjax_row("recurjax", "auto"),
        recurjax_row("recurjax, A/A copy", "auto"),
        recurjax_row("recurjax strategy='sequential'", "sequential"),
        recurjax_row("recurjax strategy='fused'", "fused"),
    ]

    builders += flax_builders(kind, cell, params, xs).values()
    builders.append(equinox_builder(kind, cell, params, xs))

    # Haiku: dynamic_unroll, batch-major. Its GRU is the reset-before form (GRUv3Cell).
    def hk_forward(xs: jax.Array) -> Any:
        core = hk.LSTM(H) if kind == "lstm" else hk.GRU(H)
        return hk.dynamic_unroll(core, xs, core.initial_state(xs.shape[0]), time_major=False)[0]

    hf = hk.without_apply_rng(hk.transform(hk_forward))
    if kind == "lstm":
        hk_row = ("recurjax", params, lambda p: interop.to_haiku(cell, p))
    else:
        hk_row = ("GRUv3Cell", v3_params, lambda p: interop.to_haiku(v3, p))
    builders.append(
        lambda: jax_impl("haiku", hf.apply, hk_row[1], xs, reference=hk_row[0], convert=hk_row[2])
    )

    # memax (equinox): its layer over (inputs, start flags) per sequence, vmapped.
    memax_ref, memax_params = (
        ("memax form", params) if kind == "lstm" else ("GRUv3Cell", v3_params)
    )
    mstatic = _memax(kind, memax_params, F, H)[1]

    def memax_ys(arrays: Any, xs: jax.Array) -> jax.Array:
        layer = eqx.combine(arrays, mstatic)
        start = jnp.zeros(xs.shape[1], bool)
        return jax.vmap(lambda x: layer(layer.initialize_carry(), (x, start))[1])(xs)

    builders.append(
        lambda: jax_impl(
            "memax",
            memax_ys,
            memax_params,
            xs,
            reference=memax_ref,
            convert=lambda p: _memax(kind, p, F, H)[0],
        )
    )

    # Floor: the two matmuls of a step alone under lax.scan (no gates, no nonlinearity).
    def floor_ys(p: Any, xs: jax.Array) -> jax.Array:
        def step(h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
            g = x @ p["wi"] + h @ p["wh"]
            return g[:, :H], g[:, :H]

        ys = jax.lax.scan(step, jnp.zeros((xs.shape[0], H)), jnp.swapaxes(xs, 0, 1))[1]
        return jnp.swapaxes(ys, 0, 1)

    floor_params = {"wi": params["wi"], "wh": params["wh"]}
    builders.append(
        lambda: jax_impl("floor (matmuls only)", floor_ys, floor_params, xs, reference="")
    )

    # PyTorch on all cores, batch-first and time-major.
    name = f"torch.nn.{kind.upper()}"
    builders.append(lambda: torch_impl(f"{name} batch_first", module, xs_np))
    builders.append(lambda: torch_impl(f"{name} time-major", module_tm, xs_np, swap=True))
    return build_shuffled(builders, seed), refs


def time_rounds(
    fns: dict[str, Callable[[], Any]], rounds: int, burst: int, seed: int
) -> dict[str, list[float]]:
    """One untimed call of each function, then per round each function in a new random
    order (drawn from `seed`): one untimed call, then `burst` timed calls back to back.
    Returns each function's per-round medians in ms."""
    rng = np.random.default_rng(seed)
    order = list(fns)
    rng.shuffle(order)
    for k in order:
        fns[k]()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            fns[k]()
            ts = []
            for _ in range(burst):
                t0 = time.perf_counter()
                fns[k]()
                ts.append((time.perf_counter() - t0) * 1e3)
            times[k].append(statistics.median(ts))
    return times


def matmul_peak(rounds: int = 10) -> float:
    """GFLOP/s of a 2048 x 2048 float32 matmul under jit, median of `rounds`."""
    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    ts = time_rounds({"mm": lambda: _block(f(a))}, rounds, 1, 0)["mm"]
    return 2 * n**3 / (statistics.median(ts) / 1e3) / 1e9


def time_impls(
    impls: list[Impl], rounds: int, burst: int, seed: int
) -> dict[str, dict[str, float]]:
    """Each row's fwd and f+b time in ms, the median of its rounds (`time_rounds`)."""
    out: dict[str, dict[str, float]] = {i.name: {} for i in impls}
    for what in ("fwd", "fb"):
        times = time_rounds({i.name: getattr(i, what) for i in impls}, rounds, burst, seed)
        for name, ts in times.items():
            out[name][what] = statistics.median(ts)
    return out


def run_rnn(job: dict[str, Any], seed: int) -> dict[str, Any]:
    """One config in this process: checks, compile times, memory, per-round times, and the
    A/A ratios."""
    B, T, F, H = job["size"]
    impls, refs = build(job["kind"], B, T, F, H, seed)
    diffs = check(impls, refs) if job.get("check", True) else {}
    out: dict[str, Any] = {"peak": matmul_peak(), "impls": {}}
    times = time_impls(impls, job["rounds"], job["burst"], seed)
    for i in impls:
        out["impls"][i.name] = {
            "diff": diffs.get(i.name),
            "compile_s": i.compile_s,
            "temp_mb": i.temp_mb,
            **times[i.name],
        }
    base, copy = times["recurjax"], times["recurjax, A/A copy"]
    out["aa"] = {w: base[w] / copy[w] for w in ("fwd", "fb")}
    out["flops"] = 2 * B * T * (F + H) * GATES[job["kind"]] * H
    return out


def run_streaming(job: dict[str, Any], seed: int, hidden: int = 256) -> dict[str, Any]:
    """One jitted step of a `Recur` LSTM handle (B=1) against a jitted bare matmul of the
    step's size, `[x, h] (1, 2H) @ W (2H, 4H)`, plain and with the handle donated; also the
    traces after the first step (none: no retracing), and the A/A ratio of the matmul
    against a second jit of it. Medians in us."""
    traces = 0

    def step(m: rj.Recur, x: jax.Array) -> tuple[rj.Recur, jax.Array]:
        nonlocal traces
        traces += 1
        return m(x)

    x = jnp.ones((1, hidden))
    w = jax.random.normal(jax.random.key(1), (2 * hidden, 4 * hidden))
    xh = jnp.ones((1, 2 * hidden))
    out: dict[str, Any] = {"aa": {}}
    for label, jstep in (("plain", jax.jit(step)), ("donated", jax.jit(step, donate_argnums=0))):
        handle = [rj.LSTM(hidden, hidden, key=jax.random.key(0)).batched(1)]

        def one(jstep: Any = jstep, handle: list[Any] = handle) -> None:
            handle[0], y = jstep(handle[0], x)
            _block(y)

        mats = {k: jax.jit(lambda a, w: a @ w) for k in ("matmul", "matmul A/A")}
        fns = {"step": one, **{k: lambda f=f: _block(f(xh, w)) for k, f in mats.items()}}
        for k in np.random.default_rng([seed, 1]).permutation(list(fns)):
            fns[k]()  # the first calls compile them: in a random order
        traces = 0
        times = time_rounds(fns, job["rounds"], 1, seed)
        out[label] = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        out[label]["traces"] = traces
        out["aa"][f"matmul ({label})"] = out[label]["matmul"] / out[label]["matmul A/A"]
    return out


def run_memory(job: dict[str, Any], seed: int) -> dict[str, Any]:
    """XLA's temporary memory and the time of an LSTM f+b at long T, with and without
    `remat=64`, for the default and the sequential strategy; every row's gradients checked
    against the sequential strategy's without remat first."""
    T, B, F, H = job["size"]
    cell = rj.LSTMCell(F, H)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, B, F))
    out, fns = {}, {}
    for strategy in ("auto", "sequential"):
        for remat in (None, 64):

            def loss(p: Any, xs: jax.Array, s: str = strategy, r: Any = remat) -> jax.Array:
                return jnp.sum(
                    rj.scan(cell, p, cell.initial_state(p), xs, strategy=s, remat=r)[1] ** 2
                )

            compiled = jax.jit(jax.grad(loss)).lower(params, xs).compile()
            mem = compiled.memory_analysis()
            key = f"{strategy}|{remat}"
            out[key] = {"temp_mb": getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20}
            fns[key] = lambda c=compiled: _block(c(params, xs))
    if job.get("check", True):
        want = fns["sequential|None"]()
        for key, fn in fns.items():
            assert_close(f"memory {key} against sequential|None: gradients", fn(), want)
    for key, ts in time_rounds(fns, job["rounds"], 1, seed).items():
        out[key]["fb"] = statistics.median(ts)
    return out


def run_padded(job: dict[str, Any], seed: int) -> dict[str, Any]:
    """LSTM over a right-padded batch (lengths uniform in [T/2, T]): recurjax with `lengths=`
    against the same call without lengths, the sequential strategy, Flax's
    `nn.RNN(seq_lengths=...)` and torch on a `pack_padded_sequence`. Outputs and gradients
    are checked against the sequential strategy with `lengths=` on the valid steps (Flax
    does not zero the padded ones; the cotangent is zero there)."""
    import flax.linen as nn
    import torch

    B, T, F, H = job["size"]
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    module = torch.nn.LSTM(F, H, batch_first=True)
    cell, params = interop.from_torch(module)
    rng = np.random.default_rng(0)
    xs_np = rng.normal(size=(B, T, F)).astype(np.float32)
    lengths_np = rng.integers(T // 2, T + 1, size=B)
    xs, lengths = jnp.asarray(xs_np), jnp.asarray(lengths_np)
    valid = np.arange(T)[None, :, None] < lengths_np[:, None, None]

    def rj_run(strategy: str, use_lengths: bool) -> Callable[[Any, jax.Array], jax.Array]:
        def run(p: Any, xs: jax.Array) -> jax.Array:
            h0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (B, *a.shape)), cell.initial_state(p))
            lens = lengths if use_lengths else None
            return rj.scan(cell, p, h0, xs, time_axis=1, lengths=lens, strategy=strategy)[1]

        return run

    def flax_params(p: Any) -> Any:
        return {"params": {"cell": interop.to_flax(cell, p, optimized=True)[1]["params"]}}

    def flax_row() -> Impl:
        rnn = nn.RNN(interop.to_flax(cell, params, optimized=True)[0])

        def ys(p: Any, xs: jax.Array) -> Any:
            return rnn.apply(p, xs, seq_lengths=lengths)

        name = "flax OptimizedLSTMCell, seq_lengths="
        return jax_impl(name, ys, params, xs, convert=flax_params)

    def packed(module: Any, x: Any) -> Any:
        lens = torch.from_numpy(lengths_np)
        seqs = pack.pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        return pack.pad_packed_sequence(module(seqs)[0], batch_first=True, total_length=T)[0]

    pack = torch.nn.utils.rnn
    builders = [
        lambda: jax_impl("recurjax, lengths=", rj_run("auto", True), params, xs),
        # Not the same function past the lengths: its f+b gradients differ there.
        lambda: jax_impl(
            "recurjax, no lengths (all T steps)", rj_run("auto", False), params, xs, fb_grads=False
        ),
        lambda: jax_impl(
            "recurjax strategy='sequential', lengths=", rj_run("sequential", True), params, xs
        ),
        flax_row,
        lambda: torch_impl("torch.nn.LSTM, pack_padded_sequence", module, xs_np, packed),
    ]
    impls = build_shuffled(builders, seed)
    if job.get("check", True):
        check(
            impls, refs={"recurjax": reference(rj_run("sequential", True), params, xs)}, mask=valid
        )
    times = time_impls(impls, job["rounds"], job["burst"], seed)
    return {"mean_length": float(lengths_np.mean()), "impls": times}


RUNNERS = {"streaming": run_streaming, "memory": run_memory, "padded": run_padded}


def environment() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, threads, library versions, commit."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": (torch.set_num_threads(os.cpu_count() or 1), torch.get_num_threads())[1],
        "backend": jax.default_backend(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": datetime.date.today().isoformat(),
    }


def worker(job: dict[str, Any], seed: int) -> dict[str, Any]:
    runner = RUNNERS.get(job["kind"], run_rnn)
    return runner(job, seed)


# ---------------------------------------------------------------------------------------
# The driver: processes, ratios with ranges, the report.


def _range(values: list[float], digits: int = 2) -> str:
    """`median [min-max]`."""
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def _processes(runs: list[Any]) -> str:
    """A section title's count of processes."""
    return f" ({len(runs)} process{'es' if len(runs) != 1 else ''})"


def _rnn_section(job: dict[str, Any], runs: list[dict[str, Any]]) -> tuple[list[str], Any]:
    B, T, F, H = job["size"]
    names = list(runs[0]["impls"])
    ratios: dict[str, dict[str, list[float]]] = {n: {"fwd": [], "fb": []} for n in names}
    for run in runs:
        base = run["impls"]["recurjax"]
        for n in names:
            for w in ("fwd", "fb"):
                ratios[n][w].append(base[w] / run["impls"][n][w])
    rows = [
        f"## {job['kind'].upper()} B={B} T={T} F={F} H={H}"
        + (f", every process run with `{job['env']}`" if job.get("env") else "")
        + _processes(runs),
        "",
        "| implementation | fwd ms | f+b ms | recurjax/impl fwd | recurjax/impl f+b "
        "| f+b % peak | compile s (fwd, f+b) | temp MB (fwd, f+b) | max diff (y, grads) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        recs = [run["impls"][n] for run in runs]
        fwd = statistics.median(r["fwd"] for r in recs)
        fb = statistics.median(r["fb"] for r in recs)
        peak = statistics.median(
            100 * 3 * run["flops"] / (run["impls"][n]["fb"] / 1e3) / 1e9 / run["peak"]
            for run in runs
        )
        r0 = recs[0]
        comp = ", ".join(f"{c:.2f}" for c in r0["compile_s"]) or "-"
        mem = ", ".join(f"{m:.1f}" for m in r0["temp_mb"]) or "-"
        diff = "-" if r0["diff"] is None else ", ".join(f"{d:.1e}" for d in r0["diff"])
        rows.append(
            f"| {n} | {fwd:.2f} | {fb:.2f} | {_range(ratios[n]['fwd'])} | "
            f"{_range(ratios[n]['fb'])} | {peak:.0f} | {comp} | {mem} | {diff} |"
        )
    return rows, ratios


def _streaming_section(runs: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[float]]]:
    rows = [
        "## Streaming: one jitted `Recur` LSTM step, B=1, H=256" + _processes(runs),
        "",
        "| step | step us | bare matmul us | step / matmul | matmul / its A/A copy "
        "| traces after the first step |",
        "|---|---|---|---|---|---|",
    ]
    ratios = {}
    for label, code in (
        ("plain", "`jax.jit(step)`"),
        ("donated", "`jax.jit(step, donate_argnums=0)`"),
    ):
        recs = [run[label] for run in runs]
        ratios[label] = [r["step"] / r["matmul"] for r in recs]
        rows.append(
            f"| {code} | {statistics.median(r['step'] for r in recs):.1f} | "
            f"{statistics.median(r['matmul'] for r in recs):.1f} | {_range(ratios[label])} | "
            f"{_range([run['aa'][f'matmul ({label})'] for run in runs])} | "
            f"{max(r['traces'] for r in recs)} |"
        )
    return rows, ratios


def _memory_section(job: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    T, B, F, H = job["size"]
    rows = [
        f"## Memory: LSTM f+b at T={T}, B={B}, F={F}, H={H}" + _processes(runs),
        "",
        "| strategy | remat | temp MB | f+b ms | time / no remat |",
        "|---|---|---|---|---|",
    ]
    for key in runs[0]:
        strategy, remat = key.split("|")
        base = f"{strategy}|None"
        rows.append(
            f"| {strategy} | {remat} | {runs[0][key]['temp_mb']:.0f} | "
            f"{statistics.median(r[key]['fb'] for r in runs):.0f} | "
            f"{_range([r[key]['fb'] / r[base]['fb'] for r in runs])} |"
        )
    return rows


def _padded_section(job: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    B, T, F, H = job["size"]
    names = list(runs[0]["impls"])
    base = names[0]
    rows = [
        f"## Padded batch: LSTM B={B} T={T} F={F} H={H}, lengths uniform in [{T // 2}, {T}]"
        f" (mean {runs[0]['mean_length']:.0f})" + _processes(runs),
        "",
        "| implementation | fwd ms | f+b ms | recurjax/impl fwd | recurjax/impl f+b |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        cells = []
        for w in ("fwd", "fb"):
            cells.append(f"{statistics.median(r['impls'][n][w] for r in runs):.2f}")
        for w in ("fwd", "fb"):
            cells.append(_range([r["impls"][base][w] / r["impls"][n][w] for r in runs]))
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    return rows


def _verdict(values: list[float], limit: float) -> str:
    """`met` where the whole range is at or below `limit`, `missed` where it is all above,
    else `tie` (the range crosses the limit: no claim either way)."""
    if max(values) <= limit:
        return "met"
    if min(values) > limit:
        return "missed"
    return "within noise"


def _targets(
    ratios: dict[str, Any], runs: dict[str, list[dict[str, Any]]], stream: Any
) -> list[str]:
    """The targets of issue 15, each as the ratio that decides it."""
    rows = [
        "## Targets",
        "",
        "Each ratio is per process, median [min-max] over processes; `met` means the whole "
        "range is within the target, `missed` that all of it is outside.",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]

    def per_process(job: str, what: str, num: str, dens: list[str]) -> list[float]:
        """recurjax row `num` over the fastest of rows `dens`, per process."""
        out = []
        for run in runs[job]:
            imp = run["impls"]
            out.append(imp[num][what] / min(imp[d][what] for d in dens))
        return out

    def add(label: str, values: list[float], limit: float) -> None:
        rows.append(f"| {label} (<= {limit:.2f}) | {_range(values)} | {_verdict(values, limit)} |")

    for kind in ("lstm", "gru"):
        job = f"{kind}-32-128-64-256"
        if job not in runs:
            continue
        names = list(runs[job][0]["impls"])
        torches = [n for n in names if n.startswith("torch")]
        peers = [n for n in names if n.split()[0] in ("flax", "equinox", "haiku", "memax")]
        for w, wl in (("fwd", "fwd"), ("fb", "f+b")):
            if kind == "lstm":
                lim = 1.0 if w == "fb" else 1.1
                add(
                    f"LSTM B=32 {wl}: recurjax / best torch",
                    per_process(job, w, "recurjax", torches),
                    lim,
                )
                add(
                    f"LSTM B=32 {wl}: recurjax / best JAX peer (1.4x faster)",
                    per_process(job, w, "recurjax", peers),
                    1 / 1.4,
                )
            else:
                add(
                    f"GRU B=32 {wl}: recurjax / best of every peer and torch (1.3x faster)",
                    per_process(job, w, "recurjax", peers + torches),
                    1 / 1.3,
                )
    for kind in ("lstm", "gru"):
        job = f"{kind}-1-1000-32-128"
        if job in runs:
            for w, wl in (("fwd", "fwd"), ("fb", "f+b")):
                add(
                    f"{kind.upper()} B=1 T=1000 {wl}: recurjax / floor",
                    per_process(job, w, "recurjax", ["floor (matmuls only)"]),
                    1.3,
                )
    for job, job_runs in runs.items():
        names = list(job_runs[0]["impls"])
        explicit = [n for n in names if n.startswith("recurjax strategy=")]
        noise = max(
            abs(1 - v) for w in ("fwd", "fb") for v in ratios[job]["recurjax, A/A copy"][w]
        )
        for w, wl in (("fwd", "fwd"), ("fb", "f+b")):
            add(
                f"{job} {wl}: auto / best explicit strategy (1 + A/A noise {noise:.2f})",
                per_process(job, w, "recurjax", explicit),
                1 + noise,
            )
    job = "lstm-128-64-256-512"
    if job in runs:
        pct = [
            100 * 3 * r["flops"] / (r["impls"]["recurjax"]["fb"] / 1e3) / 1e9 / r["peak"]
            for r in runs[job]
        ]
        rows.append(
            f"| LSTM B=128 H=512 f+b: % of matmul peak (>= 80) | {_range(pct, 0)} | "
            f"{_verdict([-p for p in pct], -80)} |"
        )
    if stream is not None:
        add("Streaming step (donated) / bare jitted matmul", stream["donated"], 1.5)
    return rows


def worker_seed(order_seed: int, attempt: int, process: int, name: str) -> int:
    """A worker's seed for its build and call orders, from the run's `--order-seed`."""
    entropy = [order_seed, attempt, process, zlib.crc32(name.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def run_workers(
    script: str,
    jobs: list[dict[str, Any]],
    processes: Callable[[dict[str, Any]], int],
    order_seed: int,
    attempt: int = 0,
    python: Callable[[dict[str, Any]], str] = lambda job: sys.executable,
    env: Callable[[dict[str, Any]], dict[str, str]] = lambda job: {},
) -> dict[str, list[dict[str, Any]]]:
    """Every job in `processes(job)` fresh processes of `python(job) script --worker JOB`, one
    at a time and interleaved (process 1 of every job, then process 2, ...), each with
    `env(job)` added to the environment and its own seed (`worker_seed`); returns each
    worker's JSON result, per job name. The first process of each job gets `"check":
    True` in its job: it checks every row (`check`) before it times any; the later ones
    build the same functions and time them without checking again."""
    results: dict[str, list[dict[str, Any]]] = {j["name"]: [] for j in jobs}
    for p in range(max(map(processes, jobs), default=0)):
        for job in [j for j in jobs if p < processes(j)]:
            seed = worker_seed(order_seed, attempt, p, job["name"])
            work = json.dumps({**job, "check": p == 0})
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                cmd = [python(job), script, "--worker", work, "--seed", str(seed)]
                t0 = time.time()
                proc_env = {**os.environ, **env(job)}
                subprocess.run([*cmd, "--result", f.name], check=True, env=proc_env)
                results[job["name"]].append(json.loads(Path(f.name).read_text()))
            print(
                f"process {p + 1}/{processes(job)} {job['name']} (seed {seed}): "
                f"{time.time() - t0:.0f} s",
                flush=True,
            )
    return results


def aa_ratios(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """A job's A/A ratios per process (its workers' `"aa"`: one per timed kind, fwd and f+b)."""
    return {k: [run["aa"][k] for run in runs] for k in runs[0].get("aa", {})}


def aa_misses(runs: list[dict[str, Any]]) -> list[str]:
    """The job's A/A ratios whose range (min-max over its processes) excludes 1."""
    return [k for k, v in aa_ratios(runs).items() if min(v) > 1 or max(v) < 1]


def _aa_text(runs: list[dict[str, Any]], keys: list[str]) -> str:
    ratios = aa_ratios(runs)
    return ", ".join(f"{'f+b' if k == 'fb' else k} {_range(ratios[k], 3)}" for k in keys)


@dataclasses.dataclass
class Runs:
    """All workers' results per job key, and the A/A rule's record: the jobs it ran again
    (with the A/A ranges that made it) and those whose A/A range excludes 1 all the same."""

    results: dict[str, list[dict[str, Any]]]
    reran: dict[str, str] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)

    def notes(self, key: str) -> list[str]:
        """The lines above a job's table that say what the A/A rule did there."""
        lines = []
        if key in self.reran:
            lines.append(
                f"Run twice: in the first run the A/A range excluded 1 ({self.reran[key]}); "
                "the numbers here are the second run's."
            )
        if key in self.failed:
            lines.append(
                f"**A/A check failed: the A/A range still excludes 1 after the rerun "
                f"({self.failed[key]}), so this table does not resolve differences of that "
                "size.**"
            )
        return [*lines, ""] if lines else []


def run_jobs(
    script: str, jobs: list[dict[str, Any]], args: argparse.Namespace, **kwargs: Any
) -> Runs:
    """`run_workers` (`kwargs`: its `python` and `env`) with the processes of
    `job_processes(args)`, then the A/A rule: a job marked `"policy"` with at least 2
    processes whose A/A range excludes 1 (fwd or f+b) runs again once, in fresh processes
    with new seeds, and the rerun's results replace the first; the `Runs` record which, and
    which still exclude 1."""
    processes = job_processes(args)
    runs = Runs(run_workers(script, jobs, processes, args.order_seed, 0, **kwargs))
    again = [
        j
        for j in jobs
        if j.get("policy") and processes(j) >= 2 and aa_misses(runs.results[j["name"]])
    ]
    if again:
        print("A/A range excludes 1, running again:", ", ".join(j["name"] for j in again))
        rerun = run_workers(script, again, processes, args.order_seed, 1, **kwargs)
        for job in again:
            k = job["name"]
            runs.reran[k] = _aa_text(runs.results[k], aa_misses(runs.results[k]))
            runs.results[k] = rerun[k]
            if aa_misses(rerun[k]):
                runs.failed[k] = _aa_text(rerun[k], aa_misses(rerun[k]))
    return runs


def method_lines(args: argparse.Namespace, runs: Runs) -> list[str]:
    """The report's lines on processes, intervals, orders and the A/A rule."""
    lines = [
        f"Processes: {args.policy_processes} for each job behind `_scan/policy.py`'s "
        f"thresholds or the targets, {args.processes} for the others (each section's title "
        "has its count). Ranges are min-max over the processes: over 7, a 98.4% interval for "
        "the median per-process ratio whatever the noise's distribution (it misses only when "
        "all 7 fall on one side, 2 / 2^7); over 3, a 75% one. Build and call orders are "
        f"random in each process, from `--order-seed {args.order_seed}`. Before any timing, "
        "the first process of each job checked every row's outputs and gradients against "
        "the sequential strategy.",
        "",
    ]
    if runs.reran:
        lines += [
            "A/A rule: where a job's A/A range excluded 1 it ran again once: "
            + ", ".join(runs.reran)
            + ".",
            "",
        ]
    if runs.failed:
        lines += [
            "**A/A check failed after a rerun in: "
            + "; ".join(f"{k} ({v})" for k, v in runs.failed.items())
            + ". Their ratios do not resolve differences of that size.**",
            "",
        ]
    return lines


def driver_arguments(description: str, out: Path) -> argparse.ArgumentParser:
    """The command line shared by the drivers: `--quick`, `--processes`,
    `--policy-processes`, `--order-seed`, `--only`, `--out`, and the hidden `--worker`,
    `--seed`, `--result` of their worker processes. Resolve it with `resolve`."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="small configs, one process, no file")
    ap.add_argument(
        "--processes", type=int, help="processes per job for the other jobs (default 3)"
    )
    ap.add_argument(
        "--policy-processes",
        type=int,
        help="processes per job for the jobs behind policy.py's thresholds and the targets "
        "(default 7)",
    )
    ap.add_argument(
        "--order-seed", type=int, help="seed of the build and call orders (default: random)"
    )
    ap.add_argument("--only", default="", help="run the jobs whose name contains this (no file)")
    ap.add_argument("--out", default=str(out))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the defaults that depend on `--quick` (1 process each) and draw the order
    seed where none was given, printing it."""
    if args.processes is None:
        args.processes = 1 if args.quick else 3
    if args.policy_processes is None:
        args.policy_processes = 1 if args.quick else 7
    if args.order_seed is None:
        args.order_seed = secrets.randbelow(2**31)
    print(f"order seed {args.order_seed}", flush=True)
    return args


def job_processes(args: argparse.Namespace) -> Callable[[dict[str, Any]], int]:
    """A job's processes: `--policy-processes` for one marked `"policy"`, else `--processes`."""
    return lambda job: args.policy_processes if job.get("policy") else args.processes


def command(script: str, args: argparse.Namespace) -> str:
    """The command line that repeats a report's settings."""
    return (
        f"python benchmarks/{script} --processes {args.processes} "
        f"--policy-processes {args.policy_processes} --order-seed {args.order_seed}"
    )


def serve_worker(args: argparse.Namespace, work: Callable[[dict[str, Any], int], Any]) -> bool:
    """In a worker process (`--worker`): run `work(job, seed)`, write its JSON result to
    `--result` and return True; in the driver, False."""
    if not args.worker:
        return False
    Path(args.result).write_text(json.dumps(work(json.loads(args.worker), args.seed)))
    return True


def _job_env(job: dict[str, Any]) -> dict[str, str]:
    """A job's `env` setting (`NAME=value`) as a mapping."""
    if not job.get("env"):
        return {}
    name, value = job["env"].split("=", 1)
    return {name: value}


def drive(jobs: list[dict[str, Any]], args: argparse.Namespace, out: Path | None) -> None:
    env = environment()
    started = time.time()
    runs = run_jobs(__file__, jobs, args, env=_job_env)
    results = runs.results
    v = env["versions"]
    peaks = [
        r["peak"]
        for j in jobs
        if j["kind"] in GATES and not j.get("env")
        for r in results[j["name"]]
    ]
    lines = [
        "# Benchmark results",
        "",
        f"`{command('rnn.py', args)}` on {env['date']}, commit "
        f"{env['commit']}: {env['cpu']} ({env['machine']}), {env['cores']} cores, "
        f"{env['backend']}; torch threads {env['torch_threads']}; Python {env['python']}; "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + f"; XLA_FLAGS={env['xla_flags'] or '(unset)'}. Matmul peak (2048^3, jit): "
        + _range(peaks or [float("nan")], 0)
        + f" GFLOP/s. {time.time() - started:.0f} s in all.",
        "",
        "Float32, batch-major `(B, T, F)` unless a row says otherwise. Times (ms) are medians "
        "over processes of each process's median; ratios are recurjax's time over the row's, "
        "per process, as median [min-max] over the processes (below 1: recurjax is faster). "
        "How they are made: the docstring of `benchmarks/rnn.py`. `recurjax` is the default "
        '`strategy="auto"`; the A/A row is the same function built a second time.',
        "",
        *method_lines(args, runs),
    ]
    body: list[str] = []
    ratios, rnn_runs, stream = {}, {}, None
    for job in jobs:
        job_runs = results[job["name"]]
        if job["kind"] in GATES:
            rows, ratios[job["name"]] = _rnn_section(job, job_runs)
            rnn_runs[job["name"]] = job_runs
        elif job["kind"] == "streaming":
            rows, stream = _streaming_section(job_runs)
        elif job["kind"] == "memory":
            rows = _memory_section(job, job_runs)
        else:
            rows = _padded_section(job, job_runs)
        body += [*rows[:2], *runs.notes(job["name"]), *rows[2:], ""]
    lines += [*_targets(ratios, rnn_runs, stream), "", *body]
    text = "\n".join(lines)
    print(text)
    if out is not None:
        out.write_text(text)
        print(f"wrote {out}")


def main() -> None:
    description = (__doc__ or "").split("\n\n")[0]
    args = driver_arguments(description, Path(__file__).with_name("RESULTS.md")).parse_args()
    if serve_worker(args, worker):
        return
    args = resolve(args)
    jobs = QUICK if args.quick else [j for j in JOBS if args.only in j["name"]]
    write = not (args.quick or args.only)
    drive(jobs, args, Path(args.out) if write else None)


if __name__ == "__main__":
    main()
