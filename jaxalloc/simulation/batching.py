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
  seconds away, comes no later than the next arrival (an exact event time; it
  records T = now − arrival); or
- admits the next request at its arrival (W = 0, the batch advancing
  meanwhile) or, if it had to wait, at once (it waited for the completion
  that freed its slot, W = −d).

The batch is `size` slots (static), kept **sorted** by virtual finish time
(work clock: batch-1 seconds done by every request in service), empty slots
+inf at the end: the next completion is always slot 0, a completion shifts
the slots left by one and an admission is a sorted insertion, both
elementwise over the slots (no gather, scatter or argmin per step). d is the
time from now to the next arrival.

The stream is read in chunks: after e events, (e + in service)/2 requests have
been admitted, so after 2·chunk·c events the next to admit lies within size/2
of chunk c's start, and a window of chunk c and the next
⌈size / (2 chunk)⌉ chunks holds every request chunk c's events can admit.
Clocks (wall and work) restart at 0 after the last admission of each chunk,
so precision does not degrade along the stream; the event arithmetic is that
of the earlier one-admission-per-step recursion (system times agree with it to
the last bit or two: the compiler may contract a multiply-add differently).
With B = 1 it is the Lindley recursion of the FIFO core, the same queries on
the same streams. The wait recorded is T − S, the delay the server adds to a
request's batch-1 service time (for B = 1, the queueing wait).
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
    look = max(1, -(-size // (2 * chunk)))  # chunks of lookahead beyond the current one

    def slowdown(m):
        return 1.0 + beta * (jnp.maximum(m, 1) - 1.0)

    def pack(ch):  # (chunk, 3): service, inter-arrival, kind (−1 − kind when not counted)
        code = jnp.where(ch.counted, ch.kind, -1 - ch.kind).astype(dtype)
        return jnp.stack([ch.s, ch.inter, code], -1)

    def shift_left(x, fill):
        return jnp.concatenate([x[1:], jnp.full((1,), fill, x.dtype)])

    def events(carry, win, base):
        """2·chunk events; `win` (W, 3) the window's requests, `base` the query number of its first."""

        def step(st, _):
            (tag, birth, code, idx, m, now, work, d, p), sum_t, extra = st
            n = (base + p).astype(jnp.int32)
            more = n < total
            sd = slowdown(m)
            dtc = (tag[0] - work) * sd
            go = (m > 0) & ((m >= cap) | (dtc <= d) | ~more)
            # complete slot 0
            now_c = now + dtc
            t_out = now_c - birth[0]
            # admit request n
            row = lax.dynamic_index_in_dim(win, p, keepdims=False)
            s, inter, kc = row[0], row[1], row[2]
            lead = jnp.maximum(d, 0.0)
            w = jnp.maximum(-d, 0.0)
            now_a = now + lead
            work_a = work + lead / sd
            x = work_a + s
            le = tag <= x
            prev = jnp.concatenate([jnp.ones(1, bool), le[:-1]])

            def update(arr, v, fill):
                right = jnp.concatenate([arr[:1], arr[:-1]])
                return jnp.where(go, shift_left(arr, fill), jnp.where(le, arr, jnp.where(prev, v, right)))

            rebase = ~go & ((n + 1) % chunk == 0) & (n + 1 < total)  # clocks restart after a chunk's last admission
            r_work = jnp.where(rebase, work_a, 0.0)
            r_now = jnp.where(rebase, now_a, 0.0)
            tag_n = update(tag, x, jnp.inf) - r_work
            birth_n = update(birth, now_a - w, 0.0) - r_now
            code_n = update(code, kc, 0.0)
            idx_n = update(idx, n, 0) if store else idx
            # record the completion (T = 0 and no type on an admission step)
            t_rec = jnp.where(go, t_out, 0.0)
            sum_t = sum_t + jnp.where((code[0] == classes) & go, t_rec, 0.0)
            if store:
                extra = extra.at[jnp.where(go, idx[0], total)].set(t_rec, mode="drop")
            else:
                extra = extra.at[streams.bin_of(t_rec)].add((go & (code[0] >= 0)).astype(extra.dtype))
            st = (tag_n, birth_n, code_n, idx_n, jnp.where(go, m - 1, m + 1),
                  jnp.where(go, now_c, now_a - r_now), jnp.where(go, tag[0], work_a - r_work),
                  jnp.where(go, d - dtc, inter - w), jnp.where(go, p, p + 1))
            return (st, sum_t, extra), None

        return lax.scan(step, carry, None, length=2 * chunk)

    def body(carry, c):
        state, window, sum_t, extra, stats = carry
        ch = window[0]
        win = jnp.concatenate([pack(w) for w in window])
        (state, sum_t, extra), _ = events((state, sum_t, extra), win, c * chunk)
        state = state[:-1] + (state[-1] - chunk,)
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
    state = (jnp.full(size, jnp.inf, dtype), jnp.zeros(size, dtype), jnp.zeros(size, dtype),
             jnp.zeros(size if store else 0, jnp.int32), jnp.zeros((), jnp.int32), zero, zero, zero,
             jnp.zeros((), jnp.int32))
    window = tuple(streams(jnp.asarray(c)) for c in range(look + 1))
    extra = jnp.zeros(total, dtype) if store else jnp.zeros(streams.bins, jnp.int32)
    init = (state, window, jnp.zeros(K, dtype), extra, Stats.zeros(streams, store))
    (_, _, sum_t, extra, stats), kinds = lax.scan(body, init, jnp.arange(nchunks))
    # stats.sum_w held Σ S per type: the recorded wait is T − S
    stats = stats._replace(sum_t=sum_t, sum_w=sum_t - stats.sum_w)
    if store:
        stats = stats._replace(hist=jnp.zeros(0, jnp.int32))
        return _finish(stats, (extra[None], kinds.reshape(-1)[None]), streams, store)
    return _finish(stats._replace(hist=extra), None, streams, store)
