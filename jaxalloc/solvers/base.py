"""What every solver shares: tolerances by dtype and the stopping test."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# Relative tolerance on budgets (tokens, relative to max(1, ‖ℓ‖∞)) when none is given.
_DEFAULT_TOL = {np.dtype("float64"): 1e-11, np.dtype("float32"): 2e-5, np.dtype("float16"): 1e-2}


def resolve_tol(tol: float | None, dtype) -> float:
    """`tol` if given, else a default that float rounding of `dtype` can reach."""
    if tol is not None:
        return float(tol)
    return _DEFAULT_TOL.get(np.dtype(dtype), 1e-5)


def small_enough(change, budgets, tol) -> jnp.ndarray:
    """‖change‖∞ ≤ tol · max(1, ‖ℓ‖∞), the stopping test shared by all solvers."""
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(budgets), axis=-1))
    return jnp.max(jnp.abs(change), axis=-1) <= tol * scale
