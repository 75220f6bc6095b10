"""recurjax on a GPU in one command: the LSTM and GRU table of `rnn.py`, a stacked
bidirectional LSTM over ragged lengths, and the linear and chunkwise cells at B=4 T=4096.

    python benchmarks/gpu.py            # on a GPU machine: writes benchmarks/RESULTS_gpu.md
    python benchmarks/gpu.py --quick --dry-run --out /tmp/gpu.md   # anywhere (the tests)

One process, unattended, within `--budget` seconds (270 by default, so that the whole run
with its imports stays under 5 minutes). Needs jax, flax, equinox and torch (not haiku or
memax). The tables come in order of importance, and every row is written to the file as
soon as it is measured: a run that is cut off keeps what it measured, and one that reaches
the budget lists the rows it did not build.

- Checked first: every row's outputs and gradients of `sum(y * g)` (`g` a fixed random
  cotangent) w.r.t. its params and inputs are compared with recurjax's
  `strategy="sequential"` on the same inputs (`rnn.check`: within 1e-4 of each array's
  scale; past each length masked out in the ragged table), computed in full float32
  (`jax.default_matmul_precision("highest")`, TF32 off in torch), before the row is timed.
  A row that differs is written with the error and not timed, and the run exits non-zero.
- Timed as users run it (default matmul precision): one untimed call, then `--rounds` rounds
  of `--burst` calls back to back; a row's time is the median round's median (ms). A row's
  ratio is its time over the table's first row (recurjax's `auto` for the LSTM and GRU, the
  cell's sequential strategy for the linear and chunkwise cells), above 1 slower.
- Rows: recurjax's `auto`, `fused`, `sequential` and, for LSTMs, `cudnn` strategies; Flax
  linen's `nn.RNN` over its cells; Equinox's cell under `lax.scan` and `vmap`; torch's
  `nn.LSTM`/`nn.GRU` on the GPU (cuDNN) where torch sees one (batch-first; the ragged table
  packs the sequences). Weights are shared through `recurjax.interop`.

`--dry-run` runs anywhere: cuDNN's call is replaced by what it computes
(`jax.experimental.rnn.lstm_ref`, via `recurjax._scan.strategies.cudnn.on_any_backend`),
and torch runs where it is. With `--quick`, small sizes, one cell of each family and one
round (the LSTM, not the GRU, and one cell of each family): it checks every kind of row, but
not the speed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import cells as cells_bench
import rnn

import recurjax as rj
from recurjax import interop

OUT = Path(__file__).with_name("RESULTS_gpu.md")
PACKAGES = ("jax", "jaxlib", "flax", "equinox", "torch")

# (B, T, F, H): rnn.py's configs, the one most like training first.
RNN_SIZES = [(32, 128, 64, 256), (128, 64, 256, 512), (1, 1000, 32, 128)]
RAGGED_SIZE = (32, 128, 64, 256)  # B, T, F, H; 2 layers, both directions
CELLS_SIZE = (4, 4096)  # B, T; in = H = 64 for the linear cells, 256 for the matrix memories
QUICK_RNN = (4, 8, 4, 8)
QUICK_RAGGED = (3, 8, 4, 8)
QUICK_CELLS = (2, 16)


class Report:
    """The results file, written line by line: every line is flushed as soon as it is made."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w")

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Run:
    """One run's state: the budget, the failures, the rows left out."""

    def __init__(self, args: argparse.Namespace, report: Report) -> None:
        self.args, self.report = args, report
        self.deadline = time.perf_counter() + args.budget
        self.failed: list[str] = []
        self.skipped: list[str] = []
        self.base: dict[str, float] = {}

    def table(self, title: str, note: str, base: str) -> None:
        """Start a table whose ratios are over its row `base` (its first row)."""
        self.base = {}  # none until that row is measured
        for text in (f"## {title}", "", note, ""):
            self.report.line(text)
        self.report.line(
            f"| row | fwd ms | f+b ms | fwd / {base} | f+b / {base} | compile s | check |"
        )
        self.report.line("|---|---|---|---|---|---|---|")

    def row(
        self,
        name: str,
        build: Callable[[], rnn.Impl],
        refs: dict[str, rnn.Reference],
        mask: np.ndarray | None = None,
        first: bool = False,
    ) -> None:
        """Build, check, time and write one row (the table's base when `first`)."""
        if time.perf_counter() > self.deadline:
            self.skipped.append(name)
            return
        try:
            impl = build()
            with full_precision():
                diffs = rnn.check([impl], refs, mask)
            times = rnn.time_impls([impl], self.args.rounds, self.args.burst, seed=0)[impl.name]
        except Exception as e:  # a row that cannot run, differs, or fails timed: not timed
            self.failed.append(name)
            reason = " ".join(traceback.format_exception_only(e)[-1].split())[:300]
            self.report.line(f"| {name} | | | | | | **failed**: {reason} |")
            return
        if first:
            self.base = times
        ratio = {w: times[w] / self.base[w] if self.base else float("nan") for w in times}
        diff = diffs.get(impl.name)
        checked = "no reference" if diff is None else f"{max(diff):.1e}"
        self.report.line(
            f"| {name} | {times['fwd']:.3g} | {times['fb']:.3g} | {ratio['fwd']:.2f} | "
            f"{ratio['fb']:.2f} | {sum(impl.compile_s):.1f} | {checked} |"
        )

    def strategy_rows(
        self,
        label: Callable[[str], str],
        strategies: Any,
        ys_of: Callable[[str], Callable[[Any, jax.Array], Any]],
        params: Any,
        xs: jax.Array,
        refs: dict[str, rnn.Reference],
        mask: np.ndarray | None = None,
    ) -> None:
        """One row per recurjax strategy, `ys_of(strategy)` the function it times and
        `label(strategy)` its name; the first is the table's base. Checked against the one
        reference in `refs`."""
        (reference,) = refs
        for n, s in enumerate(strategies):
            self.row(
                label(s),
                lambda s=s: rnn.jax_impl(
                    label(s), ys_of(s), params, xs, reference=reference, fb_grads=False
                ),
                refs,
                mask,
                first=n == 0,
            )


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Float32 matmuls in full precision (no TF32) in JAX, cuDNN and torch: for the checks."""
    try:
        import torch

        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    except ImportError:
        torch, saved = None, None
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        if torch is not None and saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def torch_device() -> str | None:
    """`"cuda"` where torch is installed and sees a GPU, else `None`."""
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else None


def rnn_table(run: Run, kind: str, size: tuple[int, int, int, int], device: str | None) -> None:
    """One LSTM or GRU config: recurjax's strategies, Flax, Equinox, torch."""
    import torch

    B, T, F, H = size
    torch.manual_seed(0)
    Module = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    module = Module(F, H, batch_first=True)
    cell, params = interop.from_torch(module)
    xs_np = np.random.default_rng(0).normal(size=(B, T, F)).astype(np.float32)
    xs = jnp.asarray(xs_np)
    refs = {"recurjax": rnn.reference(rnn._recurjax(cell, "sequential"), params, xs)}
    run.table(
        f"{kind.upper()} B={B} T={T} F={F} H={H}",
        "Batch-major, float32. Ratios over recurjax `auto`.",
        "auto",
    )
    strategies = ["auto", "fused", "sequential"] + (["cudnn"] if kind == "lstm" else [])
    run.strategy_rows(
        _recurjax_label, strategies, lambda s: rnn._recurjax(cell, s), params, xs, refs
    )
    for flax_cell, build in rnn.flax_builders(kind, cell, params, xs).items():
        run.row(f"flax linen nn.RNN({flax_cell})", build, refs)
    run.row("equinox", rnn.equinox_builder(kind, cell, params, xs), refs)
    if device is not None:
        run.row(
            f"torch.nn.{kind.upper()} ({device})",
            lambda: rnn.torch_impl("torch", module, xs_np, device=device),
            refs,
        )
    run.report.line()


def _recurjax_label(strategy: str) -> str:
    return f"recurjax strategy={strategy!r}"


def ragged_table(run: Run, size: tuple[int, int, int, int], device: str | None) -> None:
    """A 2-layer bidirectional LSTM over ragged lengths: recurjax's strategies and torch
    with packed sequences."""
    import torch

    B, T, F, H = size
    torch.manual_seed(0)
    module = torch.nn.LSTM(F, H, num_layers=2, bidirectional=True, batch_first=True)
    cell, params = interop.from_torch(module)
    rng = np.random.default_rng(0)
    xs_np = rng.normal(size=(B, T, F)).astype(np.float32)
    lengths_np = rng.integers(T // 4, T + 1, size=B).astype(np.int32)
    lengths_np[0] = T
    mask = (np.arange(T)[None, :] < lengths_np[:, None])[..., None]
    xs_np = xs_np * mask  # torch reads its padding; recurjax never does
    xs, lengths = jnp.asarray(xs_np), jnp.asarray(lengths_np)

    def ys_fn(strategy: str) -> Callable[[Any, jax.Array], Any]:
        def ys(p: Any, xs: jax.Array) -> Any:
            h0 = jax.tree.map(
                lambda a: jnp.broadcast_to(a, (xs.shape[0], *a.shape)), cell.initial_state(p)
            )
            return rj.scan(cell, p, h0, xs, time_axis=1, lengths=lengths, strategy=strategy)[1]

        return ys

    refs = {"recurjax": rnn.reference(ys_fn("sequential"), params, xs)}
    run.table(
        f"Stacked bidirectional LSTM, 2 layers, B={B} T={T} F={F} H={H}, ragged lengths",
        f"Lengths drawn in [{T // 4}, {T}] (one of {T}); outputs past each length compared as "
        "zero. Ratios over recurjax `auto`.",
        "auto",
    )
    strategies = ["auto", "fused", "sequential", "cudnn"]
    run.strategy_rows(_recurjax_label, strategies, ys_fn, params, xs, refs, mask)
    if device is not None:
        lengths_cpu = torch.from_numpy(lengths_np).long()

        def packed(module: Any, x: Any) -> Any:
            pack = torch.nn.utils.rnn.pack_padded_sequence(
                x, lengths_cpu, batch_first=True, enforce_sorted=False
            )
            out = module(pack)[0]
            return torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)[0]

        run.row(
            f"torch.nn.LSTM packed ({device})",
            lambda: rnn.torch_impl("torch", module, xs_np, run=packed, device=device),
            refs,
            mask,
        )
    run.report.line()


def cells_table(run: Run, quick: bool) -> None:
    """The linear cells (in = H = 64) and matrix memories (in = H = 256) at B=4 T=4096:
    each strategy that runs them, over the sequential one."""
    B, T = QUICK_CELLS if quick else CELLS_SIZE
    families = [(cells_bench.linear_cells(8 if quick else 64, 8 if quick else 64), False)]
    families.append((cells_bench.matrix_cells(8 if quick else 256, 8 if quick else 256), True))
    for chosen, matrix in families:
        items = [(k, c) for k, c in chosen.items() if "1 head" not in k]
        if quick:
            items = items[:1]
        H = 8 if quick else (256 if matrix else 64)
        xs = jnp.asarray(np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32))
        what = "matrix memories" if matrix else "linear cells"
        run.table(
            f"{what.capitalize()}, B={B} T={T} in=H={H}",
            "Time-major, float32. Ratios over each cell's sequential strategy.",
            "sequential",
        )
        for name, cell in items:
            params = cell.init(jax.random.key(0))
            refs = {name: rnn.reference(rnn._recurjax(cell, "sequential", 0), params, xs)}
            run.strategy_rows(
                lambda s, name=name: f"{name}: {s}",
                cells_bench.strategies(cell, grid=quick),  # quick: not chunked, associative
                lambda s, cell=cell: rnn._recurjax(cell, s, time_axis=0),
                params,
                xs,
                refs,
            )
        run.report.line()


def header(report: Report, args: argparse.Namespace) -> None:
    device = jax.devices()[0]
    versions = []
    for pkg in PACKAGES:
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{pkg} not installed")
    report.line(f"# GPU benchmark results: {device.device_kind}")
    report.line()
    command = "python benchmarks/gpu.py" + " --quick" * args.quick
    command += " --dry-run" * args.dry_run
    report.line(
        f"`{command}` on {datetime.date.today().isoformat()}: {device.device_kind} "
        f"({jax.default_backend()}, {len(jax.devices())} device(s)); "
        + ", ".join(versions)
        + f"; {args.rounds} rounds of {args.burst} calls, budget {args.budget:.0f} s."
        + (
            " **Dry run**: cuDNN's call replaced by its reference; times are not a GPU's."
            if args.dry_run
            else ""
        )
    )
    report.line()
    report.line(
        "How rows are made, checked and timed: the docstring of `benchmarks/gpu.py`. A row's "
        "`check` is its largest difference from recurjax's sequential strategy over the "
        "array's scale (outputs and gradients)."
    )
    report.line()


@contextlib.contextmanager
def cudnn_for_dry_run(dry_run: bool) -> Iterator[None]:
    """In a dry run, `strategy="cudnn"` with cuDNN's call replaced by its reference."""
    if not dry_run:
        yield
        return
    from recurjax._scan.strategies import REGISTRY, cudnn

    saved = REGISTRY["cudnn"]
    REGISTRY["cudnn"] = cudnn.on_any_backend()
    try:
        yield
    finally:
        REGISTRY["cudnn"] = saved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one cell each, 1 round")
    ap.add_argument(
        "--dry-run", action="store_true", help="any backend: cuDNN's call by its reference"
    )
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--budget", type=float, default=270.0, help="seconds for all rows")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--burst", type=int)
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.burst = args.burst or (1 if args.quick else 3)
    if jax.default_backend() != "gpu" and not args.dry_run:
        print("benchmarks/gpu.py: no GPU here (add --dry-run to check the code path)")
        return 2
    device = torch_device() or ("cpu" if args.dry_run else None)
    report = Report(Path(args.out))
    try:
        return measure(args, report, device)
    finally:
        report.close()


def measure(args: argparse.Namespace, report: Report, device: str | None) -> int:
    """Every table into `report`; 1 where a row failed its check, else 0."""
    header(report, args)
    run = Run(args, report)
    with cudnn_for_dry_run(args.dry_run):
        for kind in ("lstm",) if args.quick else ("lstm", "gru"):
            rnn_table(run, kind, QUICK_RNN if args.quick else RNN_SIZES[0], device)
        ragged_table(run, QUICK_RAGGED if args.quick else RAGGED_SIZE, device)
        cells_table(run, args.quick)
        for size in [] if args.quick else RNN_SIZES[1:]:
            for kind in ("lstm", "gru"):
                rnn_table(run, kind, size, device)
    if run.skipped:
        report.line(f"Not built within the budget: {', '.join(run.skipped)}.")
    if run.failed:
        report.line(f"**Failed**: {', '.join(run.failed)}.")
    report.line(f"Done in {time.perf_counter() - run.deadline + args.budget:.0f} s.")
    return 1 if run.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
