"""recurjax: recurrent neural networks for JAX with explicit state threading.

Flux.jl's recurrent-model design in JAX: cells are pure functions `(params, h, x) -> (h, y)`;
`Recur` is an immutable pytree handle holding a cell, its params and its state; `scan` runs a
cell over a sequence; `chain` composes cells and stateless layers into one cell; `tbptt`
walks a long sequence in chunks for truncated backpropagation through time.
"""

from ._cells.classic import GRUCell, GRUv3Cell, LSTMCell, MGUCell, RNNCell
from ._cells.conv import ConvGRUCell, ConvLSTMCell
from ._cells.delta import DeltaNetCell, GatedDeltaNetCell
from ._cells.linear import LinearCell, LRUCell, MinGRUCell, MinLSTMCell
from ._cells.memories import GLACell, Mamba2Cell, RetentionCell
from ._cells.ssm import RGLRUCell, SelectiveSSMCell
from ._cells.variants import IndRNNCell, LayerNormLSTMCell, PeepholeLSTMCell, ProjLSTMCell
from ._cells.xlstm import MLSTMCell, SLSTMCell
from ._compose import (
    Bidirectional,
    Chain,
    Residual,
    bidirectional,
    chain,
    mamba_block,
    residual,
    stacked,
)
from ._contracts import Cell
from ._dropout import Dropout, VariationalDropout, seed_dropout
from ._layers import Dense, Stateless, stateless
from ._recur import GRU, LSTM, RNN, GRUv3, Recur
from ._scan import scan, sequence_parallel_scan
from ._states import LSTMState, MLSTMState, SLSTMState
from ._tbptt import chunks, tbptt
from ._trees import batched, reset, truncate

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Bidirectional",
    "Cell",
    "Chain",
    "ConvGRUCell",
    "ConvLSTMCell",
    "DeltaNetCell",
    "Dense",
    "Dropout",
    "GLACell",
    "GRUCell",
    "GRUv3",
    "GRUv3Cell",
    "GatedDeltaNetCell",
    "IndRNNCell",
    "LRUCell",
    "LSTMCell",
    "LSTMState",
    "LayerNormLSTMCell",
    "LinearCell",
    "MGUCell",
    "MLSTMCell",
    "MLSTMState",
    "Mamba2Cell",
    "MinGRUCell",
    "MinLSTMCell",
    "PeepholeLSTMCell",
    "ProjLSTMCell",
    "RGLRUCell",
    "RNNCell",
    "Recur",
    "Residual",
    "RetentionCell",
    "SLSTMCell",
    "SLSTMState",
    "SelectiveSSMCell",
    "Stateless",
    "VariationalDropout",
    "__version__",
    "batched",
    "bidirectional",
    "chain",
    "chunks",
    "mamba_block",
    "reset",
    "residual",
    "scan",
    "seed_dropout",
    "sequence_parallel_scan",
    "stacked",
    "stateless",
    "tbptt",
    "truncate",
]
