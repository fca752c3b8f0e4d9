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

**Admission** (h = `admission`, seconds per query, default 0). Each query also
costs h seconds of server time that the batch does not share: its requests'
HTTP handling, scheduling and prompt prefill, during which no running request
advances (measured on a real vLLM by the churn rounds of ``calibrate
batching``). h is part of the batch-1 service time t_k (t0 includes it); the
rest, D_k = t_k − h, is decode work shared as above. Admissions arrive at rate
λ and take the fraction u = λh of the server's time, so decode runs at
(1 − u) r(m): the chain above is taken on the decode work alone, with load
a = λ E[D]/(1 − u), and each query adds its own h, unstretched:

    E[T_k] = h + E[W] + (t_k − h) · E[min(N, B)]/(λ E[D]),

with E[W] the chain's wait with (E[D], E[D²]). The queue is stable iff
λ E[D] < (1 − λh) r(B), that is λ E[S] < (1 − λh) r(B) + λh: the capacity
depends on λ (:meth:`Batching.capacity`). h = 0 is the model above, unchanged.
This treats the stalls as a capacity loss spread evenly over time (a
vacation-style approximation: they come in bursts of h at arrivals); its error
against a real server is measured in docs/servers.md.

E[T] depends on the budgets through (E[S], E[S²]) only: this server is
aggregate, and differentiable in ℓ, λ, β and h (B is an integer: no derivative).
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array

from .base import SHORTEST_SERVICE, Server, ServerError, whole_number


def batch_rate(m, slowdown) -> Array:
    """r(m) = m / (1 + β(m − 1)): batch-1 seconds of work done per second with m running."""
    return m / (1.0 + slowdown * (m - 1.0))


def _chain(load, max_batch, slowdown, size: int) -> tuple[Array, Array]:
    """(E[min(N, B)], E[(N − B)⁺]) by a backward recurrence over the states, no log or exp.

    With t_n = P(N = n | N ≥ n) and ρ_n = a / r(min(n, B)), the chain gives
    t_{n−1} = t_n / (t_n + ρ_n), and E[g(N) | N ≥ n − 1] = E_{n−1} = E_n + t_{n−1} (g(n − 1) − E_n).
    Above B the chain is geometric: t_n = 1 − q for n ≥ B, E[min(N, B) | N ≥ n] = B and
    E[(N − B)⁺ | N ≥ n] = n − B + q / (1 − q); the recurrence starts there at n = `size` ≥ B
    and runs down to n = 0. Every t_n lies in (0, 1] and every E_n is a convex combination
    of values of g: nothing overflows or cancels, at any B and in float32."""
    dtype = jnp.result_type(load)
    t = 1.0 - load / batch_rate(max_batch, slowdown)  # 1 − q
    inv_b = 1.0 / max_batch
    a_beta, a_rest = load * slowdown, load * (1.0 - slowdown)  # ρ_n = aβ + a(1 − β) / min(n, B)
    busy = jnp.broadcast_to(max_batch, t.shape).astype(dtype)
    queued = (size - max_batch) + (1.0 - t) / t

    def step(i, carry):
        t, busy, queued = carry
        n = jnp.asarray(size - i, dtype)  # the state whose ρ_n enters: t_{n−1} from t_n
        rho = a_beta + a_rest * jnp.maximum(1.0 / n, inv_b)
        t = t / (t + rho)
        below = n - 1.0  # g at state n − 1
        over = jnp.maximum(below - max_batch, 0.0)
        busy = busy + t * ((below - over) - busy)
        queued = queued + t * (over - queued)
        return t, busy, queued

    _, busy, queued = lax.fori_loop(0, size, step, (t, busy, queued), unroll=_UNROLL)
    return busy, queued


_UNROLL = 8


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def chain_moments(load, max_batch, slowdown, size: int) -> tuple[Array, Array]:
    """(E[min(N, B)], E[(N − B)⁺]) of the birth–death chain in the module docstring.

    `load` = a = λE[S] < r(B); `size` (static) ≥ B is the number of states the
    recurrence of :func:`_chain` runs over; the geometric tail beyond is exact.
    Differentiable in `load` and `slowdown` (not in `max_batch`): the derivative
    in a is taken forward through the recurrence and returned as a value, so
    reverse mode (the delay prices) never runs backward through it."""
    return _chain(load, max_batch, slowdown, size)


def _chain_moments_jvp(size, primals, tangents):
    load, max_batch, slowdown = primals
    d_load, _, d_slowdown = tangents  # B has no derivative (an integer)
    if isinstance(d_load, SymbolicZero):
        out = _chain(load, max_batch, slowdown, size)
        tangent = tuple(jnp.zeros_like(x) for x in out)
    else:
        out, d_out = jax.jvp(lambda x: _chain(x, max_batch, slowdown, size), (load,), (jnp.ones_like(load),))
        tangent = tuple(d * d_load for d in d_out)
    if not isinstance(d_slowdown, SymbolicZero):
        _, by_slowdown = jax.jvp(lambda b: _chain(load, max_batch, b, size), (slowdown,), (d_slowdown,))
        tangent = tuple(x + y for x, y in zip(tangent, by_slowdown))
    return out, tangent


chain_moments.defjvp(_chain_moments_jvp, symbolic_zeros=True)


class Batching(Server):
    """Continuous batching of up to `max_batch` requests with slowdown `batch_slowdown`.

    **Fields:** `max_batch` (B ≥ 1, integer-valued array leaf), `batch_slowdown`
    (β ≥ 0, array leaf), `admission` (h ≥ 0 seconds of unshared work per query,
    array leaf, default 0); `size` (static): the chain states summed term by
    term, at least B (the largest B this instance may hold).
    """

    kind: ClassVar[str] = "batching"
    aggregate: ClassVar[bool] = True
    fields: ClassVar[tuple[str, ...]] = ("max_batch", "batch_slowdown", "admission")

    max_batch: Array = eqx.field(converter=jnp.asarray)
    batch_slowdown: Array = eqx.field(converter=jnp.asarray)
    admission: Array = eqx.field(converter=jnp.asarray, default=0.0)
    size: int = eqx.field(static=True, default=1)

    def capacity(self, lam=None) -> Array:
        """The largest stable λ E[S]: (1 − λh) r(B) + λh (module docstring); r(B) when h = 0
        or `lam` is None (the bound as λh → 0)."""
        full = batch_rate(lax.stop_gradient(self.max_batch), self.batch_slowdown)
        if lam is None:
            return full
        stall = lam * self.admission  # u = λh, the share of time spent admitting
        return (1.0 - stall) * full + stall

    def _parts(self, lam, m1, m2):
        """(stable, wait E[W_q], stretch, h): the FIFO wait before a request joins the
        batch, the factor by which its decode time in the batch exceeds its batch-1
        decode time t_k − h, and the admission h it adds unstretched."""
        h = self.admission
        m1 = jnp.maximum(m1, SHORTEST_SERVICE)  # t0 = 0 at ℓ = 0: E[S] = E[S²] = 0, no 0/0
        d1 = jnp.maximum(m1 - h, SHORTEST_SERVICE)  # E[D], D = S − h: the shared decode work
        d2 = jnp.maximum(m2 - 2.0 * h * m1 + h * h, d1 * d1)  # E[D²] = E[S²] − 2h E[S] + h²
        free = 1.0 - lam * h  # 1 − u: the share of time the batch advances
        full = self.capacity()  # r(B)
        load = lam * d1 / jnp.where(free > 0, free, 1.0)  # a = λ E[D]/(1 − u)
        stable = (free > 0) & (load < full)
        safe = jnp.where(stable, load, 0.5 * full)
        B = lax.stop_gradient(self.max_batch)
        in_service, waiting = chain_moments(safe, B, jnp.broadcast_to(self.batch_slowdown, B.shape), self.size)
        factor = d2 / (2.0 * d1 * d1)  # (1 + c_s²)/2 of the decode work, Allen–Cunneen
        wait = factor * waiting / lam
        stretch = in_service / (lam * d1)  # E[min(N, B)]/(λ E[D]); d1 > 0 always
        return stable, jnp.where(stable, wait, jnp.inf), jnp.where(stable, stretch, jnp.inf), h

    def delay(self, lam, m1, m2) -> Array:
        _, wait, stretch, h = self._parts(lam, m1, m2)
        return h + wait + stretch * (jnp.maximum(m1, SHORTEST_SERVICE) - h)

    def task_system_time(self, lam, prob, t, t2) -> Array:
        m1, m2 = jnp.sum(prob * t, -1), jnp.sum(prob * t2, -1)
        _, wait, stretch, h = self._parts(lam, m1, m2)
        h = jnp.asarray(h)[..., None]
        return h + wait[..., None] + stretch[..., None] * (t - h)

    def describe(self, names: tuple[str, ...]) -> dict:
        """As :meth:`Server.describe`, without `admission` when it is 0: outputs, profiles and sweep
        fingerprints of a server without admission stay what they were before the field existed."""
        desc = super().describe(names)
        if desc["admission"] == 0:
            del desc["admission"]
        return desc

    def check(self, names) -> None:
        b = whole_number("max_batch", self.max_batch)
        if b > self.size:
            raise ServerError(f"server.max_batch = {b}: exceeds this instance's static size {self.size} "
                              "(build it with make_server or Server.resized)")
        beta = float(self.batch_slowdown)
        if not (beta >= 0 and beta < float("inf")):
            raise ServerError(f"server.batch_slowdown = {beta:g}: must be a finite number >= 0")
        h = float(self.admission)
        if not (h >= 0 and h < float("inf")):
            raise ServerError(f"server.admission = {h:g}: must be a finite number of seconds >= 0")
