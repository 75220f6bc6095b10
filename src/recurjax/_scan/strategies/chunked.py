"""The chunked strategy: the associative scan within blocks of `CHUNK` steps, carried
sequentially from block to block (`O(T log CHUNK)` work instead of `O(T log T)`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax

from ..._contracts import PyTree
from .. import policy
from ..blocks import Ctl
from . import associative

if TYPE_CHECKING:
    from ..options import Options

NAME = "chunked"
REQUIRES = associative.REQUIRES
FORWARD_MODE = associative.FORWARD_MODE
# Steps per block: long enough for the associative scan's depth to pay, short enough that
# its O(T log T) work stays near the sequential O(T) (benchmarks/RESULTS_linear.md).
CHUNK = 256
supports = associative.supports


def pays(cell: object, xs: PyTree) -> bool:
    """Whether `auto` runs a linear cell chunked here (`policy.associative_pays`)."""
    return policy.associative_pays()


def run(
    cell: Any,
    params: PyTree,
    h: jax.Array,
    xs: jax.Array,
    opts: Options,
    ctl: Ctl | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Blocks of `CHUNK` steps (or of `truncate_every` steps when truncating)."""
    return associative.run(cell, params, h, xs, opts, ctl, chunk=CHUNK)
