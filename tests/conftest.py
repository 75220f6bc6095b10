"""Strict JAX for every test: silent rank promotion and dtype promotion are errors.

pytest itself turns warnings into errors (`filterwarnings = ["error"]` in pyproject.toml).

The xdist workers of one run share their compiled programs through JAX's persistent
compilation cache, in a folder made for that run and removed at its end (so every run
compiles from scratch and its time stays honest): both workers compile many of the same
small programs (the oracle's steps, the cases' params), and this saved about 13% of the
everyday tier's time. A caller that sets `RECURJAX_TEST_JAX_CACHE` itself owns that folder
(.ci/run shares one between the two tiers of one CI run).

Tests that need a library beyond the runtime ones, optax and chex carry the `extras` marker
(pyproject.toml), so that a run without those libraries deselects them (`-m "not extras"`,
as the floor job .ci/floor does) instead of skipping them: test modules by a `pytestmark`
line, the doctests of the modules in `EXTRAS_DOCTESTS` and the doc pages whose code imports
one of `OPTIONAL` here. With `RECURJAX_NO_SKIPS=1` (CI sets it) a skipped test fails the run.
"""

import os
import pathlib
import re
import shutil
import tempfile

# XLA:CPU compiles the tests' programs at its lowest code-generation level: LLVM's
# optimisation level 0 without its expensive passes. The tests' programs are tiny, so
# nearly all of their time is compiling, and this cut the everyday tier from 272 s to 183 s
# (2 cores), every test passing either way. It changes how XLA optimises the machine code
# it generates, not the float semantics that code must keep (fast math stays off). The
# default level still runs in the installed-wheel check (.ci/package_check: the README's
# example and the char-LM example) and in every benchmark, which checks each row's outputs
# and gradients before timing it. XLA's fusion emitters (its default code generator for
# fused elementwise kernels on CPU in jax 0.10) are turned off for the older elemental
# emitter, which compiles such small programs about twice as fast (a dozen scans with their
# gradients: 4.4-4.6 s against 8.2 s on jax 0.10.2; on the floor's 0.7.0 the flag exists
# and made no measurable difference). A flag that the caller set in XLA_FLAGS wins;
# `RECURJAX_TEST_XLA_OPTIMIZE=1` leaves XLA_FLAGS alone.
FAST_COMPILE = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
)
if os.environ.get("RECURJAX_TEST_XLA_OPTIMIZE") != "1":
    _caller = os.environ.get("XLA_FLAGS", "").split()
    _named = {f.split("=")[0] for f in _caller}
    _ours = [f for f in FAST_COMPILE if f.split("=")[0] not in _named]
    os.environ["XLA_FLAGS"] = " ".join([*_ours, *_caller])

import jax  # noqa: E402  (after XLA_FLAGS, which XLA reads when it starts)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

# The first process to import this (pytest's own, before it starts the xdist workers, which
# inherit its environment) makes the folder; the workers find it in the environment.
_OWNER = "RECURJAX_TEST_JAX_CACHE" not in os.environ
if _OWNER:
    os.environ["RECURJAX_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="recurjax-test-jax-cache-")
jax.config.update("jax_compilation_cache_dir", os.environ["RECURJAX_TEST_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# Modules whose doctests need Flax, Equinox or Haiku (recurjax.nnx and recurjax.equinox also
# import theirs, so a run without them must not collect these two files at all).
EXTRAS_DOCTESTS = (
    "recurjax.nnx",
    "recurjax.equinox",
    "recurjax.interop._flax",
    "recurjax.interop._equinox",
    "recurjax.interop._haiku",
)
OPTIONAL = "flax|equinox|haiku|torch|orbax|matplotlib|sklearn|statsmodels|tqdm"
_IMPORTS_OPTIONAL = re.compile(rf"^\s*(?:import|from)\b.*\b(?:{OPTIONAL})\b", re.MULTILINE)


def pytest_collection_modifyitems(config, items):
    """The `extras` marker on the doctests of `EXTRAS_DOCTESTS` and on the tests of a doc page
    (a `path` parameter, tests/test_docs.py) whose code imports a library of `OPTIONAL`."""
    for item in items:
        doctest = getattr(item, "dtest", None)
        name = doctest.name if doctest is not None else ""
        path = getattr(getattr(item, "callspec", None), "params", {}).get("path")
        if any(name == m or name.startswith(m + ".") for m in EXTRAS_DOCTESTS) or (
            isinstance(path, pathlib.Path)
            and path.suffix == ".md"
            and _IMPORTS_OPTIONAL.search(path.read_text())
        ):
            item.add_marker(pytest.mark.extras)


def pytest_sessionfinish(session, exitstatus):
    """With `RECURJAX_NO_SKIPS=1`, a skipped test or module fails the run: CI runs every test
    it selects (a test needing what a run lacks on purpose is deselected by its marker).
    The process that made the cache folder removes it, after the workers are done."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if os.environ.get("RECURJAX_NO_SKIPS") == "1" and reporter is not None and skipped:
        reporter.ensure_newline()
        reporter.write_sep("=", f"RECURJAX_NO_SKIPS=1: {len(skipped)} skipped", red=True)
        for report in skipped:
            reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else ""
            reporter.write_line(f"SKIPPED {report.nodeid}: {reason}")
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if _OWNER:
        shutil.rmtree(os.environ.pop("RECURJAX_TEST_JAX_CACHE"), ignore_errors=True)
