"""The char-LM example once per recurrent layer: held-out bits/char, params and chars/s.

    pip install -e ".[examples]"
    python benchmarks/char_lm_cells.py                  # every cell, writes RESULTS_char_lm.md
    python benchmarks/char_lm_cells.py --cells lstm,s6  # some of them

Each cell runs `examples/01_char_lm.py --cell NAME` with its defaults (2 epochs, hidden 256,
embed 32, 800 kB of the Python standard library's text), one process after another, and
the table takes the final metrics from each run's `log.json`. chars/s includes evaluation
and, for the first epoch, compilation: one default run each, as the README reports it;
training chars/s is the second epoch's training alone, compiled and without evaluation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "01_char_lm.py"


def load_example() -> Any:
    """`examples/01_char_lm.py` as a module (its `CELLS` and `build_model`)."""
    sys.path.insert(0, str(EXAMPLE.parent))
    spec = importlib.util.spec_from_file_location("char_lm", EXAMPLE)
    assert spec is not None and spec.loader is not None
    lm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lm)
    return lm


def param_count(lm: Any, kind: str) -> int:
    """Parameters of the example's default model with `--cell kind`."""
    model = lm.build_model(jax.random.key(0), 256, 32, kind)
    return sum(int(a.size) for a in jax.tree.leaves(model.params))


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--cells", default="")
    ap.add_argument("--out", default=str(HERE / "RESULTS_char_lm.md"))
    args = ap.parse_args()
    lm = load_example()
    cells = args.cells.split(",") if args.cells else list(lm.CELLS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in cells:
            out = Path(tmp) / kind
            cmd = [sys.executable, str(EXAMPLE), "--cell", kind, "--out", str(out)]
            subprocess.run(cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
            final = json.loads((out / "log.json").read_text())["final"]
            rows.append(
                f"| `--cell {kind}` | {final['val_bpc']:.3f} | {final['train_bpc']:.3f} | "
                f"{param_count(lm, kind):,} | {final['chars_per_second']:,.0f} | "
                f"{final['steady_chars_per_second']:,.0f} | {final['train_seconds']:.0f} |"
            )
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Char-LM: one default run per recurrent layer",
            "",
            f"`python benchmarks/char_lm_cells.py` on {os.cpu_count()} cores, "
            f"{jax.default_backend()}; jax {jax.__version__}. Each row is one run of "
            "`examples/01_char_lm.py --cell NAME` with its defaults (2 epochs). chars/s "
            "includes evaluation and compilation; training chars/s is the second epoch's "
            "training alone (compiled, no evaluation), the steady state.",
            "",
            "| layer | held-out bits/char | train bits/char | params | chars/s | training "
            "chars/s | seconds |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    if not args.cells:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
