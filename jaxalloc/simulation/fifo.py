"""FIFO cores: one server (the Lindley recursion) and c servers (Kiefer–Wolfowitz).

**One server.** W_{n+1} = max(0, W_n + S_n − A_{n+1}), where A_{n+1} is the
time from arrival n to arrival n + 1; the first query finds the server idle.

**c servers.** The Kiefer–Wolfowitz workload vector V_n: the sorted times,
counted from arrival n, until each of the c servers is free. Query n waits
W_n = V_n[0], takes the server that frees first, and

    V_{n+1} = (sort(V_n[1:] ∪ {V_n[0] + S_n}) − A_{n+1})⁺.

The vector has the server's static length `size`; its entries beyond the
(possibly traced) c are +inf (servers that never free), so c can vary across
vmapped operating points. The sorted insertion is one vectorised step,
r_i = max(u_{i−1}, min(u_i, x)) with u = V[1:] padded by ∓inf: no sort.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .core import arrival_order


def _lindley_step(w, d):
    return jnp.maximum(w + d, 0.0), w


def lindley(server, streams, *, nchunks, store):
    """One FIFO server (the paper's M/G/1)."""

    def recursion(w, ch):
        return lax.scan(_lindley_step, w, ch.s - ch.inter, unroll=8)

    return arrival_order(streams, jnp.zeros((), streams.dtype), recursion, nchunks=nchunks, store=store)


def kiefer_wolfowitz(server, streams, *, nchunks, store):
    """c FIFO servers sharing one queue (M/G/c), c = `server.servers` ≤ `server.size`."""
    dtype = streams.dtype
    inf = jnp.full((1,), jnp.inf, dtype)
    slots = jnp.arange(server.size)
    init = jnp.where(slots < server.servers, 0.0, jnp.inf).astype(dtype)

    def step(v, x):
        s, a = x
        w = v[0]
        u = v[1:]
        r = jnp.maximum(jnp.concatenate([-inf, u]), jnp.minimum(jnp.concatenate([u, inf]), w + s))
        return jnp.maximum(r - a, 0.0), w

    def recursion(v, ch):
        return lax.scan(step, v, (ch.s, ch.inter), unroll=4)

    return arrival_order(streams, init, recursion, nchunks=nchunks, store=store)


def fifo_core(server, streams, *, nchunks, store):
    """The FIFO core for `server`: Lindley when it holds one server (the paper's
    default, bit for bit as before), Kiefer–Wolfowitz otherwise."""
    if server.size == 1:
        return lindley(server, streams, nchunks=nchunks, store=store)
    return kiefer_wolfowitz(server, streams, nchunks=nchunks, store=store)
