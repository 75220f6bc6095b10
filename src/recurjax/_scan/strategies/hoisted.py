"""The hoisted strategy, for a cell linear in its state: every step's coefficients `(a_t, b_t)`
at once (over all steps, out of the loop), then `lax.scan` of `h = a h + b` alone, then the
read-out at once. Its backward pass is the same recurrence run backwards (a custom VJP)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax

from ..._contracts import PyTree
from .. import policy
from ..blocks import Ctl
from . import associative

if TYPE_CHECKING:
    from ..options import Options

NAME = "hoisted"
REQUIRES = associative.REQUIRES
FORWARD_MODE = associative.FORWARD_MODE
supports = associative.supports


def pays(cell: object, xs: PyTree) -> bool:
    """Whether `auto` runs a linear cell hoisted for these inputs (`policy.hoisted_pays`)."""
    return policy.hoisted_pays(cell, xs)


def run(
    cell: Any,
    params: PyTree,
    h: jax.Array,
    xs: jax.Array,
    opts: Options,
    ctl: Ctl | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The whole sequence (or blocks of `truncate_every` steps when truncating)."""
    return associative.run(cell, params, h, xs, opts, ctl, scan=associative.stepped_linear_scan)
