"""recurjax against Flax, Haiku, Equinox, memax and PyTorch: LSTM and GRU over whole sequences.

    pip install -e ".[bench]"
    python benchmarks/rnn.py                 # everything, 3 processes, writes RESULTS.md
    python benchmarks/rnn.py --processes 5   # more processes per config
    python benchmarks/rnn.py --quick         # one small config, one process, no file
    python benchmarks/rnn.py --only lstm-32  # the jobs whose name contains "lstm-32"

How the numbers are made, so that they can be trusted:

- Same function: the weights of one PyTorch module are copied into every implementation
  with `recurjax.interop`, and every output is checked against its recurjax reference
  before anything is timed (Haiku's and memax's GRU put the reset gate before the matmul,
  so they are checked against `rj.GRUv3Cell` with the same weights; memax's LSTM has
  `h = o * c` without the `tanh`, so it is checked against a recurjax cell of those
  equations).
- Separate processes: each job (one config) runs in `--processes` fresh Python processes,
  one after another, never two at once; the passes over all jobs are interleaved (process 1
  of every job, then process 2, ...), so that slow drifts of the machine spread over all.
- Within a process, every round calls the implementations in a new random order. Each
  implementation runs one untimed call and then `burst` timed calls back to back, as a
  training loop calls it (torch's worker threads are awake, JAX's buffers reused); the
  round's time is the median of the burst, the process's time the median of the rounds.
- Ratios are formed per process (recurjax's time over the implementation's, below 1:
  recurjax is faster) and reported as the median over processes with their min-max. A
  ratio whose range contains 1 is a tie. The A/A row is the default recurjax function
  jitted a second time: its ratio shows the noise of the measurement and must contain 1.
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
import statistics
import subprocess
import sys
import tempfile
import time
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
    implementation alike."""
    name = f"{kind}-{B}-{T}-{F}-{H}" + (f" with {env}" if env else "")
    return {
        "name": name,
        "kind": kind,
        "size": [B, T, F, H],
        "rounds": rounds,
        "burst": burst,
        "env": env,
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
    {"name": "streaming", "kind": "streaming", "rounds": 300},
    {"name": "padded", "kind": "padded", "size": [32, 128, 64, 256], "rounds": 8, "burst": 3},
    {"name": "memory", "kind": "memory", "size": [4096, 32, 64, 256], "rounds": 2},
]
QUICK = [_job("lstm", 8, 32, 16, 32, 3, 2), _job("gru", 8, 32, 16, 32, 3, 2)]


@dataclasses.dataclass
class Impl:
    """One implementation: fwd and f+b callables (blocking) and its outputs for the check."""

    name: str
    fwd: Callable[[], Any]
    fb: Callable[[], Any]
    out: Callable[[], np.ndarray]  # outputs (B, T, H), batch-major
    reference: str = "recurjax"  # the reference function it must equal ("" for none)
    compile_s: list[float] = dataclasses.field(default_factory=list)
    temp_mb: list[float] = dataclasses.field(default_factory=list)


def _block(x: Any) -> Any:
    return jax.block_until_ready(x)


def fwd_and_fb(ys_fn: Callable[..., Any]) -> tuple[Any, Any]:
    """`ys_fn(params, xs)` jitted, and the jitted gradient of `sum(ys**2)` w.r.t. `params`:
    the fwd and f+b every benchmark here times."""
    return jax.jit(ys_fn), jax.jit(jax.grad(lambda p, xs: jnp.sum(ys_fn(p, xs) ** 2)))


def jax_impl(
    name: str, ys_fn: Callable[..., Any], params: Any, xs: jax.Array, reference: str = "recurjax"
) -> Impl:
    """Wrap `ys_fn(params, xs) -> ys (B, T, H)` as a jitted fwd and a jitted f+b."""
    fwd, fb = fwd_and_fb(ys_fn)
    impl = Impl(
        name,
        lambda: _block(fwd(params, xs)),
        lambda: _block(fb(params, xs)),
        lambda: np.asarray(fwd(params, xs)),
        reference,
    )
    for fn in (fwd, fb):
        t0 = time.perf_counter()
        compiled = fn.lower(params, xs).compile()
        _block(compiled(params, xs))
        impl.compile_s.append(time.perf_counter() - t0)
        mem = compiled.memory_analysis()
        impl.temp_mb.append(getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20)
    return impl


def _recurjax(cell: Any, strategy: str) -> Callable[[Any, jax.Array], jax.Array]:
    """A fresh function (its own jit cache entry) running `rj.scan` batch-major."""

    def ys(p: Any, xs: jax.Array) -> jax.Array:
        h0 = jax.tree.map(
            lambda a: jnp.broadcast_to(a, (xs.shape[0], *a.shape)), cell.initial_state(p)
        )
        return rj.scan(cell, p, h0, xs, time_axis=1, strategy=strategy)[1]

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


def build(kind: str, B: int, T: int, F: int, H: int, seed: int = 0) -> tuple[list[Impl], Any]:
    """All implementations of `kind` ("lstm" or "gru") for one config, with shared weights."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    Module = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    module = Module(F, H, batch_first=True)
    module_tm = Module(F, H)
    module_tm.load_state_dict(module.state_dict())
    cell, params = interop.from_torch(module)
    xs_np = np.random.default_rng(seed).normal(size=(B, T, F)).astype(np.float32)
    xs = jnp.asarray(xs_np)
    v3 = rj.GRUv3Cell(F, H)
    v3_params = _gruv3(params, H) if kind == "gru" else None
    refs: dict[str, Callable[[], np.ndarray]] = {
        "recurjax": lambda: np.asarray(jax.jit(_recurjax(cell, "sequential"))(params, xs)),
        "GRUv3Cell": lambda: np.asarray(jax.jit(_recurjax(v3, "sequential"))(v3_params, xs)),
        "memax form": lambda: np.asarray(
            jax.jit(_recurjax(_MemaxLSTMCell(F, H), "sequential"))(params, xs)
        ),
    }
    impls = [
        jax_impl("recurjax", _recurjax(cell, "auto"), params, xs),
        jax_impl("recurjax, A/A copy", _recurjax(cell, "auto"), params, xs),
        jax_impl("recurjax strategy='sequential'", _recurjax(cell, "sequential"), params, xs),
        jax_impl("recurjax strategy='fused'", _recurjax(cell, "fused"), params, xs),
    ]

    # Flax linen: nn.RNN over LSTMCell / OptimizedLSTMCell / GRUCell, batch-major.
    import flax.linen as nn

    for name in ["LSTMCell", "OptimizedLSTMCell"] if kind == "lstm" else ["GRUCell"]:
        fcell, variables = interop.to_flax(cell, params, optimized=name == "OptimizedLSTMCell")
        rnn = nn.RNN(fcell)
        fparams = {"params": {"cell": variables["params"]}}
        impls.append(
            jax_impl(f"flax {name}", lambda p, xs, rnn=rnn: rnn.apply(p, xs), fparams, xs)
        )

    # Equinox: its cells are unbatched; lax.scan over time, vmap over the batch.
    import equinox as eqx

    earrays, estatic = eqx.partition(interop.to_equinox(cell, params), eqx.is_array)

    def eqx_ys(arrays: Any, xs: jax.Array) -> jax.Array:
        m = eqx.combine(arrays, estatic)

        def one(x: jax.Array) -> jax.Array:
            zeros = jnp.zeros((H,), x.dtype)

            def step(h: Any, x: jax.Array) -> tuple[Any, jax.Array]:
                h = m(x, h)
                return h, (h[0] if kind == "lstm" else h)

            return jax.lax.scan(step, (zeros, zeros) if kind == "lstm" else zeros, x)[1]

        return jax.vmap(one)(xs)

    impls.append(jax_impl("equinox", eqx_ys, earrays, xs))

    # Haiku: dynamic_unroll, batch-major. Its GRU is the reset-before form (GRUv3Cell).
    import haiku as hk

    hparams = interop.to_haiku(cell, params) if kind == "lstm" else interop.to_haiku(v3, v3_params)

    def hk_forward(xs: jax.Array) -> Any:
        core = hk.LSTM(H) if kind == "lstm" else hk.GRU(H)
        return hk.dynamic_unroll(core, xs, core.initial_state(xs.shape[0]), time_major=False)[0]

    hf = hk.without_apply_rng(hk.transform(hk_forward))
    impls.append(
        jax_impl(
            "haiku", hf.apply, hparams, xs, reference="recurjax" if kind == "lstm" else "GRUv3Cell"
        )
    )

    # memax (equinox): its layer over (inputs, start flags) per sequence, vmapped.
    marrays, mstatic = _memax(kind, params if kind == "lstm" else v3_params, F, H)

    def memax_ys(arrays: Any, xs: jax.Array) -> jax.Array:
        layer = eqx.combine(arrays, mstatic)
        start = jnp.zeros(xs.shape[1], bool)
        return jax.vmap(lambda x: layer(layer.initialize_carry(), (x, start))[1])(xs)

    impls.append(
        jax_impl(
            "memax",
            memax_ys,
            marrays,
            xs,
            reference="memax form" if kind == "lstm" else "GRUv3Cell",
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
    impls.append(jax_impl("floor (matmuls only)", floor_ys, floor_params, xs, reference=""))

    # PyTorch on all cores, batch-first and time-major.
    for label, mod, x_t, to_bm in (
        ("batch_first", module, torch.from_numpy(xs_np), lambda y: y),
        (
            "time-major",
            module_tm,
            torch.from_numpy(np.ascontiguousarray(xs_np.swapaxes(0, 1))),
            lambda y: y.transpose(0, 1),
        ),
    ):

        def torch_fwd(mod: Any = mod, x_t: Any = x_t) -> Any:
            with torch.no_grad():
                return mod(x_t)[0]

        def torch_fb(mod: Any = mod, x_t: Any = x_t) -> None:
            mod.zero_grad(set_to_none=True)
            (mod(x_t)[0] ** 2).sum().backward()

        impls.append(
            Impl(
                f"torch.nn.{kind.upper()} {label}",
                torch_fwd,
                torch_fb,
                lambda f=torch_fwd, t=to_bm: t(f()).numpy(),
            )
        )
    return impls, refs


def check(impls: list[Impl], refs: dict[str, Callable[[], np.ndarray]]) -> dict[str, float]:
    """Max |difference| of every implementation's outputs from its reference."""
    values: dict[str, np.ndarray] = {}
    diffs = {}
    for impl in impls:
        if not impl.reference:
            continue
        if impl.reference not in values:
            values[impl.reference] = refs[impl.reference]()
        diff = float(np.max(np.abs(impl.out() - values[impl.reference])))
        if diff > 1e-4:
            raise AssertionError(f"{impl.name} differs from {impl.reference} by {diff:.2e}")
        diffs[impl.name] = diff
    return diffs


def time_rounds(
    fns: dict[str, Callable[[], Any]], rounds: int, burst: int, seed: int
) -> dict[str, list[float]]:
    """Per round, each function in a new random order: one untimed call, then `burst` timed
    calls back to back. Returns each function's per-round medians in ms."""
    rng = np.random.default_rng(seed)
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        order = list(fns)
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


def run_rnn(job: dict[str, Any], seed: int) -> dict[str, Any]:
    """One config in this process: checks, compile times, memory, per-round times."""
    B, T, F, H = job["size"]
    impls, refs = build(job["kind"], B, T, F, H)
    diffs = check(impls, refs)
    out: dict[str, Any] = {"peak": matmul_peak(), "impls": {}}
    for what in ("fwd", "fb"):
        fns = {i.name: getattr(i, what) for i in impls}
        times = time_rounds(fns, job["rounds"], job["burst"], seed)
        for i in impls:
            rec = out["impls"].setdefault(
                i.name, {"diff": diffs.get(i.name), "compile_s": i.compile_s, "temp_mb": i.temp_mb}
            )
            rec[what] = statistics.median(times[i.name])
    out["flops"] = 2 * B * T * (F + H) * GATES[job["kind"]] * H
    return out


def run_streaming(job: dict[str, Any], seed: int, hidden: int = 256) -> dict[str, Any]:
    """One jitted step of a `Recur` LSTM handle (B=1) against a jitted bare matmul of the
    step's size, `[x, h] (1, 2H) @ W (2H, 4H)`, plain and with the handle donated; also the
    traces after the first step (none: no retracing). Medians in us."""
    traces = 0

    def step(m: rj.Recur, x: jax.Array) -> tuple[rj.Recur, jax.Array]:
        nonlocal traces
        traces += 1
        return m(x)

    x = jnp.ones((1, hidden))
    w = jax.random.normal(jax.random.key(1), (2 * hidden, 4 * hidden))
    xh = jnp.ones((1, 2 * hidden))
    jmat = jax.jit(lambda a, w: a @ w)
    out: dict[str, Any] = {}
    for label, jstep in (("plain", jax.jit(step)), ("donated", jax.jit(step, donate_argnums=0))):
        handle = [rj.LSTM(hidden, hidden, key=jax.random.key(0)).batched(1)]

        def one(jstep: Any = jstep, handle: list[Any] = handle) -> None:
            handle[0], y = jstep(handle[0], x)
            _block(y)

        one()
        traces = 0
        times = time_rounds(
            {"step": one, "matmul": lambda: _block(jmat(xh, w))}, job["rounds"], 1, seed
        )
        out[label] = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        out[label]["traces"] = traces
    return out


def run_memory(job: dict[str, Any], seed: int) -> dict[str, Any]:
    """XLA's temporary memory and the time of an LSTM f+b at long T, with and without
    `remat=64`, for the default and the sequential strategy."""
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
    for key, ts in time_rounds(fns, job["rounds"], 1, seed).items():
        out[key]["fb"] = statistics.median(ts)
    return out


def run_padded(job: dict[str, Any], seed: int) -> dict[str, Any]:
    """LSTM over a right-padded batch (lengths uniform in [T/2, T]): recurjax with `lengths=`
    against the same call without lengths, the sequential strategy, Flax's
    `nn.RNN(seq_lengths=...)` and torch on a `pack_padded_sequence`. Outputs are checked on
    the valid steps (Flax does not zero the padded ones)."""
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
    valid = np.arange(T)[None, :] < lengths_np[:, None]

    def rj_run(strategy: str, use_lengths: bool) -> Callable[[Any, jax.Array], jax.Array]:
        def run(p: Any, xs: jax.Array) -> jax.Array:
            h0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (B, *a.shape)), cell.initial_state(p))
            lens = lengths if use_lengths else None
            return rj.scan(cell, p, h0, xs, time_axis=1, lengths=lens, strategy=strategy)[1]

        return run

    impls = [
        jax_impl("recurjax, lengths=", rj_run("auto", True), params, xs),
        jax_impl("recurjax, no lengths (all T steps)", rj_run("auto", False), params, xs),
        jax_impl(
            "recurjax strategy='sequential', lengths=", rj_run("sequential", True), params, xs
        ),
    ]
    fcell, variables = interop.to_flax(cell, params, optimized=True)
    rnn = nn.RNN(fcell)
    fparams = {"params": {"cell": variables["params"]}}
    impls.append(
        jax_impl(
            "flax OptimizedLSTMCell, seq_lengths=",
            lambda p, xs: rnn.apply(p, xs, seq_lengths=lengths),
            fparams,
            xs,
        )
    )
    x_t = torch.from_numpy(xs_np)
    pack = torch.nn.utils.rnn

    def torch_out() -> Any:
        packed = pack.pack_padded_sequence(
            x_t, torch.from_numpy(lengths_np), batch_first=True, enforce_sorted=False
        )
        return pack.pad_packed_sequence(module(packed)[0], batch_first=True, total_length=T)[0]

    def torch_fwd() -> Any:
        with torch.no_grad():
            return torch_out()

    def torch_fb() -> None:
        module.zero_grad(set_to_none=True)
        (torch_out() ** 2).sum().backward()

    impls.append(
        Impl(
            "torch.nn.LSTM, pack_padded_sequence", torch_fwd, torch_fb, lambda: torch_fwd().numpy()
        )
    )
    ref = impls[0].out()
    for impl in impls[2:]:
        diff = float(np.max(np.abs(np.where(valid[..., None], impl.out() - ref, 0))))
        if diff > 1e-4:
            raise AssertionError(f"{impl.name} differs from recurjax by {diff:.2e}")
    out: dict[str, Any] = {"mean_length": float(lengths_np.mean()), "impls": {}}
    for what in ("fwd", "fb"):
        times = time_rounds(
            {i.name: getattr(i, what) for i in impls}, job["rounds"], job["burst"], seed
        )
        for name, ts in times.items():
            out["impls"].setdefault(name, {})[what] = statistics.median(ts)
    return out


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
        + (f", every process run with `{job['env']}`" if job.get("env") else ""),
        "",
        "| implementation | fwd ms | f+b ms | recurjax/impl fwd | recurjax/impl f+b "
        "| f+b % peak | compile s (fwd, f+b) | temp MB (fwd, f+b) | max diff |",
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
        diff = "-" if r0["diff"] is None else f"{r0['diff']:.1e}"
        rows.append(
            f"| {n} | {fwd:.2f} | {fb:.2f} | {_range(ratios[n]['fwd'])} | "
            f"{_range(ratios[n]['fb'])} | {peak:.0f} | {comp} | {mem} | {diff} |"
        )
    return rows, ratios


def _streaming_section(runs: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[float]]]:
    rows = [
        "## Streaming: one jitted `Recur` LSTM step, B=1, H=256",
        "",
        "| step | step us | bare matmul us | step / matmul | traces after the first step |",
        "|---|---|---|---|---|",
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
            f"{max(r['traces'] for r in recs)} |"
        )
    return rows, ratios


def _memory_section(job: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    T, B, F, H = job["size"]
    rows = [
        f"## Memory: LSTM f+b at T={T}, B={B}, F={F}, H={H}",
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
        f" (mean {runs[0]['mean_length']:.0f})",
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


def run_workers(
    script: str,
    jobs: list[dict[str, Any]],
    processes: int,
    key: Callable[[dict[str, Any]], str] = lambda job: job["name"],
    python: Callable[[dict[str, Any]], str] = lambda job: sys.executable,
    env: Callable[[dict[str, Any]], dict[str, str]] = lambda job: {},
) -> dict[str, list[dict[str, Any]]]:
    """Every job in `processes` fresh processes of `python(job) script --worker JOB`, one at
    a time and interleaved (process 1 of every job, then process 2, ...), each with
    `env(job)` added to the environment; returns each worker's JSON result, per `key(job)`."""
    results: dict[str, list[dict[str, Any]]] = {key(j): [] for j in jobs}
    for p in range(processes):
        for job in jobs:
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                cmd = [python(job), script, "--worker", json.dumps(job), "--seed", str(p)]
                t0 = time.time()
                proc_env = {**os.environ, **env(job)}
                subprocess.run([*cmd, "--result", f.name], check=True, env=proc_env)
                results[key(job)].append(json.loads(Path(f.name).read_text()))
            print(
                f"process {p + 1}/{processes} {job['name']}: {time.time() - t0:.0f} s", flush=True
            )
    return results


def driver_arguments(description: str, out: Path) -> argparse.ArgumentParser:
    """The command line shared by the drivers: `--quick`, `--processes`, `--only`, `--out`,
    and the hidden `--worker`, `--seed`, `--result` of their worker processes."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="small configs, one process, no file")
    ap.add_argument("--processes", type=int, default=3, help="processes per job")
    ap.add_argument("--only", default="", help="run the jobs whose name contains this (no file)")
    ap.add_argument("--out", default=str(out))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap


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


def drive(jobs: list[dict[str, Any]], processes: int, out: Path | None) -> None:
    env = environment()
    started = time.time()
    results = run_workers(__file__, jobs, processes, env=_job_env)
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
        f"`python benchmarks/rnn.py --processes {processes}` on {env['date']}, commit "
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
        '`strategy="auto"`; the A/A row is the same function jitted a second time.',
        "",
    ]
    body: list[str] = []
    ratios, rnn_runs, stream = {}, {}, None
    for job in jobs:
        runs = results[job["name"]]
        if job["kind"] in GATES:
            rows, ratios[job["name"]] = _rnn_section(job, runs)
            rnn_runs[job["name"]] = runs
        elif job["kind"] == "streaming":
            rows, stream = _streaming_section(runs)
        elif job["kind"] == "memory":
            rows = _memory_section(job, runs)
        else:
            rows = _padded_section(job, runs)
        body += [*rows, ""]
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
    jobs = QUICK if args.quick else [j for j in JOBS if args.only in j["name"]]
    processes = 1 if args.quick else args.processes
    write = not (args.quick or args.only)
    drive(jobs, processes, Path(args.out) if write else None)


if __name__ == "__main__":
    main()
