"""The chunkwise strategy: a matrix memory (a `MatrixMemory` cell: `MLSTMCell`,
`RetentionCell`, `Mamba2Cell`, `GLACell`) over chunks of `CHUNK` steps. Within a chunk every
read is a masked, decay-weighted `(Q K^T) V` plus the state entering the chunk read by `Q`;
across chunks the state takes one step per chunk (`lax.scan`). All of it is matrix products
and elementwise work, differentiated by JAX, forward mode included.

Per head, for a row `t` of a chunk and a column `s <= t` in the same segment (no reset
between them) with `s` a valid step:

    Lam[t, s] = sum_{s < u <= t} log a_u      (a segment sum: no difference of long sums)
    E_t       = sum_{r <= u <= t} log a_u     (r: the segment's first step in the chunk)
    read_t    = sum_s exp(Lam[t, s] + log i_s) (q_t . k_s) v_s + exp(E_t) base_t q_t

`base_t` is the state entering the chunk, or `state0` after a reset; a padded step has no
decay and writes nothing. With a decay per key channel (GLA), the weight moves inside the
key product, `sum_j q_tj k_sj exp(Lam_j[t, s])`: exact per channel within sub-chunks, and
across them split at a sub-chunk boundary into two factors of at most 1 each
(`_channelwise`), so no exponent exceeds 0 there either.

A normalised memory (mLSTM) carries its stabiliser `m`, computed exactly as the cell's step
computes it: `m_t = max(m_base + E_t, max_s (log i_s +
Lam[t, s]))`, where an empty base (all zeros) adds no term and the first write's forget
factor is capped as in the cell; every other exponent is taken after subtracting `m_t`, so
none exceeds 0. The one case where the result's `m` differs from the cell's: a write of an
exactly zero key into an empty memory (the cell restarts `m` at the next step); the outputs
and what the state represents (`C e^m`, `n e^m`) are the same there. mlstm_kernels' chunkwise
mLSTM starts its stabiliser at 0 rather than at the first write and scales the query rather
than the key; its memory is this one's transposed and scaled by `sqrt(d)`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..._contracts import PyTree, Strategy, is_matrix_memory
from .. import policy
from ..blocks import StepMasks, cut_at, first_step, in_blocks
from .sequential import SEQUENTIAL

if TYPE_CHECKING:
    from ..options import Options

# Steps per chunk: the intra-chunk products cost `L^2` per step pair of a chunk, the scan
# over chunks `T / L` sequential steps. With a decay per key channel (GLA) the pairs within
# a sub-chunk have their own `d_k` weights each (`_channelwise`).
CHUNK = 64
CHUNK_PER_CHANNEL = 16
# Steps per sub-chunk with per-channel decays: pairs within one are weighed channel by
# channel (`SUB^2 d_k` per sub-chunk), pairs across sub-chunks by matrix products.
SUB = 4


def run(
    cell: Any,
    params: PyTree,
    h: PyTree,
    xs: jax.Array,
    opts: Options,
    masks: StepMasks | None = None,
    *,
    chunk: int = CHUNK,
) -> tuple[PyTree, jax.Array]:
    """The cell over time-major `xs: (T, *batch, in)` from the settled state `h`."""
    T = xs.shape[0]
    if T == 0:
        return SEQUENTIAL.run(cell, params, h, xs, opts, masks)
    steps = cell.memory_steps(params, xs)
    _check_steps(cell, steps)
    batch = tuple(xs.shape[1:-1])

    def memory(state: PyTree) -> tuple[Any, ...]:  # (*batch, ...) -> (N, ...)
        return tuple(None if a is None else _flat(a, len(batch)) for a in cell.memory_state(state))

    s0 = None if masks is None or masks.reset is None else memory(masks.state0)
    carry, read = run_steps(steps, memory(h), s0, masks, opts, cell.normalised, chunk)
    read = read.reshape(T, *batch, *read.shape[2:])
    state = (None if a is None else a.reshape(*batch, *a.shape[1:]) for a in carry)
    return cell.cell_state(*state), cell.memory_readout(params, read, steps.aux)


def _flat(a: jax.Array, axes: int, lead: int = 0) -> jax.Array:
    """`a` with its `axes` batch axes after the first `lead` axes merged into one."""
    return a.reshape(*a.shape[:lead], -1, *a.shape[lead + axes :])


def _check_steps(cell: Any, steps: Any) -> None:
    """The combinations of `memory_steps` the chunkwise forms cover."""
    per_channel = steps.log_decay.ndim == steps.q.ndim
    if cell.normalised and per_channel:
        raise ValueError(
            f"{cell!r}: a normalised matrix memory takes one decay per head, log_decay of "
            f"shape (T, *batch, heads); its memory_steps gave {steps.log_decay.shape}, one per "
            "key channel. Return a decay per head, or set normalised = False."
        )
    if steps.beta is not None and (cell.normalised or per_channel or steps.log_input is not None):
        raise ValueError(
            f"{cell!r}: the delta rule (memory_steps with a beta) takes one decay per head, "
            "no input gate and no normaliser; its memory_steps gave log_decay of shape "
            f"{steps.log_decay.shape}, log_input "
            f"{None if steps.log_input is None else steps.log_input.shape} and normalised = "
            f"{cell.normalised}. Fold an input gate into beta or v, and return one decay per "
            "head."
        )


def run_steps(
    steps: Any,
    carry: tuple[Any, ...],
    s0: tuple[Any, ...] | None,
    masks: StepMasks | None,
    opts: Options,
    normalised: bool,
    chunk: int = CHUNK,
) -> tuple[tuple[Any, ...], jax.Array]:
    """A matrix memory's `steps` (`MemorySteps`, time-major `(T, *batch, ...)`) from the
    memory `carry` (`(S, n, m)` with the batch flattened, `(N, heads, ...)`; `s0` the same
    for `state0` where there are resets): the final memory and the reads `(T, N, heads,
    d_v)`."""
    T, axes = steps.q.shape[0], steps.q.ndim - 3
    q = _flat(steps.q, axes, 1)
    lam = _flat(steps.log_decay, axes, 1)
    log_input = steps.log_input
    iota = jnp.zeros(q.shape[:-1], lam.dtype) if log_input is None else _flat(log_input, axes, 1)
    valid = None if masks is None else masks.valid
    reset = None if masks is None else masks.reset
    data = (
        q,
        _flat(steps.k, axes, 1),
        _flat(steps.v, axes, 1),
        lam,
        iota,
        None if valid is None else _flat(valid, axes, 1),
        None if reset is None else _flat(reset, axes, 1),
        None if steps.beta is None else _flat(steps.beta, axes, 1),
    )
    per_channel = lam.ndim == q.ndim
    size = opts.chunk_size or (CHUNK_PER_CHANNEL if per_channel else chunk)
    if steps.beta is not None:
        memory_kind = _delta
    elif normalised:
        memory_kind = _normalised
    else:
        memory_kind = _channelwise if per_channel else _plain

    def run_chunks(carry: Any, data: Any) -> tuple[Any, jax.Array]:
        # One chunk of the run's own length where it is shorter than `size` (no padding)
        return memory_kind(_in_chunks(data, min(size, data[0].shape[0])), carry, s0)

    if opts.reverse:
        data = jax.tree.map(lambda a: jnp.flip(a, 0), data)
    k = opts.truncate_every
    if k is None or k >= T:
        carry, read = run_chunks(carry, data)
    else:

        def block(carry: Any, d: Any, start: jax.Array) -> tuple[Any, jax.Array]:
            carry = cut_at(carry, start, k, None if valid is None else first_step(d[5]))
            return run_chunks(carry, d)

        carry, read = in_blocks(block, carry, data, k, reverse=False)
    if opts.reverse:
        read = jnp.flip(read, 0)
    return carry, read


def delta_gain(steps: Any, masks: StepMasks | None, opts: Options) -> jax.Array:
    """The linear part of a delta rule's map over `steps`, `S -> S G + S_zero`: `G: (N,
    heads, d_k, d_k)` (batch flattened), the product of the steps' `a_t (I - beta_t k_t
    k_t^T)`, zero where a reset drops the entering state. It is the memory run from the
    identity with zero values (and zero `state0`)."""
    k = steps.k
    N = math.prod(k.shape[1:-2])
    heads, dk = k.shape[-2:]
    eye = jnp.broadcast_to(jnp.eye(dk, dtype=k.dtype), (N, heads, dk, dk))
    zero = jnp.zeros_like(eye)
    s0 = None if masks is None or masks.reset is None else (zero, None, None)
    steps = steps._replace(v=jnp.zeros_like(k))
    (gain, _, _), _ = run_steps(steps, (eye, None, None), s0, masks, opts, False)
    return gain


def _segment_sums(x: jax.Array) -> jax.Array:
    """`out[..., a, b] = sum_{b < u <= a} x[..., u]` for `b < a` (0 elsewhere), each entry a
    sum of its own terms (no difference of cumulative sums): one matrix product with the
    0/1 mask `M[u, (a, b)] = b < u <= a`, at full precision (a cumulative sum on the CPU is
    a windowed reduction, `n` times the work, and so is its transpose)."""
    n = x.shape[-1]
    x = jnp.maximum(x, jnp.finfo(x.dtype).min)  # a log-decay of -inf: 0 * -inf would be NaN
    u, a, b = jnp.meshgrid(jnp.arange(n), jnp.arange(n), jnp.arange(n), indexing="ij")
    M = ((b < u) & (u <= a)).astype(x.dtype).reshape(n, n * n)
    out = jnp.matmul(x, M, precision=lax.Precision.HIGHEST)
    return out.reshape(*x.shape, n)


class _Chunks(NamedTuple):
    """One run's steps in chunks, per head: `(N, heads, C, L, ...)` (masks `(N, C, L)`)."""

    q: jax.Array
    k: jax.Array  # zero at padded steps, as `v`
    v: jax.Array
    lam: jax.Array  # log-decays, 0 at padded steps
    iota: jax.Array  # log input gates
    valid: jax.Array  # (N, C, L)
    # Whether the run has lengths or resets; without them every chunk's first step is
    # valid and starts its one segment (the chunks' padding is at the end of the last).
    masked: bool
    reset: jax.Array | None  # (N, C, L)
    start: jax.Array  # (N, C, L): the first step of each row's segment in its chunk
    place: jax.Array  # (N, C, L): each step's place in its chunk
    first_segment: jax.Array | None  # (N, 1, C, L): the row reads the entering state
    pair: jax.Array  # (N, 1, C, L, L): column s is a valid step of row t's segment, s <= t
    E: jax.Array  # (N, heads, C, L) or (N, heads, C, L, d_k): log-decay of the row's base
    # One decay per head: log-decay from column s to row t, and the log weight of each write
    # read by each row, or -inf (`(N, heads, C, L, L)`); None with per-channel decays.
    Lam: jax.Array | None
    ell: jax.Array | None
    # Per-channel decays: the log-decays summed from the chunk's start to each step,
    # `(N, heads, C, L, d_k)`; None with one decay per head.
    b: jax.Array | None
    steps: int  # the steps before the padding
    beta: jax.Array | None = None  # (N, heads, C, L): the delta rule's, 0 at padded steps

    @property
    def live(self) -> jax.Array:  # (N, 1, C, L): broadcast over heads
        return self.valid[:, None]

    @property
    def per_channel(self) -> bool:
        """Whether the decays are per key channel (`E: (N, heads, C, L, d_k)`)."""
        return self.b is not None

    def qk(self) -> jax.Array:
        """`q_t . k_s` for every pair of a chunk, `(N, heads, C, L, L)`."""
        return jnp.einsum("nhctk,nhcsk->nhcts", self.q, self.k)

    def base(self, entering: jax.Array, zero: jax.Array) -> jax.Array:
        """Per row (both `(N, heads, C, L, ...)`): what the entering state gives in a
        chunk's first segment, what `state0` gives after a reset."""
        first = self.first_segment
        if first is None:
            return entering
        return jnp.where(first.reshape(*first.shape, *(1,) * (entering.ndim - 4)), entering, zero)

    def resets_in(self) -> jax.Array | None:
        """Whether each chunk has a reset, chunks leading: `(C, N)`."""
        return None if self.reset is None else jnp.moveaxis(self.reset.any(-1), 1, 0)


def _lasts(a: jax.Array) -> jax.Array:
    """The last row of each chunk, chunks leading: `(N, heads, C, ..., L)` to `(C, N, heads,
    ...)`."""
    return jnp.moveaxis(a[..., -1], 2, 0)


def _in_chunks(data: Any, size: int) -> _Chunks:
    """Time-major steps `(q, k, v, log_decay, log_input, valid, reset, beta)`, each `(Tb, N,
    ...)` (`valid`, `reset` and `beta` may be None: no lengths, no resets, no delta rule), in
    chunks of `size`, the last one padded with invalid steps. With one decay per head, the
    segment sums `Lam` and the log weights `ell` of every pair; with a decay per key channel
    `(Tb, N, heads, d_k)`, the sums from the chunk's start, `b` (`_channelwise`)."""
    q, k, v, lam, iota, valid, reset, beta = data
    Tb, L = q.shape[0], size
    C = -(-Tb // L)
    pad = C * L - Tb
    per_channel = lam.ndim == q.ndim
    masked = valid is not None or reset is not None
    if valid is None:
        valid = jnp.ones(q.shape[:2], bool)

    def chunked(a: jax.Array, fill: Any) -> jax.Array:  # (Tb, N, ...) -> (N, C, L, ...)
        if pad:
            a = jnp.concatenate([a, jnp.full((pad, *a.shape[1:]), fill, a.dtype)])
        a = jnp.moveaxis(a, 0, 1)
        return a.reshape(a.shape[0], C, L, *a.shape[2:])

    def heads_first(a: jax.Array) -> jax.Array:  # (N, C, L, heads, ...) -> (N, heads, C, L, ...)
        return jnp.moveaxis(a, 3, 1)

    valid = chunked(valid, False)
    live = valid[:, None]
    q, k, v = (heads_first(chunked(a, 0)) for a in (q, k, v))
    lam = heads_first(chunked(lam, 0))
    if masked:  # (the padding is zero already)
        k = jnp.where(live[..., None], k, 0)
        v = jnp.where(live[..., None], v, 0)
        lam = jnp.where(live[..., None] if per_channel else live, lam, 0)
    iota = heads_first(chunked(iota, 0))
    if beta is not None:
        beta = heads_first(chunked(beta, 0))
        beta = jnp.where(live, beta, 0) if masked else beta
    t = jnp.broadcast_to(jnp.arange(L), valid.shape)  # each step's place in its chunk
    if reset is None:
        start, first_segment = jnp.zeros(valid.shape, jnp.int32), None
    else:
        reset = chunked(reset, False)
        start = lax.cummax(jnp.where(reset, t, 0), axis=valid.ndim - 1)
        first_segment = (jnp.cumsum(reset, axis=-1) == 0)[:, None]
    pair = (t[:, None, :, :, None] >= t[:, None, :, None, :]) & live[..., None, :]
    if reset is not None:  # the same segment: no reset between column and row
        pair = pair & (start[:, None, :, :, None] == start[:, None, :, None, :])
    start_h = jnp.broadcast_to(start[:, None], lam.shape[:4])
    if per_channel:
        b = jnp.cumsum(lam, axis=3)
        before = jnp.take_along_axis(b, jnp.maximum(start_h - 1, 0)[..., None], axis=3)
        E = b - jnp.where((start_h > 0)[..., None], before, 0)
        return _Chunks(q, k, v, lam, iota, valid, masked, reset, start, t, first_segment, pair,
                       E, None, None, b, Tb)  # fmt: skip
    sums = _segment_sums(jnp.concatenate([jnp.zeros_like(lam[..., :1]), lam], axis=-1))
    if reset is None:  # every row's segment starts at the chunk's start
        E = sums[..., 1:, 0]
    else:
        E = jnp.take_along_axis(sums[..., 1:, :], start_h[..., None], axis=-1)[..., 0]
    Lam = sums[..., 1:, 1:]
    ell = jnp.where(pair, Lam + iota[..., None, :], -jnp.inf)
    return _Chunks(q, k, v, lam, iota, valid, masked, reset, start, t, first_segment, pair, E,
                   Lam, ell, None, Tb, beta)  # fmt: skip


def _plain(ch: _Chunks, carry: tuple[Any, ...], s0: Any) -> tuple[tuple[Any, ...], jax.Array]:
    """A memory without a normaliser and one decay per head: `read_t = sum_s exp(ell[t, s])
    (q_t . k_s) v_s + exp(E_t) base_t q_t`, every weight at most 1."""
    assert ch.ell is not None
    P = jnp.exp(ch.ell)
    U = jnp.einsum("nhcs,nhcsv,nhcsk->cnhvk", P[..., -1, :], ch.v, ch.k)
    g = jnp.exp(_lasts(ch.E))[..., None, None]
    read = _carried(ch, carry, s0, U, g, ch.q, jnp.exp(ch.E)[..., None])
    intra = jnp.einsum("nhcts,nhcsv->nhctv", P * ch.qk(), ch.v)
    return read[0], _time_major(read[1] + intra, ch.steps)


def _channelwise(
    ch: _Chunks, carry: tuple[Any, ...], s0: Any
) -> tuple[tuple[Any, ...], jax.Array]:
    """A memory without a normaliser with a decay per key channel (GLA), in sub-chunks of
    `SUB` steps (or the largest divisor of the chunk length up to half of it). Pairs within
    a sub-chunk are weighed exactly, `exp(b_tj - b_sj)` channel by channel; a pair across
    sub-chunks splits at the end `r` of the sub-chunk before the row's, `q_tj exp(b_tj -
    b_rj)` times `k_sj exp(b_rj - b_sj)`, both exponents at most 0 (`s <= r < t`), so that
    all but the diagonal blocks are matrix products (the secondary chunking of
    flash-linear-attention's GLA), and no weight exceeds 1. `b` sums the log-decays from
    the chunk's start, so a pair's exponent is a difference of two sums of at most `L`
    terms (within the chunk, never across the sequence)."""
    assert ch.b is not None
    N, heads, C, L, _ = ch.b.shape
    l = max(d for d in range(1, max(min(SUB, L // 2), 1) + 1) if L % d == 0)  # noqa: E741
    n = L // l
    b, k = ch.b, ch.k * jnp.exp(ch.iota)[..., None]  # the input gate folded into the keys

    # Every chunk of every head on one leading axis, `G = N * heads * C` (fewer axes in the
    # reductions: XLA's CPU library fusions crash on some of the 8-axis ones).
    G = N * heads * C
    flat_b, flat_k = b.reshape(G, L, -1), k.reshape(G, L, -1)
    bq, qq, kq = (a.reshape(G, n, l, -1) for a in (b, ch.q, k))
    # within a sub-chunk: every pair's own decays (a pair with s > t is dropped by `pair`)
    W = jnp.exp(jnp.minimum(bq[:, :, :, None, :] - bq[:, :, None, :, :], 0))
    inner = jnp.sum(qq[:, :, :, None, :] * kq[:, :, None, :, :] * W, axis=-1)  # (G, n, l, l)
    inner = inner[:, :, :, None, :] * jnp.eye(n, dtype=inner.dtype).reshape(1, n, 1, n, 1)
    # across sub-chunks: through the end of the sub-chunk before the row's
    ends = jnp.concatenate([jnp.zeros_like(bq[:, :1, 0]), bq[:, :-1, -1]], axis=1)  # (G, n, d_k)
    q_r = qq * jnp.exp(jnp.minimum(bq - ends[:, :, None, :], 0))
    k_r = flat_k[:, None] * jnp.exp(jnp.minimum(ends[:, :, None, :] - flat_b[:, None], 0))
    across = jnp.einsum("gitk,gisk->gits", q_r, k_r)  # (G, n, l, L)
    earlier = jnp.arange(L)[None, :] < (jnp.arange(n) * l)[:, None]  # (n, L): s before block i
    A = jnp.where(earlier.reshape(1, n, 1, L), across, 0) + inner.reshape(G, n, l, L)
    A = jnp.where(ch.pair, A.reshape(N, heads, C, L, L), 0)
    last = jnp.where(ch.pair[..., -1, :, None], jnp.exp(jnp.minimum(b[..., -1:, :] - b, 0)), 0)
    U = jnp.einsum("nhcsk,nhcsv->cnhvk", k * last, ch.v)
    g = jnp.exp(jnp.moveaxis(ch.E[:, :, :, -1], 2, 0))[..., None, :]  # scales S's columns
    read = _carried(ch, carry, s0, U, g, ch.q * jnp.exp(ch.E), None)
    return read[0], _time_major(read[1] + jnp.einsum("nhcts,nhcsv->nhctv", A, ch.v), ch.steps)


def _carried(
    ch: _Chunks, carry: Any, s0: Any, U: jax.Array, g: jax.Array, q: jax.Array, scale: Any
) -> tuple[Any, jax.Array]:
    """The plain memories' scan over chunks, `S <- g * S_b + U`, and each row's read of its
    base, `q . base` (times `scale`)."""
    carry, S_in = _entering(ch, carry, s0, (U, g), lambda S_b, U_c, g_c: g_c * S_b + U_c)
    reads = _read(ch, q, S_in, s0)
    return carry, reads if scale is None else scale * reads


def _entering(ch: _Chunks, carry: Any, s0: Any, per_chunk: Any, update: Any) -> Any:
    """The scan over chunks of a memory without a normaliser, `S <- update(S_b, *per_chunk)`
    (`S_b`: `state0` where the chunk has a reset): the final memory and the state entering
    each chunk, `(N, heads, C, d_v, d_k)`."""

    def step(S: Any, inp: Any) -> tuple[Any, Any]:
        *inp, r_c = inp
        S_b = S[0] if r_c is None else jnp.where(r_c[:, None, None, None], s0[0], S[0])
        return (update(S_b, *inp), None, None), S[0]

    carry, S_in = _over_chunks(step, carry, (*per_chunk, ch.resets_in()))
    return carry, jnp.moveaxis(S_in, 0, 2)


def _over_chunks(step: Any, carry: Any, per_chunk: Any) -> tuple[Any, Any]:
    """`lax.scan(step, carry, per_chunk)` over the leading (chunk) axis; one chunk is one
    call of `step`, without a loop."""
    if jax.tree.leaves(per_chunk)[0].shape[0] != 1:
        return lax.scan(step, carry, per_chunk)
    carry, out = step(carry, jax.tree.map(lambda a: a[0], per_chunk))
    return carry, jax.tree.map(lambda a: a[None], out)


def _read(ch: _Chunks, a: jax.Array, S_in: jax.Array, s0: Any) -> jax.Array:
    """Each row's `S_b a_t` for rows `a: (N, heads, C, L, d_k)`: the state entering its
    chunk in the chunk's first segment, `state0` after a reset."""
    reads = jnp.einsum("nhctk,nhcvk->nhctv", a, S_in)
    if s0 is None:
        return reads
    return ch.base(reads, jnp.einsum("nhctk,nhvk->nhctv", a, s0[0]))


def _delta(ch: _Chunks, carry: tuple[Any, ...], s0: Any) -> tuple[tuple[Any, ...], jax.Array]:
    """The delta rule, `S_t = a_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T`, one
    decay per head. With `u_t = beta_t (v_t - a_t S_{t-1} k_t)` the state is `S_t = a_t
    S_{t-1} + u_t k_t^T`, a plain memory written with `u`, so within a chunk

        S_t    = e^{E_t} S_b + sum_{s <= t} e^{Lam[t, s]} u_s k_s^T
        u_t    = beta_t v_t - beta_t e^{E_t} S_b k_t - sum_{s < t} A[t, s] u_s,
        A[t, s] = beta_t e^{Lam[t, s]} (k_t . k_s)

    a unit lower-triangular system `(I + A) U = beta V - beta e^E K S_b^T` per segment (the
    UT form of the product of the steps' `I - beta k k^T`): with `(I + A)^{-1}`
    (`_unit_lower_inverse`), `U0 = (I + A)^{-1} beta V` and `W = (I + A)^{-1} beta e^E K`,
    and `U = U0 - W S_b^T`. The chunk
    maps the state entering it affinely, `S -> S_b P + B` with `P = e^{E_L} I - W^T K_w` and
    `B = U0^T K_w` (`K_w`: the keys decayed to the chunk's last step, in its last segment),
    so the scan over chunks is one `d_v d_k^2` product per chunk. Every exponent is a segment
    sum, at most 0; with unit keys and `beta` in `[0, 1]` every step's factor is a
    contraction, and so is the solve."""
    assert ch.ell is not None and ch.beta is not None
    N, heads, C, L, dk = ch.k.shape
    dv = ch.v.shape[-1]
    decay = jnp.exp(ch.ell)  # (N, heads, C, L, L): e^{Lam[t, s]} for s <= t in t's segment
    eE = jnp.exp(ch.E)
    A = ch.beta[..., None] * decay * jnp.einsum("nhctk,nhcsk->nhcts", ch.k, ch.k)
    rhs = ch.beta[..., None] * jnp.concatenate([ch.v, eE[..., None] * ch.k], axis=-1)
    G = N * heads * C  # every chunk of every head on one batch axis
    inverse = _unit_lower_inverse(jnp.tril(A, -1).reshape(G, L, L)).reshape(A.shape)
    X = jnp.einsum("nhcts,nhcsd->nhctd", inverse, rhs)
    U0, W = X[..., :dv], X[..., dv:]
    Kw = decay[..., -1, :, None] * ch.k  # (N, heads, C, L, d_k)
    eye = jnp.eye(dk, dtype=ch.k.dtype).reshape(1, 1, 1, dk, dk)
    P = _lasts(eE)[..., None, None] * eye - jnp.einsum("nhcsj,nhcsk->cnhjk", W, Kw)
    B = jnp.einsum("nhcsv,nhcsk->cnhvk", U0, Kw)

    def update(S_b: jax.Array, P_c: jax.Array, B_c: jax.Array) -> jax.Array:
        return jnp.einsum("nhvj,nhjk->nhvk", S_b, P_c) + B_c

    carry, S_in = _entering(ch, carry, s0, (P, B), update)
    U = U0 - _read(ch, W, S_in, s0)
    intra = jnp.einsum("nhcts,nhcsv->nhctv", decay * ch.qk(), U)
    return carry, _time_major(eE[..., None] * _read(ch, ch.q, S_in, s0) + intra, ch.steps)


# Rows solved one after another by substitution; larger systems split in two (`_unit_lower_
# inverse`).
SUBSTITUTION = 16


def _unit_lower_inverse(A: jax.Array) -> jax.Array:
    """`(I + A)^{-1}` for strictly lower-triangular `A: (G, n, n)`: by forward substitution
    up to `SUBSTITUTION` rows, above it by halves, `[[X11, 0], [-X22 A21 X11, X22]]` (the
    blocked solve of flash-linear-attention's `solve_tril`), so it is matrix products but
    for the small diagonal blocks. XLA's CPU triangular solve (LAPACK's `trsm`, its batch
    spread over the thread pool) is not used: two of them running at once, as in the
    gradient, can each wait for the other's threads and never finish (jaxlib 0.10.2, 2
    cores, a batch of 256)."""
    n = A.shape[-1]
    if n <= SUBSTITUTION:
        eye = jnp.eye(n, dtype=A.dtype)
        rows = eye[None, :1] + jnp.zeros_like(A[:, :1])  # (G, 1, n): row 0 is e_0
        for i in range(1, n):
            row = eye[i][None, None] - jnp.einsum("gj,gjk->gk", A[:, i, :i], rows)[:, None]
            rows = jnp.concatenate([rows, row], axis=1)
        return rows
    h = n // 2
    X11 = _unit_lower_inverse(A[:, :h, :h])
    X22 = _unit_lower_inverse(A[:, h:, h:])
    X21 = -jnp.einsum("gij,gjk,gkl->gil", X22, A[:, h:, :h], X11)
    top = jnp.concatenate([X11, jnp.zeros_like(A[:, :h, h:])], axis=2)
    return jnp.concatenate([top, jnp.concatenate([X21, X22], axis=2)], axis=1)


def _empty(S: jax.Array, n: jax.Array) -> jax.Array:
    """Whether a memory holds nothing (the cell's test): `C = 0` and `n = 0`, per head."""
    return (S == 0).all(axis=(-2, -1)) & (n == 0).all(axis=-1)


def _normalised(ch: _Chunks, carry: tuple[Any, ...], s0: Any) -> tuple[tuple[Any, ...], jax.Array]:
    """The stabilised (mLSTM) memory. Per row: `mu`, the largest log weight of a write; the
    first valid step of the row's segment (`at_first`), whose forget factor the cell caps
    where the base is empty; the row's stabiliser `m` and the factor `beta` of its base."""
    lam, Lam, E, ell = ch.lam, ch.Lam, ch.E, ch.ell
    assert Lam is not None and ell is not None
    mu = ell.max(axis=-1)
    if ch.masked:
        counts = jnp.cumsum(ch.valid, axis=-1)
        before = jnp.take_along_axis(jnp.pad(counts, [(0, 0), (0, 0), (1, 0)]), ch.start, -1)
        seen = counts - before  # valid steps of the row's segment so far
        first = lax.cummax(jnp.where(ch.valid & (seen == 1), ch.place, 0), ch.valid.ndim - 1)
        first_h = jnp.broadcast_to(first[:, None], lam.shape)
        at_first = (
            jnp.take_along_axis(lam, first_h, axis=-1),
            jnp.take_along_axis(ch.iota, first_h, axis=-1),
            jnp.take_along_axis(Lam, first_h[..., None], axis=-1)[..., 0],
        )
        written = jnp.broadcast_to((seen >= 1)[:, None], lam.shape)
    else:  # every chunk's first step is valid: the first write of every row's segment
        at_first = (
            jnp.broadcast_to(lam[..., :1], lam.shape),
            jnp.broadcast_to(ch.iota[..., :1], lam.shape),
            Lam[..., 0],
        )
        written = jnp.ones(lam.shape, bool)
    cap = 0.5 * math.log(float(jnp.finfo(lam.dtype).max))

    def stabiliser(mu: Any, E: Any, m_b: Any, empty: Any, written: Any, at_first: Any) -> Any:
        lam_f, iota_f, Lam_f = at_first
        nu = jnp.where(empty, -jnp.inf, E + m_b)
        m = jnp.where(jnp.isfinite(mu) | jnp.isfinite(nu), jnp.maximum(mu, nu), m_b)
        capped = Lam_f + iota_f - m + jnp.minimum(lam_f + m_b - iota_f, cap)
        return m, jnp.exp(jnp.where(empty & written, capped, E + m_b - m))

    scale = jnp.where(jnp.isfinite(mu), mu, 0)[..., -1:]  # weights of the last row, <= 1
    W_last = jnp.exp(ell[..., -1, :] - scale)
    U = jnp.einsum("nhcs,nhcsv,nhcsk->cnhvk", W_last, ch.v, ch.k)
    u = jnp.einsum("nhcs,nhcsk->cnhk", W_last, ch.k)
    per_chunk = (U, u, _lasts(mu), _lasts(E), _lasts(written), tuple(map(_lasts, at_first)))

    def step(memory: Any, inp: Any) -> tuple[Any, Any]:
        U_c, u_c, mu_c, E_c, written_c, at_first_c, r_c = inp
        S_b, n_b, m_b = memory
        if r_c is not None:
            S_b = jnp.where(r_c[:, None, None, None], s0[0], S_b)
            n_b = jnp.where(r_c[:, None, None], s0[1], n_b)
            m_b = jnp.where(r_c[:, None], s0[2], m_b)
        m, beta = stabiliser(mu_c, E_c, m_b, _empty(S_b, n_b), written_c, at_first_c)
        w = jnp.exp(jnp.where(jnp.isfinite(mu_c), mu_c - m, -jnp.inf))
        S = beta[..., None, None] * S_b + w[..., None, None] * U_c
        n = beta[..., None] * n_b + w[..., None] * u_c
        return (S, n, m), memory

    carry, entering = _over_chunks(step, carry, (*per_chunk, ch.resets_in()))
    S_in, n_in, m_in = (jnp.moveaxis(a, 0, 2) for a in entering)  # (N, heads, C, ...)
    read_S = jnp.einsum("nhctk,nhcvk->nhctv", ch.q, S_in)
    read_n = jnp.einsum("nhctk,nhck->nhct", ch.q, n_in)
    m_b = jnp.broadcast_to(m_in[..., None], lam.shape)
    empty = jnp.broadcast_to(_empty(S_in, n_in)[..., None], lam.shape)
    if s0 is not None:
        S0, n0, m0 = s0
        read_S = ch.base(read_S, jnp.einsum("nhctk,nhvk->nhctv", ch.q, S0))
        read_n = ch.base(read_n, jnp.einsum("nhctk,nhk->nhct", ch.q, n0))
        m_b = ch.base(m_b, jnp.broadcast_to(m0[:, :, None, None], lam.shape))
        empty = ch.base(empty, jnp.broadcast_to(_empty(S0, n0)[:, :, None, None], lam.shape))
    m, beta = stabiliser(mu, E, m_b, empty, written, at_first)
    Wqk = jnp.exp(ell - m[..., None]) * ch.qk()
    num = jnp.einsum("nhcts,nhcsv->nhctv", Wqk, ch.v) + beta[..., None] * read_S
    den = jnp.abs(Wqk.sum(axis=-1) + beta * read_n)
    # As the cell: exp(-m) capped at e^80, and no output where the denominator is 0.
    den = jnp.maximum(den, jnp.exp(jnp.minimum(-m, 80.0)))
    den = jnp.where(den > 0, den, jnp.inf)
    # A row past a sequence's end (or the chunks' padding) is dropped: 1, not a denominator
    # that may underflow when squared in the gradient (0 * inf).
    den = jnp.where(ch.live, den, 1)
    return carry, _time_major(num / den[..., None], ch.steps)


def _time_major(read: jax.Array, Tb: int) -> jax.Array:
    """`(N, heads, C, L, d_v)` to `(Tb, N, heads, d_v)`, the padding dropped."""
    N, heads, C, L, d = read.shape
    read = read.reshape(N, heads, C * L, d)[:, :, :Tb]
    return jnp.transpose(read, (2, 0, 1, 3))


def _not_matrix_memory(cell: object, opts: object) -> str | None:
    if is_matrix_memory(cell):
        return None
    return (
        "needs a cell with a matrix memory (a MatrixMemory: MLSTMCell, RetentionCell, "
        "Mamba2Cell, GLACell), or a chain with one; "
        "this cell has none. Use strategy='auto' or 'sequential'."
    )


CHUNKWISE = Strategy(
    "chunkwise", run, _not_matrix_memory, forward_mode=True, auto=policy.chunkwise_picks
)
