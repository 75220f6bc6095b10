"""The newer cells' speed: fwd and f+b of every strategy that runs each cell, side by side,
and the evidence for `auto`'s rule for the cells linear in their state.

    pip install -e ".[bench]"
    python benchmarks/cells.py            # 3 processes per config, writes RESULTS_cells.md
    python benchmarks/cells.py --quick    # small sizes, one process, no file
    python benchmarks/cells.py --recurrentgemma-python /tmp/rg/bin/python

Configs: every cell at B=32, T=128 (in = H = 256, 4 heads where a cell has heads) and at B=4,
T=4096 (in = H = 64); then the cells linear in their state alone at B=4 T=256, B=32 T=256
and B=32 T=4096 (H = 64), the grid that `auto`'s rule for them (`_scan/policy.py`,
`hoisted_pays`) rests on. `rj.scan` is timed on the forward pass and on the gradient of
`sum(y**2)` w.r.t. the params, jitted, for the sequential strategy and, for the linear
cells, the hoisted, chunked and associative ones (the last two not in the grid) and `auto`;
the LSTM's default (fused) row is a yardstick. References that run here: torch's
`nn.LSTM(proj_size=...)` for `ProjLSTMCell` (same weights through `recurjax.interop`,
outputs checked), and with `--recurrentgemma-python` (a Python that has `recurrentgemma`,
which pins numpy < 2.4: see `tests/fixtures/make_reference_fixtures.py`) RecurrentGemma's
JAX `RGLRU` layer with both of its scans, in extra processes of that Python, against
`RGLRUCell` timed there too (same weights, outputs checked).

Timing as `benchmarks/rnn.py`: each config runs in `--processes` fresh processes, one at a
time and interleaved; within one, shuffled rounds of an untimed call and a burst of timed
calls back to back. A row's ratio is its time over its cell's first row (the sequential
strategy, or the LSTM's default), per process, reported as median [min-max] over the
processes; an A/A row (the first cell's first function jitted a second time) shows the
noise.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import recurjax as rj
from recurjax import interop

sys.path.insert(0, str(Path(__file__).parent))
from rnn import (  # the main benchmark's
    _range,
    driver_arguments,
    environment,
    fwd_and_fb,
    run_workers,
    serve_worker,
    time_rounds,
)

EVERY = "every cell"
LINEAR = "linear cells"
JOBS = [
    {"name": "B=32 T=128 in=H=256", "size": (32, 128, 256), "cells": EVERY},
    {"name": "B=4 T=4096 in=H=64", "size": (4, 4096, 64), "cells": EVERY},
    {"name": "B=4 T=256 in=H=64", "size": (4, 256, 64), "cells": LINEAR},
    {"name": "B=32 T=256 in=H=64", "size": (32, 256, 64), "cells": LINEAR},
    {"name": "B=32 T=4096 in=H=64", "size": (32, 4096, 64), "cells": LINEAR},
]
QUICK = [{"name": "quick B=4 T=16 in=H=16", "size": (4, 16, 16), "cells": EVERY}]
ROUNDS, BURST = 5, 2


def linear_cells(F: int, H: int) -> dict[str, Any]:
    return {
        "MinGRUCell": rj.MinGRUCell(F, H),
        "LRUCell": rj.LRUCell(F, H),
        "RGLRUCell (4 heads)": rj.RGLRUCell(H, H, num_heads=4),
        "SelectiveSSMCell (N = 16)": rj.SelectiveSSMCell(F, state_size=16),
    }


def every_cell(F: int, H: int) -> dict[str, Any]:
    return {
        "LSTMCell (fused, the yardstick)": rj.LSTMCell(F, H),
        "PeepholeLSTMCell": rj.PeepholeLSTMCell(F, H),
        "ProjLSTMCell (P = H/2)": rj.ProjLSTMCell(F, H, proj_size=H // 2),
        "LayerNormLSTMCell": rj.LayerNormLSTMCell(F, H),
        "IndRNNCell": rj.IndRNNCell(F, H),
        "SLSTMCell (4 heads)": rj.SLSTMCell(F, H, num_heads=4),
        "MLSTMCell (4 heads)": rj.MLSTMCell(F, H, num_heads=4),
        **linear_cells(F, H),
    }


def strategies(cell: Any, grid: bool) -> tuple[str, ...]:
    if isinstance(cell, rj.LinearCell):
        parallel = () if grid else ("chunked", "associative")
        return ("sequential", "hoisted", *parallel, "auto")
    return ("auto",) if type(cell) is rj.LSTMCell else ("sequential",)


def jitted(cell: Any, strategy: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def ys(p: Any, xs: jax.Array) -> jax.Array:
        h0 = jax.tree.map(
            lambda a: jnp.broadcast_to(a, (xs.shape[1], *a.shape)), cell.initial_state(p)
        )
        return rj.scan(cell, p, h0, xs, strategy=strategy)[1]

    return fwd_and_fb(ys)


def _timed(f: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: jax.block_until_ready(f(*args))


def torch_proj(cell: Any, params: Any, xs: np.ndarray) -> dict[str, Callable[[], Any]]:
    """torch's `nn.LSTM(proj_size=P)` with the cell's weights (outputs checked)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    module = torch.nn.LSTM(cell.in_features, cell.hidden_size, proj_size=cell.proj_size)
    sd = interop.to_torch(cell, params)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
    x = torch.from_numpy(xs)
    ref = np.asarray(jitted(cell, "sequential")[0](params, jnp.asarray(xs)))
    with torch.no_grad():
        diff = float(np.max(np.abs(module(x)[0].numpy() - ref)))
    assert diff < 1e-4, f"torch differs by {diff:.1e}"

    def fwd() -> Any:
        with torch.no_grad():
            return module(x)[0]

    def fb() -> None:
        module.zero_grad(set_to_none=True)
        (module(x)[0] ** 2).sum().backward()

    return {"fwd": fwd, "fb": fb}


def recurrentgemma_rows(cell: Any, params: Any, xs: np.ndarray) -> dict[str, Any]:
    """RecurrentGemma's `RGLRU` with `cell`'s weights, batch-major, from a zero cache with
    `segment_pos` from 1 (no segment start, so both run the paper's recurrence; see
    `RGLRUCell`), one row per scan; outputs checked against the cell."""
    from recurrentgemma import common  # pyright: ignore[reportMissingImports]
    from recurrentgemma.jax.layers import RGLRU  # pyright: ignore[reportMissingImports]

    heads, d, _ = params["wa"].shape
    theirs = {
        "a_gate": {"w": params["wa"], "b": params["ba"].reshape(heads, d)},
        "input_gate": {"w": params["wx"], "b": params["bx"].reshape(heads, d)},
        "a_param": params["lam"],
    }
    x = jnp.asarray(np.swapaxes(xs, 0, 1))  # (B, T, H)
    B, T, H = x.shape
    pos = jnp.broadcast_to(jnp.arange(1, T + 1), (B, T))
    h0 = jnp.zeros((B, H), x.dtype)
    ref = np.swapaxes(np.asarray(jitted(cell, "sequential")[0](params, jnp.asarray(xs))), 0, 1)
    rows = {}
    for scan in ("LINEAR_NATIVE", "ASSOCIATIVE_NATIVE"):
        layer = RGLRU(width=H, num_heads=heads, scan_type=getattr(common.ScanType, scan))

        def ys(p: Any, x: jax.Array, layer: Any = layer) -> jax.Array:
            return layer.apply({"params": p}, x, pos, h0)[0]

        f, fb = fwd_and_fb(ys)
        diff = float(np.max(np.abs(np.asarray(f(theirs, x)) - ref)))
        assert diff < 1e-4, f"RecurrentGemma ({scan}) differs by {diff:.1e}"
        rows[f"RecurrentGemma RGLRU ({scan.lower()})"] = {
            "fwd": _timed(f, theirs, x),
            "fb": _timed(fb, theirs, x),
        }
    return rows


def build(job: dict[str, Any]) -> dict[str, dict[str, dict[str, Callable[[], Any]]]]:
    """`{cell: {row: {"fwd": fn, "fb": fn}}}` for one config, in this process."""
    B, T, H = job["size"]
    xs_np = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    xs = jnp.asarray(xs_np)
    grid = job["cells"] == LINEAR
    if job.get("recurrentgemma"):
        chosen = {"RGLRUCell (4 heads)": rj.RGLRUCell(H, H, num_heads=4)}
    else:
        chosen = linear_cells(H, H) if grid else every_cell(H, H)
    out: dict[str, dict[str, dict[str, Callable[[], Any]]]] = {}
    for name, cell in chosen.items():
        params = cell.init(jax.random.key(0))
        rows = out.setdefault(name, {})
        names = ("sequential", "auto") if job.get("recurrentgemma") else strategies(cell, grid)
        for strategy in names:
            f, fb = jitted(cell, strategy)
            rows[strategy] = {"fwd": _timed(f, params, xs), "fb": _timed(fb, params, xs)}
        if name == next(iter(chosen)):
            f, fb = jitted(cell, names[0])  # the A/A row: the first row jitted again
            rows[f"A/A ({names[0]}, jitted again)"] = {
                "fwd": _timed(f, params, xs),
                "fb": _timed(fb, params, xs),
            }
        if isinstance(cell, rj.ProjLSTMCell):
            rows["torch nn.LSTM(proj_size)"] = torch_proj(cell, params, xs_np)
        if job.get("recurrentgemma"):
            rows.update(recurrentgemma_rows(cell, params, xs_np))
    return out


def worker(job: dict[str, Any], seed: int) -> dict[str, Any]:
    """Per-round medians in ms of every row, fwd and f+b, in this process."""
    table = build(job)
    flat = {f"{c} | {r}": fns for c, rows in table.items() for r, fns in rows.items()}
    times = {
        what: time_rounds({k: v[what] for k, v in flat.items()}, ROUNDS, BURST, seed)
        for what in ("fwd", "fb")
    }
    return {k: {w: statistics.median(times[w][k]) for w in times} for k in flat}


def section(job: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """The config's table: times (medians over processes) and ratios to the cell's first
    row, its sequential one but for the LSTM's (per process, median [min-max])."""
    rows = [
        f"## {job['name']}" + (f" ({job['versions']})" if job.get("recurrentgemma") else ""),
        "",
        "| cell | strategy | fwd ms | f+b ms | / first row fwd | / first row f+b |",
        "|---|---|---|---|---|---|",
    ]
    firsts: dict[str, str] = {}
    for key in runs[0]:
        cell, row = key.split(" | ")
        base = firsts.setdefault(cell, key)
        fwd, fb = (statistics.median(r[key][w] for r in runs) for w in ("fwd", "fb"))
        ratios = [_range([r[key][w] / r[base][w] for r in runs]) for w in ("fwd", "fb")]
        rows.append(f"| {cell} | {row} | {fwd:.2f} | {fb:.2f} | {ratios[0]} | {ratios[1]} |")
    return rows


_VERSIONS = (
    "from importlib import metadata as m; "
    "print(', '.join(f'{p} {m.version(p)}' for p in ('recurrentgemma', 'jax', 'numpy')))"
)


def _key(job: dict[str, Any]) -> str:
    return job["name"] + (" rg" if job.get("recurrentgemma") else "")


def _source_tree_first(job: dict[str, Any]) -> dict[str, str]:
    """Another Python may not have recurjax installed: the source tree serves."""
    src = str(Path(__file__).resolve().parent.parent / "src")
    return {"PYTHONPATH": os.pathsep.join(x for x in (src, os.environ.get("PYTHONPATH")) if x)}


def drive(jobs: list[dict[str, Any]], processes: int, out: Path | None) -> None:
    env = environment()
    started = time.time()
    results = run_workers(
        __file__,
        jobs,
        processes,
        key=_key,
        python=lambda job: job.get("recurrentgemma") or sys.executable,
        env=_source_tree_first,
    )
    v = env["versions"]
    lines = [
        "# The newer cells: fwd and f+b by strategy",
        "",
        f"`python benchmarks/cells.py --processes {processes}` on {env['date']}, commit "
        f"{env['commit']}: {env['cpu']} ({env['machine']}), {env['cores']} cores, "
        f"{env['backend']}; torch threads {env['torch_threads']}; Python {env['python']}; "
        + ", ".join(f"{k} {val}" for k, val in v.items() if k in ("jax", "jaxlib", "torch"))
        + f"; XLA_FLAGS={env['xla_flags'] or '(unset)'}. {time.time() - started:.0f} s in all.",
        "",
        "Float32, time-major `(T, B, F)` (torch's and RecurrentGemma's rows in their own "
        "layouts). Times (ms) are medians over processes of each process's median; ratios "
        "are the row's time over its cell's first row (the sequential strategy; for the LSTM "
        "its default, fused), per process, as median [min-max] over the processes (below 1: "
        "faster than the first row). How they are made: "
        "the docstring of `benchmarks/cells.py`.",
        "",
    ]
    for job in jobs:
        lines += [*section(job, results[_key(job)]), ""]
    text = "\n".join(lines)
    print(text)
    if out is not None:
        out.write_text(text)
        print(f"wrote {out}")


def main() -> None:
    description = (__doc__ or "").split("\n\n")[0]
    ap = driver_arguments(description, Path(__file__).with_name("RESULTS_cells.md"))
    ap.add_argument("--recurrentgemma-python", default="", help="a Python with recurrentgemma")
    args = ap.parse_args()
    if serve_worker(args, worker):
        return
    jobs = QUICK if args.quick else [j for j in JOBS if args.only in j["name"]]
    if args.recurrentgemma_python:
        peers = [j for j in jobs if j["cells"] == EVERY]
        versions = subprocess.run(
            [args.recurrentgemma_python, "-c", _VERSIONS], capture_output=True, text=True
        ).stdout.strip()
        jobs += [
            {**j, "recurrentgemma": args.recurrentgemma_python, "versions": versions}
            for j in peers
        ]
    processes = 1 if args.quick else args.processes
    write = not (args.quick or args.only)
    drive(jobs, processes, Path(args.out) if write else None)


if __name__ == "__main__":
    main()
