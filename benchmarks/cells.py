"""The newer cells' speed: fwd and f+b of every strategy that runs each cell, side by side,
and the evidence for `auto`'s rule for the cells linear in their state.

    pip install -e ".[bench]"
    python benchmarks/cells.py            # 7 or 3 processes per config, writes RESULTS_cells.md
    python benchmarks/cells.py --quick    # small sizes, one process, no file
    python benchmarks/cells.py --recurrentgemma-python /tmp/rg/bin/python
    python benchmarks/cells.py --matrix --mlstm-kernels /tmp/mlk   # writes RESULTS_matrix.md

Configs: every cell at B=32, T=128 (in = H = 256, 4 heads where a cell has heads) and at
B=4, T=4096 (in = H = 64; not LayerNormLSTMCell, whose gradients overflow there); then the
cells linear in their state alone at B=4 T=256, B=32 T=256 and B=32 T=4096 (H = 64). With
`--matrix` (a run and a file of their own, RESULTS_matrix.md): the matrix memories (mLSTM,
Mamba-2 with N = 64, GLA with K = H/2, retention, DeltaNet and Gated DeltaNet; 4 heads) at
B=4 T=4096, B=32 T=128 and B=32 T=16 (in = H = 256), where the chunkwise strategy is
compared with the sequential one and, for the memories that only add (no normaliser, no
delta rule), with a bare `lax.scan` of the recurrence whose steps are projected at once
outside the loop (the ratios' base there); Gated DeltaNet also with one head of 64 beside
memax's Gated DeltaNet layer of that size (`memax_gdn_row`: timed, not checked, as it is
another function); then mLSTM's and Gated DeltaNet's chunkwise strategy alone at B=4 H=256
for T from 1024 to 16384, their ratios per step (flat in T when near 1). The linear
cells' jobs (all five configs) are the evidence that `auto`'s rule for them
(`_scan/policy.py`, `hoisted_picks`) rests on, the matrix memories' for `chunkwise_picks`;
the other cells of the first two configs run as jobs of their own.
`rj.scan` is timed on the forward pass and on the gradient of `sum(y**2)` w.r.t. the
params, jitted, for the sequential strategy and, for the linear cells, the hoisted, chunked
and associative ones (the last two not in the three configs of the rule) and `auto`, for
the matrix memories the chunkwise one and `auto`; the LSTM's default (fused) row is a
yardstick. References that run here: torch's `nn.LSTM(proj_size=...)` for `ProjLSTMCell`
(same weights through `recurjax.interop`), and with `--recurrentgemma-python` (a Python
that has `recurrentgemma`, which pins numpy < 2.4: see
`tests/fixtures/make_reference_fixtures.py`) RecurrentGemma's JAX `RGLRU` layer with both
of its scans, in extra processes of that Python, against `RGLRUCell` timed there too (same
weights); and with `--mlstm-kernels` (a folder put on `sys.path` in the workers, holding
`mlstm_kernels` 2.0.6 and `einops`, e.g. `pip install --no-deps --target /tmp/mlk mlstm-
kernels==2.0.6 einops`) a row in the matrix memories' jobs, in the same processes and jax:
mlstm_kernels' JAX native chunkwise mLSTM (`jax/chunkwise/native/fw.py`, their chunk 64, or
T where T < 64) between `MLSTMCell`'s own projections and read-out, so that it runs the
same model as the cell's rows (`mlstm_kernels_row`).

Checks, processes and ranges as `benchmarks/rnn.py` (its docstring says why): before
anything is timed (in the first process of each job), every row's outputs and gradients of
`sum(y * g)` w.r.t. params and inputs are checked against its cell's sequential strategy
(`rnn.check`; RecurrentGemma's through the weight mapping, torch's in torch's layout), and
a mismatch stops the run. Each config runs in fresh processes, one at a time and
interleaved: the linear cells' jobs in `--policy-processes` (7), the others in
`--processes` (3). Within one, the rows are built in a random order, then shuffled rounds
of an untimed call and a burst of timed calls back to back (orders from `--order-seed`). A
row's ratio is its time over its cell's first row (the sequential strategy, or the LSTM's
default), per process, reported as median [min-max] over the processes. Each job's A/A row
(its first cell's first function built a second time) shows the noise; in a linear cells'
job its range must contain 1, or the job runs again once, and the report marks it if the
rerun's does not either.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
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
from recurjax._contracts import is_matrix_memory

sys.path.insert(0, str(Path(__file__).parent))
from rnn import (  # the main benchmark's
    Impl,
    Reference,
    _processes,
    _range,
    _recurjax,
    build_shuffled,
    check,
    command,
    driver_arguments,
    environment,
    jax_impl,
    method_lines,
    reference,
    resolve,
    run_jobs,
    serve_worker,
    time_impls,
    torch_impl,
)

EVERY, LINEAR, OTHER, MATRIX = "every cell", "linear cells", "other cells", "matrix memories"
LENGTHS = "matrix memories: mLSTM and Gated DeltaNet chunkwise by length"
# The lengths of the `LENGTHS` job, each a row of its own (the first the ratios' base).
SWEEP = (1024, 2048, 4096, 8192, 16384)


def _job(
    B: int, T: int, H: int, cells: str, grid: bool = False, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One config's job. `grid`: one of the configs of `auto`'s rule alone (no chunked or
    associative rows); `skip`: cells left out. The linear cells' jobs are `"policy"`
    (`--policy-processes`, the A/A rule)."""
    name = f"B={B} T={T} in=H={H}" + ("" if grid else f", {cells}")
    return {
        "name": name,
        "size": (B, T, H),
        "cells": cells,
        "grid": grid,
        "skip": skip,
        "policy": cells == LINEAR,
    }


# LayerNormLSTMCell's gradients overflow float32 at B=4 T=4096 (under its one strategy,
# the sequential): backwards in time they grow about 1.02x a step, to 1e21 at T=2048
# already. Its check cannot pass there (the reference is NaN), and its f+b would compute
# NaN, so it is left out of that config.
OVERFLOWS_AT_4096 = ("LayerNormLSTMCell",)


JOBS = [
    _job(32, 128, 256, LINEAR),
    _job(32, 128, 256, OTHER),
    _job(4, 4096, 64, LINEAR),
    _job(4, 4096, 64, OTHER, skip=OVERFLOWS_AT_4096),
    _job(4, 256, 64, LINEAR, grid=True),
    _job(32, 256, 64, LINEAR, grid=True),
    _job(32, 4096, 64, LINEAR, grid=True),
]
# `--matrix`: the matrix memories' jobs, a file of their own (RESULTS_matrix.md)
MATRIX_JOBS = [
    _job(4, 4096, 256, MATRIX),  # the chunkwise strategy's config (4 heads of d = 64)
    _job(32, 128, 256, MATRIX),
    _job(32, 16, 256, MATRIX),  # auto's threshold, policy.CHUNKWISE_MIN_STEPS
    # mLSTM's chunkwise f+b per step from T = 1024 to 16384 (B=4 H=256, 4 heads): flat in T?
    {**_job(4, 1024, 256, LENGTHS), "name": f"B=4 in=H=256, {LENGTHS}", "sweep": SWEEP},
]
QUICK = [
    {**_job(4, 16, 16, EVERY), "name": "quick B=4 T=16 in=H=16", "policy": True},
    {**_job(4, 32, 16, MATRIX), "name": "quick B=4 T=32 in=H=16, matrix memories"},
    {**_job(4, 16, 16, LENGTHS), "name": "quick B=4 in=H=16, by length", "sweep": (16, 32)},
]
ROUNDS, BURST = 5, 2


def linear_cells(F: int, H: int) -> dict[str, Any]:
    return {
        "MinGRUCell": rj.MinGRUCell(F, H),
        "LRUCell": rj.LRUCell(F, H),
        "RGLRUCell (4 heads)": rj.RGLRUCell(H, H, num_heads=4),
        "SelectiveSSMCell (N = 16)": rj.SelectiveSSMCell(F, state_size=16),
    }


def other_cells(F: int, H: int) -> dict[str, Any]:
    return {
        "LSTMCell (fused, the yardstick)": rj.LSTMCell(F, H),
        "PeepholeLSTMCell": rj.PeepholeLSTMCell(F, H),
        "ProjLSTMCell (P = H/2)": rj.ProjLSTMCell(F, H, proj_size=H // 2),
        "LayerNormLSTMCell": rj.LayerNormLSTMCell(F, H),
        "IndRNNCell": rj.IndRNNCell(F, H),
        "SLSTMCell (4 heads)": rj.SLSTMCell(F, H, num_heads=4),
        "MLSTMCell (4 heads)": rj.MLSTMCell(F, H, num_heads=4),
    }


def matrix_cells(F: int, H: int) -> dict[str, Any]:
    return {
        "MLSTMCell (4 heads)": rj.MLSTMCell(F, H, num_heads=4),
        "Mamba2Cell (4 heads, N = 64)": rj.Mamba2Cell(F, H, num_heads=4, state_size=64),
        "GLACell (4 heads, K = H/2)": rj.GLACell(F, H, num_heads=4, key_size=H // 2),
        "RetentionCell (4 heads)": rj.RetentionCell(F, H, num_heads=4),
        "DeltaNetCell (4 heads)": rj.DeltaNetCell(F, H, num_heads=4),
        "GatedDeltaNetCell (4 heads)": rj.GatedDeltaNetCell(F, H, num_heads=4),
        # memax's Gated DeltaNet layer's size: one head of 64 (its row: `memax_gdn_row`)
        "GatedDeltaNetCell (1 head, d = 64)": rj.GatedDeltaNetCell(F, 64, key_size=64),
    }


def bare_scan(cell: Any) -> Callable[[Any, jax.Array], Any]:
    """A plain matrix memory as a user would write it without recurjax's strategies: every
    step's `q, k, v` and decay computed at once (the cell's `memory_steps`), then a bare
    `lax.scan` of `S = a S + v k^T`, `read = S q`, then the read-out: the yardstick of the
    chunkwise strategy's speed (not the sequential strategy, which projects step by step)."""

    def ys(p: Any, xs: jax.Array) -> Any:
        steps = cell.memory_steps(p, xs)
        S0 = jnp.zeros((*steps.v.shape[1:], steps.k.shape[-1]), xs.dtype)

        def step(S: jax.Array, inp: Any) -> tuple[jax.Array, jax.Array]:
            q, k, v, log_a = inp
            a = (
                jnp.exp(log_a)[..., None, :]
                if log_a.ndim == q.ndim
                else jnp.exp(log_a)[..., None, None]
            )
            S = a * S + v[..., :, None] * k[..., None, :]
            return S, jnp.einsum("...vk,...k->...v", S, q)

        _, read = jax.lax.scan(step, S0, (steps.q, steps.k, steps.v, steps.log_decay))
        return cell.memory_readout(p, read, steps.aux)

    return ys


def strategies(cell: Any, grid: bool) -> tuple[str, ...]:
    if is_matrix_memory(cell):
        return ("sequential", "chunkwise", "auto")
    if isinstance(cell, rj.LinearCell):
        parallel = () if grid else ("chunked", "associative")
        return ("sequential", "hoisted", *parallel, "auto")
    return ("auto",) if type(cell) is rj.LSTMCell else ("sequential",)


def torch_proj(name: str, cell: Any, params: Any, xs: np.ndarray) -> Impl:
    """torch's `nn.LSTM(proj_size=P)` with the cell's weights, time-major as the cell."""
    import torch

    module = torch.nn.LSTM(cell.in_features, cell.hidden_size, proj_size=cell.proj_size)
    sd = interop.to_torch(cell, params)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
    return torch_impl(f"{name} | torch nn.LSTM(proj_size)", module, xs, reference=name)


def recurrentgemma_rows(
    name: str, cell: Any, params: Any, xs: jax.Array
) -> list[Callable[[], Impl]]:
    """RecurrentGemma's `RGLRU` with `cell`'s weights, batch-major, from a zero cache with
    `segment_pos` from 1 (no segment start, so both run the paper's recurrence; see
    `RGLRUCell`), one row per scan (builders)."""
    from recurrentgemma import common  # pyright: ignore[reportMissingImports]
    from recurrentgemma.jax.layers import RGLRU  # pyright: ignore[reportMissingImports]

    heads, d, _ = params["wa"].shape
    T, B, H = xs.shape
    pos = jnp.broadcast_to(jnp.arange(1, T + 1), (B, T))
    h0 = jnp.zeros((B, H), xs.dtype)

    def theirs(p: Any) -> Any:
        return {
            "a_gate": {"w": p["wa"], "b": p["ba"].reshape(heads, d)},
            "input_gate": {"w": p["wx"], "b": p["bx"].reshape(heads, d)},
            "a_param": p["lam"],
        }

    def row(scan: str) -> Callable[[], Impl]:
        def make() -> Impl:
            layer = RGLRU(width=H, num_heads=heads, scan_type=getattr(common.ScanType, scan))

            def ys(p: Any, x: jax.Array) -> jax.Array:
                return layer.apply({"params": p}, x, pos, h0)[0]

            label = f"{name} | RecurrentGemma RGLRU ({scan.lower()})"
            return jax_impl(label, ys, params, xs, reference=name, convert=theirs, swap=True)

        return make

    return [row(scan) for scan in ("LINEAR_NATIVE", "ASSOCIATIVE_NATIVE")]


MLSTM_KERNELS_FW = ("mlstm_kernels", "jax", "chunkwise", "native", "fw.py")
MLSTM_KERNELS_CHUNK = 64  # their default and our chunkwise strategy's


def _mlstm_kernels_chunkwise(path: str) -> tuple[Callable[..., jax.Array], str]:
    """mlstm_kernels' JAX native chunkwise mLSTM (`mlstm_chunkwise` of the file
    `MLSTM_KERNELS_FW` under `path`) and the package's version, `path` first on `sys.path`
    (for `einops`). The file is loaded on its own: the package's `jax.chunkwise` imports its
    Triton kernels (`jax_triton`, `triton`) on the way to it, which this row does not use."""
    if path not in sys.path:
        sys.path.insert(0, path)
    spec = importlib.util.spec_from_file_location(
        "_mlstm_kernels_native_fw", Path(path).joinpath(*MLSTM_KERNELS_FW)
    )
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.mlstm_chunkwise, importlib.metadata.version("mlstm-kernels")


def mlstm_kernels_row(
    name: str, cell: rj.MLSTMCell, params: Any, xs: jax.Array, path: str
) -> Impl:
    """mlstm_kernels' JAX native chunkwise mLSTM between `cell`'s own projections and
    read-out, on `cell`'s params and time-major `xs` as its rows. `cell.memory_steps` gives
    `q, k, v` (k scaled by `d**-0.5`, so their `qk_scale=1`), `i~` and the output gate's
    pre-activation; run with `exp_forget` its `log_decay` is the forget gate's
    pre-activation `f~` itself, to which their kernel applies `log_sigmoid` (as the cell).
    Their layout is batch-major per head, `(B, heads, T, d)` and `(B, heads, T)`; `eps=0`
    (their denominator is the cell's, `max(|n.q|, exp(-m))`; their stabiliser starts at
    `m = 0`, the cell's at the first `i~`, which changes only the rounding). Their chunk is
    `MLSTM_KERNELS_CHUNK`, or `T` below it (T must be a multiple of it)."""
    chunkwise, version = _mlstm_kernels_chunkwise(path)
    assert not cell.exp_forget, "the row feeds f~ as the cell's log_decay under exp_forget"
    raw = dataclasses.replace(cell, exp_forget=True)
    chunk = min(MLSTM_KERNELS_CHUNK, xs.shape[0])

    def ys(p: Any, xs: jax.Array) -> jax.Array:
        steps = raw.memory_steps(p, xs)
        q, k, v = (a.transpose(1, 2, 0, 3) for a in (steps.q, steps.k, steps.v))
        assert steps.log_input is not None
        i, f = (a.transpose(1, 2, 0) for a in (steps.log_input, steps.log_decay))
        read = chunkwise(q, k, v, i, f, qk_scale=1.0, chunk_size=chunk, eps=0.0)
        return cell.memory_readout(p, read.transpose(2, 0, 1, 3), steps.aux)

    label = f"{name} | mlstm_kernels {version} JAX chunkwise (native, chunk {chunk})"
    return jax_impl(label, ys, params, xs, reference=name)


def memax_gdn_row(name: str, cell: rj.GatedDeltaNetCell, xs: jax.Array) -> Impl:
    """memax's Gated DeltaNet layer (`memax.equinox.semigroups.gdn.GDN`, its associative
    scan over `(M, X)` pairs of `d x d` matrices, one head) with `recurrent_size` the cell's
    `d_k = d_v` and `hidden_size` the input's, vmapped over the batch: the same sizes, not
    the same function. Its step is `X' = M X + beta v k^T` with `M = alpha (I - beta k
    k^T)`, which erases along the value axis where the delta rule erases along the key
    axis (`S (I - beta k k^T)`), with SiLU on `q, k`, `beta = 2 sigmoid` and an output
    projection; no weights map between the two, so the row is timed, not checked."""
    import equinox as eqx
    from memax.equinox.semigroups.gdn import GDN  # pyright: ignore[reportMissingImports]

    assert cell.num_heads == 1 and cell.key_size == cell.hidden_size
    layer = GDN(xs.shape[-1], cell.hidden_size, key=jax.random.key(0))
    arrays, static = eqx.partition(layer, eqx.is_array)

    def ys(arrays: Any, xs: jax.Array) -> jax.Array:
        layer = eqx.combine(arrays, static)
        start = jnp.zeros(xs.shape[0], bool)
        run = lambda x: layer(layer.initialize_carry(), (x, start))[1]  # noqa: E731
        return jax.vmap(run, in_axes=1, out_axes=1)(xs)

    version = importlib.metadata.version("memax")
    label = f"{name} | memax {version} GDN layer (associative scan; timed, not checked)"
    return jax_impl(label, ys, arrays, xs, reference="")


def build(job: dict[str, Any], seed: int) -> tuple[list[Impl], dict[str, Reference]]:
    """Every row of one config (named `cell | row`), built in a random order drawn from
    `seed`, and each cell's reference (its sequential strategy)."""
    B, T, H = job["size"]
    if job.get("sweep"):
        return _lengths_rows(B, H, job["sweep"], seed)
    xs_np = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    xs = jnp.asarray(xs_np)
    if job.get("recurrentgemma"):
        chosen = {"RGLRUCell (4 heads)": rj.RGLRUCell(H, H, num_heads=4)}
    else:
        chosen = {
            EVERY: {**other_cells(H, H), **linear_cells(H, H)},  # the LSTM's yardstick first
            LINEAR: linear_cells(H, H),
            OTHER: other_cells(H, H),
            MATRIX: matrix_cells(H, H),
        }[job["cells"]]
        chosen = {k: v for k, v in chosen.items() if k not in job["skip"]}
    refs, builders = {}, []
    for n, (name, cell) in enumerate(chosen.items()):
        params = cell.init(jax.random.key(0))
        refs[name] = reference(_recurjax(cell, "sequential", time_axis=0), params, xs)
        names = (
            ("sequential", "auto") if job.get("recurrentgemma") else strategies(cell, job["grid"])
        )
        rows = [(s, s) for s in names]
        delta = isinstance(cell, rj.DeltaNetCell)
        if is_matrix_memory(cell) and not getattr(cell, "normalised", True) and not delta:
            # the bare scan first: the ratios' base
            builders.append(
                lambda cell=cell, params=params, name=name: jax_impl(
                    f"{name} | lax.scan, steps projected at once",
                    bare_scan(cell),
                    params,
                    xs,
                    reference=name,
                )
            )
        if n == 0:  # the A/A row: the first row built again
            rows.append((f"A/A ({names[0]}, built again)", names[0]))
        for row, strategy in rows:
            builders.append(
                lambda row=row, s=strategy, cell=cell, params=params, name=name: jax_impl(
                    f"{name} | {row}", _recurjax(cell, s, time_axis=0), params, xs, reference=name
                )
            )
        if isinstance(cell, rj.ProjLSTMCell):
            builders.append(lambda n=name, c=cell, p=params: torch_proj(n, c, p, xs_np))
        if job.get("recurrentgemma"):
            builders += recurrentgemma_rows(name, cell, params, xs)
        if isinstance(cell, rj.GatedDeltaNetCell) and cell.num_heads == 1:
            builders.append(lambda n=name, c=cell: memax_gdn_row(n, c, xs))
        if job.get("mlstm_kernels") and isinstance(cell, rj.MLSTMCell):
            builders.append(
                lambda n=name, c=cell, p=params: mlstm_kernels_row(
                    n, c, p, xs, job["mlstm_kernels"]
                )
            )
    return build_shuffled(builders, seed), refs


def _lengths_rows(
    B: int, H: int, sweep: tuple[int, ...], seed: int
) -> tuple[list[Impl], dict[str, Reference]]:
    """mLSTM's and Gated DeltaNet's chunkwise rows at each length of `sweep` (one input
    each), each checked against the sequential strategy at its length, and an A/A row."""
    cells = {
        "MLSTMCell (4 heads) chunkwise": rj.MLSTMCell(H, H, num_heads=4),
        "GatedDeltaNetCell (4 heads) chunkwise": rj.GatedDeltaNetCell(H, H, num_heads=4),
    }
    xs = {
        T: jnp.asarray(np.random.default_rng(T).standard_normal((T, B, H)).astype(np.float32))
        for T in sweep
    }
    builders, refs = [], {}
    for n, (name, cell) in enumerate(cells.items()):
        params = cell.init(jax.random.key(0))
        lengths = [(T, f"T={T}") for T in sweep]
        if n == 0:
            lengths.append((sweep[0], f"A/A (T={sweep[0]}, built again)"))
        for T, row in lengths:
            builders.append(
                lambda T=T, row=row, name=name, cell=cell, params=params: jax_impl(
                    f"{name} | {row}",
                    _recurjax(cell, "chunkwise", time_axis=0),
                    params,
                    xs[T],
                    reference=f"{name} T={T}",
                )
            )

        def sequential(p: Any, xs: jax.Array, cell: Any = cell) -> Any:
            # remat: the long references fit in memory
            h0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (B, *a.shape)), cell.initial_state(p))
            return rj.scan(cell, p, h0, xs, strategy="sequential", remat=64)[1]

        refs |= {f"{name} T={T}": reference(sequential, params, xs[T]) for T in sweep}
    return build_shuffled(builders, seed), refs


def worker(job: dict[str, Any], seed: int) -> dict[str, Any]:
    """Medians in ms of every row's per-round medians, fwd and f+b, in this process, and
    the A/A row's ratio to the row it copies."""
    impls, refs = build(job, seed)
    if job.get("check", True):
        check(impls, refs)
    times = time_impls(impls, ROUNDS, BURST, seed)
    first, copy = impls[0].name, next(i.name for i in impls if " | A/A (" in i.name)
    return {"rows": times, "aa": {w: times[copy][w] / times[first][w] for w in ("fwd", "fb")}}


def section(job: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """The config's table: times (medians over processes) and ratios to the cell's first
    row, its sequential one but for the LSTM's (per process, median [min-max]); in the
    lengths job, ratios per step (the time over the first row's, over `T / T_first`)."""
    per = "per step / first row" if job.get("sweep") else "/ first row"
    rows = [
        f"## {job['name']}"
        + (f" ({job['versions']})" if job.get("recurrentgemma") else "")
        + _processes(runs),
        "",
        f"| cell | strategy | fwd ms | f+b ms | {per} fwd | {per} f+b |",
        "|---|---|---|---|---|---|",
    ]
    firsts: dict[str, str] = {}
    for key in runs[0]["rows"]:
        cell, row = key.split(" | ")
        base = firsts.setdefault(cell, key)
        steps = 1.0
        if job.get("sweep"):
            steps = _steps(row) / _steps(base.split(" | ")[1])
        fwd, fb = (statistics.median(r["rows"][key][w] for r in runs) for w in ("fwd", "fb"))
        ratios = [
            _range([r["rows"][key][w] / r["rows"][base][w] / steps for r in runs])
            for w in ("fwd", "fb")
        ]
        rows.append(f"| {cell} | {row} | {fwd:.2f} | {fb:.2f} | {ratios[0]} | {ratios[1]} |")
    return rows


def _steps(row: str) -> int:
    """The sequence length in a lengths job's row name (`T=1024`, `A/A (T=1024, ...)`)."""
    return int(row.split("T=")[1].split(",")[0].split(")")[0])


_VERSIONS = (
    "from importlib import metadata as m; "
    "print(', '.join(f'{p} {m.version(p)}' for p in ('recurrentgemma', 'jax', 'numpy')))"
)


def _source_tree_first(job: dict[str, Any]) -> dict[str, str]:
    """Another Python may not have recurjax installed: the source tree serves."""
    src = str(Path(__file__).resolve().parent.parent / "src")
    return {"PYTHONPATH": os.pathsep.join(x for x in (src, os.environ.get("PYTHONPATH")) if x)}


def drive(jobs: list[dict[str, Any]], args: Any, out: Path | None) -> None:
    env = environment()
    started = time.time()
    runs = run_jobs(
        __file__,
        jobs,
        args,
        python=lambda job: job.get("recurrentgemma") or sys.executable,
        env=_source_tree_first,
    )
    v = env["versions"]
    mlstm = f" --mlstm-kernels {args.mlstm_kernels}" if args.mlstm_kernels else ""
    lines = [
        "# The newer cells: fwd and f+b by strategy",
        "",
        f"`{command('cells.py', args)}{mlstm}` on {env['date']}, commit "
        f"{env['commit']}: {env['cpu']} ({env['machine']}), {env['cores']} cores, "
        f"{env['backend']}; torch threads {env['torch_threads']}; Python {env['python']}; "
        + ", ".join(f"{k} {val}" for k, val in v.items() if k in ("jax", "jaxlib", "torch"))
        + f"; XLA_FLAGS={env['xla_flags'] or '(unset)'}. {time.time() - started:.0f} s in all.",
        "",
        "Float32, time-major `(T, B, F)` (torch's and RecurrentGemma's rows in their own "
        "layouts; mlstm_kernels' transposes to its own inside its timed functions). Times "
        "(ms) are medians over processes of each process's median; ratios "
        "are the row's time over its cell's first row (the sequential strategy; for the LSTM "
        "its default, fused), per process, as median [min-max] over the processes (below 1: "
        "faster than the first row). How they are made: "
        "the docstring of `benchmarks/cells.py`.",
        "",
        *method_lines(args, runs),
    ]
    for job in jobs:
        rows = section(job, runs.results[job["name"]])
        lines += [*rows[:2], *runs.notes(job["name"]), *rows[2:], ""]
    text = "\n".join(lines)
    print(text)
    if out is not None:
        out.write_text(text)
        print(f"wrote {out}")


def main() -> None:
    description = (__doc__ or "").split("\n\n")[0]
    default = Path(__file__).with_name("RESULTS_cells.md")
    ap = driver_arguments(description, default)
    ap.add_argument("--recurrentgemma-python", default="", help="a Python with recurrentgemma")
    ap.add_argument(
        "--mlstm-kernels",
        default="",
        help="a folder with mlstm_kernels (2.0.6) and einops, for a row of their JAX native "
        "chunkwise mLSTM in the matrix memories' jobs (default: no row)",
    )
    ap.add_argument(
        "--matrix",
        action="store_true",
        help="the matrix memories' jobs (default --out: benchmarks/RESULTS_matrix.md)",
    )
    args = ap.parse_args()
    if args.matrix and Path(args.out).resolve() == default.resolve():
        args.out = str(Path(__file__).with_name("RESULTS_matrix.md"))
    if serve_worker(args, worker):
        return
    args = resolve(args)
    chosen = MATRIX_JOBS if args.matrix else JOBS
    jobs = QUICK if args.quick else [j for j in chosen if args.only in j["name"]]
    if args.recurrentgemma_python:
        versions = subprocess.run(
            [args.recurrentgemma_python, "-c", _VERSIONS], capture_output=True, text=True
        ).stdout.strip()
        jobs += [
            {
                **j,
                "name": j["name"].split(",")[0] + ", RecurrentGemma",
                "policy": False,
                "recurrentgemma": args.recurrentgemma_python,
                "versions": versions,
            }
            for j in jobs
            if not j["grid"] and j["cells"] in (EVERY, LINEAR)  # RG-LRU's configs alone
        ]
    if args.mlstm_kernels:  # the workers put it on sys.path (`mlstm_kernels_row`)
        path = str(Path(args.mlstm_kernels).resolve())
        jobs = [
            {**j, "mlstm_kernels": path}
            if j["cells"] == MATRIX and not j.get("recurrentgemma")
            else j
            for j in jobs
        ]
    # `--only` writes a file of its own when `--out` names one (not RESULTS_cells.md or
    # RESULTS_matrix.md, which hold every job of one run)
    full = default.resolve(), default.with_name("RESULTS_matrix.md").resolve()
    write = not args.quick and (not args.only or Path(args.out).resolve() not in full)
    drive(jobs, args, Path(args.out) if write else None)


if __name__ == "__main__":
    main()
