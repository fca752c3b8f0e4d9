"""Continuous batching: state-dependent processor sharing with a batch cap.

A type-k request needs t_k seconds when it runs alone (eq. 1, measured at
batch 1). While m ≤ B requests run together every decode step takes
(1 + β(m − 1)) times the batch-1 step, so each advances at 1/(1 + β(m − 1))
of its batch-1 speed and the server does r(m) = m / (1 + β(m − 1)) seconds
of batch-1 work per second. Requests beyond B wait in FIFO order.

**Model.** The number in system n is taken as a birth–death chain with
arrival rate λ and completion rate r(min(n, B)) / E[S]:

    π(n) ∝ Π_{i=1..n} a / r(min(i, B)),   a = λ E[S].

Above B the rate is constant, so the chain's tail is geometric with ratio
q = a / r(B) and is summed in closed form: nothing is truncated, and the
queue is stable iff a < r(B) (the capacity). From the chain, by Little's law,

    E[T] = E[S²]/(2E[S]²) · E[(N − B)⁺]/λ + E[min(N, B)]/λ,
    E[T_k] = E[S²]/(2E[S]²) · E[(N − B)⁺]/λ + t_k · E[min(N, B)]/(λ E[S]).

- **B never binds** (P(N > B) ≈ 0): the server is a symmetric queue, whose
  number in system is insensitive to the service distribution (Bonald &
  Proutière, 2002; Cohen, 1979), and a request's mean time is proportional to
  its size: both lines are then exact. β = 1 with no cap is M/G/1-PS,
  E[T | t] = t / (1 − a).
- **B binds**: the waiting part is the chain's FIFO wait scaled by
  (1 + c_s²)/2 = E[S²]/(2E[S]²), the Allen–Cunneen correction; with β = 0 the
  model is then Lee–Longton's M/G/B (:mod:`.fifo`), with B = 1 exactly the
  paper's M/G/1 (Pollaczek–Khinchine). This part is an approximation; its
  error against simulation is measured in the tests and stated in
  docs/servers.md.

E[T] depends on the budgets through (E[S], E[S²]) only: this server is
aggregate, and differentiable in ℓ, λ and β (B is an integer: no derivative).
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from .base import SHORTEST_SERVICE, Server, ServerError, whole_number


def batch_rate(m, slowdown) -> Array:
    """r(m) = m / (1 + β(m − 1)): batch-1 seconds of work done per second with m running."""
    return m / (1.0 + slowdown * (m - 1.0))


def chain_moments(load, max_batch, slowdown, size: int) -> tuple[Array, Array]:
    """(E[min(N, B)], E[(N − B)⁺]) of the birth–death chain in the module docstring.

    `load` = a = λE[S] < r(B); `size` (static) ≥ B is how many states are
    summed term by term; the geometric tail beyond is summed exactly."""
    dtype = jnp.result_type(load)
    n = jnp.arange(1, size + 1, dtype=dtype)
    cap = max_batch[..., None]
    running = jnp.minimum(n, cap)
    log_a = jnp.log(load)[..., None]
    log_p = jnp.cumsum(log_a - jnp.log(batch_rate(running, slowdown[..., None])), -1)  # log π(n)/π(0), n ≥ 1
    q = load / batch_rate(max_batch, slowdown)  # tail ratio
    log_p = jnp.concatenate([jnp.zeros_like(log_p[..., :1]), log_p], -1)  # n = 0..size
    top = jnp.max(log_p, -1, keepdims=True)
    w = jnp.exp(log_p - top)
    w_last = w[..., -1]
    geo = q / (1.0 - q)  # Σ_{j≥1} q^j
    geo1 = q / (1.0 - q) ** 2  # Σ_{j≥1} j q^j
    states = jnp.arange(0, size + 1, dtype=dtype)
    z = jnp.sum(w, -1) + w_last * geo
    in_service = jnp.sum(jnp.minimum(states, cap) * w, -1) + max_batch * w_last * geo
    waiting = jnp.sum(jnp.maximum(states - cap, 0.0) * w, -1) + w_last * ((size - max_batch) * geo + geo1)
    return in_service / z, waiting / z


class Batching(Server):
    """Continuous batching of up to `max_batch` requests with slowdown `batch_slowdown`.

    **Fields:** `max_batch` (B ≥ 1, integer-valued array leaf), `batch_slowdown`
    (β ≥ 0, array leaf); `size` (static): the chain states summed term by
    term, at least B (the largest B this instance may hold).
    """

    kind: ClassVar[str] = "batching"
    aggregate: ClassVar[bool] = True
    fields: ClassVar[tuple[str, ...]] = ("max_batch", "batch_slowdown")

    max_batch: Array = eqx.field(converter=jnp.asarray)
    batch_slowdown: Array = eqx.field(converter=jnp.asarray)
    size: int = eqx.field(static=True, default=1)

    def capacity(self) -> Array:
        return batch_rate(lax.stop_gradient(self.max_batch), self.batch_slowdown)

    def _parts(self, lam, m1, m2):
        """(stable, wait E[W_q], stretch E[min(N,B)]/a): the FIFO wait before a
        request joins the batch and the factor by which its time in the batch
        exceeds its batch-1 service time."""
        m1 = jnp.maximum(m1, SHORTEST_SERVICE)  # t0 = 0 at ℓ = 0: E[S] = E[S²] = 0, no 0/0
        load = lam * m1
        stable = load < self.capacity()
        safe = jnp.where(stable, load, 0.5 * self.capacity())
        B = lax.stop_gradient(self.max_batch)
        in_service, waiting = chain_moments(safe, B, jnp.broadcast_to(self.batch_slowdown, B.shape), self.size)
        factor = m2 / (2.0 * m1 * m1)  # (1 + c_s²)/2, Allen–Cunneen
        wait = factor * waiting / lam
        return stable, jnp.where(stable, wait, jnp.inf), jnp.where(stable, in_service / safe, jnp.inf)

    def delay(self, lam, m1, m2) -> Array:
        _, wait, stretch = self._parts(lam, m1, m2)
        return wait + stretch * m1

    def task_system_time(self, lam, prob, t, t2) -> Array:
        m1, m2 = jnp.sum(prob * t, -1), jnp.sum(prob * t2, -1)
        _, wait, stretch = self._parts(lam, m1, m2)
        return wait[..., None] + stretch[..., None] * t

    def check(self, names) -> None:
        b = whole_number("max_batch", self.max_batch)
        if b > self.size:
            raise ServerError(f"server.max_batch = {b}: exceeds this instance's static size {self.size} "
                              "(build it with make_server or Server.resized)")
        beta = float(self.batch_slowdown)
        if not (beta >= 0 and beta < float("inf")):
            raise ServerError(f"server.batch_slowdown = {beta:g}: must be a finite number >= 0")
