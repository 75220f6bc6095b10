"""`strategy="auto"`: the rules by which it picks a strategy for a cell.

Each rule names the rows of `benchmarks/RESULTS*.md` that set it (2-core XLA:CPU); change
one only with a new run of that benchmark. Backends other than CPU have not been measured
and follow the same rules, except where a set of backends is named.
"""

from __future__ import annotations

import jax

from .._contracts import KernelSpec

# A GRU batch of at least this many sequences runs sequentially, otherwise a fused kernel
# runs (LSTM and RNN always). RESULTS.md, "GRU B=128 T=64 F=256 H=512": the rows
# strategy='fused' and strategy='sequential' (and the same rows at B=32 and B=1).
LARGE_GRU_BATCH = 128

# The backends on which `auto` runs a linear cell with the chunked associative scan: none
# (RESULTS_linear.md: on CPU its forward pass is slower than the sequential one).
ASSOCIATIVE_BACKENDS: frozenset[str] = frozenset()

# The hoisted strategy runs a linear cell whose decay depends on its input (not
# `LinearCell.time_invariant`, the LRU) while `T x batch x H` is at most
# `HOISTED_MAX_ELEMENTS` and its state at most `HOISTED_MAX_WIDENING` times as wide as its
# input (Mamba's S6 is 16 times). RESULTS_cells.md: the rows "hoisted" of MinGRUCell,
# RGLRUCell, LRUCell and SelectiveSSMCell in every config (B=32 T=4096 in=H=64 is past the
# size).
HOISTED_MAX_ELEMENTS = 2**20
HOISTED_MAX_WIDENING = 4


# A matrix memory (mLSTM, retention, Mamba-2, GLA) runs chunkwise once its sequences have at
# least `CHUNKWISE_MIN_STEPS` steps, sequentially below. RESULTS_matrix.md, the rows
# "sequential" and "chunkwise" of every matrix memory at B=32 T=16, B=32 T=128 and B=4
# T=4096 (in=H=256): chunkwise f+b took 0.15-0.54 of the sequential strategy's time in every
# one (medians; training, what the rule is for). Its forward pass alone took 0.50-0.60 of it
# at T=16 and 0.50-0.85 for mLSTM and retention at T=4096, and was slower in the other
# configs (up to 2.1x: GLA at T=4096).
CHUNKWISE_MIN_STEPS = 16


def chunkwise_picks(cell: object, xs: object, backend: str) -> bool:
    """Whether `auto` runs a matrix memory chunkwise for these time-major inputs."""
    leaves = jax.tree.leaves(xs)
    return len(leaves) == 1 and leaves[0].ndim >= 2 and leaves[0].shape[0] >= CHUNKWISE_MIN_STEPS


def hoisted_picks(cell: object, xs: object, backend: str) -> bool:
    """Whether `auto` runs a linear cell hoisted for these time-major inputs."""
    hidden = getattr(cell, "hidden_size", None)
    leaves = jax.tree.leaves(xs)
    if getattr(cell, "time_invariant", True) or not isinstance(hidden, int):
        return False
    if len(leaves) != 1 or leaves[0].ndim < 2:
        return False
    x = leaves[0]
    elements = x.size // x.shape[-1] * hidden
    return hidden <= HOISTED_MAX_WIDENING * x.shape[-1] and elements <= HOISTED_MAX_ELEMENTS


def chunked_picks(cell: object, xs: object, backend: str) -> bool:
    """Whether `auto` runs a linear cell with the chunked associative scan on `backend`."""
    return backend in ASSOCIATIVE_BACKENDS


def fused_picks(spec: KernelSpec, batch: int) -> bool:
    """Whether `auto` runs a cell's fused kernel for a flattened batch of `batch` sequences."""
    return not (spec.name == "gru" and batch >= LARGE_GRU_BATCH)
