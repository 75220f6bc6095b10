"""Streaming decode with a matrix memory: a `Recur` stepping one token at a time against
re-running the chunkwise form over the growing prefix.

    python benchmarks/decode.py              # 3 processes, writes RESULTS_decode.md
    python benchmarks/decode.py --quick      # small sizes, one process, no file

Each cell (mLSTM, Mamba-2, GLA, retention, DeltaNet, Gated DeltaNet; in = H = 256, 4 heads,
one sequence) decodes `TOKENS` tokens after a prompt of `PROMPT` tokens, two ways, each
jitted once:

- `Recur`: the prompt through `m.scan` (chunkwise, `auto`), then one `m(x)` per token, the
  state carried (what streaming inference runs);
- prefix: for each new token, `rj.scan(..., strategy="chunkwise")` over the whole prefix so
  far, from the initial state: the prefix lives in a buffer of `PROMPT + TOKENS` steps and
  `lengths` marks how much of it is filled, so it compiles once (recompiling for every
  length would be slower still).

Before timing, the last token's output of both ways is checked against the sequential
strategy over the whole sequence. Each process times both ways in a shuffled order, three
rounds, and reports the median tokens/s of each; the ratio is per process, reported as
median [min-max] over processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import recurjax as rj

sys.path.insert(0, str(Path(__file__).parent))
from rnn import _range, environment  # the main benchmark's

PROMPT, TOKENS, H = 512, 64, 256


def cells(H: int) -> dict[str, Any]:
    return {
        "MLSTMCell (4 heads)": rj.MLSTMCell(H, H, num_heads=4),
        "Mamba2Cell (4 heads, N = 64)": rj.Mamba2Cell(H, H, num_heads=4, state_size=64),
        "GLACell (4 heads, K = H/2)": rj.GLACell(H, H, num_heads=4, key_size=H // 2),
        "RetentionCell (4 heads)": rj.RetentionCell(H, H, num_heads=4),
        "DeltaNetCell (4 heads)": rj.DeltaNetCell(H, H, num_heads=4),
        "GatedDeltaNetCell (4 heads)": rj.GatedDeltaNetCell(H, H, num_heads=4),
    }


def measure(prompt: int, tokens: int, width: int, seed: int) -> dict[str, dict[str, float]]:
    """tokens/s of both ways for every cell, in this process."""
    rng = np.random.default_rng(seed)
    return {name: _one(cell, prompt, tokens, width, rng) for name, cell in cells(width).items()}


def _one(cell: Any, prompt: int, tokens: int, width: int, rng: Any) -> dict[str, float]:
    params = cell.init(jax.random.key(0))
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((prompt + tokens, width)))
    xs = xs.astype(jnp.float32)
    h0 = cell.initial_state(params)
    step = jax.jit(lambda m, x: m(x))
    prefill = jax.jit(lambda m, xs: m.scan(xs))

    @jax.jit
    def prefix(xs: jax.Array, n: jax.Array) -> jax.Array:
        return rj.scan(cell, params, h0, xs, lengths=n, strategy="chunkwise")[1][n - 1]

    def recur() -> jax.Array:
        m, _ = prefill(rj.Recur(cell, params), xs[:prompt])
        y = None
        for t in range(prompt, prompt + tokens):
            m, y = step(m, xs[t])
        assert y is not None
        return y.block_until_ready()

    def rerun() -> jax.Array:
        y = None
        for t in range(prompt, prompt + tokens):
            y = prefix(xs, jnp.asarray(t + 1))
        assert y is not None
        return y.block_until_ready()

    want = rj.scan(cell, params, h0, xs, strategy="sequential")[1][-1]
    ways = {"Recur, one step a token": recur, "chunkwise over the prefix": rerun}
    for way, fn in ways.items():
        np.testing.assert_allclose(fn(), want, rtol=1e-4, atol=1e-4, err_msg=f"{cell!r} {way}")
    times: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(3):
        for way in rng.permutation(list(ways)):
            t0 = time.perf_counter()
            ways[str(way)]()
            times[str(way)].append(time.perf_counter() - t0)
    return {way: tokens / statistics.median(ts) for way, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_decode.md")))
    args = ap.parse_args()
    sizes = (16, 4, 16) if args.quick else (PROMPT, TOKENS, H)
    if args.worker is not None:
        print(json.dumps(measure(*sizes, seed=args.worker)))
        return
    started = time.time()
    runs = []
    for i in range(1 if args.quick else args.processes):
        cmd = [sys.executable, __file__, "--worker", str(i)] + (["--quick"] if args.quick else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"process {i + 1}: {time.time() - started:.0f} s", flush=True)
    env = environment()
    lines = [
        "# Streaming decode: a Recur's steps against the chunkwise form over the prefix",
        "",
        f"`python benchmarks/decode.py` on {env['date']}, commit {env['commit']}: "
        f"{env['cpu']} ({env['machine']}), {env['cores']} cores, {env['backend']}; jax "
        f"{env['versions']['jax']}. {len(runs)} processes, {time.time() - started:.0f} s.",
        "",
        f"One sequence, in = H = {sizes[2]}, a prompt of {sizes[0]} tokens, then {sizes[1]} "
        "tokens decoded (the prompt's prefill included in the Recur's time). How: the "
        "docstring of `benchmarks/decode.py`.",
        "",
        "| cell | Recur tokens/s | prefix tokens/s | Recur / prefix |",
        "|---|---|---|---|",
    ]
    for name in runs[0]:
        rec = [r[name]["Recur, one step a token"] for r in runs]
        pre = [r[name]["chunkwise over the prefix"] for r in runs]
        ratio = _range([a / b for a, b in zip(rec, pre, strict=True)], 1)
        lines.append(
            f"| {name} | {statistics.median(rec):,.0f} | {statistics.median(pre):,.0f} | {ratio} |"
        )
    text = "\n".join([*lines, ""])
    print(text)
    if not args.quick:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
