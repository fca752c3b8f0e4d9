"""Continuous batching with exact event times, one step per admission.

Up to B requests are in service; while m run, each progresses at
1/(1 + β(m − 1)) of its batch-1 speed; the rest wait first come first
served. Admission is FIFO, so request n is admitted once n − 1 has been and a
slot is free: until then later arrivals cannot change anything, and the scan
runs over arrivals with no waiting-line buffer. The batch is `size` slots
(static; a slot is empty when its remaining work is +inf), each holding the
request's remaining batch-1 work, its age (time since arrival), type and
query number. With d the time from the last admission to arrival n, step n

- completes requests (the first two without a loop) while the batch is full or the next completion,
  min(remaining) · (1 + β(m − 1)) seconds away, comes no later than arrival
  n (an inner ``lax.while_loop``; every completion is an exact event time,
  records T = age and frees its slot);
- admits n at its arrival (W = 0, the batch advancing meanwhile) or, if it
  had to wait, at the completion that freed its slot (W = −d);
- carries d = A_{n+1} − W_n to the next arrival.

After the last arrival the batch is drained. Times are relative (ages and
remaining work), so precision does not degrade along the stream. With B = 1
it is the Lindley recursion of the FIFO core, the same queries on the same
streams. The wait recorded is T − S, the delay the server adds to a request's
batch-1 service time (for B = 1, the queueing wait).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .core import Stats, _finish


class _Batch(NamedTuple):
    tag: jax.Array  # virtual finish time (work clock), +inf for an empty slot
    birth: jax.Array  # arrival time (wall clock)
    done: jax.Array  # system time of a request completed during this step, else −1
    kind: jax.Array
    idx: jax.Array
    counted: jax.Array
    m: jax.Array  # requests in service
    now: jax.Array  # wall clock
    work: jax.Array  # work clock: batch-1 seconds done by each request in service since 0
    first: jax.Array  # the slot that completes next (argmin tag)


_PEELED = 1  # completions per step taken without a loop (the while loop then rarely runs)


def batching_core(server, streams, *, nchunks, store):
    dtype, K, size = streams.dtype, streams.K, server.size
    cap = server.max_batch
    beta = server.batch_slowdown
    total = nchunks * streams.chunk
    classes = jnp.arange(K)
    slots = jnp.arange(size, dtype=jnp.int32)

    def argmin(x):  # first index of the minimum, by plain min reductions (fast on XLA:CPU)
        return jnp.min(jnp.where(x == jnp.min(x), slots, size))

    def slowdown(m):
        return 1.0 + beta * (jnp.maximum(m, 1) - 1.0)

    def due(b, d):
        return (b.m > 0) & ((b.m >= cap) | ((b.tag[b.first] - b.work) * slowdown(b.m) <= d))

    def complete(b, d, go=True):
        """Advance to the next completion and record it in `done` (only where `go`)."""
        i = b.first
        dt = jnp.where(go, (b.tag[i] - b.work) * slowdown(b.m), 0.0)
        now = b.now + dt
        tag = b.tag.at[i].set(jnp.where(go, jnp.inf, b.tag[i]))
        done = b.done.at[i].set(jnp.where(go, now - b.birth[i], b.done[i]))
        b = b._replace(tag=tag, done=done, m=b.m - jnp.asarray(go, jnp.int32), now=now, work=jnp.where(go, b.tag[i], b.work),
                       first=argmin(tag))
        return b, d - dt

    def loop(b, d):
        for _ in range(_PEELED):
            b, d = complete(b, d, due(b, d))
        return lax.while_loop(lambda x: due(*x), lambda x: complete(*x), (b, d))

    def record(b, sum_t, extra):
        """Add the requests completed in this step (done ≥ 0) to the statistics."""
        fin = b.done >= 0
        onehot = ((b.kind[:, None] == classes) & (fin & b.counted)[:, None]).astype(dtype)
        sum_t = sum_t + b.done @ onehot
        out = (b.done, jnp.where(fin, b.idx, total))  # kept system times go out of the scan, scattered per chunk
        if not store:
            extra = extra.at[streams.bin_of(b.done)].add((fin & b.counted).astype(extra.dtype))
        return b._replace(done=jnp.full_like(b.done, -1.0)), sum_t, extra, out

    def admit(carry, x):
        b, d, sum_t, extra = carry
        b, d = loop(b, d)
        b, sum_t, extra, out = record(b, sum_t, extra)
        s, inter, kind, idx, counted = x
        lead = jnp.maximum(d, 0.0)  # the batch runs on until the arrival
        w = jnp.maximum(-d, 0.0)
        now = b.now + lead
        work = b.work + lead / slowdown(b.m)
        j = jnp.min(jnp.where(jnp.isinf(b.tag), slots, size))  # a free slot
        tag = b.tag.at[j].set(work + s)
        first = jnp.where(work + s < b.tag[b.first], j, b.first).astype(jnp.int32)
        b = _Batch(tag, b.birth.at[j].set(now - w), b.done, b.kind.at[j].set(kind), b.idx.at[j].set(idx),
                   b.counted.at[j].set(counted), b.m + 1, now, work, first)
        return (b, inter - w, sum_t, extra), (out if store else None)

    def body(carry, c):
        (b, d, sum_t, extra), stats = carry
        b = b._replace(tag=b.tag - b.work, birth=b.birth - b.now, now=jnp.zeros_like(b.now),
                       work=jnp.zeros_like(b.work))  # clocks restart at 0 each chunk: precision
        ch = streams(c)
        state, out = lax.scan(admit, (b, d, sum_t, extra),
                              (ch.s, ch.inter, ch.kind.astype(jnp.int32), ch.idx.astype(jnp.int32), ch.counted))
        if store:  # memory O(chunk × size) per replication for this scatter
            state = state[:3] + (state[3].at[out[1].reshape(-1)].set(out[0].reshape(-1), mode="drop"),)
        onehot = ((ch.kind[:, None] == classes) & ch.counted[:, None]).astype(dtype)
        counts, _, sum_s, correct, busy_t, elapsed, hist = stats
        stats = Stats(
            counts + jnp.sum(onehot, 0).astype(counts.dtype), stats.sum_t, sum_s + ch.s @ onehot,
            correct + (ch.right.astype(dtype) @ onehot).astype(correct.dtype),
            busy_t + jnp.sum(jnp.where(ch.counted, ch.s, 0.0)), elapsed + jnp.sum(jnp.where(ch.counted, ch.inter, 0.0)),
            hist,
        )
        return (state, stats), None

    zeros = jnp.zeros(size, dtype)
    zero = jnp.zeros((), dtype)
    izeros = jnp.zeros(size, jnp.int32)
    empty = _Batch(jnp.full(size, jnp.inf, dtype), zeros, jnp.full(size, -1.0, dtype), izeros, izeros,
                   jnp.zeros(size, bool), jnp.zeros((), jnp.int32), zero, zero, jnp.zeros((), jnp.int32))
    extra = jnp.zeros(total, dtype) if store else jnp.zeros(streams.bins, jnp.int32)
    stats0 = Stats.zeros(streams, store)
    init = (empty, zero, jnp.zeros(K, dtype), extra)
    ((b, _, sum_t, extra), stats), _ = lax.scan(body, (init, stats0), jnp.arange(nchunks))

    def drain(x):  # after the last arrival: complete what is left, one request at a time
        b, sum_t, extra = x
        b, _ = complete(b, jnp.asarray(jnp.inf, dtype))
        i = jnp.argmax(b.done >= 0)
        if store:
            extra = extra.at[b.idx[i]].set(b.done[i])
        b, sum_t, extra, _ = record(b, sum_t, extra)
        return b, sum_t, extra

    _, sum_t, extra = lax.while_loop(lambda x: x[0].m > 0, drain, (b, sum_t, extra))
    # stats.sum_w held Σ S per type: the recorded wait is T − S
    stats = stats._replace(sum_t=sum_t, sum_w=sum_t - stats.sum_w)
    if store:
        stats = stats._replace(hist=jnp.zeros(0, jnp.int32))
        kinds = jax.vmap(streams)(jnp.arange(nchunks)).kind.reshape(-1).astype(jnp.int32)
        return _finish(stats, (extra[None], kinds[None]), streams, store)
    return _finish(stats._replace(hist=extra), None, streams, store)
