"""The newer cells against their reference implementations: RGLRUCell against RecurrentGemma's
JAX `RGLRU`, SLSTMCell and MLSTMCell against the `xlstm` package's PyTorch paths,
SelectiveSSMCell against Mamba's `selective_scan_ref`, Mamba2Cell against mamba-ssm's
`ssd_minimal_discrete` and `selective_state_update_ref`, and GLACell and RetentionCell against
flash-linear-attention's naive PyTorch functions. Those packages do not install next to
recurjax's tests, so `fixtures/make_reference_fixtures.py` ran each one in its own
environment and saved its inputs, params, outputs, final states and the gradients of
`sum(y * g)` (for the input, every param and the initial state), at the input's own scale and
at 100 and 1e4 times it, with the versions it ran (`versions`); each test maps the reference's
params to the cell's layout, runs recurjax on the same inputs and compares all of them. The
mappings here are the ones a user porting weights needs."""

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurjax as rj

FIXTURES = Path(__file__).parent / "fixtures"


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as f:
        f = dict(f)
    assert "versions" in f and f["versions"].size, f"{name}.npz records no reference versions"
    return f


def _time_major(a: np.ndarray) -> jax.Array:
    """`(B, T, F)` to `(T, B, F)`."""
    return jnp.asarray(np.swapaxes(a, 0, 1))


def _close(actual, expected, rtol: float, atol: float, err_msg: str = "") -> None:
    np.testing.assert_allclose(
        np.asarray(actual),
        np.asarray(expected),
        rtol=rtol,
        atol=atol,
        equal_nan=False,
        err_msg=err_msg,
    )


def _prefix(scale: float) -> str:
    """The fixture keys' prefix for the run with the input times `scale` (the script's)."""
    return "" if scale == 1 else f"x{scale:g}."


def _scales(f: dict[str, np.ndarray]) -> list[float]:
    return [1.0, *(float(s) for s in f["large_scales"])]


# One comparison: its name, recurjax's array, the reference's (in recurjax's layout) and
# whether it is a gradient (False: an output or a final state).
Pair = tuple[str, jax.Array | np.ndarray, jax.Array | np.ndarray, bool]


def _compare(f, pairs: list[Pair], scale: float, tolerances) -> None:
    """Compares every pair: at scale 1 with `tolerances[is_grad]` = `(rtol, atol)`; at the
    large scales with that `rtol` and an `atol` scaled to the reference array's largest entry
    (`_large_atol`). Entries that the reference could not compute (its NaN or infinite
    gradients at 1e4, which the fixture lists in `nonfinite`) are left out, and recurjax's
    must be finite there too."""
    nonfinite = {entry.split()[0] for entry in f["nonfinite"]}
    for name, ours, theirs, is_grad in pairs:
        key, ours, theirs = _prefix(scale) + name, np.asarray(ours), np.asarray(theirs)
        where = f"{key} (scale {scale:g}) against {'; '.join(f['versions'])}"
        assert ours.shape == theirs.shape, where
        assert np.isfinite(ours).all(), f"recurjax's {where} is not finite"
        finite = np.isfinite(theirs)
        if not finite.all():
            assert key.split("[")[0] in nonfinite, (
                f"the reference's {where} has unlisted NaN or inf"
            )
            ours, theirs = ours[finite], theirs[finite]
        rtol, atol = tolerances[is_grad]
        if scale != 1:
            atol = _large_atol(rtol, atol, theirs)
        _close(ours, theirs, rtol, atol, where)


def _large_atol(rtol: float, atol: float, theirs: np.ndarray) -> float:
    """The absolute tolerance at a large input scale: `rtol` times the reference array's
    largest entry, and never below the unit-scale `atol`.

    At a large scale one array's entries span many orders of magnitude (a saturated gate
    gives a gradient of 1e-60 beside one of 1e4), and each entry is a sum of products whose
    terms are as large as the array's largest entries (`dW` sums `x * dpre` over time, with
    `x` of the input's scale): rounding is relative to that magnitude, not to the entry's
    own, so an entry far below it is only as accurate as `eps * max|array|`. Hence the same
    relative agreement as at scale 1, measured against the array's largest entry (at scale 1
    the entries are of order 1, and the fixed `atol` is that). The floor is for arrays that
    are exactly zero in the reference (a forget gate that underflowed) and 1e-31 in recurjax.
    Measured: float32 within 1.4e-6 of the largest entry (rtol 1e-5), float64 within 1.6e-14
    (rtol 1e-10 and 1e-9)."""
    return max(atol, rtol * float(np.max(np.abs(theirs), initial=0.0)))


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _sequence_and_grads(cell, params, h0, xs, g, strategy, chunk_size=None):
    """`(ys, h)` of `rj.scan` and the gradients of `sum(ys * g)` for params, `xs` and `h0`
    (compiled once for every input scale)."""

    def loss(params, xs, h0):
        h, ys = rj.scan(cell, params, h0, xs, strategy=strategy, chunk_size=chunk_size)
        return jnp.sum(ys * g), (ys, h)

    grads, (ys, h) = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, h0)
    return ys, h, grads


# --- RG-LRU: RecurrentGemma 1.0.1, float32 (its scan accumulates in float32) ----------------

_FLOAT32 = {False: (1e-5, 1e-6), True: (1e-5, 1e-5)}  # (rtol, atol): values, gradients


def _rglru(f):
    """RecurrentGemma's `RGLRU` params as `RGLRUCell`'s: the same `BlockDiagonalLinear`
    blocks `w: (heads, d, d)` with the biases `(heads, d)` flattened; `a_param` is `lam`."""
    heads, d, _ = f["params.a_gate.w"].shape
    params = {
        "wa": f["params.a_gate.w"],
        "ba": f["params.a_gate.b"].reshape(-1),
        "wx": f["params.input_gate.w"],
        "bx": f["params.input_gate.b"].reshape(-1),
        "lam": f["params.a_param"],
    }
    return rj.RGLRUCell(heads * d, heads * d, num_heads=heads), jax.tree.map(jnp.asarray, params)


@jax.custom_vjp
def _sqrt_bound_derivative(x: jax.Array) -> jax.Array:
    """RecurrentGemma's `sqrt_bound_derivative(x, 1000)`: the square root, with the derivative
    taken at `max(x, 1 / (4 * 1000**2))`."""
    return jnp.sqrt(x)


def _sqrt_bound_derivative_fwd(x):
    return jnp.sqrt(x), x


def _sqrt_bound_derivative_bwd(x, g):
    return (g / (2 * jnp.sqrt(jnp.maximum(x, 2.5e-7))),)


_sqrt_bound_derivative.defvjp(_sqrt_bound_derivative_fwd, _sqrt_bound_derivative_bwd)


@dataclasses.dataclass(frozen=True, repr=False)
class _RecurrentGemmaNormaliser(rj.RGLRUCell):
    """`RGLRUCell` with RecurrentGemma's input normaliser, `sqrt(1 - exp(2 log a))` with only
    its derivative bounded, for RGLRUCell's `sqrt(max(-expm1(2 log a), 2.5e-7))`.

    The two differ where a saturated gate drives `a` to 1, which large inputs do (at 100
    times the fixture's input, a third of the steps have `1 - a^2 < 2.5e-7`): there
    RGLRUCell's floor keeps `5e-4 * i * x` of the input where RecurrentGemma keeps
    `sqrt(1 - a^2) * i * x` (down to 0), with a derivative of 0 in `a` where RecurrentGemma's
    is 1000, and RecurrentGemma's `1 - exp(2 log a)` in float32 loses the digits that
    `expm1` keeps (2.6% of `1 - a^2` at 100). At the large scales the outputs of the two
    differ by up to 1.6e-3 of their largest entry; with this normaliser the rest of the
    cell (gates, every scan strategy, every gradient) agrees with RecurrentGemma to
    float32 rounding."""

    def coefficients(self, params, x):
        r = jax.nn.sigmoid(self._heads(x, params["wa"], params["ba"]))
        i = jax.nn.sigmoid(self._heads(x, params["wx"], params["bx"]))
        log_a = -8.0 * r * jnp.broadcast_to(jax.nn.softplus(params["lam"]), r.shape)
        return jnp.exp(log_a), _sqrt_bound_derivative(1 - jnp.exp(2 * log_a)) * (i * x)


def _rglru_pairs(f, cell, params, strategy: str, scale: float) -> list[Pair]:
    pre = _prefix(scale)
    xs = _time_major(f["x"] * np.float32(scale))
    ys, h, (dp, dxs, dh0) = _sequence_and_grads(
        cell, params, jnp.asarray(f["h0"]), xs, _time_major(f["g"]), strategy
    )
    pairs: list[Pair] = [
        ("y", ys, np.swapaxes(f[pre + "y"], 0, 1), False),
        ("h", h, f[pre + "h"], False),
        ("dx", dxs, np.swapaxes(f[pre + "dx"], 0, 1), True),
        ("dh0", dh0, f[pre + "dh0"], True),
    ]
    for ours, theirs in (("wa", "a_gate.w"), ("wx", "input_gate.w"), ("lam", "a_param")):
        pairs.append((f"grads.{theirs}", dp[ours], f[f"{pre}grads.{theirs}"], True))
    for ours, theirs in (("ba", "a_gate.b"), ("bx", "input_gate.b")):
        pairs.append((f"grads.{theirs}", dp[ours], f[f"{pre}grads.{theirs}"].reshape(-1), True))
    return pairs


@pytest.mark.parametrize(
    # Sequential and hoisted (what `auto` runs at these sizes) every day.
    "strategy",
    ["sequential", "hoisted", pytest.param("associative", marks=pytest.mark.slow)],
)
def test_rglru_equals_recurrentgemma(strategy):
    """RGLRUCell itself at the fixture's scale; at 100 and 1e4 times it, RGLRUCell's values
    and gradients are finite, and with RecurrentGemma's normaliser (see
    `_RecurrentGemmaNormaliser`: the one place where the two differ there) every array
    agrees."""
    f = _load("rglru_recurrentgemma")
    cell, params = _rglru(f)
    _compare(f, _rglru_pairs(f, cell, params, strategy, 1.0), 1.0, _FLOAT32)
    theirs = _RecurrentGemmaNormaliser(cell.in_features, cell.hidden_size, cell.num_heads)
    for scale in _scales(f)[1:]:
        for name, ours, _, _ in _rglru_pairs(f, cell, params, strategy, scale):
            assert np.isfinite(ours).all(), f"RGLRUCell's {name} at scale {scale:g} is not finite"
        _compare(f, _rglru_pairs(f, theirs, params, strategy, scale), scale, _FLOAT32)


def test_rglru_first_step_normalises_where_recurrentgemma_does_not():
    """The documented difference: at a segment's first token RecurrentGemma writes `i * x`
    into the state; the paper's recurrence, which RGLRUCell runs from any state, writes
    `sqrt(1 - a^2) * i * x`. From then on both run the same recurrence."""
    f = _load("rglru_recurrentgemma")
    cell, params = _rglru(f)
    x0 = jnp.asarray(f["x"][:, 0])
    a, b = cell.coefficients(params, x0)
    _, y0 = cell(params, jnp.zeros_like(x0), x0)
    _close(y0, b, 1e-6, 1e-7)
    _close(y0 / jnp.sqrt(1 - a**2), f["y_first"][:, 0], 1e-5, 1e-6)
    # After the first token, RecurrentGemma's state h1 = i*x continues under the recurrence.
    h1 = jnp.asarray(f["y_first"][:, 0])
    _, ys = rj.scan(cell, params, h1, _time_major(f["x"][:, 1:]))
    _close(ys, _time_major(f["y_first"][:, 1:]), 1e-5, 1e-6)


# --- sLSTM and mLSTM: xlstm 2.0.6, float64 -----------------------------------------------

_FLOAT64 = {False: (1e-10, 1e-12), True: (1e-9, 1e-12)}  # (rtol, atol): values, gradients


def _batched(cell, params, batch: int):
    """The cell's zero state for `batch` rows."""
    return jax.tree.map(
        lambda a: jnp.broadcast_to(a, (batch, *a.shape)), cell.initial_state(params)
    )


def _slstm(f):
    """xlstm's sLSTM cell params as `SLSTMCell`'s. xlstm's cell takes the gate
    pre-activations `x @ W` from the layer around it, laid out gate, head, unit, which is
    `wi`'s; its recurrent kernel `(heads, d, gates, d)` is `wh: (heads, d, 4 d)` reshaped; its
    bias `(heads, gates, d)` goes gate-major. Its state `(4, B, H)` is `h, c, n, m`, as
    `SLSTMState`'s."""
    heads, d, gates, _ = f["slstm_R"].shape
    params = {
        "wi": f["W"],
        "wh": f["slstm_R"].reshape(heads, d, gates * d),
        "b": f["slstm_b"].transpose(1, 0, 2).reshape(-1),
    }
    cell = rj.SLSTMCell(f["W"].shape[0], heads * d, num_heads=heads)
    return cell, jax.tree.map(jnp.asarray, params)


def _slstm_pairs(f, start: str, scale: float) -> list[Pair]:
    cell, params = _slstm(f)
    batch = f["x"].shape[0]
    if start == "zero":
        h0 = _batched(cell, params, batch)
    else:
        h0 = rj.SLSTMState(*(jnp.asarray(a) for a in f["state0"]))
    ys, state, (dp, dxs, dh0) = _sequence_and_grads(
        cell, params, h0, _time_major(f["x"] * scale), _time_major(f["g"]), "sequential"
    )
    ref = f"slstm_{start}_"
    theirs = {k: f[_prefix(scale) + ref + k] for k in ("y", "last", "dx", "dW", "dR", "db")}
    # From either start the same stabilised state, entry by entry: an empty memory (n = 0)
    # starts the stabiliser at the input gate in both.
    pairs: list[Pair] = [
        (ref + "y", ys, np.swapaxes(theirs["y"], 0, 1), False),
        *((f"{ref}last[{j}]", ours, theirs["last"][j], False) for j, ours in enumerate(state)),
        (ref + "dx", dxs, np.swapaxes(theirs["dx"], 0, 1), True),
        (ref + "dW", dp["wi"], theirs["dW"], True),
        (ref + "dR", dp["wh"], theirs["dR"].reshape(dp["wh"].shape), True),
        (ref + "db", dp["b"], theirs["db"].transpose(1, 0, 2).reshape(-1), True),
    ]
    if start == "state":  # the gradients of h, c, n, m at the start
        dstate0 = f[_prefix(scale) + ref + "dstate0"]
        pairs += [(f"{ref}dstate0[{j}]", ours, dstate0[j], True) for j, ours in enumerate(dh0)]
    return pairs


@pytest.mark.parametrize("start", ["zero", "state"])
def test_slstm_equals_xlstm_vanilla_backend(start):
    f = _load("xlstm_reference")
    with jax.enable_x64(True):
        for scale in _scales(f):
            _compare(f, _slstm_pairs(f, start, scale), scale, _FLOAT64)


def _mlstm(f, in_features: int | None = None):
    """`MLSTMCell` with the fixture's params, or with `in_features` inputs, identity weights
    and a zero bias: the input is then the pre-activations themselves, and its gradient
    those of xlstm's `q, k, v` and gates."""
    heads = f["mlstm_m0"].shape[1]
    width = f["mlstm_wi"].shape[1]
    H = (width - 2 * heads) // 4
    if in_features is None:
        cell = rj.MLSTMCell(f["x"].shape[-1], H, num_heads=heads)
        return cell, {"wi": jnp.asarray(f["mlstm_wi"]), "b": jnp.asarray(f["mlstm_b"])}
    cell = rj.MLSTMCell(width, H, num_heads=heads)
    return cell, {"wi": jnp.eye(width, dtype=jnp.float64), "b": jnp.zeros(width, jnp.float64)}


def _mlstm_state(C, n, m):
    """xlstm's mLSTM memory `(B, heads, d, d)` (`k v^T` per head), `(B, heads, d, 1)` and
    `(B, heads, 1, 1)` as MLSTMCell's, flattened per head (`v k^T`)."""
    batch = C.shape[0]
    return rj.MLSTMState(
        *(jnp.asarray(a.reshape(batch, -1)) for a in (np.swapaxes(C, -1, -2), n, m))
    )


def _mlstm_pairs(f, form: str, scale: float, strategy: str, chunk_size) -> list[Pair]:
    """`form`: xlstm's recurrent step from a zero state (`zero`) or a random one (`state`), or
    its parallel function (`parallel`, from a zero state)."""
    cell, params = _mlstm(f)
    batch = f["x"].shape[0]
    x = f["x"] * scale
    zero = _batched(cell, params, batch)
    h0 = _mlstm_state(f["mlstm_C0"], f["mlstm_n0"], f["mlstm_m0"]) if form == "state" else zero
    ys, state, (dp, dxs, dh0) = _sequence_and_grads(
        cell, params, h0, _time_major(x), _time_major(f["g"]), strategy, chunk_size
    )
    ref = f"mlstm_{form}_"
    theirs = lambda k: f[_prefix(scale) + ref + k]  # noqa: E731
    pairs: list[Pair] = [
        (ref + "y", ys, np.swapaxes(theirs("y"), 0, 1), False),
        (ref + "dx", dxs, np.swapaxes(theirs("dx"), 0, 1), True),
        (ref + "dwi", dp["wi"], theirs("dwi"), True),
        (ref + "db", dp["b"], theirs("db"), True),
    ]
    if form == "parallel":
        # Its gradients for q, k, v and the gates: MLSTMCell's for its pre-activations.
        cell, params = _mlstm(f, f["mlstm_wi"].shape[1])
        pre = x @ f["mlstm_wi"] + f["mlstm_b"]
        _, _, (_, dpre, _) = _sequence_and_grads(
            cell,
            params,
            _batched(cell, params, batch),
            _time_major(pre),
            _time_major(f["g"]),
            strategy,
            chunk_size,
        )
        return [*pairs, (ref + "dpre", dpre, np.swapaxes(theirs("dpre"), 0, 1), True)]
    last = _mlstm_state(theirs("C"), theirs("n"), theirs("m"))
    d0 = _mlstm_state(theirs("dC0"), theirs("dn0"), theirs("dm0"))
    pairs += [(ref + k, a, b, False) for k, a, b in zip("Cnm", state, last, strict=True)]
    if form == "zero" and scale >= 1e4:
        # From the zero state at 1e4, xlstm's step (which has no empty-memory rule) writes
        # `exp(i~ - log f)`, below 1e-308: its memory stays exactly zero and its derivative
        # for the initial memory is 0. The true one exceeds 1e154 there, where MLSTMCell's
        # saturates (`_stabilised_gates`); the values and the other gradients agree.
        return pairs
    pairs += [(ref + f"d{k}0", a, b, True) for k, a, b in zip("Cnm", dh0, d0, strict=True)]
    return pairs


def _mlstm_cases() -> list:
    """Step by step from each start every day; in chunks of 3 (the fixture's 7 steps in
    three, the last partial) from the random state every day, from the others and with the
    default chunk (one chunk here) in the slow tier."""
    slow = pytest.mark.slow
    cases = []
    for strategy, chunk_size, tag in (
        ("sequential", None, "sequential"),
        ("chunkwise", 3, "chunkwise-3"),
        ("chunkwise", None, "chunkwise"),
    ):
        for form in ("zero", "state", "parallel"):
            everyday = strategy == "sequential" or (chunk_size == 3 and form == "state")
            marks = () if everyday else slow
            cases.append(pytest.param(form, strategy, chunk_size, marks=marks, id=f"{form}-{tag}"))
    return cases


@pytest.mark.parametrize(("form", "strategy", "chunk_size"), _mlstm_cases())
def test_mlstm_equals_xlstm_recurrent_and_parallel_backends(form, strategy, chunk_size):
    """xlstm's step and parallel functions take `q, k, v` and the gate pre-activations; the
    fixture computed them from `x @ wi + b` in MLSTMCell's layout and applied the output gate
    (in xlstm's layer it sits outside the cell, after a group norm), with `eps=0`: their
    default adds 1e-6 to the read-out's denominator, which the paper and MLSTMCell do not.
    The final states are compared entry by entry, the stabiliser `m` too: the chunkwise
    strategy carries it as the cell's step does."""
    f = _load("xlstm_reference")
    with jax.enable_x64(True):
        for scale in _scales(f):
            pairs = _mlstm_pairs(f, form, scale, strategy, chunk_size)
            _compare(f, pairs, scale, _FLOAT64)


# --- mLSTM: mlstm_kernels 2.0.6's JAX native chunkwise form, float64 ----------------------


def _mlstm_kernels_pairs(f, start: str, strategy: str, chunk_size, scale: float) -> list[Pair]:
    """MLSTMCell with the fixture's `wi` and `b` against mlstm_kernels' chunkwise mLSTM from a
    zero state (`zero`) or a random one (`state`). Their memory holds the unscaled key,
    `C: (B, heads, d_k, d_v)` (`k v^T`) and `n`, and scales the query by `d**-0.5` as it
    reads; MLSTMCell scales the key on its way in: its `C` is theirs transposed times
    `d**-0.5`, its `n` theirs times `d**-0.5`, the same `m`. Their stabiliser starts at 0
    where the cell's starts at the first write, so their final states are compared as what
    they represent, `C e^m` and `n e^m`: theirs scaled by `e^(m_theirs - m_ours)`."""
    heads, d = f["n0"].shape[1:]
    cell = rj.MLSTMCell(f["x"].shape[-1], heads * d, num_heads=heads)
    params = {"wi": jnp.asarray(f["wi"]), "b": jnp.asarray(f["b"])}
    batch = f["x"].shape[0]

    def ours(C, n, m):  # their layout to MLSTMCell's state, flattened per head
        return (
            (np.swapaxes(C, -1, -2) * d**-0.5).reshape(batch, -1),
            n.reshape(batch, -1) * d**-0.5,
            m,
        )

    h0 = _batched(cell, params, batch)
    if start == "state":
        h0 = rj.MLSTMState(*map(jnp.asarray, ours(f["C0"], f["n0"], f["m0"])))
    ys, state, (dp, dxs, dh0) = _sequence_and_grads(
        cell, params, h0, _time_major(f["x"] * scale), _time_major(f["g"]), strategy, chunk_size
    )
    theirs = lambda k: f[f"{_prefix(scale)}{start}_{k}"]  # noqa: E731
    C, n, m = ours(theirs("C"), theirs("n"), theirs("m"))
    shift = np.exp(m - np.asarray(state.m))  # (B, heads): their stabiliser over the cell's
    per_head = lambda a: a.reshape(batch, heads, -1)  # noqa: E731
    pairs: list[Pair] = [
        (f"{start}_y", ys, np.swapaxes(theirs("y"), 0, 1), False),
        (f"{start}_C", per_head(state.C), per_head(C) * shift[..., None], False),
        (f"{start}_n", per_head(state.n), per_head(n) * shift[..., None], False),
        (f"{start}_dx", dxs, np.swapaxes(theirs("dx"), 0, 1), True),
        (f"{start}_dwi", dp["wi"], theirs("dwi"), True),
        (f"{start}_db", dp["b"], theirs("db"), True),
    ]
    if start == "state":  # the chain rule through `ours`: `ours(dC0) = dC0_cell / d`
        d0 = ours(theirs("dC0"), theirs("dn0"), theirs("dm0"))
        pairs += [
            (f"{start}_dC0", dh0.C, d0[0] * d, True),
            (f"{start}_dn0", dh0.n, d0[1] * d, True),
            (f"{start}_dm0", dh0.m, d0[2], True),
        ]
    return pairs


@pytest.mark.parametrize("start", ["zero", "state"])
@pytest.mark.parametrize(
    # In their chunks (4) every day, step by step in the slow tier (checked against xlstm's
    # step above every day).
    ("strategy", "chunk_size"),
    [("chunkwise", 4), pytest.param("sequential", None, marks=pytest.mark.slow)],
    ids=["chunkwise-4", "sequential"],
)
def test_mlstm_equals_mlstm_kernels_chunkwise(start, strategy, chunk_size):
    """The fixture fed mlstm_kernels' `mlstm_chunkwise` (JAX, native) the `q, k, v` and gate
    pre-activations of `x @ wi + b` in MLSTMCell's layout with `eps=0` and times the output
    gate, as the xlstm fixture."""
    f = _load("mlstm_kernels")
    with jax.enable_x64(True):
        for scale in _scales(f):
            pairs = _mlstm_kernels_pairs(f, start, strategy, chunk_size, scale)
            _compare(f, pairs, scale, _FLOAT64)


# --- S6: Mamba's selective_scan_ref (mamba-ssm 2.3.2.post1), float32 -----------------------


def _s6_pairs(f, strategy: str, scale: float) -> list[Pair]:
    D, N = f["params.A_log"].shape
    R = f["params.dt_proj_weight"].shape[1]
    # Mamba's x_proj computes [dt_low, B, C] from the input in one matmul; dt_proj's weight
    # and bias give Δ before the softplus. SelectiveSSMCell keeps the pieces apart, as `x @ w`.
    x_proj = f["params.x_proj_weight"]
    params = {
        "A_log": f["params.A_log"],
        "w_dt1": x_proj[:R].T,
        "w_dt2": f["params.dt_proj_weight"].T,
        "b_dt": f["params.dt_proj_bias"],
        "w_B": x_proj[R : R + N].T,
        "w_C": x_proj[R + N :].T,
        "D": f["params.D"],
    }
    params = jax.tree.map(jnp.asarray, params)
    cell = rj.SelectiveSSMCell(D, state_size=N, dt_rank=R)
    xs = jnp.asarray((f["u"] * np.float32(scale)).transpose(2, 0, 1))  # (B, D, T) to (T, B, D)
    h0 = jnp.zeros((xs.shape[1], cell.hidden_size), xs.dtype)
    ys, h, (dp, dxs, _) = _sequence_and_grads(
        cell, params, h0, xs, jnp.asarray(f["g"].transpose(2, 0, 1)), strategy
    )
    pre = _prefix(scale)
    d_x_proj = np.concatenate([dp["w_dt1"].T, dp["w_B"].T, dp["w_C"].T])
    pairs: list[Pair] = [
        ("y", ys, f[pre + "y"].transpose(2, 0, 1), False),
        ("last_state", h, f[pre + "last_state"].reshape(h.shape), False),
        ("du", dxs, f[pre + "du"].transpose(2, 0, 1), True),
        ("grads.x_proj_weight", d_x_proj, f[pre + "grads.x_proj_weight"], True),
        ("grads.dt_proj_weight", dp["w_dt2"].T, f[pre + "grads.dt_proj_weight"], True),
    ]
    for ours, theirs in (("b_dt", "dt_proj_bias"), ("A_log", "A_log"), ("D", "D")):
        pairs.append((f"grads.{theirs}", dp[ours], f[f"{pre}grads.{theirs}"], True))
    return pairs


@pytest.mark.parametrize(
    # Sequential and hoisted (what `auto` runs at these sizes) every day.
    "strategy",
    ["sequential", "hoisted", pytest.param("associative", marks=pytest.mark.slow)],
)
def test_selective_ssm_equals_mambas_selective_scan_ref(strategy):
    f = _load("s6_mamba")
    for scale in _scales(f):
        _compare(f, _s6_pairs(f, strategy, scale), scale, _FLOAT32)


def _mamba_block_params(p: dict) -> tuple:
    """mamba-ssm's `Mamba` weights (torch layout) as `rj.mamba_block`'s params, the mapping
    a user porting weights needs: in chain order the input projection (no bias in Mamba),
    the convolution (`conv1d.weight[:, 0, :]` transposed), S6 (`x_proj` split `[dt_low, B,
    C]`, `dt_proj`, `A_log`, `D`), the gate (no params) and the output projection."""
    R, N = p["dt_proj_weight"].shape[1], p["A_log"].shape[1]
    x_proj = p["x_proj_weight"]
    s6 = {"A_log": p["A_log"], "w_dt1": x_proj[:R].T, "w_dt2": p["dt_proj_weight"].T,
          "b_dt": p["dt_proj_bias"], "w_B": x_proj[R : R + N].T, "w_C": x_proj[R + N :].T,
          "D": p["D"]}  # fmt: skip
    w_in, w_out = p["in_proj_weight"].T, p["out_proj_weight"].T
    return (
        {"w": w_in, "b": jnp.zeros(w_in.shape[1], w_in.dtype)},
        {"w": p["conv1d_weight"][:, 0, :].T, "b": p["conv1d_bias"]},
        s6,
        (),
        {"w": w_out, "b": jnp.zeros(w_out.shape[1], w_out.dtype)},
    )


@pytest.mark.parametrize("strategy", ["auto", pytest.param("sequential", marks=pytest.mark.slow)])
def test_mamba_block_equals_mambas_inner_ref(strategy):
    """`rj.mamba_block` against mamba-ssm's `mamba_inner_ref` (with `selective_scan_ref`):
    the outputs and the gradients for the input and every Mamba weight, through the weight
    mapping above. `auto` runs S6 with a linear strategy, `sequential` step by step."""
    f = _load("mamba_block")
    theirs = {k[len("params.") :]: jnp.asarray(v) for k, v in f.items() if k.startswith("params.")}
    d_inner, N = f["params.A_log"].shape
    d_model, K = f["x"].shape[-1], f["params.conv1d_weight"].shape[-1]
    R = f["params.dt_proj_weight"].shape[1]
    block = rj.mamba_block(
        d_model, expand=d_inner // d_model, state_size=N, conv_kernel=K, dt_rank=R
    )

    def loss(p, x):
        params = _mamba_block_params(p)
        _, ys = rj.scan(block, params, block.initial_state(params), x, time_axis=1,
                        strategy=strategy)  # fmt: skip
        return jnp.sum(ys * jnp.asarray(f["g"])), ys

    grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    (_, ys), (d_theirs, dx) = grad(theirs, jnp.asarray(f["x"]))
    rtol, atol = _FLOAT32[False]
    _close(ys, f["y"], rtol, atol, "y")
    rtol, atol = _FLOAT32[True]
    _close(dx, f["dx"], rtol, atol, "dx")
    for name, g in d_theirs.items():
        _close(g, f[f"grads.{name}"], rtol, atol, name)


# --- Matrix memories: Mamba-2's SSD (mamba-ssm 2.3.2.post1), GLA and retention (fla-core) --

# Each runs step by step and in chunks: with 3 steps per chunk, so that the fixture's 7 or 8
# steps span several, the last one partial, and (in the slow tier) with the default chunk
# size (one chunk here). Step by step every day for GLA, in the slow tier for the others,
# whose step is GLA's (`_MemoryCell`); their chunks, every day, read the same `memory_steps`.


def _memory_strategies(everyday_step: bool) -> pytest.MarkDecorator:
    slow = pytest.mark.slow
    return pytest.mark.parametrize(
        ("strategy", "chunk_size"),
        [
            pytest.param("sequential", None, marks=() if everyday_step else slow),
            pytest.param("chunkwise", None, marks=slow),
            ("chunkwise", 3),
        ],
        ids=["sequential", "chunkwise", "chunkwise-3"],
    )


def _mamba2(f):
    """mamba-ssm's Mamba-2 params as Mamba2Cell's. `w_in: (in, H + 2 G N + heads)` is the
    transpose of `Mamba2.in_proj.weight` without its `z` rows (its blocks `x, B, C, dt`
    follow `z` there, in that order; Mamba-2's convolution over `x, B, C` and its gate are
    other layers); `dt_bias`, `A_log` and `D` (one per head) are Mamba-2's. Mamba's state
    `ssm_state: (B, heads, P, N)` is Mamba2Cell's state, flattened: `(B, heads * P * N)`."""
    _, heads, P, N = f["state0"].shape
    n_in, width = f["params.w_in"].shape
    groups = (width - heads * P - heads) // (2 * N)
    cell = rj.Mamba2Cell(n_in, heads * P, num_heads=heads, state_size=N, num_groups=groups)
    params = {k: jnp.asarray(f[f"params.{k}"]) for k in ("w_in", "dt_bias", "A_log", "D")}
    return cell, params


def _mamba2_pairs(f, run: str, strategy: str, chunk_size, scale: float) -> list[Pair]:
    """`run`: `ssd_zero` and `ssd_state`, `ssd_minimal_discrete` from a zero state and from
    `state0`; `step_state`, `selective_state_update_ref` step by step from `state0`."""
    cell, params = _mamba2(f)
    batch, steps, _ = f["x"].shape
    flat = lambda a: a.reshape(batch, -1)  # noqa: E731  (B, heads, P, N) to the cell's state
    if run.endswith("zero"):
        h0 = jnp.zeros((batch, cell.state_width), jnp.float64)
    else:
        h0 = jnp.asarray(flat(f["state0"]))
    ys, h, (dp, dxs, dh0) = _sequence_and_grads(
        cell,
        params,
        h0,
        _time_major(f["x"] * scale),
        _time_major(f["g"].reshape(batch, steps, -1)),  # (B, T, heads, P) to (B, T, H)
        strategy,
        chunk_size,
    )
    theirs = lambda k: f[f"{_prefix(scale)}{run}_{k}"]  # noqa: E731
    pairs: list[Pair] = [
        (f"{run}_y", ys, np.swapaxes(theirs("y").reshape(batch, steps, -1), 0, 1), False),
        (f"{run}_last", h, flat(theirs("last")), False),
        (f"{run}_dx", dxs, np.swapaxes(theirs("dx"), 0, 1), True),
        *((f"{run}_grads.{k}", dp[k], theirs(f"grads.{k}"), True) for k in params),
    ]
    if not run.endswith("zero"):
        pairs.append((f"{run}_dstate0", dh0, flat(theirs("dstate0")), True))
    return pairs


@_memory_strategies(everyday_step=False)
def test_mamba2_equals_mambas_ssd_minimal_and_state_update_ref(strategy, chunk_size):
    """The fixture fed mamba-ssm's functions Mamba2Cell's projection `x @ w_in` = `[x_h, B,
    C, dt~]`, `dt = softplus(dt~ + dt_bias)` and `A = -exp(A_log)`: `ssd_minimal_discrete(x_h
    * dt, A * dt, B, C)` (chunks of 4 of the 8 steps) with `B` and `C` repeated from the 2
    groups to the 4 heads, plus `D * x_h`; and `selective_state_update_ref` with the
    arguments `Mamba2.step` gives it, step by step. Float64, with `_FLOAT64`'s tolerances
    (rtol 1e-10 for values, 1e-9 for gradients). Measured: every array within 4e-13 of its
    largest entry, at every scale and strategy, but one: at 1e4 every decay underflows
    (`dt * A` down to -1.9e5) and the gradient for `A_log` is 7.5e-158 for the cell and for
    `selective_state_update_ref` alike, -9.4e-157 for `ssd_minimal_discrete` (its rounding,
    far below the `atol` of 1e-12)."""
    f = _load("mamba2_mamba")
    with jax.enable_x64(True):
        for scale in _scales(f):
            for run in ("ssd_zero", "ssd_state", "step_state"):
                pairs = _mamba2_pairs(f, run, strategy, chunk_size, scale)
                _compare(f, pairs, scale, _FLOAT64)


def _fla_state(state: np.ndarray) -> np.ndarray:
    """fla's state `(B, heads, d_k, d_v)`, `k v^T` per head with the unscaled key, as the
    state of GLACell or RetentionCell, whose key is scaled by `1 / sqrt(d_k)` on its way in:
    `v k^T / sqrt(d_k)`, flattened to `(B, heads * d_v * d_k)`."""
    dk = state.shape[-2]
    return (np.swapaxes(state, -1, -2) / np.sqrt(dk)).reshape(state.shape[0], -1)


def _fla_dstate(dstate: np.ndarray) -> np.ndarray:
    """The gradient for fla's initial state as the gradient for the cell's (`_fla_state` is
    linear, with the transposed factor)."""
    dk = dstate.shape[-2]
    return (np.swapaxes(dstate, -1, -2) * np.sqrt(dk)).reshape(dstate.shape[0], -1)


def _fla_pairs(
    f, cell, params, run: str, strategy: str, chunk_size, scale: float, key_scaled: bool = True
) -> list[Pair]:
    """The pairs of an fla fixture's `run` (its keys `{run}_y`, `{run}_dx`, `{run}_grads.*`,
    and `{run}_last` and `{run}_dstate0` where the run has them; from `state0` where it has a
    `dstate0`, else from a zero state). The outputs `(B, T, heads, d_v)` are the cell's `(B,
    T, H)`. `key_scaled`: the cell scales its key by `1 / sqrt(d_k)` where fla scales the
    query (`_fla_state`); otherwise the states are each other's transposes."""
    batch, steps, _ = f["x"].shape
    theirs = lambda k: f[f"{_prefix(scale)}{run}_{k}"]  # noqa: E731
    has = lambda k: f"{run}_{k}" in f  # noqa: E731
    _state, _dstate = (_fla_state, _fla_dstate) if key_scaled else (_transposed, _transposed)
    if has("dstate0"):
        h0 = jnp.asarray(_state(f["state0"]))
    else:
        h0 = jnp.zeros((batch, cell.state_width), jnp.float32)
    ys, h, (dp, dxs, dh0) = _sequence_and_grads(
        cell,
        params,
        h0,
        _time_major(f["x"] * np.float32(scale)),
        _time_major(f["g"].reshape(batch, steps, -1)),
        strategy,
        chunk_size,
    )
    pairs: list[Pair] = [
        (f"{run}_y", ys, np.swapaxes(theirs("y").reshape(batch, steps, -1), 0, 1), False),
        (f"{run}_dx", dxs, np.swapaxes(theirs("dx"), 0, 1), True),
        *((f"{run}_grads.{k}", dp[k], theirs(f"grads.{k}"), True) for k in params),
    ]
    if has("last"):
        pairs.append((f"{run}_last", h, _state(theirs("last")), False))
    if has("dstate0"):
        pairs.append((f"{run}_dstate0", dh0, _dstate(theirs("dstate0")), True))
    return pairs


def _transposed(state: np.ndarray) -> np.ndarray:
    """fla's state `(B, heads, d_k, d_v)` as the cell's `(B, heads * d_v * d_k)`."""
    return np.swapaxes(state, -1, -2).reshape(state.shape[0], -1)


def _gla(f):
    """flash-linear-attention's GLA params as GLACell's (`x @ w` for fla's `Linear` weights
    `w.T`): `wi` is `[q_proj, k_proj, v_proj]` (blocks `K, K, H`, head by head as fla's
    `(h d)`), `w_g1` and `w_g2`, `b_g` are `gk_proj`'s two layers (its second one's bias):
    the gate's log decay `logsigmoid(x w_g1 w_g2 + b_g) / 16` is fla's `gk` with its default
    `gate_logit_normalizer` 16. fla scales the query by `1 / sqrt(d_k)` and GLACell the key,
    which gives the same outputs and a state scaled by that factor: see `_fla_state` (fla's
    layer keeps its cache transposed, `state_v_first`, `(B, heads, d_v, d_k)`)."""
    heads, dk, dv = f["state0"].shape[1:]
    n_in, R = f["params.w_g1"].shape
    cell = rj.GLACell(n_in, heads * dv, num_heads=heads, key_size=heads * dk, gate_rank=R)
    params = {k: jnp.asarray(f[f"params.{k}"]) for k in ("wi", "w_g1", "w_g2", "b_g")}
    return cell, params


@_memory_strategies(everyday_step=True)
def test_gla_equals_flas_naive_recurrent_gla(strategy, chunk_size):
    """fla-core's `naive_recurrent_gla`, from a zero state and from a random one, fed the
    cell's unscaled `q, k`, `v` and per-key-channel log decays (2 heads, `d_k` = 3, `d_v` = 4).
    It computes in float32, as the cell here, with `_FLOAT32`'s tolerances (rtol 1e-5).
    Measured: every array within 1.6e-6 of its largest entry, at every scale and strategy."""
    f = _load("gla_fla")
    cell, params = _gla(f)
    for scale in _scales(f):
        for run in ("zero", "state"):
            pairs = _fla_pairs(f, cell, params, run, strategy, chunk_size, scale)
            _compare(f, pairs, scale, _FLOAT32)


def _delta(f):
    """fla's DeltaNet or Gated DeltaNet inputs as DeltaNetCell's or GatedDeltaNetCell's
    params: `wi` is `[q_proj, k_proj, v_proj, b_proj]` transposed (`x @ wi`; blocks `K, K,
    H, heads`, head by head), Gated DeltaNet's with `a_proj` last, its `A_log` and `dt_bias`
    one per head; `q` and `k` are L2-normalised as fla's in-kernel norm, and both scale the
    query by `1 / sqrt(d_k)`, so the states are each other's transposes (fla's Gated
    DeltaNet layer keeps its cache as the cell does, `state_v_first`). fla's layers also
    apply a short convolution and SiLU to `q, k, v`, and an output gate and norm: other
    layers here."""
    heads, dk, dv = f["state0"].shape[1:]
    n_in = f["x"].shape[-1]
    kind = rj.GatedDeltaNetCell if "params.A_log" in f else rj.DeltaNetCell
    cell = kind(n_in, heads * dv, num_heads=heads, key_size=heads * dk)
    params = {k[7:]: jnp.asarray(v) for k, v in f.items() if k.startswith("params.")}
    return cell, params


# Gated DeltaNet's path runs DeltaNet's and more: DeltaNet in the slow tier
@pytest.mark.parametrize(
    "model", [pytest.param("deltanet", marks=pytest.mark.slow), "gated_deltanet"]
)
@_memory_strategies(everyday_step=True)
def test_delta_rule_equals_flas_naive_recurrences(model, strategy, chunk_size):
    """fla-core's `delta_rule_recurrence` (DeltaNet) and `naive_recurrent_gated_delta_rule`
    (Gated DeltaNet), from a zero state and from a random one, fed the cells' L2-normalised
    `q, k`, `v`, `beta` and (Gated DeltaNet) log decays (2 heads, `d_k` = 3, `d_v` = 4).
    Float32, with `_FLOAT32`'s tolerances (rtol 1e-5). Measured: every array within 4.6e-6
    of its largest entry (Gated DeltaNet's gradients, chunkwise, inputs times 100), within
    5.5e-7 elsewhere, at every scale and strategy."""
    f = _load(f"{model}_fla")
    cell, params = _delta(f)
    for scale in _scales(f):
        for run in ("zero", "state"):
            pairs = _fla_pairs(f, cell, params, run, strategy, chunk_size, scale, False)
            _compare(f, pairs, scale, _FLOAT32)


def _retention(f):
    """fla's retention params as RetentionCell's: `wi` is `[q_proj, k_proj, v_proj]`
    transposed (`x @ wi`), blocks `q, k, v` of `H`, head by head; its decays are fla's
    (`1 - 2^(-5 - h)`, not params). As for GLA, fla scales the query and the cell the key:
    the same outputs, the state as `_fla_state`. fla's layer also applies a rotary embedding
    to `q` and `k`, which the cell leaves out (see RetentionCell)."""
    heads, d = f["state0"].shape[1:3]
    cell = rj.RetentionCell(f["x"].shape[-1], heads * d, num_heads=heads)
    return cell, {"wi": jnp.asarray(f["params.wi"])}


@_memory_strategies(everyday_step=False)
def test_retention_equals_flas_naive_retention(strategy, chunk_size):
    """fla-core's `naive_retention` (`parallel`: its parallel form, from a zero state, with
    no final state) and, from a random state and with the final state, its
    `naive_recurrent_simple_gla` with the decays `log(1 - 2^(-5 - h))` that its
    `chunk_retention` gives the simple-GLA kernels (`recurrent`), fed the cell's unscaled
    `q, k` and `v` (2 heads of 4). Float32,
    with `_FLOAT32`'s tolerances (rtol 1e-5). Measured: every array within 2.5e-7 of its
    largest entry, at every scale and strategy."""
    f = _load("retention_fla")
    cell, params = _retention(f)
    for scale in _scales(f):
        for run in ("parallel", "recurrent"):
            pairs = _fla_pairs(f, cell, params, run, strategy, chunk_size, scale)
            _compare(f, pairs, scale, _FLOAT32)
