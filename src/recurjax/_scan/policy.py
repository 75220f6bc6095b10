"""`strategy="auto"`: the rules by which it picks a strategy for a cell, per backend.

Each backend has one `Policy`. Each of its numbers names the rows of `benchmarks/RESULTS*.md`
that set it; change one only with a new run of that benchmark. Only the CPU's policy is
measured (2-core XLA:CPU). GPU and TPU have no measured run yet (`benchmarks/gpu.py`
writes `RESULTS_gpu.md` on a GPU): they keep the CPU's rules, the conservative default (what
`auto` did before there were per-backend rules), and never pick cuDNN.
"""

from __future__ import annotations

import dataclasses

import jax

from .._contracts import KernelSpec


@dataclasses.dataclass(frozen=True)
class Policy:
    """The thresholds of `auto` on one backend, and whether a run measured them there."""

    # Whether a benchmark run on this backend set these numbers (else: the CPU's, unmeasured).
    measured: bool
    # A GRU batch of at least this many sequences runs sequentially, otherwise a fused
    # kernel runs (LSTM and RNN always).
    large_gru_batch: int
    # Whether `auto` runs a linear cell with the chunked associative scan.
    associative: bool
    # The hoisted strategy runs a linear cell whose decay depends on its input (not
    # `LinearCell.time_invariant`, the LRU) while `T x batch x H` is at most
    # `hoisted_max_elements` and its state at most `hoisted_max_widening` times as wide as
    # its input (Mamba's S6 is 16 times).
    hoisted_max_elements: int
    hoisted_max_widening: int
    # A matrix memory (mLSTM, retention, Mamba-2, GLA, the delta rule) runs chunkwise once
    # its sequences have at least this many steps, sequentially below.
    chunkwise_min_steps: int
    # Whether `auto` runs LSTM layers (a cell, a stack of them) with cuDNN.
    cudnn: bool


CPU = Policy(
    measured=True,
    # RESULTS.md, "GRU B=128 T=64 F=256 H=512": the rows strategy='fused' and
    # strategy='sequential' (and the same rows at B=32 and B=1).
    large_gru_batch=128,
    # RESULTS_linear.md: on CPU the associative scan's forward pass is slower than the
    # sequential one.
    associative=False,
    # RESULTS_cells.md: the rows "hoisted" of MinGRUCell, RGLRUCell, LRUCell and
    # SelectiveSSMCell in every config (B=32 T=4096 in=H=64 is past the size).
    hoisted_max_elements=2**20,
    hoisted_max_widening=4,
    # RESULTS_matrix.md, the rows "sequential" and "chunkwise" of every matrix memory at
    # B=32 T=16, B=32 T=128 and B=4 T=4096 (in=H=256): chunkwise f+b took 0.15-0.54 of the
    # sequential strategy's time in every one (medians; training, what the rule is for). Its
    # forward pass alone took 0.50-0.60 of it at T=16 and 0.50-0.85 for mLSTM and retention
    # at T=4096, and was slower in the other configs (up to 2.1x: GLA at T=4096).
    chunkwise_min_steps=16,
    # No cuDNN on a CPU.
    cudnn=False,
)

# Not measured: the CPU's rules, and cuDNN only where named (`RESULTS_gpu.md` has no run).
UNMEASURED = dataclasses.replace(CPU, measured=False)

POLICIES: dict[str, Policy] = {"cpu": CPU, "gpu": UNMEASURED, "tpu": UNMEASURED}


def for_backend(backend: str) -> Policy:
    """The policy of `backend` (`jax.default_backend()`): unmeasured for one not listed."""
    return POLICIES.get(backend, UNMEASURED)


def _one_input(xs: object) -> jax.Array | None:
    """The single time-major input array of a run, or `None` (structured inputs)."""
    leaves = jax.tree.leaves(xs)
    return leaves[0] if len(leaves) == 1 and leaves[0].ndim >= 2 else None


def chunkwise_picks(cell: object, xs: object, backend: str) -> bool:
    """Whether `auto` runs a matrix memory chunkwise for these time-major inputs."""
    x = _one_input(xs)
    return x is not None and x.shape[0] >= for_backend(backend).chunkwise_min_steps


def hoisted_picks(cell: object, xs: object, backend: str) -> bool:
    """Whether `auto` runs a linear cell hoisted for these time-major inputs."""
    hidden = getattr(cell, "hidden_size", None)
    x = _one_input(xs)
    if getattr(cell, "time_invariant", True) or not isinstance(hidden, int) or x is None:
        return False
    rules = for_backend(backend)
    elements = x.size // x.shape[-1] * hidden
    return (
        hidden <= rules.hoisted_max_widening * x.shape[-1]
        and elements <= rules.hoisted_max_elements
    )


def chunked_picks(cell: object, xs: object, backend: str) -> bool:
    """Whether `auto` runs a linear cell with the chunked associative scan on `backend`."""
    return for_backend(backend).associative


def fused_picks(spec: KernelSpec, batch: int, backend: str) -> bool:
    """Whether `auto` runs a cell's fused kernel for a flattened batch of `batch` sequences."""
    return not (spec.name == "gru" and batch >= for_backend(backend).large_gru_batch)


def cudnn_picks(cell: object, xs: object, backend: str) -> bool:
    """Whether `auto` runs LSTM layers with cuDNN (float32 inputs only; the strategy itself
    says where cuDNN is)."""
    x = _one_input(xs)
    return for_backend(backend).cudnn and x is not None and x.dtype == jax.numpy.float32
