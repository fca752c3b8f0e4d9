"""Continuous batching with exact event times, one step per event.

Up to B requests are in service; while m run, each progresses at
1/(1 + β(m − 1)) of its batch-1 speed; the rest wait first come first
served. Admission is FIFO, so request n is admitted once n − 1 has been and a
slot is free: until then later arrivals cannot change anything, and no
waiting-line buffer is needed, only a pointer to the next request to admit.

Every request is admitted once and completes once, so a replication is
exactly 2 × (queries, padded) events, and the simulation is a fixed-trip
``lax.scan`` over events (no ``while_loop``: under ``vmap`` every
replication does the same steps). Step e either

- completes the request in service that finishes first, if the batch is full,
  or the stream is exhausted, or that completion, (tag₀ − work) · (1 + β(m − 1))
  seconds away, comes no later than the next arrival (an exact event time); or
- admits the next request at its arrival (W = 0, the batch advancing
  meanwhile) or, if it had to wait, at once (it waited for the completion
  that freed its slot, W = −d).

The batch is `size` slots (static), kept **sorted** by virtual finish time
(work clock: batch-1 seconds done by every request in service, so no slot
changes while time passes), empty slots +inf at the end: the next completion
is always slot 0, a completion shifts the slots left by one and an admission
is a sorted insertion, both elementwise over the slots (no gather, scatter or
argmin per step). d is the time from now to the next arrival.

A slot holds only what the step needs: its finish time and a label, the
request's number when system times are kept (its arrival time then goes into
the request's entry of the times array, see below) or else its type code,
with its arrival time in a third array. A step emits one record (number or
type, time) as a ``scan`` output; the chunk's records are then added to the
times array in one scatter, or binned into the histogram, vectorised. With
system times kept, request n's entry collects −(its arrival time) at
admission and its completion time at completion, both on the clock of the
chunk they happen in, plus, for each chunk boundary it spends in service, the
clock's restart offset: T = completion − arrival.

The stream is read in chunks: after e events, (e + in service)/2 requests have
been admitted, so after 2·chunk·c events the next to admit lies within size/2
of chunk c's start, and a window of chunk c and the next
⌈size / (2 chunk)⌉ chunks holds every request chunk c's events can admit.
Both clocks (wall and work) restart at 0 after each chunk's events, so
precision does not degrade along the stream. With B = 1 it is the Lindley
recursion of the FIFO core, the same queries on the same streams (system
times equal up to rounding). The wait recorded is T − S, the delay the server
adds to a request's batch-1 service time (for B = 1, the queueing wait).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .core import Stats, _finish


def batching_core(server, streams, *, nchunks, store):
    dtype, K, size, chunk = streams.dtype, streams.K, server.size, streams.chunk
    cap = server.max_batch
    beta = server.batch_slowdown
    total = nchunks * chunk
    classes = jnp.arange(K)
    slots = jnp.arange(size)
    look = max(1, -(-size // (2 * chunk)))  # chunks of lookahead beyond the current one

    def pack(ch):  # (chunk, 2 or 3): service, inter-arrival[, kind (−1 − kind when not counted)]
        if store:
            return jnp.stack([ch.s, ch.inter], -1)
        code = jnp.where(ch.counted, ch.kind, -1 - ch.kind).astype(dtype)
        return jnp.stack([ch.s, ch.inter, code], -1)

    def shift_left(x, fill):
        return jnp.concatenate([x[1:], jnp.full((1,), fill, x.dtype)])

    def shift_right(x):
        return jnp.concatenate([x[:1], x[:-1]])

    def events(state, win, base):
        """2·chunk events; `win` (W, ·) the window's requests, `base` the query number of its first."""

        def step(st, _):
            tag, lab, birth, m, now, work, d, p = st
            n = base + p
            more = n < total
            sd = 1.0 + beta * (jnp.maximum(m, 1) - 1.0)
            dtc = (tag[0] - work) * sd
            go = (m > 0) & ((m >= cap) | (dtc <= d) | ~more)
            now_c = now + dtc  # completion of slot 0
            row = lax.dynamic_index_in_dim(win, p, keepdims=False)  # admission of request n
            s, inter = row[0], row[1]
            lead = jnp.maximum(d, 0.0)
            w = jnp.maximum(-d, 0.0)
            now_a = now + lead
            work_a = work + lead / sd
            x = work_a + s
            le = tag <= x
            prev = jnp.concatenate([jnp.ones(1, bool), le[:-1]])

            def update(arr, v, fill):
                return jnp.where(go, shift_left(arr, fill), jnp.where(le, arr, jnp.where(prev, v, shift_right(arr))))

            tag_n = update(tag, x, jnp.inf)
            if store:  # record: request number, +completion time or −arrival time
                lab_n = update(lab, n.astype(lab.dtype), 0)
                rec = (jnp.where(go, lab[0], n), jnp.where(go, now_c, w - now_a))
            else:  # record: T, type code (−1 on an admission step)
                rec = (now_c - birth[0], jnp.where(go, lab[0], -1.0))
                lab_n = update(lab, row[2], 0.0)
                birth = update(birth, now_a - w, 0.0)
            st = (tag_n, lab_n, birth, jnp.where(go, m - 1, m + 1), jnp.where(go, now_c, now_a),
                  jnp.where(go, tag[0], work_a), jnp.where(go, d - dtc, inter - w), jnp.where(go, p, p + 1))
            return st, rec

        return lax.scan(step, state, None, length=2 * chunk)

    def body(carry, c):
        state, window, sum_t, extra, stats = carry
        ch = window[0]
        win = jnp.concatenate([pack(w) for w in window])
        state, rec = events(state, win, c * chunk)
        tag, lab, birth, m, now, work, d, p = state
        # restart both clocks at 0 (and the window pointer at the next chunk)
        state = (tag - work, lab, birth - now, m, jnp.zeros_like(now), jnp.zeros_like(work), d, p - chunk)
        if store:  # requests still in service: their arrival moves back by `now` on the new clock
            j = jnp.concatenate([rec[0], jnp.where(slots < m, lab, total)])
            v = jnp.concatenate([rec[1], jnp.broadcast_to(now, (size,))])
            extra = extra.at[j].add(v, mode="drop")
        else:
            t_rec, code = rec
            valid = code >= 0
            sum_t = sum_t + jnp.where(valid, t_rec, 0.0) @ (code[:, None] == classes).astype(dtype)
            extra = extra.at[streams.bin_of(t_rec)].add(valid.astype(extra.dtype))
        window = window[1:] + (streams(c + look + 1),)
        onehot = ((ch.kind[:, None] == classes) & ch.counted[:, None]).astype(dtype)
        counts, _, sum_s, correct, busy_t, elapsed, hist = stats
        stats = Stats(
            counts + jnp.sum(onehot, 0).astype(counts.dtype), stats.sum_t, sum_s + ch.s @ onehot,
            correct + (ch.right.astype(dtype) @ onehot).astype(correct.dtype),
            busy_t + jnp.sum(jnp.where(ch.counted, ch.s, 0.0)), elapsed + jnp.sum(jnp.where(ch.counted, ch.inter, 0.0)),
            hist,
        )
        return (state, window, sum_t, extra, stats), (ch.kind.astype(jnp.int32) if store else None)

    zero = jnp.zeros((), dtype)
    state = (jnp.full(size, jnp.inf, dtype), jnp.zeros(size, jnp.int32 if store else dtype),
             jnp.zeros(0 if store else size, dtype), jnp.zeros((), jnp.int32), zero, zero, zero,
             jnp.zeros((), jnp.int32))
    window = tuple(streams(jnp.asarray(c)) for c in range(look + 1))
    extra = jnp.zeros(total, dtype) if store else jnp.zeros(streams.bins, jnp.int32)
    init = (state, window, jnp.zeros(K, dtype), extra, Stats.zeros(streams, store))
    (_, _, sum_t, extra, stats), kinds = lax.scan(body, init, jnp.arange(nchunks))
    if store:  # extra: every request's T
        kinds = kinds.reshape(-1)
        q = jnp.arange(total)
        counted = (q < streams.queries) & (q >= streams.warmup)
        sum_t = jnp.where(counted, extra, 0.0) @ (kinds[:, None] == classes).astype(dtype)
    # stats.sum_w held Σ S per type: the recorded wait is T − S
    stats = stats._replace(sum_t=sum_t, sum_w=sum_t - stats.sum_w)
    if store:
        stats = stats._replace(hist=jnp.zeros(0, jnp.int32))
        return _finish(stats, (extra[None], kinds[None]), streams, store)
    return _finish(stats._replace(hist=extra), None, streams, store)
