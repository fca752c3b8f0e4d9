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

**All replications in one scan** (the core is ``replicated``: called once,
not under ``jax.vmap``). Every array of the event scan has the replication
axis R last: the slots are one array (size, columns, R) holding (finish
time, label[, arrival time]), the scalars one array (m, now, work, d, p) × R,
so a step is a handful of elementwise kernels over contiguous replications.
While no replication holds NARROW (8) or more requests the slots beyond are
empty in all of them and a step updates only the first NARROW (a
``lax.cond`` on max m, in place); the next request's row is gathered into a
small carried buffer (in place: a plain gather is split across threads every
step). Labels are request numbers relative to the current chunk (shifted
with the window pointer at each clock restart), exact in the float dtype.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .core import Raw, Stats


def _shift_left(x, fill):
    """Completion: every slot moves one place towards slot 0, an empty one enters last (axis 0: slots)."""
    return jnp.concatenate([x[1:], jnp.broadcast_to(fill, (1,) + x.shape[1:])])


def _shift_right(x):
    """Slot i takes slot i − 1's values (slot 0 keeps its own)."""
    return jnp.concatenate([x[:1], x[:-1]])


NARROW = 8  # slots updated while no replication holds more requests (the rest are empty)


def _slots(sl, go, v, empty):
    """The slots (n, F, R) after a step: where `go`, a completion (shift left), else the sorted
    insertion of `v` (F, R) by its finish time (elementwise over the slots: no gather or scatter)."""
    le = (sl[:, 0] <= v[0])[:, None]
    prev = jnp.concatenate([jnp.ones_like(le[:1]), le[:-1]])
    return jnp.where(go, _shift_left(sl, empty), jnp.where(le, sl, jnp.where(prev, v, _shift_right(sl))))


def batching_core(server, streams, *, nchunks, store):
    """Every replication at once (`streams.key` holds one key per replication, R of them); the
    results have a leading axis R (see "All replications in one scan" above)."""
    dtype, K, size, chunk = streams.dtype, streams.K, server.size, streams.chunk
    cap = server.max_batch
    beta = server.batch_slowdown
    total = nchunks * chunk
    classes = jnp.arange(K)
    slots = jnp.arange(size)[:, None]
    look = max(1, -(-size // (2 * chunk)))  # chunks of lookahead beyond the current one
    R = streams.key.shape[0]
    reps = jnp.arange(R)
    # the slots: one array (size, F, R), columns (virtual finish time, label[, arrival time]); empty: (+inf, 0[, 0])
    F = 2 if store else 3
    empty = jnp.zeros((F, 1), dtype).at[0].set(jnp.inf)

    def pack(ch):  # (R, chunk, 2 or 3): service, inter-arrival[, kind (−1 − kind when not counted)]
        if store:
            return jnp.stack([ch.s, ch.inter], -1)
        code = jnp.where(ch.counted, ch.kind, -1 - ch.kind).astype(dtype)
        return jnp.stack([ch.s, ch.inter, code], -1)

    def step(st, row, more):
        """One event of every replication (module docstring): `st` = (slots, (m, now, work, d, p)), each
        (·, R); `row` (2 or 3, R) the next request's (service, inter-arrival[, type code]); `more`: it exists."""
        sl, sc = st
        m, now, work, d, p = sc
        sd = 1.0 + beta * (jnp.maximum(m, 1.0) - 1.0)
        tag0 = sl[0, 0]
        dtc = (tag0 - work) * sd  # time to the completion of slot 0
        go = (m > 0) & ((m >= cap) | (dtc <= d) | ~more)  # complete slot 0, else admit request p
        now_c = now + dtc
        s, inter = row[0], row[1]
        lead = jnp.maximum(d, 0.0)
        w = jnp.maximum(-d, 0.0)  # the admitted request's wait for a slot
        now_a = now + lead
        work_a = work + lead / sd
        x = work_a + s  # its virtual finish time
        # label: the request's number relative to the current chunk's first (exact in `dtype`)
        if store:  # record: label, +completion time or −arrival time
            v = jnp.stack([x, p])
            rec = jnp.stack([jnp.where(go, sl[0, 1], p), jnp.where(go, now_c, w - now_a)])
        else:  # record: T, type code (−1 on an admission step)
            v = jnp.stack([x, row[2], now_a - w])
            rec = jnp.stack([now_c - sl[0, 2], jnp.where(go, sl[0, 1], -1.0)])
        # per-replication values computed once, not once per slot inside the slot update's kernel
        go, v = lax.optimization_barrier((go, v))
        if size > NARROW:  # while every replication holds < NARROW requests, the slots beyond stay empty
            sl = lax.cond(jnp.max(m) < NARROW,
                          lambda sl: lax.dynamic_update_slice(sl, _slots(sl[:NARROW], go, v, empty), (0, 0, 0)),
                          lambda sl: _slots(sl, go, v, empty), sl)
        else:
            sl = _slots(sl, go, v, empty)
        sc = jnp.where(go, jnp.stack([m - 1, now_c, tag0, d - dtc, p]),
                       jnp.stack([m + 1, now_a, work_a, inter - w, p + 1]))
        return (sl, sc), rec

    def events(state, win, base):
        """2·chunk events; `win` (W, 2 or 3, R) the window's requests, `base` the query number of its first."""
        nf = win.shape[1]
        flat = win.reshape(-1)
        cols = jnp.arange(nf * R).reshape(nf, R)  # (column, replication) within a row of `win`

        def one(carry, _):
            st, buf = carry
            p = st[1][4].astype(jnp.int32)
            # request base + p of each replication, (2 or 3, R): the gather fused into an in-place update of a
            # small carried buffer (a plain gather is split across threads every step, as in the priority core)
            buf = lax.dynamic_update_slice(buf, flat[p * (nf * R) + cols], (0, 0))
            st, rec = step(st, buf, base + p < total)
            return (st, buf), rec

        buf = jnp.zeros((nf + 1, R), dtype)  # one row more than written: the update stays an in-place one
        (state, _), rec = lax.scan(one, (state, buf), None, length=2 * chunk)
        return state, rec

    def body(carry, c):
        state, window, sum_t, extra, stats = carry
        ch = window[0]
        win = jnp.moveaxis(jnp.concatenate([pack(w) for w in window], 1), 0, -1)  # (W, 2 or 3, R)
        (sl, sc), rec = events(state, win, c * chunk)  # rec: (2 chunk, 2, R)
        m, now, work = sc[0], sc[1], sc[2]
        # restart both clocks at 0 (and the window pointer and the labels at the next chunk)
        if store:
            sl = jnp.stack([sl[:, 0] - work, sl[:, 1] - chunk], 1)
        else:
            sl = jnp.stack([sl[:, 0] - work, sl[:, 1], sl[:, 2] - now], 1)
        state = (sl, jnp.stack([m, jnp.zeros_like(now), jnp.zeros_like(work), sc[3], sc[4] - chunk]))
        if store:  # requests still in service: their arrival moves back by `now` on the new clock
            label = jnp.concatenate([rec[:, 0], jnp.where(slots < m, sl[:, 1] + chunk, total)])  # (2 chunk + size, R)
            j = label.astype(jnp.int32) + c * chunk
            v = jnp.concatenate([rec[:, 1], jnp.broadcast_to(now, (size, R))])
            extra = extra.at[j, jnp.broadcast_to(reps, j.shape)].add(v, mode="drop")
        else:
            t_rec, code = rec[:, 0], rec[:, 1]  # (2 chunk, R)
            valid = code >= 0
            sum_t = sum_t + jnp.einsum("er,erk->rk", jnp.where(valid, t_rec, 0.0),
                                       (code[..., None] == classes).astype(dtype))
            extra = extra.at[reps, streams.bin_of(t_rec)].add(valid.astype(extra.dtype))
        window = window[1:] + (streams.every(c + look + 1),)
        return (state, window, sum_t, extra, _add_chunk(stats, ch, classes, dtype)), \
            (ch.kind.astype(jnp.int32) if store else None)

    state = (jnp.broadcast_to(empty[None], (size, F, R)), jnp.zeros((5, R), dtype))  # slots; (m, now, work, d, p)
    window = tuple(streams.every(jnp.asarray(c)) for c in range(look + 1))
    extra = jnp.zeros((total, R), dtype) if store else jnp.zeros((R, streams.bins), jnp.int32)
    zeros = Stats.zeros(streams, store)
    zeros = Stats(*(jnp.broadcast_to(z, (R,) + z.shape) for z in zeros))
    init = (state, window, jnp.zeros((R, K), dtype), extra, zeros)
    (_, _, sum_t, extra, stats), kinds = lax.scan(body, init, jnp.arange(nchunks))
    if store:  # extra: every request's T
        extra = extra.T  # (R, total)
        kinds = jnp.moveaxis(kinds, 1, 0).reshape(R, total)
        q = jnp.arange(total)
        counted = (q < streams.queries) & (q >= streams.warmup)
        sum_t = jnp.einsum("rq,rqk->rk", jnp.where(counted, extra, 0.0), (kinds[..., None] == classes).astype(dtype))
    # stats.sum_w held Σ S per type: the recorded wait is T − S
    stats = stats._replace(sum_t=sum_t, sum_w=sum_t - stats.sum_w)
    if store:
        return Raw(stats._replace(hist=jnp.zeros((R, 0), jnp.int32)), extra, kinds)
    return Raw(stats._replace(hist=extra), jnp.zeros((R, 0), dtype), jnp.zeros((R, 0), jnp.int32))


batching_core.replicated = True  # called once for all replications (see jaxalloc.simulation)


def _add_chunk(stats, ch, classes, dtype):
    """Add a chunk's counts, Σ S (held in sum_w until the end), correct answers, busy and elapsed time; (R, ·)."""
    onehot = ((ch.kind[..., None] == classes) & ch.counted[..., None]).astype(dtype)  # (R, chunk, K)
    counts, sum_t, sum_s, correct, busy, elapsed, hist = stats
    return Stats(counts + jnp.sum(onehot, 1).astype(counts.dtype), sum_t,
                 sum_s + jnp.einsum("rq,rqk->rk", ch.s, onehot),
                 correct + jnp.einsum("rq,rqk->rk", ch.right.astype(dtype), onehot).astype(correct.dtype),
                 busy + jnp.sum(jnp.where(ch.counted, ch.s, 0.0), 1),
                 elapsed + jnp.sum(jnp.where(ch.counted, ch.inter, 0.0), 1), hist)
