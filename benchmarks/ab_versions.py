"""Two source trees of recurjax side by side: is the new one slower?

    python benchmarks/ab_versions.py OLD_SRC NEW_SRC [--repeats 3]

e.g. with the old commit checked out by `git worktree add /tmp/old <commit>`:
`python benchmarks/ab_versions.py /tmp/old/src src`. Each repeat runs one process per tree,
alternating (old, new, old, new, ...), each importing recurjax from its tree; a process
times the default strategy's forward pass and gradient (jitted, median of 30 calls) on the
LSTM at B=1 T=1000 and B=32 T=128 and the GRU at B=32 T=128 (the configs of
`benchmarks/rnn.py`), and the minGRU at B=4 T=256 (`benchmarks/cells.py`). The summary is
the median of the per-repeat ratios new/old with their min-max: a ratio whose range
contains 1 is no change beyond the noise.

    python benchmarks/ab_versions.py OLD_SRC NEW_SRC --hlo

compares the compiled XLA programs instead (without source locations, with instruction
names numbered by first appearance): where they are equal, the two trees run the same
program and any timing difference is noise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
from typing import Any

CONFIGS = [
    ("lstm", 1, 1000, 32, 128),
    ("lstm", 32, 128, 64, 256),
    ("gru", 32, 128, 64, 256),
    ("mingru", 4, 256, 64, 64),  # a linear cell: `auto` runs it hoisted
]
CELLS = {"lstm": "LSTMCell", "gru": "GRUCell", "mingru": "MinGRUCell"}


def _functions(kind: str, B: int, T: int, F: int, H: int) -> Any:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import recurjax as rj

    cell = getattr(rj, CELLS[kind])(F, H)
    params = cell.init(jax.random.key(0))
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((T, B, F), dtype=np.float32))

    def ys(p: Any, xs: Any) -> Any:
        return rj.scan(cell, p, cell.initial_state(p), xs)[1]

    def loss(p: Any, xs: Any) -> Any:
        return jnp.sum(ys(p, xs) ** 2)

    return {"fwd": jax.jit(ys), "f+b": jax.jit(jax.grad(loss))}, (params, xs)


def _canonical_names(text: str) -> str:
    """Every `%name` of an instruction or computation renamed by its first appearance: XLA
    numbers names in the order the program was built (`%concatenate.4` in one tree can be
    `%concatenate.6` in the other), which says nothing about what the program computes."""
    names: dict[str, str] = {}
    return re.sub(r"%[\w.\-]+", lambda m: names.setdefault(m.group(0), f"%v{len(names)}"), text)


def programs() -> dict[str, str]:
    """A hash of each compiled program, source locations removed (in a child process)."""
    out = {}
    for config in CONFIGS:
        fns, args = _functions(*config)
        for name, fn in fns.items():
            text = fn.lower(*args).compile().as_text()
            lines = [
                re.sub(r",? ?(metadata|stack_frame_id)=(\{[^}]*\}|\d+)", "", line)
                for line in text.splitlines()
                if not re.match(r'^\d+ (\{(file_name_id|file_location_id)|")', line)
            ]
            out[f"{config[0]} B={config[1]} T={config[2]} {name}"] = hashlib.md5(
                _canonical_names("\n".join(lines)).encode()
            ).hexdigest()[:12]
    return out


def measure() -> dict[str, float]:
    """Medians in ms of this process's recurjax (run in a child process)."""
    import time

    import jax

    out = {}
    for config in CONFIGS:
        fns, args = _functions(*config)
        for name, fn in fns.items():
            jax.block_until_ready(fn(*args))
            times = []
            for _ in range(30):
                start = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times.append(time.perf_counter() - start)
            out[f"{config[0]} B={config[1]} T={config[2]} {name}"] = statistics.median(times) * 1e3
    return out


def _child(tree: str, function: str) -> Any:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    env["PYTHONPATH"] += os.pathsep + os.path.dirname(os.path.abspath(__file__))
    code = f"import json, ab_versions; print(json.dumps(ab_versions.{function}()))"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hlo", action="store_true", help="compare compiled programs, not times")
    args = ap.parse_args()
    if args.hlo:
        old, new = _child(args.old, "programs"), _child(args.new, "programs")
        print("| config | old program | new program | same |")
        print("|---|---|---|---|")
        for key in old:
            print(f"| {key} | {old[key]} | {new[key]} | {old[key] == new[key]} |")
        return
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for _ in range(args.repeats):
        for which in ("old", "new"):
            runs[which].append(_child(getattr(args, which), "measure"))
    print(f"| config | old ms | new ms | new/old (median, min-max over {args.repeats}) |")
    print("|---|---|---|---|")
    for key in runs["old"][0]:
        old = [r[key] for r in runs["old"]]
        new = [r[key] for r in runs["new"]]
        ratios = [n / o for o, n in zip(old, new, strict=True)]
        print(
            f"| {key} | {statistics.median(old):.2f} | {statistics.median(new):.2f} | "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |"
        )


if __name__ == "__main__":
    main()
