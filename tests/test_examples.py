"""Smoke tests of the example scripts: each runs end to end on a tiny corpus in seconds."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import jax

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Pack my box with five dozen liquor jugs.\n"
    "def hello(name):\n    return 'hello, ' + name\n\n"
)


def load_example(filename: str) -> ModuleType:
    """Import `examples/<filename>` as a module (its name starts with a digit)."""
    name = "example_" + Path(filename).stem
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module


def _char_lm_args(corpus: Path, out: Path) -> list[str]:
    return [
        "--data", str(corpus),
        "--steps", "150",
        "--hidden", "32",
        "--embed", "8",
        "--batch", "8",
        "--seq", "16",
        "--lr", "1e-2",
        "--evals", "1",
        "--sample-len", "20",
        "--out", str(out),
        "--quiet",
    ]  # fmt: skip


def test_char_lm_learns_repeated_text(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 40)  # ~5 KB; the last tenth is held out
    out = tmp_path / "run"
    lm = load_example("01_char_lm.py")
    # The suite is strict about dtype promotion (conftest.py) for recurjax's own code; optax's
    # Adam computes `decay ** count` (float ** int32), which only standard promotion allows.
    with jax.numpy_dtype_promotion("standard"):
        metrics = lm.main(_char_lm_args(corpus, out))
    assert set(metrics) >= {"train_bpc", "val_bpc", "unigram_bits"}
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    # Repeated text is predictable from context: the model must beat the order-0 entropy.
    assert metrics["val_bpc"] < metrics["unigram_bits"] - 0.5, metrics
    assert metrics["train_bpc"] < metrics["unigram_bits"], metrics
    log = json.loads((out / "log.json").read_text())
    assert len(log["train_bpc"]) == 150
    assert log["train_bpc"][-1] < log["train_bpc"][0]
    assert log["final"]["val_bpc"] == metrics["val_bpc"]
