"""The public surface: every exported name is documented, with an example that runs."""

from __future__ import annotations

import inspect

import pytest

import recurjax as rj

PUBLIC = [name for name in rj.__all__ if name != "__version__"]


def test_all_lists_every_public_object_once():
    assert len(set(rj.__all__)) == len(rj.__all__)
    defined_here = {
        n
        for n, v in vars(rj).items()
        if not n.startswith("_") and getattr(v, "__module__", "").startswith("recurjax")
    }
    assert defined_here == set(PUBLIC)
    assert rj.__version__ == "0.1.0"


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_documented(name):
    obj = getattr(rj, name)
    doc = inspect.getdoc(obj)
    assert doc and len(doc) > 40, f"{name} has no docstring"
    # The base class, and classes made by a documented factory function (chain, ...).
    if name not in {"Cell", "Chain", "Stateless", "Bidirectional", "Residual"}:
        assert ">>>" in doc, f"{name}'s docstring has no example"
