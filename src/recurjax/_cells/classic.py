"""The library cells: RNN, LSTM, GRU (reset after the matmul), GRUv3 (reset before) and MGU
(the GRU with one gate).

Every cell follows the row-vector convention `x @ W` with gates fused into one matrix per
input and ordered as in PyTorch/cuDNN, so converting weights is a transpose and a split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._checks import match_state
from .._contracts import KernelSpec
from .._init import BIAS_NAMES, NAMED, check_initializer, draw
from .._states import LSTMState
from .base import _CellBase, affine

__all__ = ["GRUCell", "GRUv3Cell", "LSTMCell", "MGUCell", "RNNCell"]


def _batch(x: jax.Array) -> tuple[int, ...]:
    return tuple(x.shape[:-1])


def _shifted(a: jax.Array, b: jax.Array | None) -> jax.Array:
    """`a + b` for a bias `b` over the last axis, or `a` without one (`use_bias=False`)."""
    return a if b is None else a + jnp.broadcast_to(b, a.shape)


@dataclasses.dataclass(frozen=True, repr=False)
class _HiddenCell(_CellBase):
    """The shared base of RNN, LSTM, GRU, GRUv3 and MGU (and of their variants): a hidden
    state of `hidden_size`, the fused kernel of the class that names one, and the
    initialiser and bias options (keyword-only, after each cell's own fields):

    - `kernel_init`, `recurrent_init`: how the input kernels (`wi`, a projection's `wr`) and
      the recurrent ones (`wh`, `whn`) are drawn: a name, `"glorot_uniform"` (the default,
      Flux's, on the whole fused matrix), `"glorot_normal"`, `"lecun_uniform"`,
      `"lecun_normal"`, `"he_uniform"`, `"he_normal"`, `"orthogonal"` (each gate's block
      orthogonal, Flax's recurrent default), `"pytorch"` (`U(-1/sqrt(H), 1/sqrt(H))`, as
      `torch.nn.LSTM`), `"zeros"`, `"ones"`; or a function `(key, shape, dtype) -> array`
      given the whole fused matrix (e.g. `jax.nn.initializers.orthogonal()`);
    - `bias_init`: `"zeros"` (the default), `"ones"`, `"pytorch"` or such a function; an
      LSTM's `forget_bias` is added to its forget block;
    - `use_bias`: `False` for no bias at all: the params have no `b` (nor `bhn`, nor the
      LayerNorm LSTM's `bc`), as PyTorch's `bias=False` and Flax's `use_bias=False`.

    Options are names or other hashable values, so cells with equal options compare equal and
    share `scan`'s compiled programs."""

    # The fused strategy's kernel that computes this class's step. It serves exactly the class
    # that names it: a subclass changes the step through its hooks, so it runs without one.
    kernel: ClassVar[str | None] = None
    # The biases `use_bias=False` leaves out.
    biases: ClassVar[tuple[str, ...]] = ("b", "bhn", "bc")
    options: ClassVar[tuple[str, ...]] = ("kernel_init", "recurrent_init", "bias_init", "use_bias")

    kernel_init: Any = dataclasses.field(default="glorot_uniform", kw_only=True)
    recurrent_init: Any = dataclasses.field(default="glorot_uniform", kw_only=True)
    bias_init: Any = dataclasses.field(default="zeros", kw_only=True)
    use_bias: bool = dataclasses.field(default=True, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        where = type(self).__name__
        matrix = "jax.nn.initializers.orthogonal()"
        check_initializer(where, "kernel_init", self.kernel_init, tuple(NAMED), matrix)
        check_initializer(where, "recurrent_init", self.recurrent_init, tuple(NAMED), matrix)
        vector = "jax.nn.initializers.constant(0.1)"
        check_initializer(where, "bias_init", self.bias_init, BIAS_NAMES, vector)
        if not isinstance(self.use_bias, bool):
            raise TypeError(f"{where}: expected use_bias to be a bool, got {self.use_bias!r}.")

    def _shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """A cell's full `param_shapes`, less its biases without `use_bias`."""
        if self.use_bias:
            return shapes
        return {k: v for k, v in shapes.items() if k not in self.biases}

    def _weights(
        self, key: jax.Array, dtype: Any, kinds: dict[str, tuple[str, int]]
    ) -> dict[str, jax.Array]:
        """The params named in `kinds` (`name: (kind, gate blocks)`, kind `"kernel"`,
        `"recurrent"` or `"bias"`, or `"own"` for one the cell draws itself), drawn in that
        order with `param_shapes()`: one key split per weight (as the cells always drew
        them), a bias from its own fold of the key; the biases left out without
        `use_bias`."""
        shapes = self.param_shapes()
        matrices = [n for n, (kind, _) in kinds.items() if kind != "bias"]
        keys = dict(zip(matrices, jax.random.split(key, len(matrices)), strict=True))
        spec = {"kernel": self.kernel_init, "recurrent": self.recurrent_init}
        out = {}
        for i, (name, (kind, blocks)) in enumerate(kinds.items()):
            if name not in shapes or kind == "own":
                continue
            if kind == "bias":
                k, init = jax.random.fold_in(key, 1000 + i), self.bias_init
            else:
                k, init = keys[name], spec[kind]
            out[name] = draw(init, k, shapes[name], dtype, blocks)
        return out

    def with_biases(self, params: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """`params` with zero biases where `use_bias=False` left them out (what a fused
        kernel or a converter that always has them takes)."""
        if self.use_bias:
            return params
        shapes = self._full_shapes()
        dtype = params["wh"].dtype if "wh" in params else next(iter(params.values())).dtype
        zeros = {k: jnp.zeros(shapes[k], dtype) for k in self.biases if k in shapes}
        return {**params, **zeros}

    def _full_shapes(self) -> dict[str, tuple[int, ...]]:
        return dataclasses.replace(self, use_bias=True).param_shapes()

    def fused_kernel(self) -> KernelSpec | None:
        """The fused strategy's kernel for this step (its class's `kernel`, not a base's)."""
        name = vars(type(self)).get("kernel")
        if name is None:
            return None
        # The RNN's kernel applies the cell's nonlinearity; the gated cells have none to pass.
        return KernelSpec(name, self.hidden_size, getattr(self, "activation", None))

    def _checked_step(
        self, params: dict[str, jax.Array], h: object, x: object
    ) -> tuple[jax.Array, jax.Array]:
        """`(h, x)` for a step: the params checked, `x` checked and `h: (..., H)` matched to
        its batch, both cast to the params' dtype."""
        dtype, x = self._checked(params, x)
        return match_state(self, "h", h, _batch(x), self.hidden_size, dtype), x


@dataclasses.dataclass(frozen=True, repr=False)
class RNNCell(_HiddenCell):
    r"""The Elman RNN cell, Flux's `RNNCell`: one dense layer fed back into itself.

    $$
    h' = \mathrm{act}(x W_i + h W_h + b), \qquad y = h'
    $$

    Params (`init`): `{"wi": (in, H), "wh": (H, H), "b": (H,)}`; Glorot-uniform weights,
    zero bias. State: an array `(..., H)`, zeros from `initial_state`. Input `x: (..., in)`
    with any leading batch axes; output `y: (..., H)`.

    Warning: PyTorch's `nn.RNN` has two biases, `b_ih + b_hh`; their sum is `b` here.

    Keyword-only options `kernel_init`, `recurrent_init`, `bias_init` and `use_bias` choose
    the initialisers and drop the biases (the guide's "Initialisers and biases").

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H`, the size of the state and of the output.
      activation: the nonlinearity `act`, `jnp.tanh` by default (e.g. `jax.nn.relu`).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.RNNCell(10, 5)
      >>> params = cell.init(jax.random.key(0))
      >>> h = cell.initial_state(params)
      >>> h, y = cell(params, h, jnp.ones(10))
      >>> y.shape, bool((h == y).all())
      ((5,), True)
    """

    kernel: ClassVar[str | None] = "rnn"
    shown: ClassVar[tuple[str, ...]] = ("activation",)

    in_features: int
    hidden_size: int
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes.

        Examples:
          >>> import recurjax as rj
          >>> rj.RNNCell(3, 4).param_shapes()
          {'wi': (3, 4), 'wh': (4, 4), 'b': (4,)}
        """
        i, h = self.in_features, self.hidden_size
        return self._shapes({"wi": (i, h), "wh": (h, h), "b": (h,)})

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Params `{"wi": (in, H), "wh": (H, H), "b": (H,)}`: Glorot-uniform, zero bias."""
        kinds = {"wi": ("kernel", 1), "wh": ("recurrent", 1), "b": ("bias", 1)}
        return self._weights(key, dtype, kinds)

    def __call__(
        self, params: dict[str, jax.Array], h: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        h, x = self._checked_step(params, h, x)
        h = self.activation(affine(x, params["wi"], params.get("b")) + self._recur(params, h))
        return h, h

    def _recur(self, params: dict[str, jax.Array], h: jax.Array) -> jax.Array:
        """The recurrent term, `h Wh` (IndRNN's is per unit)."""
        return h @ params["wh"]


@dataclasses.dataclass(frozen=True, repr=False)
class LSTMCell(_HiddenCell):
    r"""The LSTM cell of Hochreiter & Schmidhuber with a forget gate, as Flux and PyTorch.

    $$
    \begin{aligned}
    [i, f, g, o] &= x W_i + h W_h + b \quad\text{(split in four blocks of } H) \\
    c' &= \sigma(f) \odot c + \sigma(i) \odot \tanh(g) \\
    h' &= \sigma(o) \odot \tanh(c'), \qquad y = h'
    \end{aligned}
    $$

    Params (`init`): `{"wi": (in, 4H), "wh": (H, 4H), "b": (4H,)}` with gate blocks in the
    order `i, f, g, o` (PyTorch's); Glorot-uniform weights (fans of the stacked matrix), zero
    bias except the forget block, which is `forget_bias`. State: `LSTMState(h, c)`, each
    `(..., H)`, zeros from `initial_state`. Input `x: (..., in)`; output `y = h': (..., H)`.

    Warning: PyTorch has two biases (`b = b_ih + b_hh`); Haiku orders the gates `i, g, f, o`
    and adds 1 to the forget gate in the forward pass; Flax's carry is `(c, h)`. Here the
    forget-gate offset lives in the stored bias only.

    Keyword-only options `kernel_init`, `recurrent_init`, `bias_init` and `use_bias` choose
    the initialisers and drop the biases (the guide's "Initialisers and biases").

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H`.
      forget_bias: initial value of the forget-gate bias block. `0.0` by default, as Flux
        since v0.15 and PyTorch's zero-centred init; Flux v0.8 to v0.14 used `1.0`, the
        common choice (Jozefowicz et al., 2015) that helps long memories early in training:
        pass `forget_bias=1.0` for it. It is added to `bias_init`'s forget block.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.LSTMCell(10, 15, forget_bias=1.0)
      >>> params = cell.init(jax.random.key(0))
      >>> params["b"][15:30].tolist() == [1.0] * 15
      True
      >>> state, y = cell(params, cell.initial_state(params), jnp.ones((4, 10)))
      >>> state.h.shape, state.c.shape, y.shape
      ((4, 15), (4, 15), (4, 15))
    """

    kernel: ClassVar[str | None] = "lstm"
    shown: ClassVar[tuple[str, ...]] = ("forget_bias",)

    in_features: int
    hidden_size: int
    forget_bias: float = 0.0

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes.

        Examples:
          >>> import recurjax as rj
          >>> rj.LSTMCell(3, 4).param_shapes()
          {'wi': (3, 16), 'wh': (4, 16), 'b': (16,)}
        """
        i, h = self.in_features, self.hidden_size
        return self._shapes({"wi": (i, 4 * h), "wh": (h, 4 * h), "b": (4 * h,)})

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Params `{"wi": (in, 4H), "wh": (H, 4H), "b": (4H,)}`, gates `i, f, g, o`."""
        kinds = {"wi": ("kernel", 4), "wh": ("recurrent", 4), "b": ("bias", 4)}
        return self._forget_bias(self._weights(key, dtype, kinds))

    def _forget_bias(self, params: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """`params` with `forget_bias` added to the forget block of `b` (where there is one)."""
        if "b" not in params:
            return params
        h = self.hidden_size
        return {**params, "b": params["b"].at[h : 2 * h].add(self.forget_bias)}

    def initial_state(self, params: dict[str, jax.Array]) -> LSTMState:
        """`LSTMState(h=zeros(H), c=zeros(H))` in the params' dtype."""
        zeros = super().initial_state(params)
        return LSTMState(zeros, zeros)

    def _state(self, state: object, batch: tuple[int, ...], dtype: Any) -> LSTMState:
        """`state` checked: an `LSTMState` whose `h` and `c` fit the batch of the input."""
        if not isinstance(state, LSTMState):
            raise TypeError(
                f"{self!r}: expected the state to be an LSTMState(h, c), got "
                f"{type(state).__name__}. Use {self!r}.initial_state(params), or build it "
                "with rj.LSTMState(h, c)."
            )
        h = match_state(self, "h", state.h, batch, self._h_size(), dtype)
        c = match_state(self, "c", state.c, batch, self.hidden_size, dtype)
        return LSTMState(h, c)

    def _h_size(self) -> int:
        """The size of `h` (and of the output): `H`, or `P` with a projection."""
        return self.hidden_size

    def __call__(
        self, params: dict[str, jax.Array], state: LSTMState, x: jax.Array
    ) -> tuple[LSTMState, jax.Array]:
        dtype, x = self._checked(params, x)
        h, c = self._update(params, *self._state(state, _batch(x), dtype), x)
        return LSTMState(h, c), h

    def _update(
        self, params: dict[str, jax.Array], h: jax.Array, c: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """`(h', c')` from checked `h`, `c` and `x` (the peephole LSTM overrides it)."""
        gates = affine(x, params["wi"], params.get("b")) + h @ params["wh"]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c


@dataclasses.dataclass(frozen=True, repr=False)
class GRUCell(_HiddenCell):
    r"""The GRU cell with the reset gate *after* the recurrent matmul (PyTorch, cuDNN, Flux).

    $$
    \begin{aligned}
    r &= \sigma(x W_{ir} + h W_{hr} + b_r) \\
    z &= \sigma(x W_{iz} + h W_{hz} + b_z) \\
    n &= \tanh(x W_{in} + b_n + r \odot (h W_{hn} + b_{hn})) \\
    h' &= (1 - z) \odot n + z \odot h, \qquad y = h'
    \end{aligned}
    $$

    Params (`init`): `{"wi": (in, 3H), "wh": (H, 3H), "b": (3H,), "bhn": (H,)}`, gate blocks
    `r, z, n`; Glorot-uniform weights, zero biases. With `bhn = 0` (its initial value) this
    is exactly Flux's `GRUCell`; a non-zero `bhn` is PyTorch's `b_hn`, so PyTorch weights load
    without loss (`b = b_ih + [b_hr, b_hz, 0]`). State: an array `(..., H)`.

    Warning: this is not Haiku's or Keras's `reset_after=False` GRU, which apply `r` to `h`
    before the matmul: that is `GRUv3Cell`.

    Keyword-only options `kernel_init`, `recurrent_init`, `bias_init` and `use_bias` choose
    the initialisers and drop the biases (the guide's "Initialisers and biases").

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H`.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.GRUCell(10, 5)
      >>> params = cell.init(jax.random.key(0))
      >>> {k: v.shape for k, v in params.items()}
      {'wi': (10, 15), 'wh': (5, 15), 'b': (15,), 'bhn': (5,)}
      >>> h, y = cell(params, cell.initial_state(params), jnp.ones((3, 10)))
      >>> y.shape
      (3, 5)
    """

    kernel: ClassVar[str | None] = "gru"

    in_features: int
    hidden_size: int

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes.

        Examples:
          >>> import recurjax as rj
          >>> rj.GRUCell(3, 4).param_shapes()
          {'wi': (3, 12), 'wh': (4, 12), 'b': (12,), 'bhn': (4,)}
        """
        i, h = self.in_features, self.hidden_size
        return self._shapes({"wi": (i, 3 * h), "wh": (h, 3 * h), "b": (3 * h,), "bhn": (h,)})

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Params `{"wi": (in, 3H), "wh": (H, 3H), "b": (3H,), "bhn": (H,)}`, gates r, z, n."""
        kinds = {"wi": ("kernel", 3), "wh": ("recurrent", 3), "b": ("bias", 3), "bhn": ("bias", 1)}
        return self._weights(key, dtype, kinds)

    def __call__(
        self, params: dict[str, jax.Array], h: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        h, x = self._checked_step(params, h, x)
        xr, xz, xn = jnp.split(affine(x, params["wi"], params.get("b")), 3, axis=-1)
        hr, hz, hn = jnp.split(h @ params["wh"], 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * _shifted(hn, params.get("bhn")))
        h = (1 - z) * n + z * h
        return h, h


@dataclasses.dataclass(frozen=True, repr=False)
class GRUv3Cell(_HiddenCell):
    r"""The GRU cell with the reset gate *before* a separate matmul (Flux's `GRUv3Cell`).

    This is version 3 of Cho et al.'s arXiv paper, the form of Keras with
    `reset_after=False`:

    $$
    \begin{aligned}
    r &= \sigma(x W_{ir} + h W_{hr} + b_r) \\
    z &= \sigma(x W_{iz} + h W_{hz} + b_z) \\
    n &= \tanh(x W_{in} + (r \odot h) W_{hn} + b_n) \\
    h' &= (1 - z) \odot n + z \odot h, \qquad y = h'
    \end{aligned}
    $$

    Params (`init`): `{"wi": (in, 3H), "wh": (H, 2H), "whn": (H, H), "b": (3H,)}`; `wi` and
    `b` hold blocks `r, z, n`, `wh` holds `r, z`; Glorot-uniform weights, zero bias.
    State: an array `(..., H)`.

    Warning: Haiku's `GRU` has this form but the update gate with the opposite role,
    `h' = (1 - z) h + z n`; map it with `z -> -z` (negate the z-blocks of its weights and bias).

    Keyword-only options `kernel_init`, `recurrent_init`, `bias_init` and `use_bias` choose
    the initialisers and drop the biases (the guide's "Initialisers and biases").

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H`.

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.GRUv3Cell(10, 5)
      >>> params = cell.init(jax.random.key(0))
      >>> {k: v.shape for k, v in params.items()}
      {'wi': (10, 15), 'wh': (5, 10), 'whn': (5, 5), 'b': (15,)}
    """

    in_features: int
    hidden_size: int

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes.

        Examples:
          >>> import recurjax as rj
          >>> rj.GRUv3Cell(3, 4).param_shapes()
          {'wi': (3, 12), 'wh': (4, 8), 'whn': (4, 4), 'b': (12,)}
        """
        i, h = self.in_features, self.hidden_size
        return self._shapes({"wi": (i, 3 * h), "wh": (h, 2 * h), "whn": (h, h), "b": (3 * h,)})

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Params `{"wi": (in, 3H), "wh": (H, 2H), "whn": (H, H), "b": (3H,)}`."""
        kinds = {
            "wi": ("kernel", 3),
            "wh": ("recurrent", 2),
            "whn": ("recurrent", 1),
            "b": ("bias", 3),
        }
        return self._weights(key, dtype, kinds)

    def __call__(
        self, params: dict[str, jax.Array], h: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        h, x = self._checked_step(params, h, x)
        xr, xz, xn = jnp.split(affine(x, params["wi"], params.get("b")), 3, axis=-1)
        hr, hz = jnp.split(h @ params["wh"], 2, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + (r * h) @ params["whn"])
        h = (1 - z) * n + z * h
        return h, h


@dataclasses.dataclass(frozen=True, repr=False)
class MGUCell(_HiddenCell):
    r"""The minimal gated unit (Zhou et al., 2016, arXiv:1603.09420): a GRU whose one gate
    `f` both resets and updates, here with the reset after the recurrent matmul as Flax
    linen's `MGUCell` (and `GRUCell`):

    $$
    \begin{aligned}
    f &= \sigma(x W_{if} + h W_{hf} + b_f) \\
    n &= \tanh(x W_{in} + b_n + f \odot (h W_{hn} + b_{hn})) \\
    h' &= (1 - f) \odot n + f \odot h, \qquad y = h'
    \end{aligned}
    $$

    With `reset_gate=False`, `n = tanh(x W_in + b_n + h W_hn + b_hn)` (Flax's option of the
    same name). The paper resets before the matmul, `tanh(x W_in + (f * h) W_hn + b_n)`.

    Params (`init`): `{"wi": (in, 2H), "wh": (H, 2H), "b": (2H,), "bhn": (H,)}`, gate blocks
    `f, n`; Glorot-uniform weights, zero biases (Flax starts `b_f` at 1 and its recurrent
    kernels orthogonal; `recurjax.interop.from_flax` converts its cells). State: an array
    `(..., H)`, zeros from `initial_state`. Input `x: (..., in)`; output `y: (..., H)`.

    Keyword-only options `kernel_init`, `recurrent_init`, `bias_init` and `use_bias` choose
    the initialisers and drop the biases (the guide's "Initialisers and biases").

    Args:
      in_features: size of the last axis of `x`.
      hidden_size: `H`.
      reset_gate: whether `f` scales the recurrent term of `n` (`True`, the default).

    Examples:
      >>> import jax, jax.numpy as jnp, recurjax as rj
      >>> cell = rj.MGUCell(10, 5)
      >>> params = cell.init(jax.random.key(0))
      >>> {k: v.shape for k, v in params.items()}
      {'wi': (10, 10), 'wh': (5, 10), 'b': (10,), 'bhn': (5,)}
      >>> h, y = cell(params, cell.initial_state(params), jnp.ones((3, 10)))
      >>> y.shape
      (3, 5)
    """

    shown: ClassVar[tuple[str, ...]] = ("reset_gate",)

    in_features: int
    hidden_size: int
    reset_gate: bool = True

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every params entry that `init` makes.

        Examples:
          >>> import recurjax as rj
          >>> rj.MGUCell(3, 4).param_shapes()
          {'wi': (3, 8), 'wh': (4, 8), 'b': (8,), 'bhn': (4,)}
        """
        i, h = self.in_features, self.hidden_size
        return self._shapes({"wi": (i, 2 * h), "wh": (h, 2 * h), "b": (2 * h,), "bhn": (h,)})

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Params `{"wi": (in, 2H), "wh": (H, 2H), "b": (2H,), "bhn": (H,)}`, gates f, n."""
        kinds = {"wi": ("kernel", 2), "wh": ("recurrent", 2), "b": ("bias", 2), "bhn": ("bias", 1)}
        return self._weights(key, dtype, kinds)

    def __call__(
        self, params: dict[str, jax.Array], h: jax.Array, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        h, x = self._checked_step(params, h, x)
        xf, xn = jnp.split(affine(x, params["wi"], params.get("b")), 2, axis=-1)
        hf, hn = jnp.split(h @ params["wh"], 2, axis=-1)
        f = jax.nn.sigmoid(xf + hf)
        hn = _shifted(hn, params.get("bhn"))
        n = jnp.tanh(xn + (f * hn if self.reset_gate else hn))
        h = (1 - f) * n + f * h
        return h, h
