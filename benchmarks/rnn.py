"""recurjax against Flax, Haiku, Equinox and PyTorch: LSTM and GRU over whole sequences.

    pip install -e ".[bench]"
    python benchmarks/rnn.py                 # all configs, writes benchmarks/RESULTS.md
    python benchmarks/rnn.py --quick         # one small config, few repeats, no file

Every implementation gets the same batch-major input `(B, T, F)` in float32 and computes
the same function: the weights are copied from one PyTorch module with
`recurjax.interop`, and the outputs are checked against recurjax before anything is timed
(Haiku's GRU applies the reset gate before the matmul, so it is checked against
`rj.GRUv3Cell` with the same weights instead). Measured:

- fwd: the outputs of the whole sequence; f+b: the gradient of `sum(y**2)` with respect to
  the params (JAX: one jitted function each; PyTorch: `backward()` on all cores).
- Timings are interleaved (one call of each implementation per round) and summarised by the
  median; the ratio column is recurjax's median over the implementation's.
- GFLOP/s counts the gate matmuls only, `2 B T (F + H) G H` for fwd and three times that for
  f+b (G = 4 for LSTM, 3 for GRU), and "% peak" divides it by a large float32 matmul
  (2048 x 2048) measured in the same run.
- The floor is `lax.scan` of the two matmuls alone, with no gate arithmetic.
- Compile: seconds for the first call of a jitted function (trace + compile + run).
  Memory: XLA's temporary buffer size for the compiled function, from `memory_analysis()`.
- "recurjax" is the default `strategy="auto"`; the row below it is `strategy="sequential"`
  (plain `lax.scan` of the cell, the engine before the fused kernels).
- Streaming: one jitted `Recur` step against a bare matmul. Memory: LSTM f+b at T=4096
  with and without `remat=64`. Padded: an LSTM over a right-padded batch with `lengths=`,
  against Flax's `seq_lengths` and torch's packed sequences.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import recurjax as rj
from recurjax import interop

# B (batch), T (steps), F (input features, the I), H (hidden)
CONFIGS = [(32, 128, 64, 256), (1, 1000, 32, 128), (128, 64, 256, 512)]
GATES = {"lstm": 4, "gru": 3}


@dataclasses.dataclass
class Impl:
    """One implementation: jitted (or torch) fwd and f+b callables with their arguments."""

    name: str
    fwd: Callable[[], Any]
    fb: Callable[[], Any]
    out: Callable[[], np.ndarray]  # the outputs (B, T, H), for the correctness check
    reference: str = "recurjax"  # which recurjax function it must equal
    compile_s: dict[str, float] = dataclasses.field(default_factory=dict)
    temp_mb: dict[str, float] = dataclasses.field(default_factory=dict)


def _block(x: Any) -> Any:
    return jax.block_until_ready(x)


def jax_impl(
    name: str, loss_fwd: Callable[..., Any], params: Any, xs: jax.Array, **kw: Any
) -> Impl:
    """Wrap `loss_fwd(params, xs) -> ys (B, T, H)` as jitted fwd and f+b."""
    fwd = jax.jit(loss_fwd)

    def loss(p: Any, xs: jax.Array) -> jax.Array:
        return jnp.sum(loss_fwd(p, xs) ** 2)

    fb = jax.jit(jax.grad(loss))
    impl = Impl(
        name,
        lambda: _block(fwd(params, xs)),
        lambda: _block(fb(params, xs)),
        lambda: np.asarray(fwd(params, xs)),
        **kw,
    )
    for what, fn in (("fwd", fwd), ("fb", fb)):
        t0 = time.perf_counter()
        compiled = fn.lower(params, xs).compile()
        _block(compiled(params, xs))
        impl.compile_s[what] = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        impl.temp_mb[what] = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20
    return impl


def build(
    kind: str, B: int, T: int, F: int, H: int, seed: int = 0
) -> tuple[list[Impl], dict[str, Any]]:
    """All implementations of `kind` ("lstm" or "gru") for one config, with shared weights."""
    import torch

    torch.manual_seed(seed)
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(F, H, batch_first=True)
    cell, params = interop.from_torch(module)
    xs_np = np.random.default_rng(seed).normal(size=(B, T, F)).astype(np.float32)
    xs = jnp.asarray(xs_np)
    impls: list[Impl] = []

    def rj_fwd(p: Any, xs: jax.Array) -> jax.Array:
        h0 = jax.tree.map(
            lambda a: jnp.broadcast_to(a, (xs.shape[0], *a.shape)), cell.initial_state(p)
        )
        return rj.scan(cell, p, h0, xs, time_axis=1)[1]

    impls.append(jax_impl("recurjax", rj_fwd, params, xs))

    def rj_seq_fwd(p: Any, xs: jax.Array) -> jax.Array:
        h0 = jax.tree.map(
            lambda a: jnp.broadcast_to(a, (xs.shape[0], *a.shape)), cell.initial_state(p)
        )
        return rj.scan(cell, p, h0, xs, time_axis=1, strategy="sequential")[1]

    impls.append(jax_impl("recurjax strategy='sequential'", rj_seq_fwd, params, xs))
    refs: dict[str, Any] = {"recurjax": lambda: np.asarray(jax.jit(rj_fwd)(params, xs))}

    # Flax linen: nn.RNN over LSTMCell / OptimizedLSTMCell / GRUCell, batch-major.
    import flax.linen as nn

    flax_cells = ["LSTMCell", "OptimizedLSTMCell"] if kind == "lstm" else ["GRUCell"]
    for name in flax_cells:
        fcell, variables = interop.to_flax(cell, params, optimized=name == "OptimizedLSTMCell")
        rnn = nn.RNN(fcell)
        fparams = {"params": {"cell": variables["params"]}}
        impls.append(
            jax_impl(f"flax {name}", lambda p, xs, rnn=rnn: rnn.apply(p, xs), fparams, xs)
        )

    # Equinox: its cells are unbatched; lax.scan over time, vmap over the batch.
    import equinox as eqx

    emodule = interop.to_equinox(cell, params)
    earrays, estatic = eqx.partition(emodule, eqx.is_array)

    def eqx_fwd(arrays: Any, xs: jax.Array) -> jax.Array:
        m = eqx.combine(arrays, estatic)

        def one(x: jax.Array) -> jax.Array:
            zeros = jnp.zeros((H,), x.dtype)
            h0 = (zeros, zeros) if kind == "lstm" else zeros

            def step(h: Any, x: jax.Array) -> tuple[Any, jax.Array]:
                h = m(x, h)
                return h, (h[0] if kind == "lstm" else h)

            return jax.lax.scan(step, h0, x)[1]

        return jax.vmap(one)(xs)

    impls.append(jax_impl("equinox", eqx_fwd, earrays, xs))

    # Haiku: dynamic_unroll, batch-major. Its GRU is the reset-before form (GRUv3Cell).
    import haiku as hk

    if kind == "lstm":
        hcell, hparams_rj = cell, params
    else:
        hcell = rj.GRUv3Cell(F, H)
        hparams_rj = {
            "wi": params["wi"],
            "wh": params["wh"][:, : 2 * H],
            "whn": params["wh"][:, 2 * H :],
            "b": params["b"],
        }

        def v3_fwd(p: Any, xs: jax.Array) -> jax.Array:
            return rj.scan(hcell, p, jnp.zeros((xs.shape[0], H)), xs, time_axis=1)[1]

        refs["GRUv3Cell"] = lambda: np.asarray(jax.jit(v3_fwd)(hparams_rj, xs))
    hparams = interop.to_haiku(hcell, hparams_rj)

    def hk_forward(xs: jax.Array) -> Any:
        core = hk.LSTM(H) if kind == "lstm" else hk.GRU(H)
        ys, _ = hk.dynamic_unroll(core, xs, core.initial_state(xs.shape[0]), time_major=False)
        return ys

    hf = hk.without_apply_rng(hk.transform(hk_forward))
    impls.append(
        jax_impl(
            "haiku", hf.apply, hparams, xs, reference="recurjax" if kind == "lstm" else "GRUv3Cell"
        )
    )

    # Floor: the two matmuls of a step alone under lax.scan (no gates, no nonlinearity).
    G = GATES[kind]

    def floor_fwd(p: Any, xs: jax.Array) -> jax.Array:
        def step(h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
            g = x @ p["wi"] + h @ p["wh"]
            return g[:, :H], g[:, :H]

        ys = jax.lax.scan(step, jnp.zeros((xs.shape[0], H)), jnp.swapaxes(xs, 0, 1))[1]
        return jnp.swapaxes(ys, 0, 1)

    floor = jax_impl(
        "floor (matmuls only)",
        floor_fwd,
        {"wi": params["wi"], "wh": params["wh"]},
        xs,
        reference="",
    )
    impls.append(floor)

    # PyTorch on all cores.
    torch.set_num_threads(os.cpu_count() or 1)
    x_t = torch.from_numpy(xs_np)

    def torch_fwd() -> Any:
        with torch.no_grad():
            return module(x_t)[0]

    def torch_fb() -> None:
        module.zero_grad(set_to_none=True)
        (module(x_t)[0] ** 2).sum().backward()

    impls.append(
        Impl(f"torch.nn.{kind.upper()}", torch_fwd, torch_fb, lambda: torch_fwd().numpy())
    )
    flops = 2 * B * T * (F + H) * G * H
    return impls, {"refs": refs, "flops": flops}


def check(impls: list[Impl], refs: dict[str, Any]) -> dict[str, float]:
    """Max |difference| of every implementation's outputs from its recurjax reference."""
    values = {k: f() for k, f in refs.items()}
    diffs = {}
    for impl in impls:
        if not impl.reference:
            continue
        diff = float(np.max(np.abs(impl.out() - values[impl.reference])))
        if diff > 1e-4:
            raise AssertionError(f"{impl.name} differs from {impl.reference} by {diff:.2e}")
        diffs[impl.name] = diff
    return diffs


def time_all(impls: list[Impl], what: str, rounds: int) -> dict[str, float]:
    """Interleaved timing: per round one call of each implementation; medians in ms."""
    times: dict[str, list[float]] = {i.name: [] for i in impls}
    for impl in impls:  # warm up
        getattr(impl, what)()
    for _ in range(rounds):
        for impl in impls:
            t0 = time.perf_counter()
            getattr(impl, what)()
            times[impl.name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def streaming(hidden: int = 256, rounds: int = 200) -> list[str]:
    """A jitted single step of a `Recur` LSTM handle (B=1) against a jitted bare matmul of the
    same size, `[x, h] (1, 2H) @ W (2H, 4H)`; also counts traces after the first step (none
    means no retracing between steps).

    Two forms of the step: plain `jax.jit(step)`, where XLA copies the unchanged params and
    `state0` into the returned handle on every call (jit does not forward inputs to outputs),
    and `jax.jit(step, donate_argnums=0)`, where the returned handle reuses the donated
    buffers.
    """
    traces = 0

    def step(m: rj.Recur, x: jax.Array) -> tuple[rj.Recur, jax.Array]:
        nonlocal traces
        traces += 1
        return m(x)

    x = jnp.ones((1, hidden))
    w = jax.random.normal(jax.random.key(1), (2 * hidden, 4 * hidden))
    xh = jnp.ones((1, 2 * hidden))
    jmat = jax.jit(lambda a, w: a @ w)
    _block(jmat(xh, w))
    rows = [
        f"## Streaming: one jitted `Recur` LSTM step, B=1, H={hidden}",
        "",
        "| step | step us | bare matmul us | ratio | traces after the first step |",
        "|---|---|---|---|---|",
    ]
    for label, jstep in (
        ("`jax.jit(step)`", jax.jit(step)),
        ("`jax.jit(step, donate_argnums=0)`", jax.jit(step, donate_argnums=0)),
    ):
        m = rj.LSTM(hidden, hidden, key=jax.random.key(0)).batched(1)
        m, _ = _block(jstep(m, x))
        traces = 0
        t_step, t_mat = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            m, y = jstep(m, x)
            _block(y)
            t_step.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _block(jmat(xh, w))
            t_mat.append(time.perf_counter() - t0)
        us_step, us_mat = statistics.median(t_step) * 1e6, statistics.median(t_mat) * 1e6
        rows.append(
            f"| {label} | {us_step:.1f} | {us_mat:.1f} | {us_step / us_mat:.2f} | {traces} |"
        )
    return rows


def memory(T: int = 4096, B: int = 32, F: int = 64, H: int = 256, rounds: int = 3) -> list[str]:
    """Peak temporary memory (XLA's accounting of the compiled program) and time of the
    LSTM f+b at a long `T`, with and without `remat=64`, for both strategies."""
    cell = rj.LSTMCell(F, H)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, B, F))
    rows = [
        f"## Memory: LSTM f+b at T={T}, B={B}, F={F}, H={H}",
        "",
        "| strategy | remat | temp MB | f+b ms |",
        "|---|---|---|---|",
    ]
    for strategy in ("auto", "sequential"):
        for remat in (None, 64):

            def loss(p: Any, xs: jax.Array, s: str = strategy, r: Any = remat) -> jax.Array:
                h0 = cell.initial_state(p)
                return jnp.sum(rj.scan(cell, p, h0, xs, strategy=s, remat=r)[1] ** 2)

            compiled = jax.jit(jax.grad(loss)).lower(params, xs).compile()
            mem = compiled.memory_analysis()
            mb = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20
            _block(compiled(params, xs))
            ts = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                _block(compiled(params, xs))
                ts.append((time.perf_counter() - t0) * 1e3)
            rows.append(f"| {strategy} | {remat} | {mb:.0f} | {statistics.median(ts):.0f} |")
    return rows


def padded(B: int = 32, T: int = 128, F: int = 64, H: int = 256, rounds: int = 15) -> list[str]:
    """LSTM over a right-padded batch (lengths uniform in [T/2, T]): recurjax with
    `lengths=` against the same call without lengths, the sequential strategy, Flax's
    `nn.RNN(seq_lengths=...)` and torch on a `pack_padded_sequence`. Outputs are checked on
    the valid steps (Flax does not zero the padded ones)."""
    import flax.linen as nn
    import torch

    torch.manual_seed(0)
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
    torch.set_num_threads(os.cpu_count() or 1)
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
    fwd = time_all(impls, "fwd", rounds)
    fb = time_all(impls, "fb", rounds)
    base = impls[0].name
    rows = [
        f"## Padded batch: LSTM B={B} T={T} F={F} H={H}, lengths uniform in [{T // 2}, {T}]"
        f" (mean {lengths_np.mean():.0f})",
        "",
        "| implementation | fwd ms | f+b ms | recurjax/impl fwd | recurjax/impl f+b |",
        "|---|---|---|---|---|",
    ]
    for impl in impls:
        rows.append(
            f"| {impl.name} | {fwd[impl.name]:.2f} | {fb[impl.name]:.2f} | "
            f"{fwd[base] / fwd[impl.name]:.2f} | {fb[base] / fb[impl.name]:.2f} |"
        )
    return rows


def matmul_peak(rounds: int = 10) -> float:
    """GFLOP/s of a 2048 x 2048 float32 matmul under jit, median of `rounds`."""
    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    _block(f(a))
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        _block(f(a))
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small config, few rounds, no file")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds per implementation")
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--only", choices=["padded"], help="run one section alone (no file)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    configs = [(8, 32, 16, 32)] if args.quick else CONFIGS
    rounds = 3 if args.quick else args.rounds
    if args.only == "padded":
        print("\n".join(padded(*((8, 32, 16, 32) if args.quick else ()), rounds=rounds)))
        return
    peak = matmul_peak()
    lines = [
        "# Benchmark results",
        "",
        f"`python benchmarks/rnn.py` on {platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.default_backend()}; jax {jax.__version__}. Float32, batch-major `(B, T, F)`, "
        f"medians of {rounds} interleaved rounds. Matmul peak (2048^3, jit): {peak:.1f} GFLOP/s.",
        "",
    ]
    print(lines[2], flush=True)
    for kind in args.cells.split(","):
        for B, T, F, H in configs:
            impls, info = build(kind, B, T, F, H)
            diffs = check(impls, info["refs"])
            fwd = time_all(impls, "fwd", rounds)
            fb = time_all(impls, "fb", rounds)
            title = f"## {kind.upper()} B={B} T={T} F={F} H={H}"
            rows = [
                title,
                "",
                "| implementation | fwd ms | f+b ms | recurjax/impl fwd | recurjax/impl f+b "
                "| f+b GFLOP/s | f+b % peak | compile s (fwd, f+b) | temp MB (fwd, f+b) "
                "| max diff |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for impl in impls:
                gflops = 3 * info["flops"] / (fb[impl.name] / 1e3) / 1e9
                comp = (
                    ", ".join(f"{impl.compile_s[k]:.2f}" for k in ("fwd", "fb"))
                    if impl.compile_s
                    else "-"
                )
                mem = (
                    ", ".join(f"{impl.temp_mb[k]:.1f}" for k in ("fwd", "fb"))
                    if impl.temp_mb
                    else "-"
                )
                diff = f"{diffs[impl.name]:.1e}" if impl.name in diffs else "-"
                rows.append(
                    f"| {impl.name} | {fwd[impl.name]:.2f} | {fb[impl.name]:.2f} | "
                    f"{fwd['recurjax'] / fwd[impl.name]:.2f} | "
                    f"{fb['recurjax'] / fb[impl.name]:.2f} | "
                    f"{gflops:.1f} | {100 * gflops / peak:.0f} | {comp} | {mem} | {diff} |"
                )
            print("\n".join(rows), flush=True)
            lines += [*rows, ""]
    rows = streaming(rounds=20 if args.quick else 200)
    print("\n".join(rows), flush=True)
    lines += [*rows, ""]
    rows = memory(T=256 if args.quick else 4096)
    print("\n".join(rows), flush=True)
    lines += [*rows, ""]
    rows = padded(*((8, 32, 16, 32) if args.quick else ()), rounds=rounds)
    print("\n".join(rows), flush=True)
    lines += [*rows, ""]
    if not args.quick:
        Path(args.out).write_text("\n".join(lines))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
