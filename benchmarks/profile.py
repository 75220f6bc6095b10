"""Where the time of one recurjax call goes: XLA's ops from a profiler trace, per call.

    python benchmarks/profile.py                       # LSTM B=32 T=128 F=64 H=256, f+b
    python benchmarks/profile.py --cell gru --what fwd --size 1 1000 32 128
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/profile.py   # without page faults

Runs the jitted function a few times under `jax.profiler.trace(create_perfetto_trace=True)`
and sums the duration of every XLA op (thunk) by name, per call, largest first. The
threads in the names say which work ran on the calling thread and which on XLA's pool.
Also printed: the wall time per call, the minor page faults per call (`getrusage`) and
XLA's temporary buffer size (`memory_analysis`). This is the profile behind the closing
note of issue 15 (`benchmarks/RESULTS.md` has the timings).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

import recurjax as rj

sys.path.insert(0, str(Path(__file__).parent))
from rnn import _recurjax, fwd_and_fb  # the functions rnn.py times


def build(cell_name: str, what: str, size: list[int], strategy: str) -> tuple[Any, tuple]:
    """The jitted fwd or f+b of `rj.scan` (batch-major, as `benchmarks/rnn.py`)."""
    B, T, F, H = size
    cell = (rj.LSTMCell if cell_name == "lstm" else rj.GRUCell)(F, H)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (B, T, F))
    fwd, fb = fwd_and_fb(_recurjax(cell, strategy))
    return (fwd if what == "fwd" else fb), (params, xs)


def ops_per_call(trace_dir: Path, calls: int) -> list[tuple[float, int, str, str]]:
    """(ms per call, count per call, thread, op) from the perfetto trace, largest first."""
    path = sorted(trace_dir.glob("**/perfetto_trace.json.gz"))[-1]
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    total: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") != "X" or "python" in threads.get((e["pid"], e["tid"]), ""):
            continue
        thread = threads.get((e["pid"], e["tid"]), "?").split("/")[0]
        key = (thread, e["name"])
        total[key][0] += e.get("dur", 0) / 1e3
        total[key][1] += 1
    rows = [(ms / calls, int(n) // calls, th, op) for (th, op), (ms, n) in total.items()]
    return sorted(rows, reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    ap.add_argument("--what", choices=["fwd", "fb"], default="fb")
    ap.add_argument("--size", type=int, nargs=4, default=[32, 128, 64, 256], metavar="BTFH")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    fn, fargs = build(args.cell, args.what, args.size, args.strategy)
    compiled = fn.lower(*fargs).compile()
    temp_mb = compiled.memory_analysis().temp_size_in_bytes / 2**20
    for _ in range(3):
        jax.block_until_ready(fn(*fargs))
    times, faults = [], []
    for _ in range(10):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*fargs))
        times.append((time.perf_counter() - t0) * 1e3)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(
        f"{args.cell} {args.what} B,T,F,H={args.size} strategy={args.strategy}: "
        f"{statistics.median(times):.2f} ms per call, {statistics.median(faults):.0f} minor "
        f"page faults per call, temporary buffer {temp_mb:.1f} MB"
    )
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(args.calls):
                jax.block_until_ready(fn(*fargs))
        rows = ops_per_call(Path(tmp), args.calls)
    print(f"{'ms/call':>8} {'n/call':>7}  thread               op")
    for ms, n, thread, op in rows[: args.top]:
        print(f"{ms:8.2f} {n:7d}  {thread[:20]:20s} {op[:70]}")


if __name__ == "__main__":
    main()
