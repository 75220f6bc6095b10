"""Cells shared by the test modules: every library cell, a chain and a user function cell.

Each case makes params with *non-zero* biases (random normal on every leaf), so tests cannot
pass by accident on zero-initialised biases, and an initial state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest

import recurjax as rj
from recurjax._contracts import MemorySteps, is_matrix_memory
from recurjax._scan import run as run_stage

IN, H = 3, 4


def elman(params: dict[str, jax.Array], h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A user-defined cell: Flux's hand-written RNN, `tanh(x wxh + h whh + b)`, any batch."""
    h = jnp.broadcast_to(h, (*x.shape[:-1], h.shape[-1]))  # unbatched h meets a batch
    pre = x @ params["wxh"] + h @ params["whh"]
    h = jnp.tanh(pre + jnp.broadcast_to(params["b"], pre.shape))
    return h, h


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    cell: Callable[..., Any]
    make_params: Callable[[jax.Array], Any]
    make_state: Callable[[Any], Any]
    out: int = H

    def params(self, seed: int = 0, dtype: Any = jnp.float32) -> Any:
        """Params with every leaf drawn from N(0, 0.5^2): biases are non-zero."""
        p = self.make_params(jax.random.key(seed))
        leaves, treedef = jax.tree.flatten(p)
        keys = jax.random.split(jax.random.key(seed + 1000), len(leaves))
        leaves = [
            0.5 * jax.random.normal(k, a.shape, dtype) for k, a in zip(keys, leaves, strict=True)
        ]
        return jax.tree.unflatten(treedef, leaves)

    def state(self, params: Any) -> Any:
        return self.make_state(params)


def library_case(name: str, cell: Any, out: int = H) -> Case:
    return Case(name, cell, cell.init, cell.initial_state, out)


def _elman_params(key: jax.Array) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    return {
        "wxh": jax.random.normal(k1, (IN, H)),
        "whh": jax.random.normal(k2, (H, H)),
        "b": jnp.zeros((H,)),
    }


CASES = [
    library_case("rnn_tanh", rj.RNNCell(IN, H)),
    library_case("rnn_relu", rj.RNNCell(IN, H, activation=jax.nn.relu)),
    library_case("lstm", rj.LSTMCell(IN, H, forget_bias=1.0)),
    library_case("gru", rj.GRUCell(IN, H)),
    library_case("gruv3", rj.GRUv3Cell(IN, H)),
    library_case("mgu", rj.MGUCell(IN, H)),
    library_case("indrnn", rj.IndRNNCell(IN, H)),
    library_case("peephole", rj.PeepholeLSTMCell(IN, H)),
    library_case("projlstm", rj.ProjLSTMCell(IN, H + 2, proj_size=H)),  # y and h: H, c: H + 2
    library_case("lnlstm", rj.LayerNormLSTMCell(IN, H)),
    library_case("rglru", rj.RGLRUCell(IN, IN), out=IN),  # the input gates the state: width IN
    library_case("s6", rj.SelectiveSSMCell(IN, state_size=2), out=IN),  # state IN * 2, y: IN
    library_case("slstm", rj.SLSTMCell(IN, H, num_heads=2)),
    library_case("mlstm", rj.MLSTMCell(IN, H, num_heads=2)),
    library_case("retention", rj.RetentionCell(IN, H, num_heads=2)),
    # four heads in two groups (two heads share each B and C), P = 1, N = 2
    library_case("mamba2", rj.Mamba2Cell(IN, H, num_heads=4, state_size=2, num_groups=2)),
    library_case("gla", rj.GLACell(IN, H, num_heads=2, key_size=H, gate_rank=2)),
    library_case("deltanet", rj.DeltaNetCell(IN, H, num_heads=2, key_size=6)),  # d_k 3, d_v 2
    library_case("gdn", rj.GatedDeltaNetCell(IN, H, num_heads=2)),
    library_case("dense", rj.Dense(IN, H, activation=jnp.tanh)),
    library_case("chain", rj.chain(rj.LSTMCell(IN, 5), rj.Dense(5, H))),
    Case("user_fn", elman, _elman_params, lambda p: jnp.zeros((H,), p["wxh"].dtype)),
]
LIBRARY = [c for c in CASES if isinstance(c.cell, rj.Cell)]
# The linear cells outside CASES (tests/test_linear.py holds their own suite); the scan
# engine's oracle grid runs them, and test_sequences runs minGRU too. The LRU's state is
# complex (`oracle.loss_terms` takes its real and imaginary parts).
MINGRU = library_case("mingru", rj.MinGRUCell(IN, H))
MINLSTM = library_case("minlstm", rj.MinLSTMCell(IN, H))
LRU = library_case("lru", rj.LRUCell(IN, H), out=IN)  # y = Re(h C) + D x: width IN
LINEAR = [MINGRU, MINLSTM, LRU]


@dataclasses.dataclass(frozen=True)
class GatedMemory:
    """A user's matrix memory, not normalised (the chunkwise strategy's plain path): per
    head, `S' = sigmoid(x wg + bg) S + v k^T` and `y = S' q`, with `q, k, v = x wq, x wk,
    x wv`, heads flattened in the state and the output."""

    in_features: int
    heads: int = 2
    d: int = 2
    matrix_memory: ClassVar[bool] = True
    normalised: ClassVar[bool] = False

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        kq, kk, kv, kg = jax.random.split(key, 4)
        width = self.heads * self.d
        draw = lambda k, n: jax.random.normal(k, (self.in_features, n), dtype)  # noqa: E731
        zeros = jnp.zeros((self.heads,), dtype)
        return {"wq": draw(kq, width), "wk": draw(kk, width), "wv": draw(kv, width),
                "wg": draw(kg, self.heads), "bg": zeros}  # fmt: skip

    def initial_state(self, params: dict[str, jax.Array]) -> jax.Array:
        return jnp.zeros((self.heads * self.d * self.d,), params["wq"].dtype)

    def memory_steps(self, params: dict[str, jax.Array], xs: jax.Array) -> MemorySteps:
        lead = tuple(xs.shape[:-1])
        q, k, v = ((xs @ params[w]).reshape(*lead, self.heads, self.d) for w in ("wq", "wk", "wv"))
        gate = xs @ params["wg"]
        log_a = jax.nn.log_sigmoid(gate + jnp.broadcast_to(params["bg"], gate.shape))
        return MemorySteps(q, k, v, log_a, None, None)

    def memory_state(self, h: jax.Array) -> tuple[jax.Array, None, None]:
        return h.reshape(*h.shape[:-1], self.heads, self.d, self.d), None, None

    def cell_state(self, S: jax.Array, n: Any, m: Any) -> jax.Array:
        return S.reshape(*S.shape[:-3], -1)

    def memory_readout(self, params: Any, read: jax.Array, aux: Any) -> jax.Array:
        return read.reshape(*read.shape[:-2], -1)

    def __call__(
        self, params: dict[str, jax.Array], h: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        q, k, v, log_a = (a[0] for a in self.memory_steps(params, x[None])[:4])
        batch = tuple(x.shape[:-1])
        S = jnp.broadcast_to(self.memory_state(h)[0], (*batch, self.heads, self.d, self.d))
        S = jnp.exp(log_a)[..., None, None] * S + v[..., :, None] * k[..., None, :]
        y = jnp.einsum("...vk,...k->...v", S, q)
        return self.cell_state(S, None, None), self.memory_readout(params, y, None)


# A matrix memory of the user's (GatedMemory): outside CASES, in the oracle grid.
MEMORY = library_case("memory", GatedMemory(IN))
RECURRENT = [c for c in CASES if c.name != "dense"]


KERNEL = ("rnn_tanh", "rnn_relu", "lstm", "gru", "chain")  # cells with a fused kernel
LINEAR_STRATEGIES = ("auto", "sequential", "associative", "chunked", "hoisted")


def strategies_of(case: Case) -> tuple[str, ...]:
    """The strategies that run this cell: every linear one for a cell linear in its state,
    `fused` for the kernel cells, `chunkwise` for a matrix memory, and `auto` and
    `sequential` for every cell."""
    if case.name in KERNEL:
        return ("auto", "fused", "sequential")
    if isinstance(case.cell, rj.LinearCell):
        return LINEAR_STRATEGIES
    if is_matrix_memory(case.cell):
        return ("auto", "sequential", "chunkwise")
    return ("auto", "sequential")


@contextlib.contextmanager
def strategies_chosen() -> Iterator[list[str]]:
    """The names of the strategies that `rj.scan` runs inside the block, in the order the
    engine chose them (one per stepped part of a composite). JAX's caches are cleared on
    entry, so every scan in the block is traced afresh and makes its choice again."""
    names: list[str] = []
    choose = run_stage.choose

    def spy(*args: Any) -> Any:
        chosen = choose(*args)
        if chosen is not None:  # None: a composite, part by part
            names.append(chosen.name)
        return chosen

    jax.clear_caches()
    run_stage.choose = spy
    try:
        yield names
    finally:
        run_stage.choose = choose


# The engine- and handle-level tests run every day on one case per kind of cell and state
# (a fused-kernel LSTM and GRU, a four-field NamedTuple state, a linear cell, a composite's
# tuple state, a function cell), and on every case in the slow tier.
EVERYDAY = ("lstm", "gru", "slstm", "s6", "chain", "user_fn")


def everyday(cases: list[Case]) -> list[Any]:
    """`cases` as pytest params, those outside `EVERYDAY` marked `slow`."""
    return [
        pytest.param(c, id=c.name, marks=() if c.name in EVERYDAY else pytest.mark.slow)
        for c in cases
    ]


# Cells whose step and strategy paths other everyday cases run: the plain matrix memories
# share `_MemoryCell.__call__` with GLA, and the chunkwise plain path with GatedMemory;
# Gated DeltaNet runs DeltaNet's paths with a decay. Their cell contract tests are in the
# slow tier.
SLOW_CONTRACT = ("retention", "mamba2", "deltanet")
# MGU's step, values and gradients, runs every day against Flax's (tests/test_interop.py):
# its contract suite is in the slow tier too, its oracle grids where every cell's are.
SLOW_CONTRACT_ONLY = ("mgu",)


def contract(cases: list[Case]) -> list[Any]:
    """`cases` as pytest params for the cell contract suite, `SLOW_CONTRACT` (and
    `SLOW_CONTRACT_ONLY`) marked `slow`."""
    slow = (*SLOW_CONTRACT, *SLOW_CONTRACT_ONLY)
    return [
        pytest.param(c, id=c.name, marks=pytest.mark.slow if c.name in slow else ()) for c in cases
    ]


def ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


def tree_allclose(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Assert two pytrees have the same structure and numerically close leaves."""
    assert jax.tree.structure(a) == jax.tree.structure(b), (
        f"structures differ: {jax.tree.structure(a)} vs {jax.tree.structure(b)}"
    )
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        # equal_nan=False: a NaN on both sides is a failure, not a match.
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, equal_nan=False
        )


def scan_data(case: Case, batch: tuple[int, ...], steps: int, seed: int = 0) -> tuple[Any, ...]:
    """A scan's data for `case`: params, a per-sequence initial state, a different `state0`,
    `steps` inputs with NaN padding past each length (never read), lengths with 0 and
    `steps`, reset flags, output weights."""
    T = steps
    params = case.params(seed)
    n = math.prod(batch)
    lengths = np.array(([5, 0, T, 3, 1, T] * 2)[:n]).reshape(batch)
    # NumPy's generator: jax.random compiles a program per shape.
    rng = np.random.default_rng(seed + 1)
    xs = rng.standard_normal((T, *batch, IN), dtype=np.float32)
    t = np.arange(T).reshape(T, *(1,) * len(batch))
    xs = np.where((t < lengths)[..., None], xs, np.float32(np.nan))
    resets = rng.random((T, *batch)) < 0.3
    w_y = rng.standard_normal((T, *batch, case.out), dtype=np.float32)
    h0 = jax.tree.map(
        lambda a: (
            a + 0.1 * jnp.arange(n, dtype=a.dtype).reshape(*batch, *(1,) * (a.ndim - len(batch)))
        ),
        oracle.batched(case.state(params), batch),
    )
    s0 = jax.tree.map(lambda a: 0.3 - a, h0)
    return params, h0, s0, xs, lengths, resets, w_y
