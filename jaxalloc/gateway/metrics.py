"""The gateway's Prometheus metrics (``GET /metrics``) and their JSON twin (``GET /budgets``).

One :class:`prometheus_client.CollectorRegistry` per gateway (two gateways in one process, as in
the tests, do not share counters). Names, all prefixed ``jaxalloc_gateway_``:

| metric | kind | labels | what |
|---|---|---|---|
| ``budget_tokens`` | gauge | task | the budget in force |
| ``arrival_rate`` | gauge | | λ̂, queries/s on the window |
| ``task_share`` | gauge | task | π̂_k |
| ``predicted_latency_seconds`` | gauge | task | E[T_k] of the model at the estimate (+Inf: unstable) |
| ``latency_seconds`` | histogram | task | measured time from request to the end of the answer |
| ``requests_total`` | counter | task, code | requests answered, by HTTP status |
| ``upstream_failures_total`` | counter | kind | ``connect``, ``timeout``, ``protocol`` (an answer the exact query cannot use), ``disconnect`` (client gone, upstream cancelled) |
| ``resolve_seconds`` | histogram | | wall time of a re-solve |
| ``resolves_total``, ``budget_changes_total`` | counter | | re-solves, and those that moved the budgets |
| ``alarm`` | gauge | | 1 while even ℓ = 0 is unstable at the estimate |
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "jaxalloc_gateway_"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
RESOLVE_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)


class Metrics:
    """The gateway's metrics for tasks `names` (see the module docstring)."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        self.registry = r = CollectorRegistry()
        self.budget = Gauge(PREFIX + "budget_tokens", "thinking budget in force", ["task"], registry=r)
        self.rate = Gauge(PREFIX + "arrival_rate", "estimated arrival rate (queries/s)", registry=r)
        self.share = Gauge(PREFIX + "task_share", "estimated task share", ["task"], registry=r)
        self.predicted = Gauge(PREFIX + "predicted_latency_seconds", "model's mean system time at the estimate",
                               ["task"], registry=r)
        self.latency = Histogram(PREFIX + "latency_seconds", "measured system time", ["task"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter(PREFIX + "requests", "requests answered", ["task", "code"], registry=r)
        self.upstream = Counter(PREFIX + "upstream_failures", "upstream failures", ["kind"], registry=r)
        self.resolve = Histogram(PREFIX + "resolve_seconds", "re-solve wall time", buckets=RESOLVE_BUCKETS,
                                 registry=r)
        self.resolves = Counter(PREFIX + "resolves", "re-solves", registry=r)
        self.changes = Counter(PREFIX + "budget_changes", "re-solves that moved the budgets", registry=r)
        self.alarm = Gauge(PREFIX + "alarm", "1 while even budget 0 is unstable at the estimate", registry=r)

    def decided(self, decision) -> None:
        """Record a :class:`~jaxalloc.gateway.policy.Decision`."""
        for name, b, p, t in zip(self.names, decision.budgets, decision.prob, decision.predicted_s):
            self.budget.labels(name).set(b)
            self.share.labels(name).set(p)
            self.predicted.labels(name).set(t)
        self.rate.set(decision.rate)
        self.resolve.observe(decision.seconds)
        self.resolves.inc()
        if decision.changed:
            self.changes.inc()
        self.alarm.set(1 if decision.alarm else 0)

    def text(self) -> bytes:
        """The Prometheus exposition format."""
        return generate_latest(self.registry)
