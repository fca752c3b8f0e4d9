"""What every simulation core shares: the per-replication statistics.

A core simulates one replication of one service discipline and returns
:class:`Raw`. Cores whose waits come out per arrival (FIFO, priority) hand
each chunk's waits to :func:`add_arrivals`; the batching core, whose system
times are known only at completion, accumulates them itself.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class Stats(NamedTuple):
    """Running sums of one replication (see :class:`jaxalloc.simulate.SimulationResult`)."""

    counts: jax.Array
    sum_t: jax.Array
    sum_w: jax.Array
    correct: jax.Array
    busy: jax.Array
    elapsed: jax.Array
    hist: jax.Array

    @staticmethod
    def zeros(streams, store: bool) -> Stats:
        K, dtype = streams.K, streams.dtype
        zero = jnp.zeros((), dtype)
        return Stats(jnp.zeros(K, jnp.int32), jnp.zeros(K, dtype), jnp.zeros(K, dtype), jnp.zeros(K, jnp.int32),
                     zero, zero, jnp.zeros(0 if store else streams.bins, jnp.int32))


class Raw(NamedTuple):
    """A replication's result: its :class:`Stats` and, when kept, every query's
    system time and type in arrival order (else empty arrays)."""

    stats: Stats
    times: jax.Array
    kinds: jax.Array


def add_arrivals(stats: Stats, ch, wq, streams, store: bool):
    """Add a chunk's queries, given their waits `wq` (T = W + S), to `stats`.

    Returns the new stats and, when `store`, the chunk's (T, type) to keep."""
    counts, sum_t, sum_w, correct, busy, elapsed, hist = stats
    dtype, K = streams.dtype, streams.K
    kind, s, counted = ch.kind, ch.s, ch.counted
    tq = wq + s
    onehot = ((kind[:, None] == jnp.arange(K)) & counted[:, None]).astype(dtype)  # (chunk, K)
    counts = counts + jnp.sum(onehot, 0).astype(counts.dtype)
    sum_t = sum_t + tq @ onehot
    sum_w = sum_w + wq @ onehot
    correct = correct + (ch.right.astype(dtype) @ onehot).astype(correct.dtype)
    busy = busy + jnp.sum(jnp.where(counted, s, 0.0))
    elapsed = elapsed + jnp.sum(jnp.where(counted, ch.inter, 0.0))
    if store:
        out = (tq, kind.astype(jnp.int32))
    else:
        hist = hist.at[streams.bin_of(tq)].add(counted.astype(hist.dtype))
        out = None
    return Stats(counts, sum_t, sum_w, correct, busy, elapsed, hist), out


def arrival_order(streams, init, recursion, *, nchunks: int, store: bool) -> Raw:
    """A replication of a discipline whose waits follow a recursion over arrivals.

    `recursion(carry, chunk) -> (carry, wq)` runs one chunk (an inner
    ``lax.scan``) from the carried state `init`; an outer ``lax.scan`` runs the
    chunks, so memory is O(chunk) unless system times are kept."""

    def body(carry, c):
        state, stats = carry
        ch = streams(c)
        state, wq = recursion(state, ch)
        stats, out = add_arrivals(stats, ch, wq, streams, store)
        return (state, stats), out

    (_, stats), out = lax.scan(body, (init, Stats.zeros(streams, store)), jnp.arange(nchunks))
    return _finish(stats, out, streams, store)


def _finish(stats, out, streams, store):
    if store:
        return Raw(stats, out[0].reshape(-1), out[1].reshape(-1))
    return Raw(stats, jnp.zeros(0, streams.dtype), jnp.zeros(0, jnp.int32))
