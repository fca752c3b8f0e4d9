"""What every server model answers, and the parts they share.

A server model is an :class:`equinox.Module` whose numeric parameters are
array leaves (so `vmap` sweeps them and `grad` reaches them) and whose shape
(kind, static sizes) is static. It answers, in JAX:

- :meth:`Server.capacity`: the load λ E[S] (in seconds of batch-1 service per
  second) at which its queue becomes unstable, at arrival rate λ;
- :meth:`Server.task_system_time`: the mean system time of each task type,
  given the arrival rate λ, the task shares π_k, and each type's mean service
  time t_k and second moment E[S_k²] (t_k² for the deterministic service of
  eq. 1);
- :meth:`Server.system_time`: their π-weighted mean E[T], the delay term of J.

A server whose delay depends on the budgets only through the aggregates
m1 = E[S], m2 = E[S²] (eq. 3) is *aggregate*: it also answers
:meth:`Server.delay` (λ, m1, m2) ↦ E[T], and the fast aggregate solvers
(Lambert W best response, 2-D Newton) use it unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..errors import ProblemError
from ..reduce import over_tasks

SHORTEST_SERVICE = 1e-12
"""Seconds: formulas with E[S] in a denominator (Lee–Longton, the batching chain) take
E[S] at least this, so that ℓ = 0 with every t0 = 0 (E[S] = E[S²] = 0) gives finite
values and derivatives, not 0/0; far below any real service time, it changes nothing else."""


class ServerError(ProblemError):
    """An invalid server description; the message names the field and value."""


class Server(eqx.Module):
    """Base class of the server models (see the module docstring)."""

    kind: ClassVar[str] = ""
    aggregate: ClassVar[bool] = False
    fields: ClassVar[tuple[str, ...]] = ()  # parameter names, as in profiles, flags and sweep axes

    def capacity(self, lam=None) -> Array:
        """The largest stable load λ E[S] at arrival rate `lam` (most servers ignore
        `lam`; a batching server with admission work needs it, see :mod:`.batching`)."""
        raise NotImplementedError

    def task_system_time(self, lam, prob, t, t2) -> Array:
        """Mean system time per task type, shape (N,); +inf when unstable."""
        raise NotImplementedError

    def system_time(self, lam, prob, t, t2) -> Array:
        """E[T] = Σ_k π_k E[T_k]; +inf when unstable."""
        if self.aggregate:
            return self.delay(lam, over_tasks(jnp.add, prob * t), over_tasks(jnp.add, prob * t2))
        return over_tasks(jnp.add, prob * self.task_system_time(lam, prob, t, t2))

    def delay(self, lam, m1, m2) -> Array:
        """E[T] from the aggregates (aggregate servers only)."""
        raise TypeError(f"a {self.kind!r} server has no aggregate delay formula")

    def delay_prices(self, lam, m1, m2) -> tuple[Array, Array]:
        """(∂E[T]/∂m1, ∂E[T]/∂m2) by autodiff of :meth:`delay`, elementwise in batches."""
        total = lambda a, b: jnp.sum(self.delay(lam, a, b))
        return jax.grad(total, argnums=(0, 1))(m1, m2)

    def delay_curvature(self, lam, m1, m2) -> tuple[tuple[Array, Array], Array]:
        """(prices, Q): :meth:`delay_prices` and their Jacobian Q = ∇²E[T] in (m1, m2), a 2×2
        array, from one linearisation of the prices (one pass through the delay, where
        `jax.hessian` beside the prices took two: the batching chain twice)."""
        prices, slope = jax.linearize(lambda x, y: self.delay_prices(lam, x, y), m1, m2)
        columns = [slope(*d) for d in ((jnp.ones_like(m1), jnp.zeros_like(m2)), (jnp.zeros_like(m1), jnp.ones_like(m2)))]
        return prices, jnp.stack([jnp.stack([columns[0][i], columns[1][i]]) for i in (0, 1)])

    def stable(self, lam, m1) -> Array:
        """λ E[S] below :meth:`capacity` (eq. 4 for one server)."""
        return lam * m1 < self.capacity(lam)

    def wait_classes(self, n: int) -> tuple[Array, Array] | None:
        """(higher, through), two (N, N) 0/1 arrays: row k marks the task types served
        strictly before type k, and those served no later than k (k included), for the
        waiting-time transform of :mod:`jaxalloc.quantiles.transform`; None where the
        server has no such transform (then quantiles are not supported)."""
        return None

    def searched(self) -> bool:
        """Whether the solvers are to choose part of this server (static), e.g. a
        priority order given as "auto" (see :mod:`jaxalloc.solvers.order`)."""
        return False

    def replace(self, **changes: Any) -> Server:
        """A copy with some parameters replaced (converted to arrays of the leaves' dtype)."""
        out = self
        for name, value in changes.items():
            old = getattr(self, name)
            out = eqx.tree_at(lambda s, n=name: getattr(s, n), out, jnp.asarray(value, dtype=jnp.result_type(old)))
        if hasattr(out, "size"):  # a concrete integer parameter beyond the static size grows it
            out = out.resized(_concrete_max([v for k, v in changes.items() if k in ("servers", "max_batch")]))
        return out

    def resized(self, size: int) -> Server:
        """The same server able to hold parameters up to `size` (servers or
        max_batch: the static length of its recursion), e.g. before a sweep axis
        takes `servers` up to `size`. Servers without a size are returned as is."""
        if not hasattr(self, "size") or size <= self.size:
            return self
        return dataclasses.replace(self, size=int(size))

    def astype(self, dtype) -> Server:
        """The same server with every floating leaf cast to `dtype`."""
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=dtype), self)

    def describe(self, names: tuple[str, ...]) -> dict[str, Any]:
        """Kind and parameters as plain Python (JSON outputs, profiles)."""
        return {"kind": self.kind, **{f: _plain(getattr(self, f)) for f in self.fields}}

    def check(self, names: tuple[str, ...]) -> None:
        """Validate concrete parameters; raise :class:`ServerError` naming field and value."""


def _plain(x):
    v = float(x)
    return int(v) if v.is_integer() else v


def _concrete_max(values) -> int:
    """The largest of concrete values (0 if none, or if any is traced)."""
    import numpy as np

    top = 0
    for v in values:
        try:
            top = max(top, int(np.ceil(np.max(np.asarray(v, dtype=np.float64)))))
        except (TypeError, ValueError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            return 0
    return top


def whole_number(field: str, value, lo: int = 1) -> int:
    """A concrete integer ≥ `lo` (floats with an integer value accepted), else :class:`ServerError`."""
    shown = value
    try:
        if isinstance(value, str):
            raise TypeError
        v = float(value)
        shown = f"{v:g}" if not isinstance(value, (bool, int, float)) else repr(value)  # arrays shown as numbers
    except (TypeError, ValueError):
        raise ServerError(f"server.{field} = {value!r}: must be an integer >= {lo}") from None
    if isinstance(value, bool) or not v.is_integer() or v < lo:
        raise ServerError(f"server.{field} = {shown}: must be an integer >= {lo}")
    return int(v)
