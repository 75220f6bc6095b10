"""Print the largest differences between recurjax and each reference library, per cell.

    python tests/interop_report.py

Runs the parity checks of tests/interop_util.py (the ones the tests assert on) for seeds 0-2,
batched and unbatched, in float32 and float64, and prints one Markdown table row per library
and cell: the worst `max_diff` over all runs for the outputs `y`, the input gradient `dx` and
the gradient with respect to the library's own parameters `dparams`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interop_util import PARITY, TORCH_KINDS, parity_torch


def worst(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: max(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    print("| library | cell | f32 y | f32 dx | f32 dparams | f64 y | f64 dx | f64 dparams |")
    print("|---|---|---|---|---|---|---|---|")
    cases = [(ref, kind, fn) for ref, (fn, kinds) in PARITY.items() for kind in kinds]
    cases += [
        ("torch", f"{k}Cell", lambda k, **kw: parity_torch(k[:-4], cell=True, **kw))
        for k in TORCH_KINDS
    ]
    for ref, kind, fn in cases:
        row = []
        for dtype in (np.float32, np.float64):
            with jax.enable_x64(dtype == np.float64):
                runs = [
                    fn(kind, seed=seed, batched=batched, dtype=dtype)
                    for seed in range(3)
                    for batched in (True, False)
                ]
            row += [f"{v:.1e}" for v in worst(runs).values()]
        print(f"| {ref} | {kind} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
