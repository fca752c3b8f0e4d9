"""Problem parameters as a pytree, their validation, and the TOML profile format.

A :class:`Problem` holds the operating point (arrival rate λ, accuracy weight α,
token cap ℓ_max) and, per task type k, the mix share π_k, the accuracy curve
p_k(ℓ) = A_k (1 − e^{−b_k ℓ}) + D_k (eq. 2) and the service time
t_k(ℓ) = t0_k + c_k ℓ (eq. 1). Every numeric field is a JAX array leaf, so
``jax.vmap`` sweeps operating points and ``jax.grad`` reaches every parameter;
task names are static metadata.

Values are checked where they are concrete (:func:`validate`, called by
:func:`make_problem` and :func:`load_profile`); inside ``jit`` nothing raises.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .errors import ProblemError
from .servers import SWEEPABLE, Server, default_server, server_from_dict, server_to_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TASK_FIELDS = ("A", "b", "D", "t0", "c")
TOP_FIELDS = ("name", "arrival_rate", "alpha", "max_tokens", "tasks", "server")
PROB_TOLERANCE = 1e-6




class Problem(eqx.Module):
    """One operating point of the token-allocation problem (9).

    **Fields:**

    - `arrival_rate`: λ > 0, queries per second (Poisson).
    - `alpha`: α > 0, weight of mean accuracy against mean system time (eq. 7).
    - `max_tokens`: ℓ_max, the architectural cap on every budget.
    - `prob`: π_k, shape (N,), task mix, sums to 1.
    - `A`, `b`, `D`: accuracy curve of eq. 2, shape (N,).
    - `t0`, `c`: service time of eq. 1 (seconds, seconds per token), shape (N,).
    - `names`: task names (static).
    - `server`: the server model (:mod:`jaxalloc.servers`); default one FIFO
      server, the paper's M/G/1. Its parameters are leaves of the problem, so
      `replace`, `vmap` and `grad` reach them like any other field.
    """

    arrival_rate: Float[Array, ""]
    alpha: Float[Array, ""]
    max_tokens: Float[Array, ""]
    prob: Float[Array, " N"]
    A: Float[Array, " N"]
    b: Float[Array, " N"]
    D: Float[Array, " N"]
    t0: Float[Array, " N"]
    c: Float[Array, " N"]
    names: tuple[str, ...] = eqx.field(static=True, default=())
    server: Server = eqx.field(default_factory=default_server)

    @property
    def num_tasks(self) -> int:
        return self.A.shape[-1]

    def replace(self, **changes: Any) -> Problem:
        """A copy with some fields replaced (scalars are converted to arrays).

        Server parameters (`servers`, `max_batch`, `batch_slowdown`) are
        replaced in :attr:`server`; `server` itself replaces the server."""
        dtype = self.A.dtype
        own = {k: v for k, v in changes.items() if k not in SWEEPABLE}
        conv = {
            k: (v if k in ("names", "server") else jnp.asarray(v, dtype=dtype))
            for k, v in own.items()
        }
        theirs = {k: v for k, v in changes.items() if k in SWEEPABLE}
        if theirs:
            server = conv.get("server", self.server)
            missing = [k for k in theirs if k not in server.fields]
            if missing:
                raise ProblemError(f"{missing[0]}: not a parameter of a {server.kind!r} server")
            conv["server"] = server.replace(**theirs)
        return dataclasses.replace(self, **conv)

    def astype(self, dtype) -> Problem:
        """The same problem with every numeric leaf cast to `dtype`."""
        fields = {
            f.name: jnp.asarray(getattr(self, f.name), dtype=dtype)
            for f in dataclasses.fields(self)
            if f.name not in ("names", "server")
        }
        return Problem(**fields, names=self.names, server=self.server.astype(dtype))


def make_problem(
    *,
    arrival_rate: float,
    alpha: float,
    max_tokens: float,
    A: Sequence[float],
    b: Sequence[float],
    D: Sequence[float],
    t0: Sequence[float],
    c: Sequence[float],
    prob: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    server: Server | None = None,
    dtype=None,
    check: bool = True,
    stability: bool = True,
) -> Problem:
    """Build a :class:`Problem` from plain numbers, validating them.

    **Arguments:**

    - `arrival_rate`, `alpha`, `max_tokens`: λ, α, ℓ_max.
    - `A`, `b`, `D`, `t0`, `c`: per-task parameters (equal lengths).
    - `prob`: task shares π; `None` means uniform.
    - `names`: task names; default `task0, task1, ...`.
    - `server`: the server model (:func:`jaxalloc.servers.make_server`);
      default one FIFO server (the paper's).
    - `dtype`: floating dtype of the leaves (default: JAX's default float).
    - `check`: run :func:`validate` (raises :class:`ProblemError`).
    - `stability`: with `check`, also require a queue stable at ℓ = 0 (off
      when the load or the server is still to be changed, e.g. by flags).

    **Returns:** a :class:`Problem`.
    """
    n = len(A)
    for field, seq in (("b", b), ("D", D), ("t0", t0), ("c", c)):
        if len(seq) != n:
            raise ProblemError(f"tasks: field {field} has {len(seq)} values, A has {n}")
    if prob is None:
        prob = [1.0 / n] * n if n else []
    elif len(prob) != n:
        raise ProblemError(f"prob: {len(prob)} values for {n} tasks")
    if names is None:
        names = [f"task{k}" for k in range(n)]
    elif len(names) != n:
        raise ProblemError(f"names: {len(names)} names for {n} tasks")
    if dtype is None:
        dtype = jnp.asarray(0.0).dtype
    arr = lambda v: jnp.asarray(np.asarray(v, dtype=np.float64), dtype=dtype)
    problem = Problem(
        arrival_rate=arr(arrival_rate),
        alpha=arr(alpha),
        max_tokens=arr(max_tokens),
        prob=arr(prob),
        A=arr(A),
        b=arr(b),
        D=arr(D),
        t0=arr(t0),
        c=arr(c),
        names=tuple(str(s) for s in names),
        server=(default_server() if server is None else server).astype(dtype),
    )
    if check:
        validate(problem, stability=stability)
    return problem


def _task_label(names: Sequence[str], k: int) -> str:
    return f"tasks[{k}] ({names[k]})" if k < len(names) else f"tasks[{k}]"


def validate(problem: Problem, *, stability: bool = True) -> Problem:
    """Check a concrete problem; raise :class:`ProblemError` naming field and value.

    Checks: λ, α, ℓ_max finite and > 0; at least one task; π_k > 0 summing to 1
    (within 1e-6); 0 < A_k ≤ 1; 0 ≤ D_k ≤ 1; A_k + D_k ≤ 1; b_k > 0; t0_k ≥ 0;
    c_k > 0; every value finite; the server's parameters; and, with
    `stability`, the queue stable at ℓ = 0 (λ Σ π_k t0_k below the server's
    capacity: 1 for one server, eq. 4), without which no budget is feasible
    (sweeps turn that check off: their unstable points are flagged rows).

    **Returns:** the problem, unchanged.
    """
    scalars = {
        "arrival_rate": problem.arrival_rate,
        "alpha": problem.alpha,
        "max_tokens": problem.max_tokens,
    }
    for field, value in scalars.items():
        v = np.asarray(value, dtype=np.float64)
        if v.shape != ():
            raise ProblemError(f"{field}: expected a number, got shape {v.shape}")
        v = float(v)
        if not math.isfinite(v):
            raise ProblemError(f"{field} = {v}: must be a finite number")
        if v <= 0:
            raise ProblemError(f"{field} = {v:g}: must be > 0")
    names = problem.names
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ProblemError(f"tasks: duplicate task name {dup!r}")
    n = problem.A.shape[-1] if problem.A.ndim else 0
    if n == 0:
        raise ProblemError("tasks: at least one task is required")
    vecs = {f: np.asarray(getattr(problem, f), dtype=np.float64) for f in ("prob",) + TASK_FIELDS}
    for field, v in vecs.items():
        if v.shape != (n,):
            raise ProblemError(f"{field}: expected {n} values, got shape {v.shape}")
        for k in range(n):
            if not math.isfinite(v[k]):
                raise ProblemError(f"{_task_label(names, k)}.{field} = {v[k]}: must be a finite number")
    rules = {
        "prob": (lambda x: x > 0, "must be > 0 (drop the task instead)"),
        "A": (lambda x: 0 < x <= 1, "must be in (0, 1]"),
        "D": (lambda x: 0 <= x <= 1, "must be in [0, 1]"),
        "b": (lambda x: x > 0, "must be > 0"),
        "t0": (lambda x: x >= 0, "must be >= 0"),
        "c": (lambda x: x > 0, "must be > 0"),
    }
    for field, (ok, why) in rules.items():
        for k in range(n):
            if not ok(vecs[field][k]):
                label = "prob" if field == "prob" else field
                raise ProblemError(f"{_task_label(names, k)}.{label} = {vecs[field][k]:g}: {why}")
    for k in range(n):
        s = vecs["A"][k] + vecs["D"][k]
        if s > 1 + 1e-12:
            raise ProblemError(
                f"{_task_label(names, k)}: A + D = {s:g} > 1 (maximum accuracy above 1)"
            )
    total = float(vecs["prob"].sum())
    if abs(total - 1) > PROB_TOLERANCE:
        raise ProblemError(f"prob: task shares sum to {total:.9g}, must sum to 1 (within 1e-6)")
    problem.server.check(names)
    admission = float(getattr(problem.server, "admission", 0.0))
    k = int(vecs["t0"].argmin())
    if admission > vecs["t0"][k]:  # h is part of every batch-1 service time (docs/servers.md)
        raise ProblemError(f"server.admission = {admission:g}: exceeds {_task_label(names, k)}.t0 = "
                           f"{vecs['t0'][k]:g} (the admission is part of each query's batch-1 service time)")
    lam = float(problem.arrival_rate)
    rho0 = lam * float((vecs["prob"] * vecs["t0"]).sum())
    capacity = float(problem.server.capacity(lam))
    if stability and rho0 >= capacity:
        if problem.server.kind == "fifo" and capacity == 1:
            why = f"utilization λ·E[S](0) = {rho0:.4g} >= 1"
        else:
            why = f"load λ·E[S](0) = {rho0:.4g} >= this {problem.server.kind} server's capacity {capacity:.4g}"
        raise ProblemError(f"arrival_rate = {lam:g}: queue unstable even at zero budgets ({why})")
    return problem


# ---------------------------------------------------------------- TOML profiles


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProblemError(f"{where} = {value!r}: must be a number")
    return float(value)


def problem_from_dict(data: Mapping[str, Any], *, dtype=None, stability: bool = True) -> Problem:
    """Build and validate a problem from a parsed profile (the TOML layout).

    Top level: `name` (optional), `arrival_rate`, `alpha`, `max_tokens`, an
    optional `server` table (:func:`jaxalloc.servers.server_from_dict`;
    without it, one FIFO server), and a `tasks` list of tables with `name` (required: a non-empty string, distinct
    across tasks), `prob` (optional), `A`, `b`, `D`, `t0`, `c`. (From Python,
    :func:`make_problem` still names unnamed tasks `task0, task1, ...`.)
    """
    unknown = sorted(set(data) - set(TOP_FIELDS))
    if unknown:
        raise ProblemError(f"{unknown[0]}: unknown field (allowed: {', '.join(TOP_FIELDS)})")
    for field in ("arrival_rate", "alpha", "max_tokens"):
        if field not in data:
            raise ProblemError(f"{field}: missing")
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ProblemError("tasks: at least one [[tasks]] table is required")
    allowed = ("name", "prob") + TASK_FIELDS
    columns: dict[str, list[float]] = {f: [] for f in TASK_FIELDS}
    names, probs = [], []
    for k, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise ProblemError(f"tasks[{k}]: must be a table")
        label = f"tasks[{k}]" + (f" ({task['name']})" if "name" in task else "")
        extra = sorted(set(task) - set(allowed))
        if extra:
            raise ProblemError(f"{label}.{extra[0]}: unknown field (allowed: {', '.join(allowed)})")
        if "name" not in task:  # a profile names its tasks: outputs, sweep axes and --task refer to them
            raise ProblemError(f"tasks[{k}].name: missing")
        if not isinstance(task["name"], str) or not task["name"].strip():
            raise ProblemError(f"tasks[{k}].name = {task['name']!r}: must be a non-empty string")
        for f in TASK_FIELDS:
            if f not in task:
                raise ProblemError(f"{label}.{f}: missing")
            columns[f].append(_number(f"{label}.{f}", task[f]))
        names.append(task["name"])
        probs.append(_number(f"{label}.prob", task["prob"]) if "prob" in task else None)
    server = None
    if "server" in data:
        server = server_from_dict(data["server"], tuple(names), dtype=dtype)
    given = [p is not None for p in probs]
    if any(given) and not all(given):
        k = given.index(False)
        raise ProblemError(f"tasks[{k}] ({names[k]}).prob: missing (give prob for all tasks or none)")
    return make_problem(
        arrival_rate=_number("arrival_rate", data["arrival_rate"]),
        alpha=_number("alpha", data["alpha"]),
        max_tokens=_number("max_tokens", data["max_tokens"]),
        prob=probs if all(given) else None,
        names=names,
        server=server,
        dtype=dtype,
        stability=stability,
        **columns,
    )


def load_profile(path: str | Path, *, dtype=None, stability: bool = True) -> Problem:
    """Read a TOML profile from `path` (see :func:`problem_from_dict`; `stability`
    as in :func:`make_problem`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProblemError(f"profile: file not found: {path}") from None
    except OSError as err:
        raise ProblemError(f"profile: cannot read {path}: {err.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProblemError(f"profile: malformed TOML in {path}: {err}") from None
    return problem_from_dict(data, dtype=dtype, stability=stability)


def bundled_profiles() -> list[str]:
    """Names of the profiles shipped inside the package."""
    root = resources.files("jaxalloc") / "profiles"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def paper_profile(*, dtype=None) -> Problem:
    """The paper's Table I profile (λ = 0.1, α = 30, ℓ_max = 32768, π uniform)."""
    text = (resources.files("jaxalloc") / "profiles" / "paper.toml").read_text(encoding="utf-8")
    return problem_from_dict(tomllib.loads(text), dtype=dtype)


def problem_to_toml(problem: Problem, name: str = "profile") -> str:
    """The TOML text of a profile that :func:`load_profile` reads back exactly."""
    lines = [
        f'name = "{name}"',
        f"arrival_rate = {float(problem.arrival_rate)!r}",
        f"alpha = {float(problem.alpha)!r}",
        f"max_tokens = {float(problem.max_tokens)!r}",
    ]
    names = problem.names or tuple(f"task{k}" for k in range(problem.num_tasks))
    # host copies first: indexing device arrays element by element costs a dispatch each
    # (measured: 1.5 s for N = 1024)
    prob = np.asarray(problem.prob).tolist()
    fields = {f: np.asarray(getattr(problem, f)).tolist() for f in TASK_FIELDS}
    for k in range(problem.num_tasks):
        lines += ["", "[[tasks]]", f'name = "{names[k]}"', f"prob = {float(prob[k])!r}"]
        lines += [f"{f} = {float(fields[f][k])!r}" for f in TASK_FIELDS]
    lines += server_to_toml(problem.server, names)
    return "\n".join(lines) + "\n"
