"""Discrete-event cores of :func:`jaxalloc.simulate`, one per service discipline.

| server kind | core                                        | module        |
|-------------|---------------------------------------------|---------------|
| `fifo`      | Lindley (c = 1), Kiefer–Wolfowitz (c > 1)    | `fifo.py`     |
| `priority`  | service-order steps, a pointer per class     | `priority.py` |
| `batching`  | exact event times, one step per admission    | `batching.py` |

A core is a function ``core(server, streams, *, nchunks, store) -> Raw``
simulating one replication (:class:`~jaxalloc.simulation.core.Raw`); they all
read the same random streams (:class:`~jaxalloc.simulation.streams.Streams`).
A core marked ``replicated = True`` (batching) is called once for all
replications instead of under ``jax.vmap``: its `streams.key` holds one key
per replication, it reads chunks with ``streams.every(c)`` and returns Raw
fields with a leading axis R.
A core that holds each replication's stream whole (priority) may set
``replication_group = G``: more than G replications then run G at a time
(a ``lax.map`` over vmapped groups, :func:`jaxalloc.simulate._in_groups`), so that memory and cache hold G streams,
not all of them; each replication's result is the same either way.
A new server kind registers its core in :data:`CORES` (and its theory's name
in :data:`THEORY_NAMES`); nothing else dispatches on the kind.
"""

from __future__ import annotations

import jax
import numpy as np

from ..servers import FIFO, Batching, Priority, Server, ServerError
from .batching import batching_core
from .core import Raw, Stats
from .fifo import fifo_core
from .priority import priority_core
from .streams import RNG_BLOCK, Streams

CORES = {FIFO: fifo_core, Priority: priority_core, Batching: batching_core}

THEORY_NAMES = {
    FIFO: lambda s: "Pollaczek–Khinchine" if float(np.ravel(s.servers)[0]) == 1 else "Lee–Longton",
    Priority: lambda s: "Cobham",
    Batching: lambda s: "batching chain",
}


def _lookup(table, server: Server):
    for cls in type(server).__mro__:
        if cls in table:
            return table[cls]
    raise TypeError(f"no simulation core for a {type(server).__name__} server (kind {server.kind!r})")


def core_for(server: Server):
    """The simulation core of `server`'s discipline (a batching server's admission
    stalls are not simulated: a server with admission > 0 is refused, naming it)."""
    admission = getattr(server, "admission", None)
    if admission is not None and not isinstance(admission, jax.core.Tracer) and np.any(np.asarray(admission) > 0):
        raise ServerError(f"server.admission = {float(np.max(np.asarray(admission))):g}: the simulator does not "
                          "model admission stalls (simulate with admission = 0, or check the model against a real "
                          "server with jaxalloc loadtest)")
    return _lookup(CORES, server)


def theory_name(server: Server) -> str:
    """The name of the formula the server's prediction comes from (concrete server)."""
    try:
        return _lookup(THEORY_NAMES, server)(server)
    except TypeError:
        return "theory"


__all__ = ["CORES", "RNG_BLOCK", "THEORY_NAMES", "Raw", "Stats", "Streams", "core_for", "theory_name"]
