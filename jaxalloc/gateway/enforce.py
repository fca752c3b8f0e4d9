"""How the gateway applies a task's budget to a request, and how it reads the task off it.

**`cap`** (the default) rewrites the request body and leaves the rest to the server:

- ``thinking_token_budget = ℓ_k``: vLLM's cap on the reasoning (both ``/v1/chat/completions``
  and ``/v1/completions``; the server needs ``--reasoning-parser``, or ``--reasoning-config``).
  It is a cap, not an exact length: a model may close its thinking earlier.
- ``max_tokens = ℓ_k + answer room`` (``--answer-tokens``), so that the answer still fits
  after the thinking; a client's own ``max_tokens`` (or ``max_completion_tokens``) below
  that is kept, as a further cap.

**`exact`** sends the two-phase query of ``calibrate measure``: a thinking request of exactly
ℓ_k tokens, then the answer (:mod:`jaxalloc.gateway.exact`).

**The task** comes from the header (``--task-header``, default ``X-Task``), else from a body
field (``--task-field``, a dotted path such as ``metadata.task``), else ``--default-task``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ENFORCE = ("cap", "exact")
DEFAULT_ANSWER_TOKENS = 512


class RequestError(ValueError):
    """A request the gateway refuses: `status` (an HTTP status) and a message naming the field."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


class UpstreamError(Exception):
    """The upstream answered, but not as the gateway needs (a 502; the exact query's phases)."""


def field_path(path: str) -> tuple[str, ...]:
    """``"metadata.task"`` → ``("metadata", "task")``; a ValueError naming ``--task-field`` if empty."""
    parts = tuple(p for p in path.split(".")) if path else ()
    if not parts or any(not p for p in parts):
        raise ValueError(f"--task-field = {path!r}: expected a dotted path of body fields, such as metadata.task")
    return parts


def _lookup(body: Mapping[str, Any], path: Sequence[str]):
    node: Any = body
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def task_of(headers: Mapping[str, str], body: Mapping[str, Any], names: Sequence[str], *, header: str,
            field: Sequence[str], default: str | None) -> int:
    """The task index of a request (see the module docstring).

    Raises :class:`RequestError` 400 naming the task and the known ones when it is unknown, or
    when there is none and no default."""
    value = headers.get(header)
    source = f"header {header}"
    if value is None:
        value = _lookup(body, field)
        source = f"field {'.'.join(field)}"
    if value is None:
        if default is None:
            raise RequestError(400, f"no task: give the header {header} or the field {'.'.join(field)} "
                                    f"(tasks: {', '.join(names)})", param=".".join(field))
        value, source = default, "--default-task"
    if not isinstance(value, str) or value not in names:
        raise RequestError(400, f"unknown task {value!r} (from the {source}); tasks: {', '.join(names)}",
                           param=".".join(field))
    return list(names).index(value)


def client_cap(body: Mapping[str, Any]) -> int | None:
    """The client's own cap on generated tokens (``max_completion_tokens``, else ``max_tokens``), or None.

    Raises :class:`RequestError` 400 when it is not a whole number >= 1."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestError(400, f"{key} = {value!r}: must be a whole number >= 1", param=key)
        return value
    return None


def apply_cap(body: dict[str, Any], budget: int, answer_tokens: int = DEFAULT_ANSWER_TOKENS) -> dict[str, Any]:
    """The body with the task's budget as a cap (see the module docstring); `body` is not changed.

    ``thinking_token_budget`` = `budget`; ``max_tokens`` = min(client's cap, `budget` +
    `answer_tokens`), written to the key the client used (``max_completion_tokens`` for chat
    clients that send it)."""
    out = dict(body)
    out["thinking_token_budget"] = int(budget)
    room = int(budget) + int(answer_tokens)
    cap = client_cap(body)
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    out[key] = room if cap is None else min(cap, room)
    return out
