"""One server, non-preemptive priority classes (one class per task type).

Cobham's formula (1954): with classes served in the order of `rank`
(0 highest), σ_k the load of class k and all classes above it, and
W0 = λE[S²]/2 the mean residual work an arrival finds in service,

    E[W_k] = W0 / ((1 − σ_k + ρ_k)(1 − σ_k)),   ρ_k = λ π_k t_k,

exact for Poisson arrivals and any service distributions; E[T_k] = E[W_k] + t_k.
E[T] depends on every t_k separately, not only on (E[S], E[S²]), so this
server is not aggregate: it is solved by projected Newton on the budgets.
**Concavity.** Not proven under priority (Lemma 1 is for one FIFO server).
Measured: over 240 random stable budget vectors of random N = 4 problems the
largest Hessian eigenvalue of J was negative (relative −1.3e-9;
tests/test_servers_solve.py::test_concavity_by_kind). The default solver
(projected Newton with the dense Hessian of the free block, its eigenvalues
taken in absolute value, and an Armijo search) does not rely on concavity: it
returns a KKT point, and for a fixed order it matched the best of several scipy
L-BFGS-B starts within 0.05 tokens on the test problems.

**Order "auto".** :mod:`jaxalloc.solvers.order`: every order is solved for
N ≤ 6; beyond, the cμ rule (shortest expected service first, optimal for
fixed budgets) iterated with re-solving, then adjacent swaps.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .base import Server, ServerError


class Priority(Server):
    """Non-preemptive priority M/G/1.

    **Fields:** `rank` (N,): each task's place in the order (0 = served
    first), an array leaf holding a permutation of 0..N−1; `auto` (static):
    the order is to be chosen to maximise J (the solvers do it, see
    :func:`jaxalloc.solve.solve`), `rank` then being where the search starts.
    """

    kind: ClassVar[str] = "priority"
    aggregate: ClassVar[bool] = False
    fields: ClassVar[tuple[str, ...]] = ()

    rank: Array = eqx.field(converter=jnp.asarray)
    auto: bool = eqx.field(static=True, default=False)

    def capacity(self, lam=None) -> Array:
        return jnp.ones((), jnp.result_type(self.rank))

    def task_system_time(self, lam, prob, t, t2) -> Array:
        lam_ = jnp.asarray(lam)[..., None]
        rho = lam_ * prob * t  # per class
        # σ_k: the load of class k and every class ranked above it
        above = self.rank[..., None, :] <= self.rank[..., :, None]  # [k, j]: j served no later than k
        sigma = jnp.sum(jnp.where(above, rho[..., None, :], 0.0), -1)
        before = sigma - rho
        w0 = 0.5 * lam_ * jnp.sum(prob * t2, -1, keepdims=True)
        slack_lo, slack_hi = 1.0 - sigma, 1.0 - before
        stable = slack_lo > 0
        wait = w0 / (jnp.where(stable, slack_hi, 1.0) * jnp.where(stable, slack_lo, 1.0))
        return jnp.where(stable, wait, jnp.inf) + t  # Cobham (1954)

    def wait_classes(self, n: int):
        """Row k: the types ranked before k (H), and those ranked no later (H+)."""
        r = jnp.asarray(self.rank)
        return (r[None, :] < r[:, None]).astype(r.dtype), (r[None, :] <= r[:, None]).astype(r.dtype)

    def searched(self) -> bool:
        return self.auto

    def order(self, names) -> list[str]:
        """Task names from highest priority to lowest."""
        ranks = [int(r) for r in jnp.asarray(self.rank).tolist()]
        return [names[k] for k in sorted(range(len(ranks)), key=ranks.__getitem__)]

    def describe(self, names) -> dict:
        return {"kind": self.kind, "order": self.order(names), "auto": self.auto}

    def check(self, names) -> None:
        ranks = [float(r) for r in jnp.asarray(self.rank).reshape(-1).tolist()]
        if sorted(ranks) != list(range(len(names))):
            raise ServerError(f"server.order: ranks {ranks} are not a permutation of 0..{len(names) - 1}")


def priority_from_order(order, names: tuple[str, ...], dtype=None) -> Priority:
    """A :class:`Priority` server from task names listed highest first, or "auto"
    (start from the given order, i.e. the profile's task order)."""
    if isinstance(order, str):
        if order.strip() != "auto":
            order = [s.strip() for s in order.split(",") if s.strip()]
        else:
            return Priority(rank=jnp.arange(len(names), dtype=dtype or jnp.asarray(0.0).dtype), auto=True)
    if not isinstance(order, (list, tuple)) or not all(isinstance(s, str) for s in order):
        raise ServerError(f"server.order = {order!r}: must be a list of task names (highest first) or \"auto\"")
    unknown = [s for s in order if s not in names]
    if unknown:
        raise ServerError(f"server.order: unknown task {unknown[0]!r} (tasks: {', '.join(names)})")
    dup = [s for s in order if order.count(s) > 1]
    if dup:
        raise ServerError(f"server.order: task {dup[0]!r} listed twice")
    missing = [s for s in names if s not in order]
    if missing:
        raise ServerError(f"server.order: task {missing[0]!r} missing (list every task, highest first)")
    rank = [order.index(s) for s in names]
    return Priority(rank=jnp.asarray(rank, dtype=dtype or jnp.asarray(0.0).dtype))
