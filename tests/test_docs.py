"""Every ```python block of README.md and docs/*.md runs, in order, one namespace per file."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_docs_exist():
    assert (ROOT / "docs" / "guide.md").exists()
    for path in DOCS:
        assert BLOCK.findall(path.read_text()), f"{path.name} has no python block"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_code_blocks_run(path):
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for i, block in enumerate(BLOCK.findall(path.read_text())):
        code = compile(block, f"{path.name}[block {i}]", "exec")
        exec(code, namespace)
