"""The newer cells' speed: fwd and f+b of every strategy that runs each cell, side by side.

    pip install -e ".[bench]"
    python benchmarks/cells.py            # writes benchmarks/RESULTS_cells.md
    python benchmarks/cells.py --quick    # small sizes, no file

For each cell at B=32, T=128 (in = H = 256, 4 heads where a cell has heads) and B=4,
T=4096 (in = H = 64), `rj.scan` is timed on the forward pass and on the gradient of
`sum(y**2)` w.r.t. the params, jitted, for the sequential strategy and, for the cells linear
in their state, the associative and chunked ones; the LSTM's default (fused) row is the
yardstick, and torch's `nn.LSTM(proj_size=...)` is the reference of `ProjLSTMCell` (same
weights through `recurjax.interop`, outputs checked). Timing as `benchmarks/rnn.py`
(shuffled rounds of back-to-back bursts, medians, in ms), in one process: a first table,
not yet the three-process ranges of `RESULTS.md`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import recurjax as rj
from recurjax import interop

sys.path.insert(0, str(Path(__file__).parent))
from rnn import fwd_and_fb, time_rounds  # the main benchmark's


def cells(F: int, H: int) -> dict[str, Any]:
    return {
        "LSTMCell (fused, the yardstick)": rj.LSTMCell(F, H),
        "PeepholeLSTMCell": rj.PeepholeLSTMCell(F, H),
        "ProjLSTMCell (P = H/2)": rj.ProjLSTMCell(F, H, proj_size=H // 2),
        "LayerNormLSTMCell": rj.LayerNormLSTMCell(F, H),
        "IndRNNCell": rj.IndRNNCell(F, H),
        "SLSTMCell (4 heads)": rj.SLSTMCell(F, H, num_heads=4),
        "MLSTMCell (4 heads)": rj.MLSTMCell(F, H, num_heads=4),
        "RGLRUCell (4 heads)": rj.RGLRUCell(H, H, num_heads=4),
        "SelectiveSSMCell (N = 16)": rj.SelectiveSSMCell(F, state_size=16),
    }


def strategies(cell: Any) -> tuple[str, ...]:
    if isinstance(cell, rj.LinearCell):
        return ("sequential", "associative", "chunked")
    return ("auto",) if type(cell) is rj.LSTMCell else ("sequential",)


def jitted(cell: Any, strategy: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def ys(p: Any, xs: jax.Array) -> jax.Array:
        h0 = jax.tree.map(
            lambda a: jnp.broadcast_to(a, (xs.shape[1], *a.shape)), cell.initial_state(p)
        )
        return rj.scan(cell, p, h0, xs, strategy=strategy)[1]

    return fwd_and_fb(ys)


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


def run(B: int, T: int, H: int, rounds: int) -> list[str]:
    xs_np = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    xs = jnp.asarray(xs_np)
    fns: dict[str, dict[str, Callable[[], Any]]] = {}
    for name, cell in cells(H, H).items():
        params = cell.init(jax.random.key(0))
        for strategy in strategies(cell):
            f, fb = jitted(cell, strategy)
            fns[f"{name} | {strategy}"] = {
                "fwd": lambda f=f, p=params: jax.block_until_ready(f(p, xs)),
                "fb": lambda fb=fb, p=params: jax.block_until_ready(fb(p, xs)),
            }
        if isinstance(cell, rj.ProjLSTMCell):
            fns[f"{name} | torch nn.LSTM(proj_size)"] = torch_proj(cell, params, xs_np)
    times = {
        what: time_rounds({k: v[what] for k, v in fns.items()}, rounds, 2, 0)
        for what in ("fwd", "fb")
    }
    rows = [
        f"## B={B} T={T} in=H={H}",
        "",
        "| cell | strategy | fwd ms | f+b ms |",
        "|---|---|---|---|",
    ]
    for key in fns:
        name, strategy = key.split(" | ")
        fwd, fb = (statistics.median(times[w][key]) for w in ("fwd", "fb"))
        rows.append(f"| {name} | {strategy} | {fwd:.2f} | {fb:.2f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    configs = [(4, 16, 16)] if args.quick else [(32, 128, 256), (4, 4096, 64)]
    lines = [
        "# The newer cells: fwd and f+b by strategy",
        "",
        f"`python benchmarks/cells.py` on {os.cpu_count()} cores, {jax.default_backend()}; jax "
        f"{jax.__version__}. Medians in ms of shuffled rounds of back-to-back bursts, one "
        "process (see the docstring).",
        "",
    ]
    for B, T, H in configs:
        rows = run(B, T, H, rounds=2 if args.quick else 5)
        print("\n".join(rows), flush=True)
        lines += [*rows, ""]
    if not args.quick:
        Path(__file__).with_name("RESULTS_cells.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
