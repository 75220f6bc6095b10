"""The evaluation strategies of the scan engine, one module each, in a registry.

Each strategy module has `NAME`, `REQUIRES` (the end of the error message when an explicit
choice applies to no part of the cell; `None` when it runs every cell), `FORWARD_MODE`
(whether JAX can differentiate it in forward mode), `supports(cell)`, `pays(cell, xs)`
(whether `strategy="auto"` should pick it, by the thresholds of `policy.py`) and
`run(cell, params, h, xs, opts, ctl) -> (h, ys)` over time-major inputs with a settled
state. Adding a strategy is one new module and one entry here (in `AUTO_ORDER` too if
`auto` may pick it).
"""

from __future__ import annotations

from types import ModuleType

from . import associative, chunked, fused, hoisted, sequential

REGISTRY: dict[str, ModuleType] = {
    m.NAME: m for m in (fused, sequential, associative, chunked, hoisted)
}
# `auto` takes the first strategy here that supports the cell and pays for its inputs;
# the sequential one, last, always does.
AUTO_ORDER: tuple[ModuleType, ...] = (chunked, hoisted, fused, sequential)
