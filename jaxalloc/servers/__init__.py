"""Server models: how long queries wait and run, as functions of the budgets.

| kind       | parameters                      | model                                              | aggregate |
|------------|---------------------------------|----------------------------------------------------|-----------|
| `fifo`     | `servers` = c                   | c = 1: Pollaczek–Khinchine (the paper); c > 1: M/G/c, Lee–Longton | yes |
| `priority` | `order` (names, or `"auto"`)    | non-preemptive priority M/G/1, Cobham              | no        |
| `batching` | `max_batch` = B, `batch_slowdown` = β, `admission` = h | state-dependent processor sharing, birth–death chain | yes |

The default server, when a profile has no `[server]` table, is one FIFO server:
the paper's model, unchanged. Each kind lives in one module; :func:`make_server`
builds one from its profile table or command-line flags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .base import Server, ServerError, whole_number
from .batching import Batching
from .fifo import FIFO, erlang_c, pollaczek_khinchine_system_time, pollaczek_khinchine_wait
from .priority import Priority, priority_from_order

KINDS: dict[str, type[Server]] = {"fifo": FIFO, "priority": Priority, "batching": Batching}
PARAMETERS = {"fifo": ("servers",), "priority": ("order",), "batching": ("max_batch", "batch_slowdown", "admission")}
SWEEPABLE = ("servers", "max_batch", "batch_slowdown", "admission")  # scalar parameters that can be sweep axes


def default_server(dtype=None) -> FIFO:
    """One FIFO server: the paper's model."""
    import jax.numpy as jnp

    return FIFO(servers=jnp.asarray(1.0, dtype=dtype))


def make_server(kind: str, names: tuple[str, ...], *, dtype=None, size: int | None = None, **params: Any) -> Server:
    """A validated server of `kind` for tasks `names` from plain parameters.

    **Arguments:** `kind` ("fifo", "priority" or "batching"); `names`: the
    problem's task names; parameters by kind: `servers` (default 1);
    `order` (a list of task names, highest priority first, a comma-separated
    string, or "auto"; default: the profile's task order); `max_batch`
    (required), `batch_slowdown` (default 0), `admission` (seconds, default 0). `size`: the static size
    (largest `servers` / `max_batch` the instance may hold), default the
    value given. Raises :class:`ServerError` naming the field and value.
    """
    import jax.numpy as jnp

    if kind not in KINDS:
        raise ServerError(f"server.kind = {kind!r}: expected one of {', '.join(KINDS)}")
    allowed = PARAMETERS[kind]
    extra = sorted(k for k, v in params.items() if v is not None and k not in allowed)
    if extra:
        raise ServerError(f"server.{extra[0]}: not a parameter of kind {kind!r} (it takes: {', '.join(allowed)})")
    dtype = dtype or jnp.asarray(0.0).dtype
    if kind == "fifo":
        c = whole_number("servers", 1 if params.get("servers") is None else params["servers"])
        return FIFO(servers=jnp.asarray(float(c), dtype), size=max(c, size or 1))
    if kind == "priority":
        order = params.get("order")
        return priority_from_order(list(names) if order is None else order, tuple(names), dtype)
    if params.get("max_batch") is None:
        raise ServerError("server.max_batch: missing (kind \"batching\" needs max_batch; batch_slowdown defaults to 0)")
    b = whole_number("max_batch", params["max_batch"])
    beta, h = (_nonnegative(name, params.get(name)) for name in ("batch_slowdown", "admission"))
    return Batching(max_batch=jnp.asarray(float(b), dtype), batch_slowdown=jnp.asarray(beta, dtype),
                    admission=jnp.asarray(h, dtype), size=max(b, size or 1))


def _nonnegative(field: str, value) -> float:
    """A finite number >= 0 (None: 0), else :class:`ServerError` naming the field."""
    value = 0.0 if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ServerError(f"server.{field} = {value!r}: must be a finite number >= 0")
    return float(value)


def server_from_dict(table: Mapping[str, Any], names: tuple[str, ...], *, dtype=None) -> Server:
    """The server of a profile's `[server]` table (`kind` plus its parameters)."""
    if not isinstance(table, Mapping):
        raise ServerError("server: must be a table ([server])")
    kind = table.get("kind", "fifo")
    if not isinstance(kind, str):
        raise ServerError(f"server.kind = {kind!r}: expected one of {', '.join(KINDS)}")
    unknown = sorted(set(table) - {"kind"} - set(PARAMETERS.get(kind, ())))
    if kind in KINDS and unknown:
        raise ServerError(f"server.{unknown[0]}: unknown field for kind {kind!r} "
                          f"(allowed: kind, {', '.join(PARAMETERS[kind])})")
    params = {k: v for k, v in table.items() if k != "kind"}
    return make_server(kind, names, dtype=dtype, **params)


def server_to_toml(server: Server, names: tuple[str, ...]) -> list[str]:
    """Lines of the `[server]` table for `server` (none for the default one FIFO server)."""
    desc = server.describe(names)
    if desc == {"kind": "fifo", "servers": 1}:
        return []
    lines = ["", "[server]", f'kind = "{desc["kind"]}"']
    if desc["kind"] == "priority":
        order = '"auto"' if desc["auto"] else "[" + ", ".join(f'"{n}"' for n in desc["order"]) + "]"
        return lines + [f"order = {order}"]
    return lines + [f"{k} = {v!r}" for k, v in desc.items() if k != "kind"]


__all__ = [
    "FIFO",
    "KINDS",
    "PARAMETERS",
    "SWEEPABLE",
    "Batching",
    "Priority",
    "Server",
    "ServerError",
    "default_server",
    "erlang_c",
    "make_server",
    "pollaczek_khinchine_system_time",
    "pollaczek_khinchine_wait",
    "priority_from_order",
    "server_from_dict",
    "server_to_toml",
]
