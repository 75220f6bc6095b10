"""Time-series forecasting: next year's sunspot number, with the state carried through time.

Data. The yearly mean sunspot numbers 1700-2008 (309 values) shipped with statsmodels
(`statsmodels.datasets.sunspots`, the `SUNACTIVITY` column; nothing is downloaded). The split
is by time: the loss is computed on 1700-1870 (`--fit-until`), 1871-1920 (`--val-until`) is
for validation (early stopping), and every later year, 1921-2008, is the test period. The
series is normalised with the mean and standard deviation of the fitting years.

Model. `rj.chain(rj.GRUCell(1, H), rj.Dense(H, 1))` held in an `rj.Recur` handle: at every
year it reads that year's (normalised) value and predicts the change to the next year's,
its state summarising the whole past; the forecast is this year's value plus that change.
Training runs the handle from its initial state over the whole fitting series in one
`Recur.scan` (full backpropagation through time; one jitted step, compiled once) and
minimises the mean squared one-step-ahead error with optax Adam, with small Gaussian noise
added to the inputs. With so little data (170 years) a GRU overfits if trained long, so the
params with the lowest validation error are kept (evaluated every `--eval-every` steps;
training stops after `--patience` evaluations without improvement). The test years play no
part in training or in choosing the params.

Forecast. Stateful streaming: the trained handle reads the years before the test period
(`m.scan`), and the handle it returns, holding the state reached at the end of 1920, goes on
over the test years, so every test forecast uses the state carried through all the years
before it. Each forecast is one step ahead: year t is predicted from the true values up to
year t-1.

Baselines, on the same test years: persistence (next year = this year), the mean of the
fitting years, and a linear autoregression AR(p) fitted by least squares on the fitting
years (a classical model for this series; `--ar-order`, default 9).

Run it (about 10 seconds on a 2-core CPU)::

    python examples/03_sunspots.py
    python examples/03_sunspots.py --hidden 64 --seed 1 --out runs/sunspots-h64

Output: a progress bar with the training and validation MSE (normalised units); the step
kept; the test RMSE (in sunspot units) of the model and of each baseline, and the model's
ratio to persistence; a plot of forecast vs truth (and persistence) over the test years,
written to `DIR/forecast.png` (`--out DIR`, default `runs/sunspots`), beside `DIR/metrics.json`
with the config, the metrics and the loss curves."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from statsmodels.datasets import sunspots
from tqdm import tqdm

import recurjax as rj

TrainStep = Callable[
    [rj.Recur, Any, jax.Array, jax.Array, jax.Array], tuple[rj.Recur, Any, jax.Array]
]


class Series(NamedTuple):
    """The yearly series and where the validation and test years start."""

    years: np.ndarray  # (N,) int
    values: np.ndarray  # (N,) float64, sunspot numbers
    fit: int  # index of the first validation year
    cut: int  # index of the first test year


# --- data ------------------------------------------------------------------------------------


def load_series(fit_until: int, val_until: int) -> Series:
    """The statsmodels sunspots, split by time after `fit_until` and after `val_until`."""
    data = sunspots.load_pandas().data
    if data is None:  # typed optional in statsmodels; always set for this data set
        raise RuntimeError("statsmodels returned no sunspots data")
    years = data["YEAR"].to_numpy().astype(np.int64)
    values = data["SUNACTIVITY"].to_numpy().astype(np.float64)
    fit = int(np.searchsorted(years, fit_until, side="right"))
    cut = int(np.searchsorted(years, val_until, side="right"))
    if not 10 <= fit < cut - 1 < len(years) - 2:
        raise SystemExit(
            f"--fit-until {fit_until} --val-until {val_until}: need at least 10 fitting "
            f"years, then 2 validation and 2 test years, within {years[0]}-{years[-1]}"
        )
    return Series(years, values, fit, cut)


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Root mean squared error."""
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def ar_forecast(values: np.ndarray, fit: int, cut: int, order: int) -> np.ndarray:
    """One-step forecasts of `values[cut:]` by an AR(`order`) with intercept, fitted by least
    squares on `values[:fit]` (each forecast uses the true values before it)."""

    def lags(end: int) -> np.ndarray:  # rows t = order .. end-1: [1, v[t-1], ..., v[t-order]]
        cols = [values[order - k : end - k] for k in range(1, order + 1)]
        return np.column_stack([np.ones(end - order), *cols])

    coef, *_ = np.linalg.lstsq(lags(fit), values[order:fit], rcond=None)
    return (lags(len(values)) @ coef)[cut - order :]


# --- model -----------------------------------------------------------------------------------


def build_model(key: jax.Array, hidden: int) -> rj.Recur:
    """`Recur(chain(GRUCell(1, hidden), Dense(hidden, 1)))`: unbatched, one value per step."""
    return rj.Recur(rj.chain(rj.GRUCell(1, hidden), rj.Dense(hidden, 1)), key=key)


def predict(model: rj.Recur, xs: jax.Array) -> tuple[rj.Recur, jax.Array]:
    """Run the handle over `xs: (T, 1)` from its current state: `(handle, next values (T, 1))`.

    The network predicts the change from this year to the next, so a forecast is the input
    plus the network's output (an untrained network is close to persistence).
    """
    model, deltas = model.scan(xs)
    return model, xs + deltas


def sequence_loss(model: rj.Recur, xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Mean squared one-step-ahead error over a sequence `xs, ys: (T, 1)`, from a reset."""
    _, preds = predict(model.reset(), xs)
    return jnp.mean((preds - ys) ** 2)


def make_train_step(optimizer: optax.GradientTransformation, noise: float) -> TrainStep:
    """One jitted step: loss over the whole fitting sequence (inputs jittered with Gaussian
    noise of scale `noise`, a regulariser), gradient, optimizer update."""

    @jax.jit
    def step(
        model: rj.Recur, opt_state: Any, xs: jax.Array, ys: jax.Array, key: jax.Array
    ) -> tuple[rj.Recur, Any, jax.Array]:
        noisy = xs + noise * jax.random.normal(key, xs.shape, xs.dtype)

        def loss_of_params(params: Any) -> jax.Array:
            return sequence_loss(model.replace(params=params), noisy, ys)

        loss, grads = jax.value_and_grad(loss_of_params)(model.params)
        updates, opt_state = optimizer.update(grads, opt_state, model.params)
        return model.replace(params=optax.apply_updates(model.params, updates)), opt_state, loss

    return step


@partial(jax.jit, static_argnums=2)
def forecast(model: rj.Recur, z: jax.Array, start: int) -> jax.Array:
    """One-step forecasts `(len(z) - start,)` of `z[start:]`, streaming the state through time.

    The handle reads `z[:start-1]` from its initial state (warm-up; outputs unused); the
    handle it returns, holding the state reached there, goes on over `z[start-1:-1]`, whose
    outputs predict `z[start:]`: each forecast uses the true values of every earlier year.
    """
    warm, _ = model.reset().scan(z[: start - 1])
    _, preds = predict(warm, z[start - 1 : -1])
    return preds[:, 0]


def train(
    args: argparse.Namespace, model: rj.Recur, z: jax.Array, fit: int, val: int
) -> tuple[rj.Recur, dict[str, Any]]:
    """Fit on `z[:fit]`; keep the params with the lowest validation MSE on `z[fit:val]`.

    Runs up to `args.steps` full-sequence Adam steps, evaluates every `args.eval_every`
    steps, and stops early after `args.patience` evaluations without improvement. Returns
    the best handle and a log (training loss per step, validation MSE per evaluation, the
    best step).
    """
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.lr))
    opt_state = optimizer.init(model.params)
    step = make_train_step(optimizer, args.noise)
    xs, ys = z[: fit - 1], z[1:fit]
    best, best_mse, best_step, waited = model, float("inf"), 0, 0
    log: dict[str, Any] = {"train_mse": [], "val_mse": []}
    keys = jax.random.split(jax.random.key(args.seed + 1), args.steps)
    bar = tqdm(total=args.steps, unit="step", disable=args.quiet, dynamic_ncols=True)
    for i in range(args.steps):
        model, opt_state, loss = step(model, opt_state, xs, ys, keys[i])
        log["train_mse"].append(float(loss))
        bar.update(1)
        if (i + 1) % args.eval_every == 0:
            val_mse = float(jnp.mean((forecast(model, z[:val], fit) - z[fit:val, 0]) ** 2))
            log["val_mse"].append({"step": i + 1, "val_mse": val_mse})
            if val_mse < best_mse:
                best, best_mse, best_step, waited = model, val_mse, i + 1, 0
            else:
                waited += 1
            bar.set_postfix(mse=f"{float(loss):.3f}", val=f"{val_mse:.3f}", best=best_step)
            if waited >= args.patience:
                break
    bar.close()
    log["best_step"] = best_step
    log["steps_run"] = len(log["train_mse"])
    return best, log


def plot(series: Series, pred: np.ndarray, persist: np.ndarray, path: Path) -> None:
    """Forecast vs truth (and persistence) over the test years, as a PNG at `path`."""
    years = series.years[series.cut :]
    # The object-oriented API on an Agg canvas: no pyplot, no global backend, no display.
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(years, series.values[series.cut :], color="black", lw=2, label="observed")
    ax.plot(years, pred, color="tab:red", lw=1.5, label="GRU one-step forecast")
    ax.plot(years, persist, color="tab:gray", lw=1, ls="--", label="persistence")
    ax.set_xlabel("year")
    ax.set_ylabel("yearly mean sunspot number")
    ax.set_title("Sunspots: one-year-ahead forecasts over the test years")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--fit-until", type=int, default=1870, help="last year the loss sees")
    p.add_argument("--val-until", type=int, default=1920, help="last validation year")
    p.add_argument("--hidden", type=int, default=32, help="GRU hidden size")
    p.add_argument("--steps", type=int, default=300, help="most Adam steps (full sequence)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    p.add_argument("--noise", type=float, default=0.1, help="input noise (normalised units)")
    p.add_argument("--eval-every", type=int, default=10, help="steps between validations")
    p.add_argument("--patience", type=int, default=10, help="validations without progress")
    p.add_argument("--ar-order", type=int, default=9, help="order of the AR baseline")
    p.add_argument("--seed", type=int, default=0, help="seed of the params and the noise")
    p.add_argument("--out", default="runs/sunspots", help="folder for forecast.png, metrics")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train, forecast the test years; return RMSEs (sunspot units) and the persistence ratio."""
    args = parse_args(argv)
    series = load_series(args.fit_until, args.val_until)
    values, years, fit, cut = series.values, series.years, series.fit, series.cut
    mean, std = values[:fit].mean(), values[:fit].std()
    z = jnp.asarray((values - mean) / std, jnp.float32)[:, None]  # (N, 1): one feature
    print(
        f"sunspots: fit {years[0]}-{years[fit - 1]} ({fit} years), validate "
        f"{years[fit]}-{years[cut - 1]} ({cut - fit}), test {years[cut]}-{years[-1]} "
        f"({len(values) - cut})"
    )
    model = build_model(jax.random.key(args.seed), args.hidden)
    print(f"model: {model}, {sum(p.size for p in jax.tree.leaves(model.params)):,} params")

    start = time.perf_counter()
    model, log = train(args, model, z, fit, cut)
    seconds = time.perf_counter() - start
    pred = np.asarray(forecast(model, z, cut), np.float64) * std + mean
    truth = values[cut:]
    persist = values[cut - 1 : -1]
    metrics = {
        "test_rmse": rmse(pred, truth),
        "persistence_rmse": rmse(persist, truth),
        "mean_rmse": rmse(np.full_like(truth, mean), truth),
        "ar_rmse": rmse(ar_forecast(values, fit, cut, args.ar_order), truth),
        "best_step": float(log["best_step"]),
        "train_seconds": seconds,
    }
    metrics["ratio_to_persistence"] = metrics["test_rmse"] / metrics["persistence_rmse"]
    print(
        f"trained {log['steps_run']} steps in {seconds:.1f} s; kept step {log['best_step']} "
        "(lowest validation error)"
    )
    print(f"test RMSE over {len(truth)} one-year-ahead forecasts (sunspot units):")
    print(f"  GRU, state carried from {years[0]}  {metrics['test_rmse']:7.2f}")
    print(f"  persistence (next = this year)  {metrics['persistence_rmse']:7.2f}")
    print(f"  mean of the fitting years       {metrics['mean_rmse']:7.2f}")
    print(f"  AR({args.ar_order}), least squares          {metrics['ar_rmse']:7.2f}")
    print(f"GRU / persistence RMSE ratio: {metrics['ratio_to_persistence']:.3f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(series, pred, persist, out / "forecast.png")
    (out / "metrics.json").write_text(
        json.dumps({"config": vars(args), "final": metrics, **log}, indent=1)
    )
    print(f"wrote {out / 'forecast.png'} and {out / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    main()
