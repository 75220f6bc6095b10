"""Smoke tests of the example scripts: each runs end to end on a tiny corpus in seconds."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import jax
import numpy as np
import pytest

# Needs matplotlib and tqdm: the `extras` marker, which .ci/floor deselects.
pytestmark = pytest.mark.extras

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


def _example_cells() -> tuple[str, ...]:
    """The example's `CELLS`, read from its source (importing it needs optax and tqdm, and
    this runs at collection)."""
    tree = ast.parse((EXAMPLES / "01_char_lm.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["CELLS"]:
            return ast.literal_eval(node.value)
    raise AssertionError("examples/01_char_lm.py defines no CELLS")


EXAMPLE_CELLS = _example_cells()


def _char_lm_args(corpus: Path, out: Path, epochs: int) -> list[str]:
    return [
        "--data", str(corpus),
        "--epochs", str(epochs),
        "--hidden", "32",
        "--embed", "8",
        "--batch", "8",
        "--seq", "16",
        "--lr", "1e-2",
        "--sample-len", "20",
        "--out", str(out),
        "--quiet",
    ]  # fmt: skip


def _corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 40)  # ~5 KB; the last tenth is held out
    return corpus


def test_char_lm_learns_and_resumes_exactly(tmp_path: Path) -> None:
    """Four epochs straight must learn; two epochs, then a resume to four, must give the
    bit-identical checkpoint (one test, so the straight run serves both checks)."""
    lm = load_example("01_char_lm.py")
    corpus = _corpus(tmp_path)
    out, split = tmp_path / "run", tmp_path / "split"
    # The suite is strict about dtype promotion (conftest.py) for recurjax's own code; optax's
    # Adam computes `decay ** count` (float ** int32), which only standard promotion allows.
    with jax.numpy_dtype_promotion("standard"):
        metrics = lm.main(_char_lm_args(corpus, out, epochs=4))
        lm.main(_char_lm_args(corpus, split, epochs=2))
        resumed = lm.main([*_char_lm_args(corpus, split, epochs=4), "--resume"])
    assert set(metrics) >= {"train_bpc", "val_bpc", "unigram_bits"}
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    # Repeated text is predictable from context: the model must beat the order-0 entropy.
    assert metrics["val_bpc"] < metrics["unigram_bits"] - 0.5, metrics
    assert metrics["train_bpc"] < metrics["unigram_bits"], metrics
    log = json.loads((out / "log.json").read_text())
    # 4,752 training bytes in 8 streams: 593 steps, 37 chunks of 16 and one of 1 per epoch.
    assert len(log["train_bpc"]) == 4 * 38
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3, 4]
    assert log["epochs"][-1]["train_bpc"] < log["epochs"][0]["train_bpc"]
    assert log["final"]["val_bpc"] == metrics["val_bpc"]
    png = (out / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

    a = np.load(out / "checkpoint.npz", allow_pickle=False)
    b = np.load(split / "checkpoint.npz", allow_pickle=False)
    assert sorted(a.keys()) == sorted(b.keys())
    assert any("mu" in k for k in a)  # the optimizer state is in the checkpoint
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    split_log = json.loads((split / "log.json").read_text())
    assert [e["epoch"] for e in split_log["epochs"]] == [1, 2, 3, 4]
    assert split_log["final"]["val_bpc"] == resumed["val_bpc"] == metrics["val_bpc"]

    # A truncated checkpoint (a copy cut short) gets an error naming the file and the fix.
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (split / "checkpoint.npz").read_bytes()
    (broken / "checkpoint.npz").write_bytes(data[: len(data) // 2])
    message = f"--resume: {broken / 'checkpoint.npz'} is not a readable checkpoint (BadZipFile"
    with pytest.raises(SystemExit, match=re.escape(message) + ".*Delete it"):
        lm.main([*_char_lm_args(corpus, broken, epochs=4), "--resume"])


@pytest.mark.parametrize(
    "kind",
    # The default layer every day, the others in the slow tier.
    [k if k == "lstm" else pytest.param(k, marks=pytest.mark.slow) for k in EXAMPLE_CELLS],
)
def test_char_lm_builds_and_trains_every_cell(kind: str) -> None:
    """`--cell NAME` for every recurrent layer of the example: the model builds, one chunk
    gives a finite loss near ln(256) at init and finite gradients for every param."""
    lm = load_example("01_char_lm.py")
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, 256, size=(2, 6, 3))
    assert kind in lm.CELLS
    model = lm.build_model(jax.random.key(0), 8, 4, kind).batched(3)

    def loss(params):
        return lm.chunk_nll(model.replace(params=params), xs, ys)[0] / xs.size

    value, grads = jax.value_and_grad(loss)(model.params)
    assert abs(float(value) - math.log(256)) < 1.0, kind
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads)), kind
