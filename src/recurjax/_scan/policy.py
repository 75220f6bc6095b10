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


# benchmarks/RESULTS_cells.md (2-core AMD EPYC, XLA:CPU, 3 processes): the hoisted
# strategy beat the sequential one for the cells linear in their state while its stored
# coefficients `a, b` and states (each `T x batch x H`) stayed at most this many elements;
# past it (B=32, T=4096, H=64: 8M), memory traffic and page faults made it the slower one
# (see the table).
HOISTED_MAX_ELEMENTS = 2**20
# ... and while the state was at most this many times the input's width: Mamba's S6 state
# is `D x N` per input channel (16 x the input), and the hoisted backward pass was slower.
HOISTED_MAX_WIDENING = 4


def hoisted_pays(cell: object, xs: object) -> bool:
    """Whether `auto` runs a linear cell with the hoisted strategy for these time-major
    inputs: a state no more than `HOISTED_MAX_WIDENING` times the input's width, and
    `T x batch x H` of at most `HOISTED_MAX_ELEMENTS`."""
    hidden = getattr(cell, "hidden_size", None)
    leaves = jax.tree.leaves(xs)
    if not isinstance(hidden, int) or len(leaves) != 1 or leaves[0].ndim < 1:
        return False
    x = leaves[0]
    width = x.shape[-1] if x.ndim > 1 else 1
    elements = x.size // max(width, 1) * hidden
    return hidden <= HOISTED_MAX_WIDENING * width and elements <= HOISTED_MAX_ELEMENTS


def associative_pays() -> bool:
    """Whether `auto` runs a linear cell with the chunked associative scan here."""
    return jax.default_backend() in ASSOCIATIVE_BACKENDS


def fused_pays(spec: KernelSpec, batch: int) -> bool:
    """Whether `auto` runs a cell's fused kernel for a flattened batch of `batch` sequences."""
    return not (spec.name == "gru" and batch >= LARGE_GRU_BATCH)
