"""Strict JAX for every test: silent rank promotion and dtype promotion are errors.

pytest itself turns warnings into errors (`filterwarnings = ["error"]` in pyproject.toml).

The xdist workers of one run share their compiled programs through JAX's persistent
compilation cache, in a folder made for that run and removed at its end (so every run
compiles from scratch and its time stays honest): both workers compile many of the same
small programs (the oracle's steps, the cases' params), and this saved about 13% of the
everyday tier's time.
"""

import os
import shutil
import tempfile

import jax

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


def pytest_sessionfinish(session, exitstatus):
    """The process that made the folder removes it, after the workers are done."""
    if _OWNER:
        shutil.rmtree(os.environ.pop("RECURJAX_TEST_JAX_CACHE"), ignore_errors=True)
