"""What a solver returns: a :class:`Solution` pytree with a per-point :class:`Status`."""

from __future__ import annotations

import enum

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .servers import Server


class Status(enum.IntEnum):
    """Outcome of a solve, stored as an int32 so that vmapped sweeps carry it per point."""

    CONVERGED = 0
    MAX_STEPS_REACHED = 1
    UNSTABLE_QUEUE = 2  # λ Σ π_k t0_k ≥ capacity (1 for one server): no budget gives a stable queue (eq. 4)
    NONFINITE = 3  # a NaN or inf appeared (bad parameters reached jit unchecked)
    KKT_NOT_MET = 4  # the solver stopped, but the result fails the KKT check (see final_status)

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.CONVERGED: "converged",
    Status.MAX_STEPS_REACHED: "the solver reached its maximum number of steps before its tolerance",
    Status.UNSTABLE_QUEUE: "the queue is unstable even at zero budgets (λ·Σπ_k t0_k ≥ the server's capacity, "
                           "1 for one server)",
    Status.NONFINITE: "a non-finite value (NaN or inf) appeared",
    Status.KKT_NOT_MET: "the solver met its stopping test, but the result fails the KKT check "
                        "(the KKT residual in tokens exceeds the tolerance; stopped early?)",
}


class Solution(eqx.Module):
    """The optimum of (9) found by a solver.

    **Fields:**

    - `budgets`: ℓ*, shape (N,), continuous, in [0, ℓ_max].
    - `objective`: J(ℓ*) (eq. 7).
    - `kkt_residual`: ‖ℓ − P(ℓ + ∇J(ℓ))‖∞ at the result.
    - `iterations`: solver steps taken.
    - `status`: a :class:`Status` value (int32 array).
    - `server`: the server the budgets are optimal for: the problem's, except
      that a priority server with `order = "auto"` comes back with the order
      chosen (its `rank`; `server.describe(problem.names)["order"]` lists the
      tasks highest first). Under `vmap` its leaves carry the batch axis.
    """

    budgets: Float[Array, " N"]
    objective: Float[Array, ""]
    kkt_residual: Float[Array, ""]
    iterations: Int[Array, ""]
    status: Int[Array, ""]
    server: Server | None = None

    @property
    def converged(self):
        return self.status == Status.CONVERGED


def final_status(converged, budgets, value, stable0, stationary) -> Array:
    """Combine a solver's outcome into one int32 :class:`Status` code.

    **Arguments:**

    - `converged`: the solver's own stopping test.
    - `budgets`, `value`: its result ℓ and J(ℓ).
    - `stable0`: whether the queue is stable at ℓ = 0.
    - `stationary`: the solver-independent KKT check of :func:`jaxalloc.solve.stationary`:
      the KKT residual in tokens (‖P(ℓ + ∇J/diag(−∇²J)) − ℓ‖∞) at most
      :func:`jaxalloc.solvers.base.kkt_tolerance` × max(1, ‖ℓ‖∞), i.e. 1e-9
      (float64) or 2e-3 (float32) relative.

    A point is `CONVERGED` only if the solver says so and the check holds;
    `KKT_NOT_MET` if the solver says so but the check fails.
    """
    finite = jnp.all(jnp.isfinite(budgets), axis=-1) & jnp.isfinite(value)
    status = jnp.where(converged, jnp.where(stationary, Status.CONVERGED, Status.KKT_NOT_MET), Status.MAX_STEPS_REACHED)
    status = jnp.where(finite, status, Status.NONFINITE)
    return jnp.where(stable0, status, Status.UNSTABLE_QUEUE).astype(jnp.int32)
