"""Converters between recurjax cells and PyTorch, Flax (linen and NNX), Equinox and Haiku.

Each `from_*` takes the other library's module or parameter tree and returns `(cell, params)`
in recurjax form; each `to_*` is its inverse. The numbers are moved, never refitted: a
converted cell computes the same function as the original (checked in the tests against the
live libraries, outputs and gradients, to 1e-5 in float32). The reference libraries are
imported only when their converter is called; `from_torch` and `from_haiku` need neither
torch nor Haiku, since they read plain arrays.

recurjax's row-vector layout is `x @ wi + h @ wh + b` with gate blocks fused along the last
axis, in PyTorch's order (LSTM `i, f, g, o`; GRU `r, z, n`).

LSTM (`LSTMCell`, params `wi: (in, 4H)`, `wh: (H, 4H)`, `b: (4H,)`):

=================================  ====================================================
source                             mapping
=================================  ====================================================
PyTorch `nn.LSTM`, `nn.LSTMCell`   `wi = weight_ih.T`, `wh = weight_hh.T`,
                                   `b = bias_ih + bias_hh`
Flax linen `LSTMCell`,             `wi = [ii, if, ig, io].kernel`, `wh = [hi, hf, hg,
`OptimizedLSTMCell`                ho].kernel`, `b = [hi, hf, hg, ho].bias`; carry `(c, h)`
Flax NNX `LSTMCell`                as linen, the forget kernel named `if_`
Flax NNX `OptimizedLSTMCell`       `wi = dense_i.kernel`, `wh = dense_h.kernel`,
                                   `b = dense_h.bias`
Equinox `LSTMCell`                 `wi = weight_ih.T`, `wh = weight_hh.T`, `b = bias`
Haiku `LSTM`                       `w: (in+H, 4H)` split into `wi = w[:in]`, `wh = w[in:]`;
                                   blocks `i, g, f, o` reordered; `b_f = b_f + 1`
=================================  ====================================================

GRU, reset gate after the recurrent matmul (`GRUCell`, `wi: (in, 3H)`, `wh: (H, 3H)`,
`b: (3H,)`, `bhn: (H,)`):

=================================  ====================================================
source                             mapping
=================================  ====================================================
PyTorch `nn.GRU`, `nn.GRUCell`     `wi = weight_ih.T`, `wh = weight_hh.T`,
                                   `b = bias_ih + [b_hr, b_hz, 0]`, `bhn = b_hn`
Flax linen `GRUCell`               `wi = [ir, iz, in].kernel`, `wh = [hr, hz, hn].kernel`,
                                   `b = [ir, iz, in].bias`, `bhn = hn.bias`
Flax NNX `GRUCell`                 `wi = dense_i.kernel`, `wh = dense_h.kernel`,
                                   `b = dense_i.bias`, `bhn = 0` (NNX has no `b_hn`)
Equinox `GRUCell`                  `wi = weight_ih.T`, `wh = weight_hh.T`, `b = bias`,
                                   `bhn = bias_n`
=================================  ====================================================

GRU, reset gate before a separate matmul (`GRUv3Cell`, `wi: (in, 3H)`, `wh: (H, 2H)`,
`whn: (H, H)`, `b: (3H,)`): Haiku `GRU` (`w_i`, `w_h`, `b` in blocks `z, r, a`, and
`h' = (1 - z) h + z a`) maps with the update gate negated, since `1 - sigmoid(u) =
sigmoid(-u)`: `wi = [W_ir, -W_iz, W_ia]`, `wh = [W_hr, -W_hz]`, `whn = W_ha`,
`b = [b_r, -b_z, b_a]`.

Elman RNN (`RNNCell`, `wi: (in, H)`, `wh: (H, H)`, `b: (H,)`): PyTorch `nn.RNN`/`nn.RNNCell`
(`tanh` or `relu`; `b = bias_ih + bias_hh`), Flax `SimpleCell` (`wi = i.kernel`,
`b = i.bias`, `wh = h.kernel`; NNX: `dense_i`, `dense_h`), Haiku `VanillaRNN` (`relu`,
`b = b_i + b_h`).

Round trips. Every `to_x(from_x(p))` returns the same numbers, except where the source holds
more biases than the function needs: PyTorch's `bias_hh` (and Haiku's second VanillaRNN bias)
is folded into `b`, and going back puts the sum in `bias_ih`; Haiku's LSTM forget bias comes
back as `(b_f + 1) - 1`, equal to `b_f` up to one float rounding. `from_x(to_x(p))` returns
`p` exactly for PyTorch, Flax, Equinox and Haiku's GRU and VanillaRNN.

PyTorch `bidirectional=True` modules convert to a chain of `rj.bidirectional` layers; run
with `lengths=`, they equal torch on a `pack_padded_sequence` (tested).

PyTorch `nn.LSTM(proj_size=P)` converts to `ProjLSTMCell` layers (`wr = weight_hr.T`), and
back (tested against torch on a packed sequence).

Not supported, with a clear error: Flax cells
with non-default `gate_fn`/`activation_fn` (LSTM, GRU) or `residual=True`; `GRUv3Cell` to
PyTorch, Flax or Equinox and `GRUCell` to Haiku (no such cell there); a non-zero `bhn` to Flax
NNX.
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
