"""Converters between recurjax cells and PyTorch, Flax (linen and NNX), Equinox and Haiku.

Each `from_*` takes the other library's module or parameter tree and returns `(cell, params)`
in recurjax form; each `to_*` is its inverse. The numbers are moved, never refitted: a
converted cell computes the same function as the original (checked in the tests against the
live libraries, outputs and gradients). A library is imported only when its converter is
called; `from_torch` and `from_haiku` read plain arrays and need neither torch nor Haiku.

- PyTorch, `from_torch` / `to_torch`: `nn.RNN` (tanh, relu), `nn.LSTM`, `nn.GRU` and their
  `*Cell`s; `num_layers > 1` as a chain, `bidirectional=True`, `nn.LSTM(proj_size=P)`.
- Flax linen, `from_flax` / `to_flax`: `SimpleCell`, `LSTMCell`, `OptimizedLSTMCell`,
  `GRUCell`.
- Flax NNX, `from_nnx` / `to_nnx`: the same four (NNX's `GRUCell` has no `b_hn`).
- Equinox, `from_equinox` / `to_equinox`: `LSTMCell`, `GRUCell`.
- Haiku, `from_haiku` / `to_haiku`: `VanillaRNN`, `LSTM`, `GRU` (as `GRUv3Cell`).

recurjax computes `x @ wi + h @ wh + b` (row vectors), the gate blocks fused along the last
axis in PyTorch's order (LSTM `i, f, g, o`; GRU `r, z, n`); each converter's docstring gives
its mapping, and what cannot be converted is an error that names the cause.

The documentation's page [Converting weights][converting-weights-pytorch-flax-equinox-haiku]
(`docs/interop.md`) tabulates every mapping and which conversions round-trip exactly.
"""

from ._equinox import from_equinox, to_equinox
from ._flax import from_flax, from_nnx, to_flax, to_nnx
from ._haiku import from_haiku, to_haiku
from ._torch import from_torch, to_torch

__all__ = [
    "from_equinox",
    "from_flax",
    "from_haiku",
    "from_nnx",
    "from_torch",
    "to_equinox",
    "to_flax",
    "to_haiku",
    "to_nnx",
    "to_torch",
]
