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
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array

from .base import SHORTEST_SERVICE, Server, ServerError, whole_number


def batch_rate(m, slowdown) -> Array:
    """r(m) = m / (1 + β(m − 1)): batch-1 seconds of work done per second with m running."""
    return m / (1.0 + slowdown * (m - 1.0))


_BLOCK = 8  # states per block: the recurrence rescales after each block
_RESCALE = {8: 1e200, 4: 1e10}  # bytes per float: the sums are scaled down by this once they exceed it


def _jet(load, max_batch, slowdown, size: int) -> tuple[tuple[Array, Array], ...]:
    """(E[min(N, B)], E[(N − B)⁺]) and their first and second derivatives in a, in one pass.

    With w_n the chain's weights (w_n / w_{n−1} = ρ_n = a k_n, k_n = 1/r(min(n, B))
    = β + (1 − β)/min(n, B)), the sums U_n = Σ_{j≥n} w_j / w_n and
    G_n = Σ_{j≥n} g(j) w_j / w_n obey U_{n−1} = 1 + ρ_n U_n and
    G_{n−1} = g(n − 1) + ρ_n G_n, and E[g(N)] = G_0 / U_0. Above B the chain is
    geometric with ratio q = a/r(B): U_n = 1/(1 − q), and the recurrence starts there,
    at n = `size` rounded up to a block, and runs down to n = 0.

    Each state costs multiply-adds only, no division, logarithm or exponential: the
    derivatives in a follow the same recurrence (∂ρ_n/∂a = k_n). U_0 = 1/P(N = 0) can
    exceed the floats (β = 0 and B in the hundreds), so after each block of 8 states
    the sums are scaled down by `_RESCALE` once they pass it, and the constant terms
    with them (the running scale s): every term is positive, so nothing cancels, and a
    term lost below s's precision is negligible. One division per point at the end.
    The pass is 7–13× faster than the recurrence on ratios it replaced (one division
    a state; docs/benchmarks.md)."""
    dtype = jnp.result_type(load)
    top = -(-size // _BLOCK) * _BLOCK
    a, big = load, _RESCALE[jnp.dtype(dtype).itemsize]
    B = jnp.asarray(max_batch, dtype)
    k_full = slowdown + (1.0 - slowdown) / B  # 1/r(B)
    q = a * k_full
    u = 1.0 / (1.0 - q)  # U at n ≥ B, and its derivatives in a
    du, d2u = k_full * u * u, 2.0 * k_full * k_full * u * u * u
    extra = top - B  # G of (N − B)⁺ at n = top: (top − B) u + q u², and its derivatives
    h, dh, d2h = extra * u + q * u * u, extra * du + k_full * (1.0 + q) * u ** 3, \
        extra * d2u + k_full * k_full * (4.0 + 2.0 * q) * u ** 4
    carry = (jnp.ones_like(u), (u, du, d2u), (B * u, B * du, B * d2u), (h, dh, d2h))
    inv_b = 1.0 / B

    def block(carry, inv_n, below):  # the states n = `top` − 8i … `top` − 8i − 7: 1/n and n − 1
        s, U, G, H = carry
        for j in range(_BLOCK):
            k = slowdown + (1.0 - slowdown) * jnp.maximum(inv_n[j], inv_b)  # k_n = 1/r(min(n, B))
            rho = a * k
            for_busy, for_queue = jnp.minimum(below[j], B), jnp.maximum(below[j] - B, 0.0)
            U, G, H = ((s * g + rho * x, k * x + rho * dx, 2.0 * k * dx + rho * d2x)
                       for g, (x, dx, d2x) in ((1.0, U), (for_busy, G), (for_queue, H)))
        f = jnp.where(U[0] > big, 1.0 / big, 1.0)
        return (s * f, *(tuple(x * f for x in sums) for sums in (U, G, H)))

    n = np.arange(top, 0, -1, dtype=np.float64)
    xs = np.concatenate([(1.0 / n).reshape(-1, _BLOCK), (n - 1.0).reshape(-1, _BLOCK)], axis=1)
    carry, _ = lax.scan(lambda c, x: (block(c, x[:_BLOCK], x[_BLOCK:]), None), carry, jnp.asarray(xs, dtype))
    _, (U, dU, d2U), *sums = carry
    out = []
    for X, dX, d2X in sums:  # E = X/U and its derivatives, by the quotient rule
        e = X / U
        de = (dX - e * dU) / U
        out.append((e, de, (d2X - 2.0 * de * dU - e * d2U) / U))
    (busy, d_busy, d2_busy), (queued, d_queued, d2_queued) = out
    return (busy, queued), (d_busy, d_queued), (d2_busy, d2_queued)


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _chain_jet(load, max_batch, slowdown, size: int):
    """:func:`_jet` with its derivative in a taken from its own next term: differentiating
    the value gives the slope, and the slope the curvature, all from one pass."""
    return _jet(load, max_batch, slowdown, size)


def _chain_jet_jvp(size, primals, tangents):
    load, max_batch, slowdown = primals
    d_load, _, d_slowdown = tangents  # B has no derivative (an integer)
    out = _chain_jet(load, max_batch, slowdown, size)  # this rule again for its own derivatives
    tangent = jax.tree_util.tree_map(jnp.zeros_like, out)
    if not isinstance(d_load, SymbolicZero):
        # the third derivative, by autodiff of the recurrence; unused (and removed by the
        # compiler) unless something differentiates the curvature
        _, third = jax.jvp(lambda x: _jet(x, max_batch, slowdown, size)[2], (load,), (jnp.ones_like(load),))
        tangent = jax.tree_util.tree_map(lambda d: d * d_load, (out[1], out[2], third))
    if not isinstance(d_slowdown, SymbolicZero):
        _, by_slowdown = jax.jvp(lambda b: _jet(load, max_batch, b, size), (slowdown,), (d_slowdown,))
        tangent = jax.tree_util.tree_map(jnp.add, tangent, by_slowdown)
    return out, tangent


_chain_jet.defjvp(_chain_jet_jvp, symbolic_zeros=True)


def chain_moments(load, max_batch, slowdown, size: int) -> tuple[Array, Array]:
    """(E[min(N, B)], E[(N − B)⁺]) of the birth–death chain in the module docstring.

    `load` = a = λE[S] < r(B); `size` (static) ≥ B is the number of states the
    recurrence of :func:`_jet` runs over; the geometric tail beyond is exact.
    Differentiable in `load` and `slowdown` (not in `max_batch`), at any order. The
    first and second derivatives in a (the delay prices and the Newton step) come from
    the pass that gives the values (:func:`_chain_jet`): reverse mode never runs backward
    through the recurrence. The third in a and every derivative in β differentiate the
    recurrence itself."""
    return _chain_jet(load, max_batch, slowdown, size)[0]


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
