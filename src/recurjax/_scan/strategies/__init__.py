"""The evaluation strategies of the scan engine: one `Strategy` object each, in a registry.

sequential  `lax.scan` of the cell; every cell, every transformation
fused       a library cell's hand-written kernel and VJP (`kernels.py`)
linear      associative, chunked and hoisted: one runner for a cell linear in its state
chunkwise   a matrix memory (mLSTM, retention, Mamba-2, GLA) in chunks: matrix products
            within, a scan across
cudnn       LSTM layers, stacked and bidirectional, in one call to cuDNN (CUDA GPUs)

Adding a strategy is one `Strategy` (`_contracts.py`) and one entry in `REGISTRY` (users can
then name it), plus one in `AUTO_ORDER` if `auto` may pick it.
"""

from __future__ import annotations

from ..._contracts import Strategy
from .chunkwise import CHUNKWISE
from .cudnn import CUDNN
from .fused import FUSED
from .linear import ASSOCIATIVE, CHUNKED, HOISTED
from .sequential import SEQUENTIAL

REGISTRY: dict[str, Strategy] = {
    s.name: s for s in (FUSED, SEQUENTIAL, ASSOCIATIVE, CHUNKED, HOISTED, CHUNKWISE, CUDNN)
}
# `auto` runs the first strategy here that applies and whose `auto` picks it; the
# sequential one, last, always does. cuDNN comes first: it takes a whole stack of layers.
AUTO_ORDER: tuple[Strategy, ...] = (CUDNN, CHUNKED, HOISTED, FUSED, CHUNKWISE, SEQUENTIAL)

__all__ = ["AUTO_ORDER", "REGISTRY", "SEQUENTIAL"]
