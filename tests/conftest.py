"""Strict JAX for every test: silent rank promotion and dtype promotion are errors.

pytest itself turns warnings into errors (`filterwarnings = ["error"]` in pyproject.toml).
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
