"""Sequence classification: handwritten digits read one pixel row at a time.

Data. scikit-learn's handwritten digits (`sklearn.datasets.load_digits`, 1,797 images of
8x8 pixels with values 0..16, shipped inside the package: nothing is downloaded). Pixels are
scaled to [0, 1] and each image is read as a sequence of T = 8 steps (its rows, top to
bottom) of 8 features (the pixels of the row). The split is fixed: `train_test_split` with
`test_size=0.25`, stratified by class, `random_state=0` (1,347 train and 450 test images).

Model. `rj.chain(rj.GRUCell(8, H), rj.Dense(H, 10))` (or an `LSTMCell` with `--cell lstm`):
one cell that emits 10 logits after every row. It is run over a batch-major `(B, 8, 8)`
batch with `rj.scan(model, params, h0, images, time_axis=1)`, starting from the unbatched
initial state (which `scan` broadcasts to the batch); the logits after the last row classify
the image. It is trained with optax Adam on the mean cross-entropy, in shuffled minibatches,
with one jitted train step compiled once.

Baseline. A non-recurrent model on the same split: scikit-learn's `LogisticRegression` on
the 64 flattened pixels (a linear classifier that sees the whole image at once).

Run it (about 10-20 seconds on a 2-core CPU)::

    python examples/02_digits.py
    python examples/02_digits.py --cell lstm --hidden 128 --epochs 40 --out runs/digits

Output: a progress bar over training steps with the running loss; every `--log-every` epochs
a line with that epoch's mean training loss and the held-out accuracy (for monitoring only:
nothing is selected on it, the final model is the one after the last epoch); at the end the
recurrent model's test accuracy beside the baseline's. Nothing is written unless `--out DIR`
is given; then `DIR/metrics.json` holds the config, the per-epoch log and the final metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import recurjax as rj

CLASSES = 10
ROWS = 8  # time steps: the rows of an image
COLS = 8  # features per step: the pixels of a row

TrainStep = Callable[[Any, Any, jax.Array, jax.Array], tuple[Any, Any, jax.Array]]


class Split(NamedTuple):
    """Images `(N, ROWS, COLS)` in [0, 1] (float32) and labels `(N,)` (int32)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# --- data ------------------------------------------------------------------------------------


def load_split(test_size: float = 0.25, seed: int = 0) -> Split:
    """The digits scaled to [0, 1], split by a fixed stratified `train_test_split`."""
    digits: Any = load_digits()  # a Bunch (untyped in scikit-learn)
    images = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8), rows on axis 1
    labels = digits.target.astype(np.int32)
    parts = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=seed
    )
    x_train, x_test, y_train, y_test = (np.asarray(a) for a in parts)
    return Split(x_train, y_train, x_test, y_test)


def baseline_accuracy(split: Split) -> float:
    """Test accuracy of logistic regression on the 64 flattened pixels (no recurrence)."""
    clf = LogisticRegression(max_iter=5000)
    clf.fit(split.x_train.reshape(len(split.x_train), -1), split.y_train)
    return float(clf.score(split.x_test.reshape(len(split.x_test), -1), split.y_test))


# --- model -----------------------------------------------------------------------------------


def build_model(kind: str, hidden: int) -> rj.Chain:
    """`chain(GRUCell or LSTMCell (COLS => hidden), Dense(hidden => CLASSES))`."""
    rnn = rj.GRUCell(COLS, hidden) if kind == "gru" else rj.LSTMCell(COLS, hidden)
    return rj.chain(rnn, rj.Dense(hidden, CLASSES))


def classify(model: rj.Chain, params: Any, images: jax.Array) -> jax.Array:
    """Logits `(B, CLASSES)` for images `(B, ROWS, COLS)`: read the rows, keep the last output.

    The data is batch-major, so time is axis 1; the unbatched initial state `(H,)` is
    broadcast to the batch by `rj.scan`.
    """
    h0 = model.initial_state(params)
    _, logits = rj.scan(model, params, h0, images, time_axis=1)  # (B, ROWS, CLASSES)
    return logits[:, -1]


def loss_fn(model: rj.Chain, params: Any, images: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of the last-row logits against integer labels."""
    logits = classify(model, params, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(model: rj.Chain, optimizer: optax.GradientTransformation) -> TrainStep:
    """One jitted step on a minibatch: loss, gradient, Adam update."""

    @jax.jit
    def step(
        params: Any, opt_state: Any, images: jax.Array, labels: jax.Array
    ) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, images, labels))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


_classify_jit = jax.jit(classify, static_argnums=0)  # the model (a hashable cell) is static


def accuracy(model: rj.Chain, params: Any, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of `images` whose arg-max logit is the label (one batch, jitted)."""
    logits = _classify_jit(model, params, jnp.asarray(images))
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == labels))


# --- training --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cell", choices=("gru", "lstm"), default="gru", help="recurrent cell")
    p.add_argument("--hidden", type=int, default=64, help="hidden size")
    p.add_argument("--epochs", type=int, default=25, help="passes over the training set")
    p.add_argument("--batch", type=int, default=64, help="minibatch size")
    p.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the params and the shuffling")
    p.add_argument("--log-every", type=int, default=5, help="print a line every N epochs")
    p.add_argument("--out", default=None, help="folder for metrics.json (default: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def train(
    args: argparse.Namespace, model: rj.Chain, params: Any, split: Split
) -> tuple[Any, list[dict[str, float]]]:
    """`args.epochs` passes of shuffled minibatches (the last partial batch of each dropped,
    so the step compiles once); return the trained params and one record per epoch."""
    optimizer = optax.adam(args.lr)
    opt_state = optimizer.init(params)
    step = make_train_step(model, optimizer)
    rng = np.random.default_rng(args.seed)
    n_train = len(split.x_train)
    batch = min(args.batch, n_train)
    per_epoch = n_train // batch
    history: list[dict[str, float]] = []
    bar = tqdm(total=args.epochs * per_epoch, unit="step", disable=args.quiet, dynamic_ncols=True)
    for epoch in range(args.epochs):
        order = rng.permutation(n_train)[: per_epoch * batch].reshape(per_epoch, batch)
        losses = []
        for idx in order:
            xs, ys = jnp.asarray(split.x_train[idx]), jnp.asarray(split.y_train[idx])
            params, opt_state, loss = step(params, opt_state, xs, ys)
            losses.append(loss)
            bar.update(1)
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean([float(v) for v in losses])),
            "test_accuracy": accuracy(model, params, split.x_test, split.y_test),
        }
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}")
        if (epoch + 1) % args.log_every == 0 or epoch + 1 == args.epochs:
            bar.write(
                f"epoch {epoch + 1:3d}  train loss {record['train_loss']:.4f}  "
                f"test accuracy {record['test_accuracy']:.4f}"
            )
    bar.close()
    return params, history


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train and evaluate; return `{"test_accuracy", "train_accuracy", "baseline_accuracy",
    "train_seconds"}`."""
    args = parse_args(argv)
    split = load_split()
    print(
        f"digits: {len(split.x_train)} train / {len(split.x_test)} test images, each read as "
        f"{ROWS} rows of {COLS} pixels"
    )
    model = build_model(args.cell, args.hidden)
    params = model.init(jax.random.key(args.seed))
    n_params = sum(p.size for p in jax.tree.leaves(params))
    print(f"model: {model}, {n_params:,} params")

    start = time.perf_counter()
    params, history = train(args, model, params, split)
    seconds = time.perf_counter() - start
    baseline = baseline_accuracy(split)
    metrics = {
        "test_accuracy": accuracy(model, params, split.x_test, split.y_test),
        "train_accuracy": accuracy(model, params, split.x_train, split.y_train),
        "baseline_accuracy": baseline,
        "train_seconds": seconds,
    }
    print(f"trained in {seconds:.1f} s")
    print(
        f"test accuracy: {args.cell.upper()} over rows {metrics['test_accuracy']:.4f}  "
        f"(train {metrics['train_accuracy']:.4f})"
    )
    print(f"test accuracy: logistic regression on 64 pixels (baseline) {baseline:.4f}")
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        log = {"config": vars(args), "history": history, "final": metrics}
        (out / "metrics.json").write_text(json.dumps(log, indent=1))
    return metrics


if __name__ == "__main__":
    main()
