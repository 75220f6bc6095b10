"""Data parallelism with JAX's own sharding: a batch split over 8 devices trains exactly like one.

This pytest process has already initialised JAX with one CPU device, so the checks run in a
subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=8` and `JAX_PLATFORMS=cpu`:
tests/sharding_check.py trains a `Recur` character model (embedding, LSTM, GRU, Dense; optax
Adam) for a few chunks on one device and again with the batch axis sharded over a
`Mesh(devices, ("data",))`, and prints what it saw as JSON; the tests below assert on it. A
second subprocess runs examples/04_data_parallel.py with tiny settings.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Three subprocesses on 8 host devices (about 40 s of CPU): the slow tier, which CI runs.
# tests/sharding_check.py needs orbax: the `extras` marker, which .ci/floor deselects.
pytestmark = [pytest.mark.slow, pytest.mark.extras]

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 8
FLAG = "--xla_force_host_platform_device_count"
TIMEOUT_S = 300


def eight_device_env() -> dict[str, str]:
    """This process's environment, with JAX on 8 host CPU devices (any other count removed)."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(FLAG)]
    env["XLA_FLAGS"] = " ".join([*flags, f"{FLAG}={DEVICES}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_python(*args: str) -> dict[str, Any]:
    """Run `python *args` on 8 devices; return the JSON object on the last line of stdout."""
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=eight_device_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, (
        f"`python {' '.join(args)}` exited with {proc.returncode}.\n"
        f"--- stdout (tail) ---\n{proc.stdout[-3000:]}\n--- stderr (tail) ---\n"
        f"{proc.stderr[-5000:]}"
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"`python {' '.join(args)}` printed nothing; stderr:\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[str, Any]:
    """The check's JSON, computed once per test session.

    Under pytest-xdist the tests of this module may land on several workers, each with its
    own module fixture; the first one runs the subprocess (a minute) and leaves the JSON in
    the session's shared temporary folder for the others, under a file lock.
    """
    script = str(ROOT / "tests" / "sharding_check.py")
    if worker_id == "master":  # not under xdist
        return run_python(script)
    shared = tmp_path_factory.getbasetemp().parent  # this session's folder, shared by workers
    cache = shared / "sharding_check.json"
    with open(shared / "sharding_check.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cache.exists():
            cache.write_text(json.dumps(run_python(script)))
        return json.loads(cache.read_text())


def _layout_problems(infos: list[dict[str, Any]], shard_shape: list[int]) -> list[str]:
    """Why any leaf in `infos` is not split over all 8 devices in shards of `shard_shape`."""
    problems = []
    for info in infos:
        where = f"{info.get('path', '')} {info['shape']}"
        if info["sharding"] != "NamedSharding" or not info["spec_ok"]:
            problems.append(f"{where}: {info['sharding']} {info['spec']}, not batch-sharded")
        if info["n_shards"] != DEVICES or info["n_devices"] != DEVICES:
            problems.append(f"{where}: {info['n_shards']} shards on {info['n_devices']} devices")
        if info["shard_shapes"] != [shard_shape]:
            problems.append(f"{where}: shards {info['shard_shapes']}, expected {shard_shape}")
    return problems


def _replication_problems(infos: list[dict[str, Any]]) -> list[str]:
    return [
        f"{info.get('path', '')} {info['shape']}: {info['sharding']} {info['spec']}, "
        f"{info['n_shards']} shards"
        for info in infos
        if not (info["spec_ok"] and info["fully_replicated"] and info["n_shards"] == DEVICES)
    ]


def test_runs_on_eight_cpu_devices(result: dict[str, Any]) -> None:
    assert result["devices"] == DEVICES, f"the subprocess saw {result['devices']} devices"
    assert result["platform"] == "cpu"
    assert result["batch"] % DEVICES == 0 and result["rows_per_shard"] == 4


def test_sharded_training_matches_single_device(result: dict[str, Any]) -> None:
    """Loss, gradients, Adam's updated params and state, outputs and carried state: the
    sharded run equals the one-device run to float32 rounding, step after step."""
    for s in result["steps"]:
        i = s["step"]
        assert s["loss_diff"] <= 1e-5 * abs(s["loss_single"]), (
            f"step {i}: loss {s['loss_sharded']} (sharded) vs {s['loss_single']} (one device)"
        )
        assert s["grads_diff"] <= 1e-5 * s["grads_scale"], (
            f"step {i}: gradients differ by up to {s['grads_diff']:.3g} "
            f"(largest gradient {s['grads_scale']:.3g})"
        )
        # Adam moves each param by about lr = 1e-2 per step; 1e-5 is 0.1% of one step.
        assert s["params_diff"] <= 1e-5, f"step {i}: updated params differ by {s['params_diff']}"
        assert s["opt_state_diff"] <= 1e-6, f"step {i}: Adam state differs: {s['opt_state_diff']}"
        assert s["logits_diff"] <= 1e-5, f"step {i}: outputs differ by {s['logits_diff']}"
        assert s["state_diff"] <= 1e-5, f"step {i}: carried state differs by {s['state_diff']}"
    assert result["steps"][-1]["loss_single"] < result["steps"][0]["loss_single"] + 1.0


def test_outputs_and_state_stay_batch_sharded(result: dict[str, Any]) -> None:
    """After every step (a reset() included) the carried state and the outputs are still
    split over the 8 devices, B/8 rows each: never gathered onto one device."""
    rows = result["rows_per_shard"]
    assert not _layout_problems(result["placed"]["state"], [rows, 32])
    for s in result["steps"]:
        problems = _layout_problems(s["state"], [rows, 32])
        problems += _layout_problems(s["state0"], [rows, 32])
        problems += _layout_problems([s["logits"]], [12, rows, 64])  # (T, B, VOCAB)
        assert not problems, f"step {s['step']}:\n" + "\n".join(problems)
        assert len(s["state"]) == 3  # LSTMState(h, c) and the GRU's h


def test_params_grads_and_optimizer_state_replicated(result: dict[str, Any]) -> None:
    for s in result["steps"]:
        problems = _replication_problems(s["params"] + s["grads"] + s["opt_state"])
        problems += _replication_problems([s["loss"]])
        assert not problems, f"step {s['step']}, not replicated:\n" + "\n".join(problems)


def test_one_compile_and_no_gather(result: dict[str, Any]) -> None:
    """The step compiled once for the whole run (so no step saw a resharded state), and
    its program syncs only by all-reduce (the gradient, the loss), with no all-gather."""
    assert result["compiles"] == 1, (
        f"the sharded train step compiled {result['compiles']} times over "
        f"{len(result['steps'])} steps: some step got its arguments with other shardings"
    )
    found = result["collectives"]
    assert found.get("all-reduce", 0) >= 1, f"no all-reduce of the gradient in {found}"
    moved = {k: v for k, v in found.items() if k != "all-reduce"}
    assert not moved, f"the step moves batch data between devices: {moved}"


def test_explicit_in_out_shardings_agree(result: dict[str, Any]) -> None:
    """`jax.jit(in_shardings=..., out_shardings=...)` with a Recur of shardings gives the same
    results and layout as letting the shardings propagate."""
    assert result["explicit_shardings_diff"] <= 1e-6, result["explicit_shardings_diff"]
    problems = _layout_problems(result["explicit_state"], [result["rows_per_shard"], 32])
    assert not problems, "\n".join(problems)


def test_eager_scan_and_step_keep_the_sharding(result: dict[str, Any]) -> None:
    """Without a jit of one's own, `m.scan(xs)` and `m(x)` on a sharded handle keep the
    state and the outputs split (recurjax's internal jit propagates the shardings)."""
    rows, eager = result["rows_per_shard"], result["eager"]
    problems = _layout_problems(eager["scan_state"] + eager["call_state"], [rows, 32])
    problems += _layout_problems([eager["scan_ys"]], [12, rows, 64])
    problems += _layout_problems([eager["call_y"]], [rows, 64])
    assert not problems, "\n".join(problems)


def test_sequence_parallel_scan_equals_one_device(result: dict[str, Any]) -> None:
    """A sequence split in time over 8 devices: values, states and gradients of minGRU, the
    LRU, mLSTM, GLA, Mamba-2 and Gated DeltaNet equal the one-device scan, with lengths and
    resets; outputs stay time-sharded."""
    runs = result["sequence_parallel"]
    assert len(runs) == 7
    for label, run in runs.items():
        assert run["rel_diff"] <= 1e-5, (label, run)
        assert run["ys_time_split"], (label, run)


def test_data_parallel_example_smoke() -> None:
    """examples/04_data_parallel.py with tiny settings: it trains on 8 devices, the held-out
    loss drops, and its own sharding assertions pass (it exits non-zero otherwise)."""
    code = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('dp', 'examples/04_data_parallel.py')\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "print(json.dumps(mod.main(sys.argv[1:])))\n"
    )
    args = ["--steps", "24", "--batch", "16", "--seq", "16", "--hidden", "32", "--embed", "8"]
    args += ["--lr", "1e-2", "--train-bytes", "4000", "--quiet"]  # 15 chunks: one reset
    metrics = run_python("-c", code, *args)
    assert metrics["devices"] == DEVICES
    assert metrics["state_spec"] == "P('data',)", metrics
    assert metrics["state_shards"] == DEVICES and metrics["state_shard_rows"] == 16 // DEVICES
    assert metrics["val_bpc"] < metrics["val_bpc_start"] - 1.0, metrics


def test_parallel_doc_runs_on_eight_devices() -> None:
    """The python blocks of docs/parallel.md, which tests/test_docs.py runs on one device,
    also run (and their assertions hold) with the batch split over 8 devices."""
    code = (
        "import json, pathlib, re, jax\n"
        "jax.config.update('jax_numpy_rank_promotion', 'raise')\n"
        "text = pathlib.Path('docs/parallel.md').read_text()\n"
        "blocks = re.findall(r'^```python\\n(.*?)^```', text, re.DOTALL | re.MULTILINE)\n"
        "namespace = {'__name__': 'docs_parallel'}\n"
        "for i, block in enumerate(blocks):\n"
        "    exec(compile(block, f'parallel.md[block {i}]', 'exec'), namespace)\n"
        "print(json.dumps({'blocks': len(blocks), 'n': namespace['n'], 'B': namespace['B']}))\n"
    )
    out = run_python("-c", code)
    assert out["n"] == DEVICES and out["B"] == 4 * DEVICES, out
    assert out["blocks"] >= 5, out


def test_orbax_restores_a_sharded_checkpoint_bit_for_bit_onto_the_target_layout(
    result: dict[str, Any],
) -> None:
    """The trained, batch-sharded handle and its optax state, saved with orbax, come back
    identical onto one device and onto the data-parallel layout given by the target's
    shardings: the state split over the 8 devices, the params replicated."""
    restored = result["orbax"]
    for name in ("single", "sharded"):
        assert restored[name]["same_structure"], name
        assert restored[name]["max_diff"] == 0.0, (name, restored[name]["max_diff"])
    assert restored["single"]["n_devices"] == [1]
    assert restored["sharded"]["n_devices"] == [DEVICES]
    problems = _layout_problems(restored["sharded"]["state"], [result["rows_per_shard"], 32])
    problems += _replication_problems(restored["sharded"]["params"])
    assert not problems, "\n".join(problems)
