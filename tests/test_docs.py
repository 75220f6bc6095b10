"""Every ```python block of README.md and docs/*.md runs, in order, one namespace per file.

Doc code is user code: it runs with JAX's standard dtype promotion (optax's Adam needs it),
while rank promotion stays an error as everywhere in the suite.
"""

import pathlib
import re
import textwrap

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# parallel.md is about several devices: tests/test_sharding.py runs its blocks on 8 host
# devices (running them here too, on one device, only repeated that work).
ONE_DEVICE = [p for p in DOCS if p.name != "parallel.md"]
# The two long pages (about 30 s of CPU) run in the slow tier, which CI runs too.
LONG = ("guide.md", "interop.md")
# A block may sit indented inside an admonition (`!!! warning`): it runs dedented.
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.DOTALL | re.MULTILINE)


def blocks(path: pathlib.Path) -> list[str]:
    return [textwrap.dedent(code) for _, code in BLOCK.findall(path.read_text())]


def test_docs_exist():
    assert (ROOT / "docs" / "guide.md").exists()
    for path in DOCS:
        assert blocks(path), f"{path.name} has no python block"


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if p.name in LONG else p for p in ONE_DEVICE],
    ids=lambda p: p.name,
)
def test_code_blocks_run(path):
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for i, block in enumerate(blocks(path)):
        code = compile(block, f"{path.name}[block {i}]", "exec")
        with jax.numpy_dtype_promotion("standard"):
            exec(code, namespace)


def test_every_public_name_is_on_the_api_site():
    """Each name in `recurjax.__all__` has its `::: recurjax.NAME` entry in `docs/api/`, so
    a cell added to the package is not missing from the API site."""
    import recurjax as rj

    text = "".join(p.read_text() for p in sorted((ROOT / "docs" / "api").glob("*.md")))
    listed = set(re.findall(r"::: recurjax\.(\w+)", text))
    assert set(rj.__all__) - {"__version__"} <= listed, sorted(set(rj.__all__) - listed)
