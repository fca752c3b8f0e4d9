"""The random streams every simulation core reads (see :mod:`jaxalloc.simulate`, "Random numbers").

One replication's stream is cut into blocks of ``RNG_BLOCK`` queries; block b
draws all its random bits at once from ``fold_in(key, b)``. :class:`Streams`
turns chunk c of the stream (a multiple of ``RNG_BLOCK`` queries) into the
arrays the cores consume, so that every discipline sees the same arrivals,
types, service times and answers for the same (seed, replication, query).
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from ..objective import service_times, task_accuracy

RNG_BLOCK = 256  # queries per random-number block; `chunk` must be a multiple
DECADES_BELOW, DECADES_ABOVE = 4.0, 8.0  # histogram range around E[S]


class Chunk(NamedTuple):
    """Chunk c of a replication's stream, in arrival order (length `chunk`).

    `idx`: query numbers; `inter`: the time from each arrival to the next one;
    `kind`: task types; `s`: service times at batch 1 (jitter included);
    `right`: answered correctly; `counted`: inside [warmup, queries)."""

    idx: jax.Array
    inter: jax.Array
    kind: jax.Array
    s: jax.Array
    right: jax.Array
    counted: jax.Array


class Streams:
    """Draws of one replication (`key`) for `problem` at `budgets`.

    Also holds what the statistics need: `t`, `K`, `dtype`, the histogram's
    `edges`, `log_lo`, `dlog`, `bins`."""

    def __init__(self, problem, budgets, key, service_cv, *, queries, warmup, chunk, jitter, bins):
        t = service_times(problem, budgets)
        self.t = t
        self.p = jnp.clip(task_accuracy(problem, budgets), 0.0, 1.0)
        self.dtype = dtype = t.dtype
        self.K = t.shape[-1]
        cum = jnp.cumsum(problem.prob)
        self.cum = cum / cum[-1]
        self.lower = jnp.concatenate([jnp.zeros(1, dtype), self.cum[:-1]])
        self.width = self.cum - self.lower
        self.lam = problem.arrival_rate
        self.sigma2 = jnp.log1p(jnp.asarray(service_cv, dtype) ** 2)
        self.sigma = jnp.sqrt(self.sigma2)
        self.key, self.queries, self.warmup, self.chunk, self.jitter, self.bins = key, queries, warmup, chunk, jitter, bins
        m1 = jnp.sum(problem.prob * t, -1)
        scale = jnp.maximum(m1, jnp.finfo(dtype).tiny)
        self.log_lo = jnp.log(scale) - DECADES_BELOW * math.log(10.0)
        self.dlog = (DECADES_BELOW + DECADES_ABOVE) * math.log(10.0) / bins
        self.edges = jnp.exp(self.log_lo + self.dlog * jnp.arange(bins + 1, dtype=dtype))

    def __call__(self, c) -> Chunk:
        """Chunk `c` (a traced integer)."""
        chunk, dtype, K = self.chunk, self.dtype, self.K
        B = RNG_BLOCK
        nblocks = chunk // B
        rows = 3 if self.jitter else 2
        # uniforms from `ubits` random bits, exact in `dtype` and strictly inside (0, 1)
        ubits = min(32, jnp.finfo(dtype).nmant + 1)
        uscale = 2.0**-ubits
        idx = c * chunk + jnp.arange(chunk)
        keys = jax.vmap(jax.random.fold_in, (None, 0))(self.key, c * nblocks + jnp.arange(nblocks))
        bits = jax.vmap(lambda k: jax.random.bits(k, (rows, B), jnp.uint32))(keys)  # (nblocks, rows, B)
        if ubits < 32:
            bits = bits >> (32 - ubits)
        u = (bits.astype(dtype) + 0.5) * uscale
        u = jnp.moveaxis(u, 1, 0).reshape(rows, chunk)
        inter = -jnp.log(u[0]) / self.lam
        kind = jnp.minimum(jnp.searchsorted(self.cum, u[1], side="right", method="compare_all"), K - 1)
        s = self.t[kind]
        if self.jitter == "lognormal":
            s = s * jnp.exp(self.sigma * ndtri(u[2]) - 0.5 * self.sigma2)
        elif self.jitter == "exponential":  # mean-1 exponential factor: M/M/1 for a single task
            s = s * -jnp.log(u[2])
        # given the type, u[1]'s position within its interval is again uniform on (0, 1)
        right = (u[1] - self.lower[kind]) < self.p[kind] * self.width[kind]
        counted = (idx < self.queries) & (idx >= self.warmup)
        return Chunk(idx, inter, kind, s, right, counted)

    def every(self, c) -> Chunk:
        """Chunk `c` of every replication when `key` holds one key per replication
        (a core called once for all of them): each array gets a leading axis R."""

        def one(key):
            streams = copy.copy(self)
            streams.key = key
            return streams(c)

        return jax.vmap(one)(self.key)

    def bin_of(self, tq):
        """Histogram bin of system times `tq` (under- and overflow in the end bins)."""
        logt = jnp.log(jnp.maximum(tq, jnp.finfo(self.dtype).tiny))
        return jnp.clip(jnp.floor((logt - self.log_lo) / self.dlog), 0, self.bins - 1).astype(jnp.int32)
