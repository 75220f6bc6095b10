"""`strategy="auto"`: which strategy runs a cell when the user did not choose.

Every threshold here was set by a measurement, cited beside it; change one only with a new
run of the benchmark it cites. Other backends than XLA:CPU have not been measured and use
the same rules, except where a set of backends is named.
"""

from __future__ import annotations

import jax

from .._contracts import KernelSpec

# benchmarks/RESULTS.md (2-core AMD EPYC, XLA:CPU, 3 processes): the fused GRU lost to the
# sequential one at B=128, H=512 (f+b 228 vs 206 ms, fwd 56 vs 51; the LSTM tied there),
# so a GRU batch of this many sequences runs sequentially. At B=1 and B=32 the fused
# kernels were as fast or faster in fwd and f+b, so `auto` runs them there, with or without
# differentiation.
LARGE_GRU_BATCH = 128

# benchmarks/RESULTS_linear.md (B=4, in=64, H=128): on XLA:CPU (2 cores) the associative
# forward pass was 2-4x slower than the sequential one from T=1024 on, and f+b mixed
# (chunked faster at T=256, e.g. minGRU 4.6 vs 7.4 ms, and for the LRU up to T=4096, 239
# vs 301 ms; slower for minGRU at T=1024 and 4096, 47.5 vs 36.1 and 249 vs 187 ms), so CPU
# is not in the set: the default is never slower than the sequential scan. GPU and TPU
# have not been measured; until they are, the default stays sequential there too.
ASSOCIATIVE_BACKENDS: frozenset[str] = frozenset()


# benchmarks/RESULTS_cells.md (2-core AMD EPYC, XLA:CPU, 3 processes, ratios to the
# sequential strategy, fwd / f+b): the hoisted strategy beat the sequential one for minGRU
# and RG-LRU in every config where its stored `a`, `b` and states (`T x batch x H` each) were
# at most this many elements: B=4 T=256 (minGRU 0.94 / 0.42, RG-LRU 0.28 / 0.19), B=32
# T=256, B=4 T=4096 (0.55 / 0.38 and 0.16 / 0.29) and B=32 T=128 H=256 (0.56 / 0.66 and
# 0.63 / 0.74). Past it, at B=32 T=4096 H=64 (8M), minGRU's hoisted forward pass was 2.1x
# slower (memory traffic and page faults), so the sequential strategy runs there.
HOISTED_MAX_ELEMENTS = 2**20
# ... while the state is at most this many times as wide as the input: Mamba's S6 state is
# `D x N` per input channel (16 x the input in the benchmark), and its hoisted backward pass
# was slower everywhere (f+b 1.13x to 2.06x).
HOISTED_MAX_WIDENING = 4
# Not for a time-invariant cell (`LinearCell.time_invariant`, the LRU): hoisting stores its
# fixed decay for every step, and the LRU's hoisted f+b was 1.22x and 1.64x slower at B=32
# (faster at B=4: a gain left unclaimed rather than a loss risked).


def hoisted_pays(cell: object, xs: object) -> bool:
    """Whether `auto` runs a linear cell with the hoisted strategy for these time-major
    inputs: a recurrence whose decay depends on the input, a state no more than
    `HOISTED_MAX_WIDENING` times the input's width, and `T x batch x H` of at most
    `HOISTED_MAX_ELEMENTS`."""
    hidden = getattr(cell, "hidden_size", None)
    leaves = jax.tree.leaves(xs)
    if getattr(cell, "time_invariant", True) or not isinstance(hidden, int):
        return False
    if len(leaves) != 1 or leaves[0].ndim < 2:
        return False
    x = leaves[0]
    elements = x.size // x.shape[-1] * hidden
    return hidden <= HOISTED_MAX_WIDENING * x.shape[-1] and elements <= HOISTED_MAX_ELEMENTS


def associative_pays() -> bool:
    """Whether `auto` runs a linear cell with the chunked associative scan here."""
    return jax.default_backend() in ASSOCIATIVE_BACKENDS


def fused_pays(spec: KernelSpec, batch: int) -> bool:
    """Whether `auto` runs a cell's fused kernel for a flattened batch of `batch` sequences."""
    return not (spec.name == "gru" and batch >= LARGE_GRU_BATCH)
