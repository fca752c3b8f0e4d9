"""Non-preemptive priority M/G/1: one step per service, in service order.

The whole stream of a replication is drawn first (the same chunks as every
other core), with absolute arrival times a_n. Within a class queries are
served first come first served, so the waiting queries of class k are always
a run of consecutive class-k arrivals: a pointer p_k into the class-k
arrivals (queries grouped by class, highest priority first, a stable counting sort)
is the whole queue state. With D the time the server next frees, one step

- looks at each class's head h_k (arrival time of its p_k-th query, +inf
  when the class is exhausted; carried, so a step gathers only the new head
  of the class it served);
- serves the highest-ranked class with h_k ≤ D, or, if none waits, the
  earliest head (the server idles until it arrives);
- sets W = start − h_k, D = start + S, p_k += 1.

A step costs O(K) and there is no inner loop. The waits are put back in
arrival order and the statistics are those of every other core. Memory is
O(queries) per replication (the stream is held whole), not O(chunk).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .core import Stats, _finish, add_arrivals


def priority_core(server, streams, *, nchunks, store):
    chunks = jax.vmap(streams)(jnp.arange(nchunks))
    ch = jax.tree.map(lambda x: x.reshape(-1), chunks)
    M, K, dtype = ch.kind.shape[0], streams.K, streams.dtype
    arrival = jnp.concatenate([jnp.zeros(1, dtype), jnp.cumsum(ch.inter[:-1])])  # a_0 = 0
    rank = server.rank.astype(jnp.int32)[ch.kind]
    # grouped by class, highest first, FIFO within: a counting sort (a stable argsort of M keys is slow on CPU)
    onehot = rank[:, None] == jnp.arange(K)
    n_r = jnp.sum(onehot, 0)  # queries of the class ranked r
    off = jnp.concatenate([jnp.zeros(1, n_r.dtype), jnp.cumsum(n_r)[:-1]])
    before = jnp.cumsum(onehot, 0, dtype=n_r.dtype) - 1  # earlier queries of the same class, [i, r]
    dest = off[rank] + jnp.take_along_axis(before, rank[:, None], 1)[:, 0]  # each query's place in the grouped order
    order = jnp.zeros(M, dest.dtype).at[dest].set(jnp.arange(M, dtype=dest.dtype), unique_indices=True)
    a_sorted = jnp.concatenate([arrival[order], jnp.full((1,), jnp.inf, dtype)])  # sentinel at M
    s_sorted = jnp.concatenate([ch.s[order], jnp.zeros(1, dtype)])

    classes = jnp.arange(K)

    def step(carry, _):
        # elementwise updates (masks, no scatter) of the K-vectors: fast under vmap
        d, p, head, shead = carry
        # the first waiting class, else the earliest head: plain min reductions (argmin/argmax are
        # variadic reductions, slow on XLA:CPU)
        first_waiting = jnp.min(jnp.where(head <= d, classes, K))
        earliest = jnp.min(jnp.where(head == jnp.min(head), classes, K))
        j = jnp.where(first_waiting < K, first_waiting, earliest)
        here = classes == j
        h = jnp.sum(jnp.where(here, head, 0.0))
        start = jnp.maximum(d, h)
        pj = jnp.sum(jnp.where(here, p, 0))
        nxt = jnp.where(pj + 1 < jnp.sum(jnp.where(here, n_r, 0)), jnp.sum(jnp.where(here, off, 0)) + pj + 1, M)
        d = start + jnp.sum(jnp.where(here, shead, 0.0))
        carry = (d, p + here, jnp.where(here, a_sorted[nxt], head), jnp.where(here, s_sorted[nxt], shead))
        return carry, (jnp.sum(jnp.where(here, off, 0)) + pj, start - h)

    first = jnp.where(n_r > 0, off, M)
    init = (jnp.zeros((), dtype), jnp.zeros(K, n_r.dtype), a_sorted[first], s_sorted[first])
    _, (pos, wait) = lax.scan(step, init, None, length=M, unroll=4)
    wq = jnp.zeros(M, dtype).at[order[pos]].set(wait)
    stats, out = add_arrivals(Stats.zeros(streams, store), ch, wq, streams, store)
    if store:
        out = (out[0][None], out[1][None])
    return _finish(stats, out, streams, store)
