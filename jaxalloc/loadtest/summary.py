"""Per-rate results of a load test: measured against predicted, as data, a table and a CSV.

:func:`summarize` turns the records of one rate into a dict (the `summary` entries of
:class:`~jaxalloc.loadtest.run.LoadtestResult` and of ``jaxalloc loadtest --json``);
:func:`format_summary` prints them for people; :func:`write_records` writes the records.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..files import replacing
from .predict import predictions, relative_error


def _stats(records) -> dict:
    ok = [r for r in records if r.status == "ok"]
    sent = [r for r in records if r.status != "not_sent"]
    times = np.asarray([r.system_s for r in ok], dtype=np.float64)
    failures = Counter(r.status for r in sent if r.status != "ok")
    out = {"n": len(records), "sent": len(sent), "ok": len(ok), "failed": len(sent) - len(ok),
           "not_sent": len(records) - len(sent), "failures": dict(sorted(failures.items()))}
    if times.size:
        out.update(mean_s=float(times.mean()), p50_s=float(np.percentile(times, 50)),
                   p95_s=float(np.percentile(times, 95)))
    else:
        out.update(mean_s=None, p50_s=None, p95_s=None)
    return out


def _compare(entry: dict, server: float, fifo: float) -> dict:
    entry.update(predicted_s=server, error=relative_error(entry["mean_s"], server),
                 predicted_fifo_s=fifo, error_fifo=relative_error(entry["mean_s"], fifo))
    return entry


def _mixed(pred: dict, tasks: dict, names: Sequence[str]) -> float:
    """The overall prediction for the queries measured: Σ_k (n_k / n) E[T_k], n_k the task's
    answered queries. The measured mean averages over the mix that came, not π: weighting
    by π would add the mix's sampling noise to the error (with two tasks of 0.6 s and 2 s,
    ±9% at 40 queries). π still sets the load in E[T_k]. Without an answer: E[T]."""
    counts = np.asarray([tasks[name]["ok"] for name in names], dtype=np.float64)
    if counts.sum() == 0 or not pred["stable"]:
        return pred["overall"]
    return float(np.dot(counts / counts.sum(), pred["tasks"]))


def summarize(problem, names: Sequence[str], budgets: Sequence[int], schedule, records) -> dict:
    """The summary of one rate.

    **Arguments:** `problem` (with the server the budgets were chosen for); `names`;
    `budgets`; `schedule` (:class:`~jaxalloc.loadtest.arrivals.Schedule`); `records`
    (its :class:`~jaxalloc.loadtest.run.Record` list).

    **Returns:** ``{"rate", "source", "requests", "sent", "ok", "failed", "not_sent",
    "failures" ({status: count}), "lag_mean_s", "lag_p50_s", "lag_p99_s", "lag_max_s", "span_s",
    "stable" ({"server": bool, "fifo": bool}), "tasks": {name: entry}, "overall": entry}``
    (:func:`~jaxalloc.loadtest.run.loadtest` adds ``run_s`` and ``generator_cpu_s``: the
    rate's wall time and this process's CPU time during it),
    each entry with ``n, sent, ok, failed, not_sent, failures, budget, mean_s, p50_s,
    p95_s`` (measured over the ``ok`` records; None without one), ``predicted_s`` and
    ``error`` (the profile's server), ``predicted_fifo_s`` and ``error_fifo`` (one FIFO
    server); the overall prediction is weighted by the tasks' answered counts (:func:`_mixed`).
    A prediction is +inf where that model's queue is unstable at the rate, and
    its relative error (measured − predicted) / predicted is then None (n/a).
    """
    pred = predictions(problem, budgets, schedule.rate, schedule.prob)
    tasks = {}
    for k, name in enumerate(names):
        entry = _stats([r for r in records if r.task == name])
        entry["budget"] = int(budgets[k])
        tasks[name] = _compare(entry, pred["server"]["tasks"][k], pred["fifo"]["tasks"][k])
    overall = _compare(_stats(records), *(_mixed(pred[m], tasks, names) for m in ("server", "fifo")))
    lags = np.asarray([r.lag_s for r in records if r.lag_s is not None], dtype=np.float64)
    ends = [r.end_s for r in records if r.end_s is not None]
    return {
        "rate": float(schedule.rate), "source": schedule.source, "requests": overall["n"], "sent": overall["sent"],
        "ok": overall["ok"], "failed": overall["failed"], "not_sent": overall["not_sent"],
        "failures": overall["failures"],
        "lag_mean_s": float(lags.mean()) if lags.size else None,  # part of every system time: the client's share
        "lag_p50_s": float(np.percentile(lags, 50)) if lags.size else None,
        "lag_p99_s": float(np.percentile(lags, 99)) if lags.size else None,
        "lag_max_s": float(lags.max()) if lags.size else None,
        "span_s": float(max(ends)) if ends else None,
        "stable": {"server": pred["server"]["stable"], "fifo": pred["fifo"]["stable"]},
        "tasks": tasks, "overall": overall,
    }


def jsonable(x):
    """`x` with every non-finite float replaced by None (JSON has no inf or NaN)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _seconds(v) -> str:
    if v is None:
        return "—"
    return "unstable" if math.isinf(v) else f"{v:.3f}"


def _error(v) -> str:
    return "n/a" if v is None else f"{100 * v:+.1f}%"


def _baseline_line(b: dict) -> str:
    """The ``--baseline`` line of a rate: measured and profile service times, the time scale,
    and the profile's own prediction (unscaled) with its error."""
    times = ", ".join(f"{n} {b['measured_s'][n]:.3f} s (profile {b['profile_s'][n]:.3f})" for n in b["measured_s"])
    cal = b["as_calibrated"]
    return (f"baseline ({b['per_task']} per task, one at a time): {times}: times × {b['time_scale']:.3f} in the "
            f"predictions below; as calibrated, the server model predicts {_seconds(cal['predicted_s'])} s "
            f"({_error(cal['error'])})")


def format_summary(result, title: str = "") -> str:
    """A fixed-width table per rate of a :class:`~jaxalloc.loadtest.run.LoadtestResult`."""
    from ..report import describe_server

    lines = [title] if title else []
    lines.append(f"server: {result.base_url} serving {result.served_model}")
    lines.append(f"model of the server: {describe_server(result.server)}")
    lines.append(f"budgets ({result.budget_source}): "
                 + ", ".join(f"{n} {b}" for n, b in zip(result.tasks, result.budgets)))
    width = max(8, *(len(n) for n in result.tasks))
    for s in result.summary:
        fail = ", ".join(f"{k} {v}" for k, v in s["failures"].items())
        lag = ("" if s["lag_p50_s"] is None else
               f"; send lag mean {1e3 * s['lag_mean_s']:.2f} ms, p50 {1e3 * s['lag_p50_s']:.2f} ms, "
               f"p99 {1e3 * s['lag_p99_s']:.2f} ms")
        lines += ["", (f"rate λ = {s['rate']:g}/s ({s['source']}): {s['requests']} requests, {s['ok']} ok, "
                       f"{s['failed']} failed{f' ({fail})' if fail else ''}, {s['not_sent']} not sent{lag}")]
        if s.get("baseline"):
            lines.append(_baseline_line(s["baseline"]))
        lines.append(f"{'task':<{width}}  {'ℓ':>6}  {'ok':>5}  {'fail':>4}  {'mean s':>8}  {'p50 s':>8}  "
                     f"{'p95 s':>8}  {'server s':>8}  {'error':>7}  {'M/G/1 s':>8}  {'error':>7}")
        for name, e in [*s["tasks"].items(), ("all", s["overall"])]:
            budget = str(e["budget"]) if "budget" in e else ""
            lines.append(f"{name:<{width}}  {budget:>6}  {e['ok']:>5}  {e['failed']:>4}  {_seconds(e['mean_s']):>8}  "
                         f"{_seconds(e['p50_s']):>8}  {_seconds(e['p95_s']):>8}  {_seconds(e['predicted_s']):>8}  "
                         f"{_error(e['error']):>7}  {_seconds(e['predicted_fifo_s']):>8}  {_error(e['error_fifo']):>7}")
    lines += ["", ("mean, p50, p95: measured system time (end of answer − scheduled arrival) over ok requests; "
                   "server: the profile's server model; M/G/1: the paper's one FIFO server; error: (measured − "
                   "predicted) / predicted")]
    return "\n".join(lines)


def write_records(records, path) -> None:
    """Write the records as CSV (one row per query, columns of :meth:`Record.row`), whole or not at all."""
    from .run import CSV_COLUMNS

    path = Path(path)
    with replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if v is None else v) for k, v in r.row().items()})
