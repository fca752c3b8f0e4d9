"""c identical servers sharing one FIFO queue: M/G/1 (Pollaczek–Khinchine) and M/G/c.

One server (c = 1) is the paper's model, exactly: E[W] = λE[S²]/(2(1 − λE[S]))
(eq. 5), E[T] = E[W] + E[S] (eq. 6).

For c > 1 there is no closed form for general service times; we use the
Lee–Longton approximation (Lee & Longton, 1959; the M/G/c form of
Allen–Cunneen with Poisson arrivals): the M/M/c wait, from the exact Erlang-C
probability of waiting, scaled by (1 + c_s²)/2 = E[S²]/(2E[S]²),

    E[W] ≈ E[S²]/(2E[S]²) · C(c, a) E[S]/(c − a),   a = λE[S],

which is exact for exponential service and for c = 1. Its error against
simulation is measured in the tests and stated in docs/servers.md.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from .base import SHORTEST_SERVICE, Server, ServerError, whole_number


def pollaczek_khinchine_wait(lam, m1, m2) -> Array:
    """E[W] = λ E[S²] / (2 (1 − λ E[S])) (eq. 5); +inf when unstable."""
    slack = 1.0 - lam * m1
    stable = slack > 0
    safe = jnp.where(stable, slack, 1.0)  # keeps gradients finite off the region
    return jnp.where(stable, lam * m2 / (2.0 * safe), jnp.inf)


def pollaczek_khinchine_system_time(lam, m1, m2) -> Array:
    """E[T] = E[W] + E[S] (eq. 6); +inf when unstable."""
    return pollaczek_khinchine_wait(lam, m1, m2) + m1


UNROLLED = 32
"""Static sizes up to this write the Erlang sums out (XLA fuses them, and their
derivatives stay loop-free: sweeps of c = 4, see docs); larger ones loop."""


def erlang_terms(servers, load, size: int) -> tuple[Array, Array]:
    """(P, E) with Erlang B = P / E for c = `servers` servers at offered load a = `load`.

    Up to :data:`UNROLLED`, P = a^c/c! and E = Σ_{k≤c} a^k/k! by multiply-adds
    (P_k = P_{k−1} · a · (1/k), a static constant), run to the static `size` ≥ c
    (c may be traced): no division, so a price's second derivative costs a few
    products per term where the Erlang-B recursion's quotients cost many (the
    FIFO c = 4 linearisation of a Newton step: measured in docs/benchmarks.md).
    Both are at most e^a, finite for a < 88 in float32. Larger sizes run the
    Erlang-B recursion B_k = a B_{k−1} / (k + a B_{k−1}), B_0 = 1, stable for any
    c, and return (B_c, 1)."""
    one = jnp.ones_like(load * servers)
    if size <= UNROLLED:
        p, e = one, one
        for k in range(1, size + 1):
            more = k <= servers
            p = jnp.where(more, p * load * (1.0 / k), p)
            e = jnp.where(more, e + p, e)
        return p, e

    def body(k, b):
        return jnp.where(k <= servers, load * b / (k + load * b), b)

    return lax.fori_loop(1, size + 1, body, one), one


def erlang_c(servers, load, size: int) -> Array:
    """C(c, a): the probability that an arrival waits in M/M/c (Erlang C), exact:
    C = c B / (c − a (1 − B)) = c P / ((c − a) E + a P), with B = P / E from
    :func:`erlang_terms`. Requires a < c."""
    p, e = erlang_terms(servers, load, size)
    return servers * p / ((servers - load) * e + load * p)


def lee_longton_wait(servers, lam, m1, m2, size: int) -> Array:
    """E[W] ≈ E[S²]/(2E[S]²) · C(c, a) E[S]/(c − a) (see the module docstring); +inf when a ≥ c."""
    m1 = jnp.maximum(m1, SHORTEST_SERVICE)  # t0 = 0 at ℓ = 0: E[S] = E[S²] = 0, no 0/0
    load = lam * m1
    slack = servers - load
    stable = slack > 0
    safe_slack = jnp.where(stable, slack, 1.0)
    safe_load = jnp.where(stable, load, 0.5 * servers)
    wait = m2 * erlang_c(servers, safe_load, size) / (2.0 * m1 * safe_slack)
    return jnp.where(stable, wait, jnp.inf)


class FIFO(Server):
    """`servers` = c identical servers, one FIFO queue (c = 1: the paper's M/G/1).

    **Fields:** `servers` (c ≥ 1, an integer-valued array leaf, so it can be a
    sweep axis); `size` (static): the largest c this instance may hold (the
    length of the Erlang-B recursion), at least `servers`. With `size` = 1 the
    delay is the Pollaczek–Khinchine formula and nothing else (the default).
    """

    kind: ClassVar[str] = "fifo"
    aggregate: ClassVar[bool] = True
    fields: ClassVar[tuple[str, ...]] = ("servers",)

    servers: Array = eqx.field(converter=jnp.asarray, default=1.0)
    size: int = eqx.field(static=True, default=1)

    def capacity(self, lam=None) -> Array:
        return self.servers

    def mean_wait(self, lam, m1, m2) -> Array:
        pk = pollaczek_khinchine_wait(lam, m1, m2)
        if self.size == 1:
            return pk
        c = lax.stop_gradient(self.servers)  # an integer: no derivative
        return jnp.where(c == 1, pk, lee_longton_wait(c, lam, m1, m2, self.size))

    def delay(self, lam, m1, m2) -> Array:
        return self.mean_wait(lam, m1, m2) + m1

    def task_system_time(self, lam, prob, t, t2) -> Array:
        m1, m2 = jnp.sum(prob * t, -1), jnp.sum(prob * t2, -1)
        return self.mean_wait(lam, m1, m2)[..., None] + t  # one queue: every type waits alike

    def wait_classes(self, n: int):
        """One server: everyone waits behind everyone (H = ∅, H+ = all); c > 1: None (no transform)."""
        if self.size > 1:
            return None
        return jnp.zeros((n, n)), jnp.ones((n, n))

    def check(self, names) -> None:
        c = whole_number("servers", self.servers)
        if c > self.size:
            raise ServerError(f"server.servers = {c}: exceeds this instance's static size {self.size} "
                              "(build it with make_server or Server.resized)")
