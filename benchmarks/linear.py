"""Linear recurrences: sequential vs associative vs chunked evaluation over T.

    pip install -e ".[bench]"
    python benchmarks/linear.py               # writes benchmarks/RESULTS_linear.md
    python benchmarks/linear.py --quick       # small sizes, no file

For `MinGRUCell` and `LRUCell` (B=4, in=64, H=128, float32) and T from 256 to 65,536, each
strategy of `rj.scan` is timed on the forward pass (the outputs) and on forward + backward
(the gradient of `mean(y**2)` w.r.t. the params), jitted, interleaved, medians of the rounds.
The outputs of every strategy are checked against the sequential one first. The table is
where the rule of `strategy="auto"` for linear cells (`ASSOCIATIVE_BACKENDS` in
`src/recurjax/_scan/policy.py`) comes from.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import recurjax as rj

STRATEGIES = ("sequential", "associative", "chunked")


def measure(cell: Any, T: int, B: int, F: int, rounds: int) -> dict[str, tuple[float, float]]:
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, B, F))
    h0 = cell.initial_state(params)
    fns = {}
    for strategy in STRATEGIES:

        def fwd(p: Any, xs: jax.Array, s: str = strategy) -> jax.Array:
            return rj.scan(cell, p, h0, xs, strategy=s)[1]

        def loss(p: Any, xs: jax.Array, s: str = strategy) -> jax.Array:
            return jnp.mean(rj.scan(cell, p, h0, xs, strategy=s)[1] ** 2)

        fns[strategy] = (jax.jit(fwd), jax.jit(jax.grad(loss)))
    ref = np.asarray(fns["sequential"][0](params, xs))
    for strategy, (fwd, _) in fns.items():
        got = np.asarray(fwd(params, xs))
        err = float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-30))
        if err > 1e-4:
            raise AssertionError(f"{strategy} differs from sequential by {err:.1e} (relative)")
    times: dict[str, list[list[float]]] = {s: [[], []] for s in STRATEGIES}
    for pair in fns.values():  # warm up (compile)
        for f in pair:
            jax.block_until_ready(f(params, xs))
    for _ in range(rounds):
        for s, pair in fns.items():
            for k, f in enumerate(pair):
                t0 = time.perf_counter()
                jax.block_until_ready(f(params, xs))
                times[s][k].append((time.perf_counter() - t0) * 1e3)
    return {s: (statistics.median(v[0]), statistics.median(v[1])) for s, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_linear.md")))
    args = ap.parse_args()
    B, F, H = (2, 8, 16) if args.quick else (4, 64, 128)
    lengths = (256, 1024) if args.quick else (256, 1024, 4096, 16384, 65536)
    rounds = 2 if args.quick else args.rounds
    lines = [
        "# Linear recurrences: sequential vs associative vs chunked",
        "",
        f"`python benchmarks/linear.py` on {platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.default_backend()}; jax {jax.__version__}. B={B}, in={F}, H={H}, float32; "
        f"medians of {rounds} interleaved rounds, ms (fwd / f+b). `chunked` runs blocks of "
        "256 steps associatively, carried sequentially.",
        "",
    ]
    print(lines[2], flush=True)
    for cell in (rj.MinGRUCell(F, H), rj.LRUCell(F, H)):
        rows = [
            f"## {cell!r}",
            "",
            "| T | " + " | ".join(STRATEGIES) + " | best f+b |",
            "|---" * (len(STRATEGIES) + 2) + "|",
        ]
        for T in lengths:
            t = measure(cell, T, B, F, rounds)
            best = min(STRATEGIES, key=lambda s: t[s][1])
            cells = " | ".join(f"{t[s][0]:.1f} / {t[s][1]:.1f}" for s in STRATEGIES)
            rows.append(f"| {T} | {cells} | {best} |")
            print(rows[-1], flush=True)
        lines += [*rows, ""]
    if not args.quick:
        Path(args.out).write_text("\n".join(lines))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
