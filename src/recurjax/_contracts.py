"""What a cell is, and the optional protocols through which the scan engine runs it.

This module imports nothing from recurjax: every other module builds on it.

A *cell* is any callable `cell(params, h, x) -> (h, y)`. On top of that, a cell may
implement optional protocols that the engine discovers by attribute, never by class:

- `SequenceCell`: the cell runs over a whole sequence itself, calling back into the engine
  for its parts (`Chain`, `bidirectional`, `residual`, and the time-parallel `Dense`);
- `LayerStack`: a composite that says which stack of recurrent layers it is (a chain of
  cells or bidirectional pairs), so that the cuDNN strategy can run it in one call;
- `LinearRecurrence`: the cell's state update is `h' = a * h + b` with `(a, b)` from `x`
  alone, so the associative and chunked strategies and `sequence_parallel_scan` can run it;
- `MatrixMemory`: the cell's state is a matrix per head, decayed and written with an outer
  product (`MemorySteps`), so the chunkwise strategy can run it;
- `FusedCell`: the cell names a hand-written kernel of the fused strategy (`KernelSpec`).

The engine's side of the same contract is `Strategy`: one typed object per way of running a
cell over a sequence, which the engine asks whether it applies and whether `auto` picks it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

PyTree = Any
CellFn = Callable[[PyTree, PyTree, PyTree], tuple[PyTree, PyTree]]


class Cell:
    """Base class of the library cells: a frozen config object that is a pure function.

    Subclasses are frozen dataclasses (hashable, so they can be static under `jax.jit`) and
    implement:

    - `init(key, dtype=jnp.float32) -> params`, a dict of arrays;
    - `initial_state(params) -> h`, an *unbatched* state pytree;
    - `__call__(params, h, x) -> (h, y)`, one time step for `x` of shape `(..., in)`.

    A cell whose input step has more trailing axes than its features (a convolutional
    cell's `(*spatial, channels)`) says how many in `input_axes`, so that the scan engine
    takes only the axes before them as batch axes.

    A plain function with the signature `(params, h, x) -> (h, y)` is a cell too; this class
    only adds the conveniences and the input checks.
    """

    in_features: int

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> PyTree:
        raise NotImplementedError

    def initial_state(self, params: PyTree) -> PyTree:
        raise NotImplementedError

    def __call__(self, params: PyTree, h: PyTree, x: PyTree) -> tuple[PyTree, PyTree]:
        raise NotImplementedError


class WrapperCell(Cell):
    """Base of the library cells that wrap one cell, `self.cell` (`residual`,
    `VariationalDropout`): they take its `in_features` and its params."""

    cell: Any

    @property
    def in_features(self) -> int:  # type: ignore[override]
        """The wrapped cell's `in_features`."""
        return self.cell.in_features

    @property
    def input_axes(self) -> int:
        """The wrapped cell's `input_axes`."""
        return input_axes(self.cell)

    @property
    def causal(self) -> bool:
        """The wrapped cell's `causal`."""
        return is_causal(self.cell)

    def init(self, key: jax.Array, dtype: Any = None) -> PyTree:
        """The wrapped cell's params (`dtype=None`: its own default)."""
        return self.cell.init(key) if dtype is None else self.cell.init(key, dtype)


class Handle:
    """Marker base of stateful handles (`Recur`): callables that take `x` alone, so they are
    not cells. Lets low-level checks recognise a handle without importing it."""

    __slots__ = ()


class PartRunner(Protocol):
    """What the engine passes to `SequenceCell.run_sequence`: runs one part over the sequence.

    `run(part, params, h, xs, select=..., reverse=False) -> (h, ys)` runs the cell `part`
    over every step of the time-major `xs` with all of the enclosing scan's options (lengths,
    resets, truncation, strategy) and returns its final state and stacked outputs.
    `select(tree)` picks this part's entry out of a tree shaped like the composite's state
    (the engine uses it to find the part's `state0` for resets); `reverse=True` runs the
    part in the direction opposite to the enclosing scan's.
    """

    def __call__(
        self,
        part: Any,
        params: PyTree,
        h: PyTree,
        xs: PyTree,
        *,
        select: Callable[[PyTree], PyTree] = ...,
        reverse: bool = False,
    ) -> tuple[PyTree, PyTree]: ...


@runtime_checkable
class SequenceCell(Protocol):
    """A cell that runs over a whole sequence itself (a composite, or a time-parallel layer).

    The engine calls `run_sequence(run, params, h, xs)` with time-major `xs` (padding
    already zeroed) and a settled state instead of choosing a strategy for the cell; the cell
    calls `run` (a `PartRunner`) for each of its parts and combines their results. Padded
    outputs are zeroed by the engine afterwards. `parts()` lists the sub-cells (for the
    checks of explicit strategies and for walkers); a layer without parts returns `()`.

    Running part by part equals stepping the composite as long as each part's step depends
    only on its own state and its input at the same step, which holds for chains,
    bidirectional pairs and residual wrappers.

    A composite whose outputs at a step depend on later steps (a bidirectional pair, or a
    chain with one in it) says `causal = False` (read by `is_causal`): the engine then never
    cuts it into blocks of time as a whole (remat), only its parts.
    """

    def parts(self) -> tuple[Any, ...]: ...

    def run_sequence(
        self, run: PartRunner, params: PyTree, h: PyTree, xs: PyTree
    ) -> tuple[PyTree, PyTree]: ...


@runtime_checkable
class LayerStack(Protocol):
    """A composite that may be a stack of recurrent layers as cuDNN (and PyTorch's
    `nn.LSTM(num_layers=..., bidirectional=...)`) sees one: layers applied one after
    another, each one cell, or two cells run both ways with their outputs concatenated.

    `layers()` returns `(cells, directions)`: the cells in cuDNN's order (layer 0's
    forward cell, then its backward cell when `directions == 2`, then layer 1's, ...), or
    `None` when the composite is no such stack (a part that is itself a composite of
    another kind, another merge, layers of mixed directions). `split_layers(tree)` gives a
    params or state tree of the composite as a list in the same order, and
    `join_layers(trees)` puts such a list back into the composite's structure. What the
    cells are (LSTMs, their sizes) is the strategy's question, not the stack's.
    """

    def layers(self) -> tuple[tuple[Any, ...], int] | None: ...

    def split_layers(self, tree: PyTree) -> list[PyTree]: ...

    def join_layers(self, trees: list[PyTree]) -> PyTree: ...


@runtime_checkable
class LinearRecurrence(Protocol):
    """A cell whose step is `h' = a * h + b`, `y = readout(params, h', x)`, with `(a, b)`
    computed from `x` alone (elementwise in `h`), so that the hoisted, associative and
    chunked strategies and `sequence_parallel_scan` can run it. `linear_recurrence` must be
    `True` only when the cell's `__call__` is exactly that step."""

    linear_recurrence: bool

    def coefficients(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, jax.Array]: ...

    def readout(self, params: PyTree, h: jax.Array, x: jax.Array) -> jax.Array: ...


class MemorySteps(NamedTuple):
    """Every step of a matrix memory at once, time-major: what `MatrixMemory.memory_steps`
    returns for inputs `(T, *batch, in)`."""

    q: jax.Array  # (T, *batch, heads, d_k): the queries
    k: jax.Array  # (T, *batch, heads, d_k): the keys, scaled as the step scales them
    v: jax.Array  # (T, *batch, heads, d_v): the values
    # (T, *batch, heads): log a_t, one decay per head; or (T, *batch, heads, d_k), one per
    # key channel (GLA: a_t scales the columns of S), for a memory without a normaliser
    log_decay: jax.Array
    log_input: jax.Array | None  # (T, *batch, heads): log i_t (mLSTM's i~), or None for 0
    aux: Any  # what `memory_readout` needs besides the read (mLSTM: the output gate)
    # (T, *batch, heads): the delta rule's write strength beta_t in [0, 1] (DeltaNet), or
    # None for a memory that only adds
    beta: jax.Array | None = None


@runtime_checkable
class MatrixMemory(Protocol):
    """A cell whose state is a matrix per head, decayed and written with an outer product,
    and read by a query, so that the chunkwise strategy can run it:

        S_t = a_t S_{t-1} + i_t v_t k_t^T,   read_t = S_t q_t   (S: d_v x d_k per head)

    with `a_t` a scalar per head, or a vector per key channel scaling the columns of `S`
    (`S_t = S_{t-1} diag(a_t) + ...`),

    or, with a `beta` in its steps, the delta rule (DeltaNet), which first removes what `S`
    held at the key, with one decay per head and unit keys:

        S_t = a_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T

    and, with `normalised` (mLSTM), a normaliser `n_t = a_t n_{t-1} + i_t k_t` and a
    log-space stabiliser `m_t = max(log a_t + m_{t-1}, log i_t)` (restarting at `log i_t`
    where the memory is empty), the memory stored scaled by `exp(-m)` and the read
    `S_t q_t / max(|n_t . q_t|, exp(-m_t))`. `matrix_memory` must be `True` only when the
    cell's `__call__` is exactly that step followed by `memory_readout`.
    """

    matrix_memory: bool
    normalised: bool

    def memory_steps(self, params: PyTree, xs: jax.Array) -> MemorySteps: ...

    def memory_state(self, h: PyTree) -> tuple[jax.Array, Any, Any]:
        """`(S, n, m)` of a state `h` with batch axes: `S: (*batch, heads, d_v, d_k)`, and
        `n: (*batch, heads, d_k)`, `m: (*batch, heads)` (or `None` unless normalised)."""
        ...

    def cell_state(self, S: jax.Array, n: Any, m: Any) -> PyTree: ...

    def memory_readout(self, params: PyTree, read: jax.Array, aux: Any) -> jax.Array: ...


class KernelSpec(NamedTuple):
    """Which fused kernel computes a cell's step (see the fused strategy)."""

    name: str  # key in the fused strategy's kernel table: "lstm", "gru" or "rnn"
    hidden_size: int  # H
    activation: Callable[[jax.Array], jax.Array] | None = None  # the RNN's nonlinearity


@runtime_checkable
class FusedCell(Protocol):
    """A cell with a hand-written kernel: `fused_kernel()` returns its `KernelSpec`, or
    `None` when the kernel does not compute this cell's step (e.g. a subclass);
    `with_biases(params)` gives the kernel its params with every bias, zeros where the cell
    has none (`use_bias=False`)."""

    def fused_kernel(self) -> KernelSpec | None: ...

    def with_biases(self, params: Any) -> Any: ...


def input_axes(cell: object) -> int:
    """How many trailing axes one input step of `cell` has: its `input_axes` (a
    convolutional cell's spatial axes and channels), 1 (the features) for every other."""
    return int(getattr(cell, "input_axes", 1))


def is_causal(cell: object) -> bool:
    """Whether `cell`'s output at a step depends on the steps up to it only: its `causal`,
    `True` for every cell that does not say otherwise."""
    return bool(getattr(cell, "causal", True))


def is_linear(cell: object) -> bool:
    """Whether `cell` declares a linear recurrence the associative strategies can run."""
    return isinstance(cell, LinearRecurrence) and cell.linear_recurrence is True


def is_matrix_memory(cell: object) -> bool:
    """Whether `cell` declares a matrix memory the chunkwise strategy can run."""
    return isinstance(cell, MatrixMemory) and cell.matrix_memory is True


def kernel_spec(cell: object) -> KernelSpec | None:
    """The cell's `KernelSpec`, or `None` when it has no fused kernel."""
    return cell.fused_kernel() if isinstance(cell, FusedCell) else None


class StrategyRun(Protocol):
    """A strategy's `run`: the cell over every step of time-major `xs` from the settled state
    `h`, under the scan's options `opts` (`_scan.options.Options`) and step masks `masks`
    (`_scan.blocks.StepMasks`, or `None` without lengths and resets); returns the final
    state and the stacked outputs."""

    def __call__(
        self, cell: Any, params: PyTree, h: PyTree, xs: PyTree, opts: Any, masks: Any
    ) -> tuple[PyTree, PyTree]: ...


def _runs_every_cell(cell: object, opts: Any) -> str | None:
    return None


def _never(cell: object, xs: PyTree, backend: str) -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One way of running a cell over a sequence, as the engine sees it.

    The engine asks a strategy three things and calls it once:

    - `unsupported(cell, opts)`: why it cannot run `cell` under the scan options `opts`, as
      the end of the error message for a user who named it (e.g. "needs a cell with a fused
      kernel ..."), or `None` when it can;
    - `forward_mode`: whether JAX can differentiate it in forward mode (`jax.jvp`); a
      strategy with a `jax.custom_vjp` cannot, and the engine never runs it there;
    - `states`: whether it can return the state after every step (`scan(...,
      return_states=True)`: it runs the cell wrapped to output its state beside `y`, or a
      linear cell whose read-out returns them); the engine runs no other one there;
    - `auto(cell, xs, backend)`: whether `strategy="auto"` picks it for these time-major
      inputs on this backend (`jax.default_backend()`: "cpu", "gpu", "tpu");
    - `run(cell, params, h, xs, opts, masks) -> (h, ys)`: the work (`StrategyRun`).

    `composites=False` means it runs stepped cells, and a composite (`SequenceCell`) runs
    part by part, each part with its own strategy; a strategy with `composites=True` (cuDNN,
    which runs stacked, bidirectional LSTM layers in one call) is offered a whole composite
    first, then, where it cannot run it, each part, stepped cells included. A strategy's
    own options (a chunk size) are fields of its `run`, e.g. a `functools.partial`.

    Examples:
      >>> import recurjax as rj
      >>> from recurjax._scan.strategies import REGISTRY
      >>> fused = REGISTRY["fused"]
      >>> fused.forward_mode, fused.unsupported(rj.LSTMCell(3, 4), None) is None
      (False, True)
      >>> fused.unsupported(rj.MinGRUCell(3, 4), None)[:32]
      'needs a cell with a fused kernel'
    """

    name: str
    run: StrategyRun
    unsupported: Callable[[Any, Any], str | None] = _runs_every_cell
    forward_mode: bool = False
    auto: Callable[[Any, PyTree, str], bool] = _never
    composites: bool = False
    states: bool = False
