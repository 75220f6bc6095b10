"""Smoke tests of the real-data examples: each trains briefly, end to end, in a few seconds.

The data ship inside scikit-learn and statsmodels, so nothing is downloaded. The runs are
short but the assertions are about behaviour: the models must learn, not merely run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import jax
import pytest

# Needs scikit-learn, statsmodels and matplotlib: the `extras` marker, which .ci/floor deselects.
pytestmark = pytest.mark.extras

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(filename: str) -> ModuleType:
    """Import `examples/<filename>` as a module (its name starts with a digit)."""
    name = "example_" + Path(filename).stem
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # trains for a while (7 s of CPU); CI runs the slow tier
def test_digits_learns_rows(tmp_path: Path) -> None:
    digits = load_example("02_digits.py")
    out = tmp_path / "digits"
    args = [
        "--epochs", "3",
        "--hidden", "32",
        "--batch", "64",
        "--lr", "1e-2",
        "--out", str(out),
        "--quiet",
    ]  # fmt: skip
    # The suite is strict about dtype promotion (conftest.py); optax's Adam computes
    # `decay ** count` (float ** int32), which only standard promotion allows.
    with jax.numpy_dtype_promotion("standard"):
        metrics = digits.main(args)
    assert set(metrics) >= {"test_accuracy", "train_accuracy", "baseline_accuracy"}
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    # Chance is 10%; three short epochs over the rows already classify most digits.
    assert metrics["test_accuracy"] > 0.6, metrics
    assert metrics["train_accuracy"] > 0.6, metrics
    assert metrics["baseline_accuracy"] > 0.9, metrics  # logistic regression on the pixels
    log = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in log["history"]] == [1, 2, 3]
    assert log["history"][-1]["train_loss"] < log["history"][0]["train_loss"]
    assert log["final"]["test_accuracy"] == metrics["test_accuracy"]


def test_digits_split_is_fixed_and_stratified() -> None:
    digits = load_example("02_digits.py")
    a, b = digits.load_split(), digits.load_split()
    assert a.x_train.shape == (1347, 8, 8) and a.x_test.shape == (450, 8, 8)
    assert (a.x_test == b.x_test).all() and (a.y_test == b.y_test).all()
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    counts = [int((a.y_test == c).sum()) for c in range(10)]
    assert min(counts) >= 43 and max(counts) <= 47, counts  # ~45 test images per class


@pytest.mark.slow  # trains a few seconds; CI runs the slow tier
def test_sunspots_beats_persistence(tmp_path: Path) -> None:
    sunspots = load_example("03_sunspots.py")
    out = tmp_path / "sunspots"
    args = [
        "--hidden", "16",
        "--steps", "60",
        "--eval-every", "10",
        "--out", str(out),
        "--quiet",
    ]  # fmt: skip
    with jax.numpy_dtype_promotion("standard"):
        metrics = sunspots.main(args)
    keys = {"test_rmse", "persistence_rmse", "mean_rmse", "ar_rmse", "ratio_to_persistence"}
    assert set(metrics) >= keys
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    # Persistence on the 1921-2008 test years: a fixed number of the data.
    assert 25.0 < metrics["persistence_rmse"] < 35.0, metrics
    assert metrics["test_rmse"] < metrics["mean_rmse"], metrics
    assert metrics["ratio_to_persistence"] < 0.9, metrics
    assert metrics["ratio_to_persistence"] == metrics["test_rmse"] / metrics["persistence_rmse"]
    png = out / "forecast.png"
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = json.loads((out / "metrics.json").read_text())
    assert log["final"]["test_rmse"] == metrics["test_rmse"]
    assert 1 <= log["best_step"] <= 60


def test_sunspots_forecast_streams_the_state() -> None:
    """Two scans with the state handed over equal one scan over the whole series."""
    sunspots = load_example("03_sunspots.py")
    series = sunspots.load_series(1870, 1920)
    z = jax.numpy.asarray(series.values[:, None] / 100.0, jax.numpy.float32)
    model = sunspots.build_model(jax.random.key(0), 8)
    streamed = sunspots.forecast(model, z, series.cut)
    _, whole = sunspots.predict(model, z[:-1])
    assert streamed.shape == (len(z) - series.cut,)
    assert jax.numpy.allclose(streamed, whole[series.cut - 1 :, 0], atol=1e-5)
